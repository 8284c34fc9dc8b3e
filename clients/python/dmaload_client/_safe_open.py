"""safetensors' own API over `dmaload serve`: `safe_open(path, framework, device)` and `load_file(path, device)`, as
`safetensors.safe_open` and `safetensors.torch.load_file` have them, whose tensors are zero-copy, read-only views of
the one sealed copy the server holds for every process on the machine.

    from dmaload_client import load_file, safe_open

    state = load_file("model.safetensors")              # {name: torch.Tensor}; DMALOAD_SOCKET names the server
    with safe_open("org-model/", framework="pt") as f:  # a folder, an index or a reference: one object over all shards
        w = f.get_slice("lm_head.weight")[:, :128]

Built on Client.load() and the header checks of _safetensors.py: a local file's header is read and checked through
this process's own fd before the server is asked for it, and every view is checked against the header the served bytes
hold. Shards are loaded when a tensor of theirs is first asked for (keys() and get_slice().get_shape() of a local
file read only headers); with rank/world_size the server plans this rank's share and it is loaded at once.
"""
import os
import re
import warnings

from . import _safetensors as _st
from ._files import is_reference, redact
from .client import Client
from ._autostart import ensure_server
from .errors import DmaloadError

ENV_SOCKET = "DMALOAD_SOCKET"
FRAMEWORKS = {"pt": "torch", "torch": "torch", "np": "numpy", "numpy": "numpy"}


def _default_client(socket=None, server_uid=None):
    """(client, owned): the Client a safe_open() or load_file() loads through, and whether it is theirs to close.

    `socket` is a Client (used as it is, left open), a socket path, or None for the environment's DMALOAD_SOCKET;
    with neither, the user's own server at its per-user socket, started on demand (_autostart.py). A named socket
    nobody listens at: ERR_SHARE_NO_SERVER, saying how to start a server."""
    if isinstance(socket, Client):
        return socket, False
    named = "socket="
    if socket is None:
        socket, named = os.environ.get(ENV_SOCKET) or None, ENV_SOCKET
    if socket is None:
        return ensure_server(lambda path: Client(path, server_uid=server_uid)), True
    path = os.fspath(socket)
    try:
        return Client(path, server_uid=server_uid), True
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise DmaloadError(
            "ERR_SHARE_NO_SERVER",
            f"no dmaload server listens at '{path}' (from {named}): {e.strerror}; start one with `dmaload serve --socket {path}`",
        ) from e


# --- which file: a folder's model, as Node's loadModel() finds it (src/api/locate.ts pickModel) ----------------------

_GGUF_LATER_SPLIT = re.compile(r"-(\d{5})-of-\d{5}\.gguf$")


def _pick_model(names, where):
    """The model among a folder's file names: model.safetensors, else the one *.safetensors.index.json (or .gguf),
    else the one *.safetensors; ERR_MODEL_AMBIGUOUS or ERR_MODEL_NOT_FOUND naming what is there otherwise."""

    def candidate(f):
        if f == "model.safetensors" or f.endswith(".safetensors.index.json"):
            return True
        m = _GGUF_LATER_SPLIT.search(f)
        return f.endswith(".gguf") and (m is None or m.group(1) == "00001")

    candidates = sorted(f for f in names if candidate(f))
    # An index beside model.safetensors describes it: the single file wins (transformers' order).
    if "model.safetensors" in candidates and all(c in ("model.safetensors", "model.safetensors.index.json") for c in candidates):
        return "model.safetensors"
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        st = sorted(f for f in names if f.endswith(".safetensors"))
        if len(st) == 1:
            return st[0]
        more = f" (and {len(st)} .safetensors files: name one, or add their index)" if len(st) > 1 else ""
        raise DmaloadError("ERR_MODEL_NOT_FOUND", f"'{where}' holds no model: no model.safetensors, *.safetensors.index.json or .gguf{more}")
    raise DmaloadError(
        "ERR_MODEL_AMBIGUOUS",
        f"'{where}' holds more than one model ({', '.join(candidates)}): name the one to load, e.g. '{os.path.join(where, candidates[0])}'",
    )


