"""Test helpers: a fake server that sends whatever replies a test scripts (with fds attached), memfds to send, and a
census of this process's fds and memfd mappings to prove that the client leaked nothing."""
import fcntl
import importlib
import json
import os
import shutil
import socket
import struct
import tempfile
import threading
import unittest

HEADER = struct.Struct("<4sHHII")
SERVED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
FAKE_NAME = "dmaload-fake"


def frame(type_, id_, body, magic=b"DMLD", version=1):
    """One message as the protocol frames it; `body` is an object (sent as JSON) or raw bytes (sent as they are)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HEADER.pack(magic, version, type_, id_, len(data)) + data


def memfd(data, seals=SERVED_SEALS, rdonly=True):
    """A memfd holding `data`, sealed with `seals`; `rdonly` gives a fresh O_RDONLY file description of it, as the
    server hands out (so the client never relies on having O_RDWR)."""
    fd = os.memfd_create(FAKE_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        if data:
            os.write(fd, data)
        if seals:
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        if not rdonly:
            return fd
        ro = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        os.close(fd)
        return ro
    except BaseException:
        os.close(fd)
        raise


class Msg:
    """A message the fake server sends: type, body, a function making the fds to attach (called in the server's thread
    when it sends; the server closes them after sending), and the id (None: the request's)."""

    def __init__(self, type_, body, fds=None, id_=None, raw=None):
        self.type = type_
        self.body = body
        self.fds = fds or (lambda: [])
        self.id = id_
        self.raw = raw  # bytes sent as the whole datagram, for malformed headers


class Push:
    """A script entry: messages sent without waiting for a request (then, with `hang_up`, the connection is closed
    and the next one accepted). `done` is set once they are sent."""

    def __init__(self, msgs, hang_up=False):
        self.msgs = msgs
        self.hang_up = hang_up
        self.done = threading.Event()


class FakeServer:
    """A SOCK_SEQPACKET listener in a thread. `script` has one entry per request it answers: a list of Msg (or a
    function of the request's id returning one), or a Push. It counts the requests and the fds that came with them."""

    def __init__(self, script, timeout=10):
        self.script = list(script)
        self.timeout = timeout
        self.requests = 0
        self.received_fds = 0
        self.error = None

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix="dmaload-fake-")
        self.path = os.path.join(self.dir, "s.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.sock.settimeout(self.timeout)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        conn = None
        try:
            conn, _ = self.sock.accept()
            conn.settimeout(self.timeout)
            for entry in self.script:
                if isinstance(entry, Push):
                    self._send(conn, 0, entry.msgs)
                    if entry.hang_up:
                        conn.close()
                        entry.done.set()
                        conn, _ = self.sock.accept()
                        conn.settimeout(self.timeout)
                    entry.done.set()
                    continue
                raw, fds, _, _ = socket.recv_fds(conn, 70000, 64, socket.MSG_CMSG_CLOEXEC)
                for fd in fds:
                    os.close(fd)
                if not raw:
                    return
                self.requests += 1
                self.received_fds += len(fds)
                rid = HEADER.unpack_from(raw)[3]
                self._send(conn, rid, entry(rid) if callable(entry) else entry)
            while True:  # until the client hangs up, so that nothing is cut short
                raw, fds, _, _ = socket.recv_fds(conn, 70000, 64, socket.MSG_CMSG_CLOEXEC)
                for fd in fds:
                    os.close(fd)
                if not raw and not fds:
                    return
                self.requests += 1
                self.received_fds += len(fds)
        except Exception as e:  # reported by __exit__
            self.error = e
        finally:
            if conn is not None:
                conn.close()

    @staticmethod
    def _send(conn, rid, msgs):
        for m in msgs:
            data = m.raw if m.raw is not None else frame(m.type, rid if m.id is None else m.id, m.body)
            out = m.fds()
            try:
                if out:
                    socket.send_fds(conn, [data], out)
                else:
                    conn.send(data)
            finally:
                for fd in out:
                    os.close(fd)

    def __exit__(self, *exc):
        self.thread.join(self.timeout + 5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.thread.is_alive():
            raise AssertionError("the fake server's thread did not finish")


def open_fds():
    """This process's open fds: number -> what it is."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own fd, closed by now
            pass
    return out


def random_tensor(generator, dtype, *shape):
    """A torch tensor of `dtype` and `shape` whose bytes are seeded random (every bit pattern, NaNs included): the
    same bytes for the same generator state, whatever the dtype."""
    n = 1
    for d in shape:
        n *= d
    item = torch.empty((), dtype=dtype).element_size()
    raw = torch.randint(0, 256, (n * item,), dtype=torch.uint8, generator=generator)
    return raw.view(dtype).reshape(shape).clone()


def proc_bytes(field, path="/proc/self/status"):
    """A "Field:  N kB" line of a /proc file, in bytes: RssAnon (private memory) and RssShmem (mapped memfd pages) of
    /proc/self/status, Rss of /proc/self/smaps_rollup (everything resident, shared file pages included)."""
    with open(path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in {path}")


def smaps_of(addr, field):
    """(start, bytes of `field`) of the mapping holding `addr`, from /proc/self/smaps: the kernel's word on it."""
    start, value = None, 0
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if "-" in head and not head.endswith(":"):
                if start is not None:
                    break
                lo, hi = (int(x, 16) for x in head.split("-"))
                if lo <= addr < hi:
                    start = lo
            elif start is not None and line.startswith(field + ":"):
                value = int(line.split()[1]) * 1024
    return start, value


def huge_folios_missing():
    """Why this kernel makes no huge shmem folios for the server by MADV_COLLAPSE (None when it does)."""
    major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    if (major, minor) < (6, 1):
        return f"Linux {os.uname().release} has no MADV_COLLAPSE (6.1)"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled") as f:
            return "shmem_enabled is deny" if "[deny]" in f.read() else None
    except OSError:
        return "this kernel has no transparent huge pages"


def memfd_mappings():
    """How many of this process's mappings are of memfds (the served buffers)."""
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "/memfd:" in line)


def fake_mappings():
    """Lines of /proc/self/maps that map a fake server's memfd."""
    with open("/proc/self/maps") as f:
        return [line.strip() for line in f if FAKE_NAME in line]


class LeakCheck:
    """`with LeakCheck(test):` fails the test when the block leaves an fd open or a fake memfd mapped."""

    def __init__(self, test):
        self.test = test

    def __enter__(self):
        self.before = open_fds()
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            return False
        import gc

        gc.collect()
        after = open_fds()
        leaked = {fd: what for fd, what in after.items() if self.before.get(fd) != what}
        self.test.assertEqual(leaked, {}, "fds left open")
        self.test.assertEqual(fake_mappings(), [], "memfds left mapped")
        return False


def optional(name):
    """The module, or None when it is not installed (numpy, torch and safetensors are optional)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


np = optional("numpy")
torch = optional("torch")
st_numpy = optional("safetensors.numpy") if np else None
st_torch = optional("safetensors.torch") if torch else None
WHERE = "set DMALOAD_PYTHON to an interpreter that has it (pip install numpy torch safetensors)"
needs_numpy = unittest.skipUnless(np is not None and st_numpy is not None, f"numpy and safetensors are not both installed: {WHERE}")
needs_torch = unittest.skipUnless(torch is not None and st_torch is not None, f"torch and safetensors are not both installed: {WHERE}")
