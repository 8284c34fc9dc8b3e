"""The connection to a `dmaload serve` server and the buffers it hands out (docs/protocol.md).

The server is trusted with what this process reads as the file's bytes, so the client checks who it is (SO_PEERCRED)
before sending anything, and treats every reply as untrusted input: any malformed reply becomes ERR_SHARE_REPLY with
every fd that came with it closed.
"""
import fcntl
import hashlib
import json
import os
import re
import select
import socket
import stat
import struct

from . import _mapping
from ._files import is_reference, open_regular, redact  # noqa: F401  (public here, as before)
from .errors import DmaloadError

MAGIC = b"DMLD"
VERSION = 1
HEADER = struct.Struct("<4sHHII")  # magic, version, type, id, body length
MAX_MESSAGE = 64 * 1024
MAX_FDS = 64
MAX_PLAN = 1 << 30  # bytes of plan JSON this client accepts (a plan is ~200 bytes a tensor)

LOAD_REQUEST = 1
LOAD_REPLY = 2
STATUS_REQUEST = 3
STATUS_REPLY = 4
LOAD_REPLY_MORE = 5  # the next up-to-64 fds of a LoadReply whose buffer has more parts than one message carries
PLAN_REQUEST = 6  # one rank's share of a safetensors model: the server computes it from the files' headers
PLAN_REPLY = 7  # {"bytes": n} and one sealed memfd holding the plan's n bytes of JSON
ERROR = 15