def locate(path):
    """The safetensors file or index `path` names: itself, or the model of a folder. A reference must name a file:
    this process asks the network nothing, and the server fetches files, it does not list repositories."""
    if is_reference(path):
        bare = path.split("?", 1)[0].split("#", 1)[0]
        last = bare.rstrip("/").rsplit("/", 1)[-1]
        repo = path.startswith("hf://") and "." not in last
        if bare.endswith("/") or repo or re.match(r"^s3://[^/]+/?$", bare, re.I):
            raise DmaloadError(
                "ERR_INVALID_ARG_VALUE",
                f"'{redact(path)}' names a repository or a prefix, not a file: name the model's file in it, e.g. "
                f"'{redact(bare.rstrip('/'))}/model.safetensors' or '…/model.safetensors.index.json' (the server fetches files; it does not list them)",
            )
        return path
    if os.path.isdir(path):
        with os.scandir(path) as it:
            names = [e.name for e in it if e.is_file(follow_symlinks=False) or e.is_symlink()]
        picked = os.path.join(path, _pick_model(names, path))
        if picked.endswith(".gguf"):
            raise DmaloadError("ERR_MODEL_FORMAT", f"the model in '{path}' is '{picked}', a GGUF file: safe_open() and load_file() read safetensors")
        return picked
    return path


# --- framework and device -------------------------------------------------------------------------------------------


def _maker(framework):
    name = FRAMEWORKS.get(framework) if isinstance(framework, str) else None
    if name is None:
        raise DmaloadError("ERR_INVALID_ARG_VALUE", f'framework must be "pt" (or "torch") or "np" (or "numpy"), not {framework!r:.100}')
    return _st._Maker(name, False)


def _device(device, maker):
    """None for the CPU (zero-copy views), else the torch.device the tensors are copied to."""
    if maker.framework == "numpy":
        if device not in ("cpu", None):
            raise DmaloadError("ERR_INVALID_ARG_VALUE", f'numpy arrays live on the CPU: device must be "cpu", not {device!r:.100}')
        return None
    torch = maker.lib
    try:
        d = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise DmaloadError("ERR_INVALID_ARG_VALUE", f"device {device!r:.100} is not a torch device: {e}") from None
    return None if d.type == "cpu" else d


def _make(maker, whole, info):
    with warnings.catch_warnings():
        # torch warns that it does not support non-writable tensors: these must not be written (documented).
        warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
        return maker.make(whole, info)


# --- one file of the model -----------------------------------------------------------------------------------------


class _Shard:
    """One safetensors file: its header (read through this process's own fd for a local file) and, once a tensor of it
    is asked for, the read-only view of the server's buffer of it. `expect`: the names an index puts in it."""

    def __init__(self, path, expect=None):
        self.path, self.expect = path, expect
        self.infos = None  # {name: TensorInfo}
        self.metadata = None
        self.whole = None

    def header(self, client):
        if self.infos is None:
            if is_reference(self.path):  # only the server can read it
                self.map(client)
            else:
                local = _st._Local(self.path)
                local.close()
                self._adopt(local.infos, local.metadata)
        return self.infos

    def _adopt(self, infos, metadata):
        if self.expect is not None:
            missing = next((n for n in self.expect if n not in infos), None)
            if missing is not None:
                raise _st._invalid(self.path, f"the index puts tensor '{missing}' in it, but it has no such tensor")
        self.infos, self.metadata = infos, metadata

    def map(self, client, populate=False):
        """Loads the file through the server (once) and keeps the view of its buffer; the fds are closed at once."""
        if self.whole is not None:
            return self.whole
        if is_reference(self.path):
            buf = client.load(self.path)
            local = None
        else:
            # Opened and checked again: the fd the load sends is the very inode whose header is checked.
            local = _st._Local(self.path)
            try:
                self._adopt(local.infos, local.metadata)
                buf = client._load_fd(local.fd, self.path)
            finally:
                local.close()
        try:
            whole = buf.view()
            if local is not None and local.infos_of(whole) is local.infos:
                infos, metadata = local.infos, local.metadata
            else:  # a reference, or a file that changed since its header was read: the served bytes' header
                infos, metadata = _st.parse_header(whole, self.path, with_metadata=True)
            self._adopt(infos, metadata)
            if populate:
                buf.populate([(t.start, t.end) for t in infos.values()])
        finally:
            buf.close()  # the fds; the mapping stays while `whole` or any view of it does
        self.whole = whole
        return whole

    def close(self):
        self.whole = None


class _SharedSlice:
    """What get_slice() returns, as safetensors' PySafeSlice: get_shape(), get_dtype(), and `[...]` indexing (ints,
    slices with steps, `...`, None; what torch or numpy indexing takes) giving the tensor's part. The part is a view of
    the served buffer (no copy; not contiguous when the index skips), as safetensors' own slices are views."""

    def __init__(self, owner, name, dtype, shape):
        self._owner, self._name, self._dtype, self._shape = owner, name, dtype, shape

    def get_shape(self):
        """The tensor's shape, as the header has it (an F4 tensor's in 4-bit values)."""
        return list(self._shape)

    def get_dtype(self):
        """The tensor's safetensors dtype ("F32", "BF16", ...)."""
        return self._dtype

    def __getitem__(self, index):
        return self._owner._to_device(self._owner._cpu(self._name)[index])

    def __repr__(self):
        return f"<dmaload_client slice of {self._name!r}: {self._dtype} {self._shape}>"


