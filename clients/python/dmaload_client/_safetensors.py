"""Client.load_safetensors(): the tensors of a served safetensors file as read-only, zero-copy views of this process's
mapping of the server's buffer, so that N processes loading one model hold one copy of it in memory.

The format: an 8-byte little-endian header length N, N bytes of a JSON object {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}, then the data; offsets count from the data's start (8 + N).
The header is parsed here from the mapped bytes and checked (offsets inside the file, no two tensors overlapping,
sizes matching shape and dtype) before any view is made, so a bad file fails with ERR_INVALID_MODEL rather than
with a view of the wrong bytes. numpy and torch are imported only when asked for.
"""
import json
import os
import warnings

from .errors import DmaloadError

MAX_HEADER = 100_000_000  # the safetensors library's own limit

# dtype -> (bytes per element, numpy dtype or None when numpy has none, torch dtype attribute)
DTYPES = {
    "BOOL": (1, "?", "bool"),
    "U8": (1, "u1", "uint8"),
    "I8": (1, "i1", "int8"),
    "I16": (2, "<i2", "int16"),
    "U16": (2, "<u2", "uint16"),
    "I32": (4, "<i4", "int32"),
    "U32": (4, "<u4", "uint32"),
    "I64": (8, "<i8", "int64"),
    "U64": (8, "<u8", "uint64"),
    "F16": (2, "<f2", "float16"),
    "BF16": (2, None, "bfloat16"),
    "F32": (4, "<f4", "float32"),
    "F64": (8, "<f8", "float64"),
    "C64": (8, "<c8", "complex64"),
    "F8_E4M3": (1, None, "float8_e4m3fn"),
    "F8_E5M2": (1, None, "float8_e5m2"),
    "F8_E4M3FNUZ": (1, None, "float8_e4m3fnuz"),
    "F8_E5M2FNUZ": (1, None, "float8_e5m2fnuz"),
    "F8_E8M0": (1, None, "float8_e8m0fnu"),
}
FRAMEWORKS = ("numpy", "torch", "bytes")


class TensorInfo:
    """One tensor of a header: absolute byte range [start, end) in the file."""

    __slots__ = ("name", "dtype", "shape", "start", "end")

    def __init__(self, name, dtype, shape, start, end):
        self.name, self.dtype, self.shape, self.start, self.end = name, dtype, shape, start, end

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n


def _invalid(path, what):
    return DmaloadError("ERR_INVALID_MODEL", f"'{path}' is not a valid safetensors file: {what}")


def _is_count(x):
    return type(x) is int and x >= 0


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"the key {k!r} appears twice")
        out[k] = v
    return out