TARGETS = ("memfd", "udmabuf", "dma-heap")
PAGE = _mapping.PAGE
SERVED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_UCRED = struct.Struct("iII")  # struct ucred: pid_t pid; uid_t uid; gid_t gid


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _printable(s, limit=1000):
    """A string from the server, safe to print: control characters escaped, length bounded."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s[:limit])


def _error_fields(body):
    """(code, message) of an Error reply; a code that does not look like one becomes ERR_SHARE_REPLY."""
    code, message = body.get("code"), body.get("message")
    if not isinstance(code, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]{1,63}", code):
        code = "ERR_SHARE_REPLY"
    return code, _printable(message) if isinstance(message, str) else "request failed"


def _readable(sock):
    p = select.poll()
    p.register(sock, select.POLLIN)
    return bool(p.poll(0))


def _is_int(x):
    return type(x) is int  # not bool, not float


def _is_count(x):
    return _is_int(x) and x >= 0


class Buffer:
    """A served file, mapped read-only and shared (zero-copy): one contiguous view of all its parts, in file order.

    Close it (or use `with`) when done: that closes the fds at once; the mapping itself goes when the last view taken
    from it (view(), chunks(), arrays or tensors over them) is gone, so no view can outlive its memory."""

    def __init__(self, path, body, fds, socket_path=""):
        self.path = path
        self.fds = list(fds)
        self._owner = None
        self._view = None
        try:
            self._check(body, socket_path)
            self._map()
        except DmaloadError:
            self.close()
            raise
        except Exception as e:
            self.close()
            raise DmaloadError("ERR_SHARE_REPLY", f"the dmaload server at '{socket_path}' sent a malformed load reply: {e!r}") from e
        except BaseException:
            self.close()
            raise

    def _check(self, body, socket_path):
        """The reply's layout against its fds, as the Node client's checkLayout() and mapReceived() check it."""

        def bad(what):
            return DmaloadError("ERR_SHARE_REPLY", f"the dmaload server at '{socket_path}' sent a malformed load reply: {what}")

        if not isinstance(body, dict):
            raise bad("the body is not an object")
        size, target, parts = body.get("size"), body.get("target"), body.get("parts")
        if not _is_count(size):
            raise bad(f"size {size!r} is not a byte count")
        if not isinstance(target, str) or target not in TARGETS:
            raise bad(f"unknown target {target!r}")
        if not isinstance(parts, list) or len(parts) != len(self.fds) or not self.fds:
            raise bad(f"{len(self.fds)} fds for {len(parts) if isinstance(parts, list) else 'no'} parts")
        if target == "memfd" and len(self.fds) != 1:
            raise bad("a memfd reply must carry exactly one fd")
        cached, stats = body.get("cached", False), body.get("stats", {})
        if not isinstance(cached, bool) or not isinstance(stats, dict):
            raise bad("cached is not a boolean or stats not an object")
        layout = []
        end = 0
        for i, p in enumerate(parts):
            if not isinstance(p, dict) or not _is_count(p.get("offset")) or not _is_count(p.get("size")):
                raise bad(f"part {i} is not {{offset, size}}")
            if p["offset"] != end or p["offset"] % PAGE:
                raise bad(f"part {i} starts at {p['offset']}, not at {end} on a page boundary")
            layout.append((p["offset"], p["size"]))
            end = p["offset"] + _mapping.round_up(p["size"])
        if layout[-1][0] + layout[-1][1] != size:
            raise bad(f"parts cover {layout[-1][0] + layout[-1][1]} bytes, not {size}")
        for i, (fd, (_, psize)) in enumerate(zip(self.fds, layout)):
            st = os.fstat(fd)
            if st.st_size < psize:
                raise bad(f"part {i}'s fd has {st.st_size} bytes for {psize}")
            if target == "memfd" and fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SERVED_SEALS != SERVED_SEALS:
                raise bad("the memfd is not sealed against writes and resizing")
        self.size, self.target, self.cached, self.stats, self.parts = size, target, cached, stats, layout

    def _map(self):
        if self.size == 0:
            return
        try:
            if len(self.fds) == 1:
                self._owner, self._view = _mapping.map_single(self.fds[0], self.size)
            else:
                self._owner, self._view = _mapping.map_parts(self.fds, self.parts)
        except OSError as e:
            raise DmaloadError(_mapping.errno_name(e), f"cannot map '{self.path}' as served: {e}", -(e.errno or 0), "mmap") from e

    @property
    def fd(self):
        """The memfd (memfd target) or the first dma-buf fd."""
        return self.fds[0]

    def view(self):
        """A read-only memoryview of the whole buffer, all parts side by side. It keeps the mapping alive."""
        if self._view is None:
            if self.fds or self.size == 0:
                return memoryview(b"")
            raise DmaloadError("ERR_BUFFER_CLOSED", f"the buffer of '{self.path}' was closed")
        return self._view[:]

    def chunks(self):
        """Read-only memoryviews of every part's bytes, in file order."""
        whole = self.view()
        for offset, size in self.parts:
            if size:
                yield whole[offset : offset + size]

    def populate(self, ranges=None):
        """Makes the bytes of `ranges` ([start, end) offsets; None: the whole buffer) resident in this process's
        mapping in one madvise(MADV_POPULATE_READ) call per run of touching ranges, rather than a page fault per page
        when they are first read. Returns the bytes populated, or None where the kernel cannot (before Linux 5.14, or
        a mapping it refuses)."""
        if self._owner is None:
            if self.size == 0:
                return 0
            raise DmaloadError("ERR_BUFFER_CLOSED", f"the buffer of '{self.path}' was closed")
        if ranges is None:
            ranges = [(0, self.size)]
        try:
            return _mapping.populate(self._owner, ranges, self.size)
        except OSError as e:
            if self.target != "memfd":  # dma-buf mappings: populating is only an optimization
                return None
            raise DmaloadError(_mapping.errno_name(e), f"cannot make the pages of '{self.path}' resident: {e}", -(e.errno or 0), "madvise") from e

    def sha256(self):
        h = hashlib.sha256()
        for c in self.chunks():
            h.update(c)
            c.release()
        return h.hexdigest()

    def close(self):
        """Closes the fds; unmaps now, or when the last view still using the mapping is gone."""
        self._view = None
        owner, self._owner = self._owner, None
        if owner is not None:
            _mapping.close_owner(owner)
        _close_all(self.fds)
        self.fds = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Client:
    """One connection to a `dmaload serve` server. Requests are answered in order; not thread-safe.

    `server_uid`: a further user id allowed to run the server, besides root and this process's own. The bytes a
    server hands out are what this process takes for the file's, and it receives the fd of every file loaded, so a
    server run by another user is refused (ERR_SHARE_UNTRUSTED_SERVER) before anything is sent, unless named here.

    A connection the server closed for being idle (ERR_SHARE_IDLE) is opened again, and checked again, by the next
    request, as the Node client does."""

    def __init__(self, path, timeout=None, server_uid=None):
        if server_uid is not None and not _is_count(server_uid):
            raise TypeError(f"server_uid must be a user id (an int), not {server_uid!r}")
        self.path = path
        self.timeout = timeout
        self.trusted_uid = server_uid
        self._id = 0
        self.sock = None
        self._state = "closed"
        self._gone = ""
        self._connect()

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
            euid = os.geteuid()
            if uid not in (0, euid, self.trusted_uid):
                raise DmaloadError(
                    "ERR_SHARE_UNTRUSTED_SERVER",
                    f"the dmaload server at '{self.path}' runs as uid {uid} (pid {pid}), neither root nor this user (uid "
                    f"{euid}): it would receive the fds of the files this process loads and could hand back any bytes as "
                    f"theirs. Use a server run by root or by you (its socket in a folder only its owner can write, such as "
                    f"/run/dmaload/), or, if you trust that user, pass server_uid={uid} to Client() (--server-uid {uid} "
                    f"on the command line)",
                )
        except BaseException:
            sock.close()
            raise
        self.sock, self.server_pid, self.server_uid = sock, pid, uid
        self._state = "open"

    def _hang_up(self, state, why):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._state, self._gone = state, why

    def _unusable(self):
        if self._state == "closed":
            return DmaloadError("ERR_SHARE_CLOSED", f"this dmaload client ({self.path}) was closed")
        return DmaloadError("ERR_SHARE_SERVER_GONE", f"the dmaload server at '{self.path}' went away ({self._gone}); connect again once it runs")

    def _ready(self):
        """Before a request: reads what the server sent unasked (leftovers of a reply refused earlier, or its notice
        before hanging up) and connects again after an idle close."""
        while self._state == "open" and _readable(self.sock):
            try:
                self._read(None)
            except DmaloadError as e:
                if e.code != "ERR_SHARE_IDLE":
                    raise
        if self._state == "idle":
            self._connect()
        if self._state != "open":
            raise self._unusable()

    def _send(self, type_, body, fds=()):
        self._ready()
        self._id = self._id % 0xFFFFFFFF + 1
        data = json.dumps(body).encode()
        msg = HEADER.pack(MAGIC, VERSION, type_, self._id, len(data)) + data
        if fds:
            socket.send_fds(self.sock, [msg], list(fds))
        else:
            self.sock.send(msg)
        return self._id

    def _read(self, rid):
        """One message; (type, body, fds) when it answers request `rid` (the caller then owns the fds), else None
        (a message for another id: dropped with its fds). Raises an Error reply as DmaloadError."""
        raw, fds, flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE + 1, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        if not raw and not fds:
            self._hang_up("gone", "it closed the connection")
            raise self._unusable()
        try:
            try:
                if flags & socket.MSG_TRUNC or len(raw) < HEADER.size:
                    raise ValueError(f"a message of {len(raw)} bytes")
                magic, version, rtype, mid, length = HEADER.unpack_from(raw)
                if magic != MAGIC or version != VERSION or HEADER.size + length != len(raw):
                    raise ValueError("bad header")
                body = json.loads(raw[HEADER.size :].decode("utf-8"))
                if not isinstance(body, dict):
                    raise ValueError("the body is not a JSON object")
            except Exception as e:  # RecursionError from deep JSON included; KeyboardInterrupt is not swallowed
                # A server that breaks the protocol cannot be trusted with the rest of the conversation.
                self._hang_up("gone", f"it sent a malformed message: {e!r:.200}")
                raise DmaloadError("ERR_SHARE_REPLY", f"the dmaload server at '{self.path}' sent a malformed message: {e!r:.200}") from None
            if rtype == ERROR and mid == 0:  # about the connection itself: refused, or closed (idle, replies unread)
                code, message = _error_fields(body)
                self._hang_up("idle" if code == "ERR_SHARE_IDLE" else "gone", f"{code}: {message}")
                raise DmaloadError(code, f"the dmaload server at '{self.path}' closed the connection: {message}")
            if mid != rid:
                _close_all(fds)
                return None
            if flags & socket.MSG_CTRUNC:
                raise self._bad("more fds than a message may carry")
            if rtype == ERROR:
                code, message = _error_fields(body)
                errno_, syscall = body.get("errno"), body.get("syscall")
                raise DmaloadError(code, f"dmaload server at '{self.path}': {message}", errno_ if _is_int(errno_) else None, _printable(syscall) if isinstance(syscall, str) else None)
            return rtype, body, fds
        except BaseException:
            _close_all(fds)
            raise

    def _receive(self, rid):
        """The next message answering request `rid`: (type, body, fds); the caller owns the fds."""
        while True:
            if self._state != "open":
                raise self._unusable()
            got = self._read(rid)
            if got is not None:
                return got

    def _receive_load(self, rid):
        """A LoadReply and the LoadReplyMore messages that follow it: (body, all fds, in part order)."""
        fds = []
        try:
            rtype, body, got = self._receive(rid)
            fds.extend(got)
            if rtype != LOAD_REPLY:
                raise self._bad(f"answered a load with message type {rtype}")
            parts, more = body.get("parts"), body.get("more", 0)
            if not isinstance(parts, list) or not _is_count(more):
                raise self._bad("parts is not a list or more not a count")
            if more > len(parts) - len(fds):  # each further message carries at least one fd
                raise self._bad(f"{more} more messages for {len(parts) - len(fds)} more parts")
            for index in range(1, more + 1):
                rtype, mbody, got = self._receive(rid)
                fds.extend(got)
                if rtype != LOAD_REPLY_MORE or not _is_int(mbody.get("index")) or mbody["index"] != index:
                    raise self._bad(f"expected LoadReplyMore {index} of {more}, got type {rtype} {json.dumps(mbody)[:100]}")
                if not got or len(fds) > len(parts):
                    raise self._bad(f"LoadReplyMore {index} carries {len(got)} fds ({len(fds)} so far for {len(parts)} parts)")
            if len(fds) != len(parts):
                raise self._bad(f"{len(fds)} fds for {len(parts)} parts")
            return body, fds
        except BaseException:
            _close_all(fds)
            raise

    def _bad(self, what):
        return DmaloadError("ERR_SHARE_REPLY", f"the dmaload server at '{self.path}' sent a malformed reply: {what}")

    def load(self, path):
        """The whole file at `path`, shared: a Buffer over the server's sealed buffer. The client opens the file itself.

        `path` may also be a reference (hf://ORG/NAME[@REV]/FILE, https://..., s3://BUCKET/KEY): the server fetches it
        once for every client that asks, if its operator allowed it (dmaload serve --allow-source); otherwise
        DmaloadError ERR_SHARE_SOURCE_NOT_ALLOWED. Nothing is asked of the network from this process."""
        if is_reference(path):
            return self._load_reply(self._send(LOAD_REQUEST, {"ref": path}), redact(path))
        fd = open_regular(path)
        try:
            rid = self._send(LOAD_REQUEST, {"path": os.path.abspath(path)}, [fd])
        finally:
            os.close(fd)
        return self._load_reply(rid, path)

    def _load_fd(self, fd, path):
        """load() of a file this process has open (the very inode a plan was made from); the caller keeps `fd`."""
        return self._load_reply(self._send(LOAD_REQUEST, {"path": os.path.abspath(path)}, [fd]), path)

    def _load_reply(self, rid, path):
        body, fds = self._receive_load(rid)
        return Buffer(path, body, fds, self.path)

    def _plan(self, body, fds):
        """Sends a PlanRequest (`body`, one fd per file, which the caller keeps) and returns the plan the PlanReply's
        memfd holds, parsed (a dict; its contents are checked by the caller)."""
        data = json.dumps(body).encode()
        if HEADER.size + len(data) > MAX_MESSAGE:
            raise DmaloadError(
                "ERR_SHARE_MESSAGE_TOO_LARGE",
                f"the plan request for '{body.get('path')}' is {HEADER.size + len(data)} bytes, over the protocol's {MAX_MESSAGE}: "
                f"select fewer tensors by name (tensors=None selects all without naming them)",
            )
        if len(fds) > MAX_FDS:
            raise DmaloadError("ERR_SHARE_FDS", f"'{body.get('path')}' has {len(fds)} files, more than a plan request may carry ({MAX_FDS}): select tensors from fewer shards")
        rtype, reply, got = self._receive(self._send(PLAN_REQUEST, body, fds))
        try:
            if rtype != PLAN_REPLY:
                raise self._bad(f"answered a plan request with message type {rtype}")
            if len(got) != 1:
                raise self._bad(f"a plan reply with {len(got)} fds, not 1")
            n = reply.get("bytes")
            if not _is_count(n) or n > MAX_PLAN:
                raise self._bad(f"a plan of {n!r:.50} bytes")
            fd = got[0]
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < n:
                raise self._bad(f"the plan's fd holds {st.st_size} bytes, not {n}")
            if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & SERVED_SEALS != SERVED_SEALS:
                raise self._bad("the plan's memfd is not sealed against writes and resizing")
            chunks, at = [], 0
            while at < n:
                chunk = os.pread(fd, min(n - at, 1 << 24), at)
                if not chunk:
                    raise self._bad(f"the plan's memfd ended at {at} of {n} bytes")
                chunks.append(chunk)
                at += len(chunk)
            try:
                plan = json.loads(b"".join(chunks).decode("utf-8"))
            except Exception as e:  # RecursionError from deep JSON included
                raise self._bad(f"the plan is not UTF-8 JSON ({e!r:.200})") from None
            if not isinstance(plan, dict):
                raise self._bad("the plan is not a JSON object")
            return plan
        except OSError as e:
            raise self._bad(f"the plan's fd cannot be read ({e})") from None
        finally:
            _close_all(got)

    def load_safetensors(self, path, framework="numpy", tensors=None, raw=False, rank=None, world_size=None, split=None, populate=True):
        """{name: array} of the tensors of a .safetensors file, or of a *.safetensors.index.json (only the shards holding
        a selected tensor are loaded), as read-only, zero-copy views of the served buffers.

        framework: "numpy" or "np" (arrays with writeable=False), "torch" or "pt" (tensors that must not be written:
        torch has no read-only tensors; a write faults the process) or "bytes" (memoryviews, as raw=True gives).
        tensors: None for all, a list of names, or a predicate of the name. Nothing is copied: each file's mapping
        stays until the last view of it is gone. The file's __metadata__: safetensors_metadata().

        A local file's header is read and checked through this process's own fd before the server is asked to load
        it, so a file that is not safetensors (or asks for tensors or dtypes it cannot give) costs the server nothing;
        of an index, every shard needed is checked before any is loaded. A reference is checked once the server has it.

        rank, world_size, split: this process's share of the model, as the server plans it (Node's loadModel() with
        { rank, worldSize, split } gives the same tensors): split "tensors" (the default) gives each rank whole
        tensors, balanced by bytes; "rows" gives each rank rows [r*R//N, (r+1)*R//N) of every 2-D tensor (dimension 0)
        and every other tensor whole. The views are then of this rank's bytes only, in file order.

        populate: make the bytes of the returned views resident now, in one madvise(MADV_POPULATE_READ) per run of
        tensors (Linux 5.14+), rather than a page fault per page when they are first read.

        Raises DmaloadError ERR_INVALID_MODEL, ERR_TENSOR_NOT_FOUND, ERR_UNSUPPORTED_DTYPE (e.g. BF16 or F8 for numpy),
        ERR_FRAMEWORK_MISSING, ERR_OUT_OF_RANGE and ERR_INVALID_ARG_* (rank options), and load()'s codes."""
        from . import _safetensors

        return _safetensors.load(self, path, framework=framework, tensors=tensors, raw=raw, rank=rank, world_size=world_size, split=split, populate=populate)

    def safetensors_metadata(self, path):
        """The `__metadata__` of a .safetensors file's header (a dict of strings; {} when it has none), or the
        `"metadata"` object of a *.safetensors.index.json ({} when it has none), as Node's inspect() gives them.

        A local file's header is read through this process's own fd: nothing is asked of the server. A reference
        (hf://, https://, s3://) is loaded through the server, which fetches it (then cached there for a later load).
        Raises DmaloadError ERR_INVALID_MODEL for a file that is not safetensors, or whose metadata is not an object
        of strings."""
        from . import _safetensors

        return _safetensors.metadata(self, path)

    def load_gguf(self, path, framework="numpy", tensors=None, populate=True):
        """A GGUF file (a path, or a reference the server fetches) as a GGUF object: `metadata`, `tensors` {name: view},
        `types` {name: ggml type}, `shapes` {name: gguf's ne[] order}. The server reads the header; tensors of F32, F16,
        BF16 (torch only), F64 and the integer types are arrays of that dtype in numpy's order (gguf's ne[] reversed);
        quantized blocks are raw uint8 arrays, the row's bytes last, as gguf-py's GGUFReader gives them. framework:
        "numpy" (or "np"), "torch" (or "pt"), "bytes". tensors: None (all), names, or a predicate.

        Raises DmaloadError ERR_INVALID_MODEL (not a GGUF file), ERR_MODEL_* (a bad header, from the server),
        ERR_TENSOR_NOT_FOUND, ERR_FRAMEWORK_MISSING, and load()'s codes."""
        from . import _gguf

        return _gguf.load(self, path, framework=framework, tensors=tensors, populate=populate)

    def plan_safetensors(self, path, rank, world_size, split=None, tensors=None):
        """The server's plan of rank `rank`'s share (see load_safetensors), without loading anything: a list, in file
        order, of {"name", "dtype", "shape" (this rank's), "file" (its path), "offset" (in that file), "bytes", and
        "rows": {"dim", "start", "end", "shape" (the whole tensor's), "offset", "bytes"} for a row slice or
        "replicated": True for a tensor every rank holds whole (split "rows")}."""
        from . import _safetensors

        return _safetensors.plan(self, path, rank=rank, world_size=world_size, split=split, tensors=tensors)

    def status(self):
        """The server's counters (a dict)."""
        rtype, body, fds = self._receive(self._send(STATUS_REQUEST, {}))
        _close_all(fds)
        if rtype != STATUS_REPLY:
            raise DmaloadError("ERR_SHARE_REPLY", f"answered a status request with message type {rtype}")
        return body

    def close(self):
        """Closes the connection. Buffers and tensors already loaded stay valid."""
        self._hang_up("closed", "")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