class safe_open:
    """safetensors' `safe_open(filename, framework, device="cpu")` over a `dmaload serve` server: the tensors are
    read-only, zero-copy views of the server's one sealed copy of the file.

    filename: a .safetensors file, a *.safetensors.index.json (all its shards as one file), a model folder (its
    model.safetensors, else its one *.safetensors.index.json, else its one *.safetensors), or a reference the server
    fetches (hf://ORG/NAME[@REV]/FILE, https://..., s3://BUCKET/KEY; naming a file or an index).
    framework: "pt" or "torch" (torch tensors; they must not be written: torch has no read-only tensors), "np" or
    "numpy" (arrays with writeable=False). device: "cpu" (the default) gives the views; any other torch device gives
    copies there (tensor.to(device, non_blocking=True)).
    socket: the server's socket path, or a Client to use (left open); default: the environment's DMALOAD_SOCKET.
    rank, world_size, split: this process's share of the model, as Client.load_safetensors() gives it (loaded at
    open). populate: make each loaded file's tensors resident at once (Client.load_safetensors()'s populate).
    backend: accepted for safetensors' signature, and ignored (the server's copy is always mapped).

    Use it with `with`, or close() it: that drops this object's mappings and its connection; the tensors already
    returned stay valid (each mapping lives as long as a view of it). Not thread-safe (one per thread)."""

    def __init__(self, filename, framework="pt", device="cpu", *, socket=None, server_uid=None, rank=None, world_size=None, split=None, populate=False, backend=None):
        self._client = None
        self._owned = False
        self._closed = True
        self._maker = _maker(framework)
        self._device = _device(device, self._maker)
        spec = _st.rank_spec(rank, world_size, split)
        self._populate = bool(populate)
        path = os.fspath(filename)
        self.path = locate(path)
        self._client, self._owned = _default_client(socket, server_uid)
        self._closed = False
        self._share = None  # rank mode: {name: (TensorInfo, whole)}
        self._shards = []  # otherwise: the files, in the order an index first names them
        self._where = {}  # tensor name -> its _Shard
        self._index_names = None  # an index's tensor names
        try:
            if spec is not None:
                share = _st.ranked_share(self._client, self.path, self._maker, None, spec, self._populate)
                self._share = {t.name: (t, whole) for t, whole in share}
            elif self.path.endswith(".json"):
                weight_map = _st._read_index(self.path, self._client)
                by_shard = {}
                for name, shard in weight_map.items():
                    by_shard.setdefault(shard, []).append(name)
                for shard, names in by_shard.items():
                    s = _Shard(_st._beside(self.path, shard), names)
                    self._shards.append(s)
                    self._where.update((n, s) for n in names)
                self._index_names = list(weight_map)
            else:
                s = _Shard(self.path)
                self._shards.append(s)
                if is_reference(self.path):
                    s.map(self._client, self._populate)
                else:
                    s.header(self._client)  # a file that is not safetensors fails here, as safetensors' safe_open does
                self._where = {n: s for n in s.infos}
        except BaseException:
            self.close()
            raise

    # --- safetensors' methods ---

    def keys(self):
        """The tensors' names, sorted (as safetensors gives them); of an index, every shard's."""
        self._open()
        if self._share is not None:
            return sorted(self._share)
        if self._index_names is not None:
            return sorted(self._index_names)
        return sorted(self._where)

    def offset_keys(self):
        """The tensors' names in file order (by offset; of an index, shard after shard in the order it names them)."""
        self._open()
        if self._share is not None:
            return list(self._share)
        out = []
        for s in self._shards:
            infos = s.header(self._client)
            names = infos if s.expect is None else s.expect
            out.extend(sorted(names, key=lambda n: (infos[n].start, infos[n].end)))
        return out

    def metadata(self):
        """The header's `__metadata__` (a dict of strings), or None when it has none, as safetensors gives it. Of an
        index, its first shard's (Client.safetensors_metadata() gives the index's own "metadata")."""
        self._open()
        if self._share is not None:
            first = _first_file(self.path, self._client)
            return _file_metadata(self._client, first)
        if not self._shards:
            return None
        s = self._shards[0]
        s.header(self._client)
        return None if s.metadata is None else dict(s.metadata)

    def get_tensor(self, name):
        """The tensor `name`: a read-only view of the served buffer (device "cpu"), or its copy on the device."""
        return self._to_device(self._cpu(name))

    def get_slice(self, name):
        """A slice object of tensor `name` (get_shape(), get_dtype(), `[...]`), as safetensors' get_slice()."""
        info = self._info(name)
        return _SharedSlice(self, name, info.dtype, info.shape)

    def get_tensors(self):
        """{name: tensor} of every tensor, in file order, each file's tensors made resident at once (populate). Of an
        index, every shard's header is checked before any shard is loaded."""
        self._open()
        if self._share is None:
            for s in self._shards:  # headers first: a bad shard fails before anything is loaded
                if not is_reference(s.path):
                    for t in s.header(self._client).values():
                        if s.expect is None or t.name in s.expect:
                            self._maker.check(t, s.path)
            for s in self._shards:
                s.map(self._client, populate=True)
        return {n: self.get_tensor(n) for n in self.offset_keys()}

    def close(self):
        """Drops this object's views of the served buffers and closes its connection (a Client passed as `socket`
        stays open). Tensors already returned stay valid."""
        self._closed = True
        for s in self._shards:
            s.close()
        self._share = None
        client, self._client = self._client, None
        if client is not None and self._owned:
            client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<dmaload_client.safe_open {self.path!r}{' (closed)' if self._closed else ''}>"

    # --- the workings ---

    def _open(self):
        if self._closed:
            raise DmaloadError("ERR_FILE_CLOSED", f"this safe_open() of '{redact(self.path) if is_reference(self.path) else self.path}' was closed")

    def _info(self, name):
        self._open()
        if self._share is not None:
            got = self._share.get(name)
            if got is None:
                raise self._missing(name, self._share)
            return got[0]
        s = self._where.get(name)
        if s is None:
            raise self._missing(name, self._where)
        return s.header(self._client)[name]

    def _missing(self, name, names):
        examples = ", ".join(repr(n) for n in sorted(names)[:3])
        what = "this rank's share of " if self._share is not None else ""
        return DmaloadError("ERR_TENSOR_NOT_FOUND", f"{what}'{self.path}' has no tensor {name!r:.200} (it has {len(names)}, such as {examples})")

    def _cpu(self, name):
        """The zero-copy view of tensor `name` (a new tensor object each time, over the same bytes)."""
        info = self._info(name)
        if self._share is not None:
            whole = self._share[name][1]
            path = self.path
        else:
            s = self._where[name]
            whole = s.map(self._client, self._populate)
            info = s.infos.get(name)  # the served bytes' header (the same, unless the file changed meanwhile)
            path = s.path
            if info is None:
                raise DmaloadError("ERR_FILE_CHANGED", f"'{path}' changed since it was opened: it no longer has tensor {name!r:.200}")
        self._maker.check(info, path)
        return _make(self._maker, whole, info)

    def _to_device(self, t):
        if self._device is None:
            return t
        return t.to(self._device, non_blocking=True)


