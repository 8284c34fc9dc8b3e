"""The connection to a `dmaload serve` server and the buffers it hands out (docs/protocol.md)."""
import fcntl
import hashlib
import json
import mmap
import os
import socket
import stat
import struct

from .errors import DmaloadError

MAGIC = b"DMLD"
VERSION = 1
HEADER = struct.Struct("<4sHHII")  # magic, version, type, id, body length
MAX_MESSAGE = 64 * 1024
MAX_FDS = 64

LOAD_REQUEST = 1
LOAD_REPLY = 2
STATUS_REQUEST = 3
STATUS_REPLY = 4
ERROR = 15

PAGE = mmap.PAGESIZE
SERVED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class Buffer:
    """A served file: one read-only shared mapping per part, in file order. Close it (or use `with`) when done."""

    def __init__(self, path, body, fds):
        self.path = path
        self.maps = []
        self.fds = list(fds)
        try:
            self.size = body["size"]
            self.target = body["target"]
            self.cached = bool(body.get("cached"))
            self.stats = body.get("stats", {})
            parts = body["parts"]
            if not isinstance(self.size, int) or self.size < 0 or len(parts) != len(fds) or not fds:
                raise DmaloadError("ERR_SHARE_REPLY", f"{len(fds)} fds for {len(parts)} parts")
            self.parts = []
            end = 0
            for part, fd in zip(parts, fds):
                offset, size = part["offset"], part["size"]
                if offset != end or offset % PAGE or size < 0:
                    raise DmaloadError("ERR_SHARE_REPLY", f"part at {offset} does not follow {end}")
                if os.fstat(fd).st_size < size:
                    raise DmaloadError("ERR_SHARE_REPLY", "a part's fd is shorter than the reply says")
                if self.target == "memfd" and fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SERVED_SEALS != SERVED_SEALS:
                    raise DmaloadError("ERR_SHARE_REPLY", "the memfd is not sealed against writes and resizing")
                m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) if size else None
                self.maps.append(m)
                self.parts.append((offset, size))
                end = offset + (size + PAGE - 1) // PAGE * PAGE
            if parts[-1]["offset"] + parts[-1]["size"] != self.size:
                raise DmaloadError("ERR_SHARE_REPLY", "parts do not add up to the size")
        except (KeyError, TypeError) as e:
            self.close()
            raise DmaloadError("ERR_SHARE_REPLY", f"malformed load reply: {e!r}") from None
        except BaseException:
            self.close()
            raise

    @property
    def fd(self):
        """The memfd (memfd target) or the first dma-buf fd."""
        return self.fds[0]

    def view(self):
        """A read-only memoryview of the whole buffer; only for single-part buffers (see chunks() otherwise)."""
        if len(self.maps) != 1:
            raise ValueError("a buffer of several dma-bufs has no single view; use chunks()")
        return memoryview(self.maps[0]) if self.maps[0] is not None else memoryview(b"")

    def chunks(self):
        """Read-only memoryviews of every part, in file order."""
        for m in self.maps:
            if m is not None:
                yield memoryview(m)

    def sha256(self):
        h = hashlib.sha256()
        for c in self.chunks():
            h.update(c)
            c.release()
        return h.hexdigest()

    def close(self):
        """Unmaps and closes the fds. Views taken from this buffer must be released first."""
        for m in self.maps:
            if m is not None:
                m.close()
        self.maps = []
        _close_all(self.fds)
        self.fds = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Client:
    """One connection to a `dmaload serve` server. Requests are answered in order; not thread-safe."""

    def __init__(self, path, timeout=None):
        self.path = path
        self._id = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except BaseException:
            self.sock.close()
            raise

    def _request(self, type_, body, fds=()):
        if self.sock is None:
            raise DmaloadError("ERR_SHARE_CLOSED", "the client was closed")
        self._id = self._id % 0xFFFFFFFF + 1
        data = json.dumps(body).encode()
        msg = HEADER.pack(MAGIC, VERSION, type_, self._id, len(data)) + data
        if fds:
            socket.send_fds(self.sock, [msg], list(fds))
        else:
            self.sock.send(msg)
        while True:
            raw, rfds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE + 1, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
            if not raw and not rfds:
                raise DmaloadError("ERR_SHARE_SERVER_GONE", f"the server at {self.path} closed the connection")
            try:
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) or len(raw) < HEADER.size:
                    raise ValueError("truncated message")
                magic, version, rtype, rid, length = HEADER.unpack_from(raw)
                if magic != MAGIC or version != VERSION or HEADER.size + length != len(raw):
                    raise ValueError("bad header")
                rbody = json.loads(raw[HEADER.size:].decode("utf-8"))
                if not isinstance(rbody, dict):
                    raise ValueError("body is not an object")
            except ValueError as e:
                _close_all(rfds)
                raise DmaloadError("ERR_SHARE_REPLY", f"malformed message from the server: {e}") from None
            if rid != self._id:  # not ours (this client waits for each reply, so this does not happen)
                _close_all(rfds)
                continue
            if rtype == ERROR:
                _close_all(rfds)
                raise DmaloadError(str(rbody.get("code")), str(rbody.get("message")), rbody.get("errno"), rbody.get("syscall"))
            return rtype, rbody, rfds

    def load(self, path):
        """The whole file at `path`, shared: a Buffer over the server's sealed buffer. The client opens the file itself."""
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # before open(): a FIFO would block it
            raise DmaloadError("EISDIR" if stat.S_ISDIR(st.st_mode) else "ERR_NOT_REGULAR_FILE", f"'{path}' is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            os.set_blocking(fd, True)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DmaloadError("ERR_NOT_REGULAR_FILE", f"'{path}' is not a regular file")
            rtype, body, fds = self._request(LOAD_REQUEST, {"path": os.path.abspath(path)}, [fd])
        finally:
            os.close(fd)
        if rtype != LOAD_REPLY:
            _close_all(fds)
            raise DmaloadError("ERR_SHARE_REPLY", f"answered a load with message type {rtype}")
        return Buffer(path, body, fds)

    def status(self):
        """The server's counters (a dict)."""
        rtype, body, fds = self._request(STATUS_REQUEST, {})
        _close_all(fds)
        if rtype != STATUS_REPLY:
            raise DmaloadError("ERR_SHARE_REPLY", f"answered a status request with message type {rtype}")
        return body

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