def parse_header(view, path):
    """{name: TensorInfo} of the safetensors file whose bytes `view` holds, in header order; raises ERR_INVALID_MODEL."""
    size = len(view)
    if size < 8:
        raise _invalid(path, f"{size} bytes is shorter than the 8-byte header length")
    n = int.from_bytes(view[:8], "little")
    if n > size - 8 or n > MAX_HEADER:
        raise _invalid(path, f"its header length {n} runs past the file's {size} bytes" if n > size - 8 else f"its header of {n} bytes is over the limit of {MAX_HEADER}")
    try:
        header = json.loads(bytes(view[8 : 8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except Exception as e:  # RecursionError from deep nesting included
        raise _invalid(path, f"its header is not UTF-8 JSON ({e!r:.200})") from None
    if not isinstance(header, dict):
        raise _invalid(path, "its header is not a JSON object")
    data_start, data_len = 8 + n, size - 8 - n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor '{name}'"
        if not isinstance(info, dict):
            raise _invalid(path, f"{where} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise _invalid(path, f"{where} has no dtype")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _invalid(path, f"{where} has shape {shape!r:.100}, not a list of sizes")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise _invalid(path, f"{where} has data_offsets {offsets!r:.100}, not [begin, end]")
        begin, end = offsets
        if begin > end or end > data_len:
            raise _invalid(path, f"{where} has data_offsets [{begin}, {end}] outside the {data_len} bytes of data")
        t = TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)
        known = DTYPES.get(dtype)
        if known is not None and end - begin != t.numel * known[0]:
            raise _invalid(path, f"{where} has {end - begin} bytes, but shape {list(shape)} of {dtype} needs {t.numel * known[0]}")
        out[name] = t
    last = None
    for t in sorted(out.values(), key=lambda t: (t.start, t.end)):
        if last is not None and t.start < last.end:
            raise _invalid(path, f"tensors '{last.name}' and '{t.name}' overlap")
        if t.end > t.start:
            last = t
    return out


def _select(names, tensors, path):
    """The names `tensors` asks for, in order: None for all, a list of names, or a predicate of the name."""
    if tensors is None:
        return list(names)
    if callable(tensors):
        return [n for n in names if tensors(n)]
    if isinstance(tensors, (str, bytes)):
        raise DmaloadError("ERR_INVALID_ARG_TYPE", f"tensors= is a list of names or a predicate, not the string {tensors!r:.100}")
    wanted = list(dict.fromkeys(tensors))
    missing = [n for n in wanted if n not in names]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        examples = ", ".join(repr(n) for n in list(names)[:3])
        raise DmaloadError("ERR_TENSOR_NOT_FOUND", f"'{path}' has no tensor {shown} (it has {len(names)}, such as {examples})")
    return wanted


class _Maker:
    """Makes one framework's views; checks dtypes first, so that nothing is built for a load that must fail."""

    def __init__(self, framework, raw):
        if raw:
            framework = "bytes"
        if framework not in FRAMEWORKS:
            raise DmaloadError("ERR_INVALID_ARG_VALUE", f"framework must be one of {', '.join(FRAMEWORKS)}, not {framework!r:.100}")
        self.framework = framework
        if framework == "numpy":
            self.lib = _import("numpy", "numpy")
        elif framework == "torch":
            self.lib = _import("torch", "torch")

    def check(self, t, path):
        if self.framework == "bytes":
            return
        known = DTYPES.get(t.dtype)
        where = f"tensor '{t.name}' of '{path}'"
        if known is None:
            raise DmaloadError("ERR_UNSUPPORTED_DTYPE", f"{where} has dtype {t.dtype!r:.50}, which this client does not know; raw=True gives its bytes")
        if self.framework == "numpy" and known[1] is None:
            raise DmaloadError("ERR_UNSUPPORTED_DTYPE", f"{where} is {t.dtype}, which numpy has no dtype for: use framework=\"torch\", or raw=True for its bytes")
        if self.framework == "torch" and getattr(self.lib, known[2], None) is None:
            raise DmaloadError("ERR_UNSUPPORTED_DTYPE", f"{where} is {t.dtype}, which torch {self.lib.__version__} has no dtype for (torch.{known[2]}): use a newer torch, or raw=True for its bytes")

    def make(self, whole, t):
        if self.framework == "bytes":
            return whole[t.start : t.end]
        known = DTYPES[t.dtype]
        if self.framework == "numpy":
            np = self.lib
            return np.frombuffer(whole, dtype=np.dtype(known[1]), count=t.numel, offset=t.start).reshape(t.shape)
        torch = self.lib
        dtype = getattr(torch, known[2])
        if t.numel == 0:  # torch.frombuffer refuses a count of 0; there are no bytes to share anyway
            return torch.empty(t.shape, dtype=dtype)
        # Holds a reference to `whole` (a memoryview of the mapping), which keeps the mapping alive.
        return torch.frombuffer(whole, dtype=dtype, count=t.numel, offset=t.start).view(t.shape)


def _import(module, extra):
    try:
        return __import__(module)
    except ImportError as e:
        raise DmaloadError("ERR_FRAMEWORK_MISSING", f"{module} cannot be imported ({e}): pip install {module} (or dmaload-client[{extra}])") from e


def _load_file(client, path, maker, tensors, expect=None):
    """The selected tensors of one file, through the server."""
    buf = client.load(path)
    try:
        whole = buf.view()
        infos = parse_header(whole, path)
        if expect is not None:  # from an index: the shard must hold what the index says
            missing = [n for n in expect if n not in infos]
            if missing:
                raise _invalid(path, f"the index puts tensor '{missing[0]}' in it, but it has no such tensor")
            names = expect
        else:
            names = _select(infos, tensors, path)
        chosen = [infos[n] for n in names]
        for t in chosen:
            maker.check(t, path)
        with warnings.catch_warnings():
            # torch warns that it does not support non-writable tensors: these must not be written (documented).
            warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
            return {t.name: maker.make(whole, t) for t in chosen}
    finally:
        buf.close()  # the fds; the mapping stays while any view of it does


def _load_index(client, path, maker, tensors):
    try:
        with open(path, "rb") as f:
            index = json.loads(f.read().decode("utf-8"))
    except OSError:
        raise
    except Exception as e:
        raise _invalid(path, f"the index is not UTF-8 JSON ({e!r:.200})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise _invalid(path, 'the index has no "weight_map" of tensor name -> shard file')
    names = _select(weight_map, tensors, path)
    shards = {}
    for n in names:
        shards.setdefault(weight_map[n], []).append(n)
    base = os.path.dirname(path)
    out = {}
    for shard, wanted in shards.items():
        got = _load_file(client, os.path.join(base, shard), maker, None, expect=wanted)
        out.update(got)
    return {n: out[n] for n in names}


def load(client, path, framework="numpy", tensors=None, raw=False):
    """{name: read-only view} of the tensors of `path`, a .safetensors file or a *.safetensors.index.json whose shards
    are loaded (only those holding a selected tensor), each through `client`'s server.

    framework: "numpy" (arrays with writeable=False), "torch" (tensors that must not be written: torch has no
    read-only tensors, and a write faults) or "bytes" (memoryviews; also raw=True). tensors: None (all), a list of
    names (ERR_TENSOR_NOT_FOUND for one that is missing) or a predicate of the name. Every view shares the served
    pages: nothing is copied, and the mapping stays until the last view is gone.
    Errors: ERR_INVALID_MODEL, ERR_TENSOR_NOT_FOUND, ERR_UNSUPPORTED_DTYPE, ERR_FRAMEWORK_MISSING, and load()'s."""
    path = os.fspath(path)
    maker = _Maker(framework, raw)
    if path.endswith(".json"):
        return _load_index(client, path, maker, tensors)
    return _load_file(client, path, maker, tensors)