def _first_file(path, client):
    """The first file of a model (its only file, or the first shard its index names)."""
    if not path.endswith(".json"):
        return path
    weight_map = _st._read_index(path, client)
    return _st._beside(path, next(iter(weight_map.values()))) if weight_map else path


def _file_metadata(client, path):
    """The `__metadata__` of one safetensors file (None when it has none), read through this process's own fd, or for
    a reference from the server's buffer."""
    if path.endswith(".json"):
        return None
    if is_reference(path):
        buf = client.load(path)
        try:
            md = _st.parse_header(buf.view(), path, with_metadata=True)[1]
        finally:
            buf.close()
    else:
        local = _st._Local(path)
        local.close()
        md = local.metadata
    return None if md is None else dict(md)


def load_file(filename, device="cpu", *, framework="pt", socket=None, server_uid=None, rank=None, world_size=None, split=None, populate=True):
    """safetensors.torch.load_file() over a `dmaload serve` server: {name: tensor} of every tensor of `filename` (a
    file, an index, a model folder or a reference; see safe_open), in file order, as read-only zero-copy views of the
    server's buffers on device "cpu" (copies on any other device). framework="np" gives numpy arrays, as
    safetensors.numpy.load_file() does. populate (default True): the tensors' pages are made resident now, in one
    madvise per file. rank, world_size, split: this process's share, as Client.load_safetensors() gives it."""
    with safe_open(filename, framework, device, socket=socket, server_uid=server_uid, rank=rank, world_size=world_size, split=split, populate=populate) as f:
        return f.get_tensors()
