"""Client.load_safetensors(): the tensors of a served safetensors file as read-only, zero-copy views of this process's
mapping of the server's buffer, so that N processes loading one model hold one copy of it in memory.

The format: an 8-byte little-endian header length N, N bytes of a JSON object {name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}, then the data; offsets count from the data's start (8 + N).
The header is parsed here and checked (offsets inside the file, no two tensors overlapping, sizes matching shape and
dtype, __metadata__ an object of strings): for a local file first through this process's own fd, before the server
is asked to load it (a file that is not safetensors costs the server nothing), then as the mapped bytes hold it
before any view is made (the same header, unless the file changed meanwhile), so a bad file fails with
ERR_INVALID_MODEL rather than with a view of the wrong bytes. numpy and torch are imported only when asked for.
"""
import json
import os
import warnings

from ._files import is_reference, open_regular
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
    # Packed: two 4-bit values a byte (SUBBYTE below); torch holds them as float4_e2m1fn_x2, the last dimension halved.
    "F4": (None, None, "float4_e2m1fn_x2"),
}
SUBBYTE = {"F4": 4}  # bits per element of the packed dtypes this client makes views of (F6_* stay raw-only)
FRAMEWORKS = ("numpy", "torch", "bytes")
ALIASES = {"np": "numpy", "pt": "torch"}  # safetensors' own names (safe_open(..., framework="pt"))


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


def dtype_bytes(dtype, numel):
    """The bytes `numel` elements of a known `dtype` take (None for an unknown dtype; a packed dtype's elements must
    fill whole bytes, else -1, which no byte count equals)."""
    bits = SUBBYTE.get(dtype)
    if bits is not None:
        return numel * bits // 8 if numel * bits % 8 == 0 else -1
    known = DTYPES.get(dtype)
    return None if known is None else numel * known[0]


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


def _header_length(head, size, path):
    """N, the header length the file's first 8 bytes `head` give, checked against the file's size and the limit."""
    if size < 8 or len(head) < 8:
        raise _invalid(path, f"{size} bytes is shorter than the 8-byte header length")
    n = int.from_bytes(head[:8], "little")
    if n > size - 8 or n > MAX_HEADER:
        raise _invalid(path, f"its header length {n} runs past the file's {size} bytes" if n > size - 8 else f"its header of {n} bytes is over the limit of {MAX_HEADER}")
    return n


def _check_metadata(metadata, path):
    """`__metadata__` as the safetensors library and Node take it: an object of strings."""
    if not isinstance(metadata, dict):
        raise _invalid(path, f"its __metadata__ is {metadata!r:.100}, not an object of strings")
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise _invalid(path, f"its __metadata__ value of {k!r:.100} is {v!r:.100}, not a string")
    return metadata


def _parse(raw, size, path):
    """({name: TensorInfo} in header order, __metadata__ or None when it has none) of the safetensors file of `size` bytes whose first
    8 + N bytes (length and header) are `raw`; raises ERR_INVALID_MODEL."""
    try:
        header = json.loads(bytes(raw[8:]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except Exception as e:  # RecursionError from deep nesting included
        raise _invalid(path, f"its header is not UTF-8 JSON ({e!r:.200})") from None
    if not isinstance(header, dict):
        raise _invalid(path, "its header is not a JSON object")
    data_start = len(raw)
    data_len = size - data_start
    out, metadata = {}, None
    for name, info in header.items():
        if name == "__metadata__":
            metadata = _check_metadata(info, path)
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
        need = dtype_bytes(dtype, t.numel)
        if need is not None and end - begin != need:
            needs = f"needs {need}" if need >= 0 else f"does not fill whole bytes ({SUBBYTE.get(dtype)} bits an element)"
            raise _invalid(path, f"{where} has {end - begin} bytes, but shape {list(shape)} of {dtype} {needs}")
        out[name] = t
    last = None
    for t in sorted(out.values(), key=lambda t: (t.start, t.end)):
        if last is not None and t.start < last.end:
            raise _invalid(path, f"tensors '{last.name}' and '{t.name}' overlap")
        if t.end > t.start:
            last = t
    return out, metadata


def parse_header(view, path, with_metadata=False):
    """{name: TensorInfo} of the safetensors file whose bytes `view` holds, in header order (and its __metadata__ with
    `with_metadata`: a dict, or None when the header has no __metadata__); raises ERR_INVALID_MODEL."""
    n = _header_length(view[:8], len(view), path)
    infos, metadata = _parse(view[: 8 + n], len(view), path)
    return (infos, metadata) if with_metadata else infos


def _read_head(fd, path):
    """(file size, its first 8 + N bytes: length and header) of the safetensors file open at `fd`, read with pread
    (never more than the header), checked as far as the size tells."""
    size = os.fstat(fd).st_size
    n = _header_length(os.pread(fd, 8, 0), size, path)
    raw, at = [], 0
    while at < 8 + n:
        chunk = os.pread(fd, min(8 + n - at, 1 << 24), at)
        if not chunk:
            raise _invalid(path, "it ended inside its header")
        raw.append(chunk)
        at += len(chunk)
    return size, b"".join(raw)


class _Local:
    """A local safetensors file open read-only, its header read and checked through this process's own fd, so that a
    file that is not safetensors is refused before the server is asked to load (and cache) all of it. The load then
    sends this fd: the very inode whose header was checked."""

    def __init__(self, path):
        self.path = path
        self.fd = open_regular(path)
        try:
            self.size, self.raw = _read_head(self.fd, path)
            self.infos, self.metadata = _parse(self.raw, self.size, path)
        except BaseException:
            self.close()
            raise

    def infos_of(self, whole):
        """The header of the served bytes `whole`: the one checked before, unless the file changed meanwhile."""
        if len(whole) == self.size and whole[: len(self.raw)] == self.raw:
            return self.infos
        return parse_header(whole, self.path)

    def close(self):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


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
        if isinstance(framework, str):
            framework = ALIASES.get(framework, framework)
        if framework not in FRAMEWORKS:
            raise DmaloadError("ERR_INVALID_ARG_VALUE", f'framework must be "numpy" (or "np"), "torch" (or "pt") or "bytes", not {framework!r:.100}')
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
        if t.dtype in SUBBYTE and (not t.shape or t.shape[-1] % 2):
            raise DmaloadError("ERR_UNSUPPORTED_DTYPE", f"{where} is {t.dtype} of shape {list(t.shape)}: torch.{known[2]} packs two values a byte along the last dimension, which must be even; raw=True gives its bytes")

    def make(self, whole, t):
        if self.framework == "bytes":
            return whole[t.start : t.end]
        known = DTYPES[t.dtype]
        if self.framework == "numpy":
            np = self.lib
            return np.frombuffer(whole, dtype=np.dtype(known[1]), count=t.numel, offset=t.start).reshape(t.shape)
        torch = self.lib
        dtype = getattr(torch, known[2])
        shape, count = t.shape, t.numel
        if t.dtype in SUBBYTE:  # two values a byte: torch's shape has the last dimension halved (as safetensors gives it)
            shape, count = shape[:-1] + (shape[-1] // 2,), count // 2
        if count == 0:  # torch.frombuffer refuses a count of 0; there are no bytes to share anyway
            return torch.empty(shape, dtype=dtype)
        # Holds a reference to `whole` (a memoryview of the mapping), which keeps the mapping alive.
        return torch.frombuffer(whole, dtype=dtype, count=count, offset=t.start).view(shape)


def _import(module, extra):
    try:
        return __import__(module)
    except ImportError as e:
        raise DmaloadError("ERR_FRAMEWORK_MISSING", f"{module} cannot be imported ({e}): pip install {module} (or dmaload-client[{extra}])") from e


def _chosen(infos, path, maker, tensors, expect):
    """The TensorInfos of `infos` to make views of (`expect`: the names an index puts in this shard), dtypes checked."""
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
    return chosen


def _load_file(client, path, maker, tensors, expect=None, populate=True, local=None):
    """The selected tensors of one file, through the server. `local`: the file open, its header checked (a local file
    is opened and checked here when not given); a reference's header can only be read once the server has it."""
    if local is None and not is_reference(path):
        local = _Local(path)
        try:
            return _load_file(client, path, maker, tensors, expect, populate, local)
        finally:
            local.close()
    if local is not None:
        _chosen(local.infos, path, maker, tensors, expect)  # refused before the server is asked for it
        buf = client._load_fd(local.fd, path)
    else:
        buf = client.load(path)
    try:
        whole = buf.view()
        chosen = _chosen(local.infos_of(whole) if local is not None else parse_header(whole, path), path, maker, tensors, expect)
        out = _make_all(maker, whole, chosen)
        if populate:
            buf.populate([(t.start, t.end) for t in chosen])
        return out
    finally:
        buf.close()  # the fds; the mapping stays while any view of it does


def _make_all(maker, whole, infos):
    with warnings.catch_warnings():
        # torch warns that it does not support non-writable tensors: these must not be written (documented).
        warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
        return {t.name: maker.make(whole, t) for t in infos}


def _index_bytes(path, client=None):
    """An index's bytes: read here, or for a reference through the server (which fetches it)."""
    if client is not None and is_reference(path):
        buf = client.load(path)
        try:
            return bytes(buf.view())
        finally:
            buf.close()
    with open(path, "rb") as f:
        return f.read()


def _beside(path, shard):
    """A shard's path or reference beside its index (shard names are checked by _read_index first)."""
    if is_reference(path):
        return path.rsplit("/", 1)[0] + "/" + shard
    return os.path.join(os.path.dirname(path), shard)


def _read_index(path, client=None, with_metadata=False):
    """The weight_map {tensor name: shard file name} of a *.safetensors.index.json, shard names checked to stay in the
    index's folder (as Node's inspect() checks them); with `with_metadata`, also the index's own "metadata" ({} when
    it has none)."""
    data = _index_bytes(path, client)
    try:
        index = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except Exception as e:
        raise _invalid(path, f"the index is not UTF-8 JSON ({e!r:.200})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) and v for v in weight_map.values()):
        raise _invalid(path, 'the index has no "weight_map" of tensor name -> shard file')
    for name, shard in weight_map.items():
        rel = os.path.normpath(shard)
        if os.path.isabs(shard) or rel in (".", "..") or rel.startswith(".." + os.sep) or ".." in shard.split("/") or "\\" in shard:
            raise _invalid(path, f"the index maps {name!r:.100} to {shard!r:.200}, not a file beside the index")
    metadata = index.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _invalid(path, f'the index\'s "metadata" is {metadata!r:.100}, not an object')
    return (weight_map, metadata) if with_metadata else weight_map


def _load_index(client, path, maker, tensors, populate=True):
    weight_map = _read_index(path, client)
    names = _select(weight_map, tensors, path)
    shards = {}
    for n in names:
        shards.setdefault(weight_map[n], []).append(n)
    if not is_reference(path):
        # Every shard's header checked before any shard is loaded (one fd open at a time: an index may have hundreds
        # of shards); _load_file() opens and checks each again for its load.
        for shard, wanted in shards.items():
            local = _Local(_beside(path, shard))
            try:
                _chosen(local.infos, local.path, maker, None, wanted)
            finally:
                local.close()
    out = {}
    for shard, wanted in shards.items():
        got = _load_file(client, _beside(path, shard), maker, None, expect=wanted, populate=populate)
        out.update(got)
    return {n: out[n] for n in names}


def metadata(client, path):
    """Client.safetensors_metadata()."""
    path = os.fspath(path)
    if path.endswith(".json"):
        return dict(_read_index(path, client, with_metadata=True)[1])
    if is_reference(path):  # only the server can read it: its header from the served bytes
        buf = client.load(path)
        try:
            return dict(parse_header(buf.view(), path, with_metadata=True)[1] or {})
        finally:
            buf.close()
    local = _Local(path)
    try:
        return dict(local.metadata or {})
    finally:
        local.close()


# --- per-rank loads: the server plans, the client makes views --------------------------------------------------------

SPLITS = ("tensors", "rows")


def rank_spec(rank, world_size, split):
    """(rank, world_size, split) checked as Node's rankSpec() checks them; None when none is given."""
    if rank is None and world_size is None and split is None:
        return None
    if rank is None or world_size is None:
        missing = "rank" if rank is None else "world_size"
        raise DmaloadError("ERR_INVALID_ARG_VALUE", f"{missing} is required when rank, world_size or split is given: pass both rank and world_size")
    for name, v in (("world_size", world_size), ("rank", rank)):
        if type(v) is not int:
            raise DmaloadError("ERR_INVALID_ARG_TYPE", f"{name} must be an int, not {v!r:.50}")
    if world_size < 1:
        raise DmaloadError("ERR_OUT_OF_RANGE", f"world_size must be >= 1, not {world_size}")
    if not 0 <= rank < world_size:
        raise DmaloadError("ERR_OUT_OF_RANGE", f"rank must be >= 0 and < world_size ({world_size}), not {rank}")
    if split is None:
        split = "tensors"
    if split not in SPLITS:
        raise DmaloadError("ERR_INVALID_ARG_VALUE", f"split must be 'tensors' or 'rows', not {split!r:.50}")
    return rank, world_size, split


def _header_names(fd, path):
    """The tensor names of the safetensors file open at `fd`, read from its header (for a selection by predicate, and
    to refuse an unknown name before asking the server)."""
    size, raw = _read_head(fd, path)
    return {k: None for k in _parse(raw, size, path)[0]}


class PlanTensor(TensorInfo):
    """One tensor of a rank's plan: this rank's bytes [start, end) of file number `file`, with its row slice."""

    __slots__ = ("file", "rows", "replicated")

    def as_dict(self, files):
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "file": files[self.file], "offset": self.start, "bytes": self.end - self.start}
        if self.rows is not None:
            d["rows"] = dict(self.rows, shape=list(self.rows["shape"]))
        if self.replicated:
            d["replicated"] = True
        return d


def _check_plan(plan, nfiles, split, selected, bad):
    """The plan's tensors as PlanTensors, after checking its form (each field's type, files in range, offsets, rows
    inside the whole tensor, no name twice, only names selected). What the files' headers say is checked later."""
    if plan.get("format") != "safetensors":
        raise bad(f"format {plan.get('format')!r:.50}, not 'safetensors'")
    entries = plan.get("tensors")
    if not isinstance(entries, list):
        raise bad("no list of tensors")
    out, seen = [], set()
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise bad(f"tensor {i} is not an object")
        name, dtype, shape, file, offset, nbytes = (e.get(k) for k in ("name", "dtype", "shape", "file", "offset", "bytes"))
        if not isinstance(name, str) or not isinstance(dtype, str):
            raise bad(f"tensor {i} has no name or dtype")
        where = f"tensor '{name:.200}'"
        if name in seen:
            raise bad(f"{where} appears twice")
        seen.add(name)
        if selected is not None and name not in selected:
            raise bad(f"{where} was not asked for")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise bad(f"{where} has shape {shape!r:.100}")
        if type(file) is not int or not 0 <= file < nfiles:
            raise bad(f"{where} is in file {file!r:.50} of {nfiles}")
        if not _is_count(offset) or not _is_count(nbytes):
            raise bad(f"{where} has offset {offset!r:.50} and bytes {nbytes!r:.50}")
        t = PlanTensor(name, dtype, tuple(shape), offset, offset + nbytes)
        t.file, t.rows, t.replicated = file, None, False
        need = dtype_bytes(dtype, t.numel)
        if need is not None and nbytes != need:
            raise bad(f"{where} has {nbytes} bytes for shape {shape} of {dtype}")
        rows, replicated = e.get("rows"), e.get("replicated", False)
        if replicated not in (True, False):
            raise bad(f"{where} has replicated {replicated!r:.50}")
        if rows is not None:
            if split != "rows" or replicated:
                raise bad(f"{where} is a row slice in a plan split by {split}" if split != "rows" else f"{where} is both a row slice and replicated")
            if not isinstance(rows, dict) or rows.get("dim") != 0 or type(rows.get("dim")) is not int:
                raise bad(f"{where} has rows {rows!r:.100}, not a slice of dimension 0")
            start, end, whole, roff, rbytes = (rows.get(k) for k in ("start", "end", "shape", "offset", "bytes"))
            if not all(_is_count(x) for x in (start, end, roff, rbytes)) or not isinstance(whole, list) or len(whole) != 2 or not all(_is_count(d) for d in whole):
                raise bad(f"{where} has rows {rows!r:.200}")
            if not start <= end <= whole[0] or whole[0] == 0 or rbytes % whole[0]:
                raise bad(f"{where} has rows {start}..{end} of {whole[0]} rows of {rbytes} bytes")
            row = rbytes // whole[0]
            if list(shape) != [end - start, whole[1]] or offset != roff + start * row or nbytes != (end - start) * row:
                raise bad(f"{where}: shape {shape}, offset {offset} and {nbytes} bytes are not rows {start}..{end} of {whole} at {roff}")
            t.rows = {"dim": 0, "start": start, "end": end, "shape": tuple(whole), "offset": roff, "bytes": rbytes}
        elif split == "rows" and not replicated:
            raise bad(f"{where} is neither a row slice nor replicated")
        elif split != "rows" and replicated:
            raise bad(f"{where} is replicated in a plan split by {split}")
        t.replicated = bool(replicated)
        out.append(t)
    if split == "rows" and selected is not None and len(out) != len(selected):
        missing = next(n for n in selected if n not in seen)
        raise bad(f"it leaves out tensor '{missing:.200}' (split 'rows' gives every rank every tensor)")
    return out


def _check_against_header(tensors, infos, bad):
    """Each planned tensor is the header's tensor of that name, whole or a row slice of it, in the file's bytes."""
    for t in tensors:
        h = infos.get(t.name)
        where = f"tensor '{t.name:.200}'"
        if h is None:
            raise bad(f"the file has no {where}")
        if h.dtype != t.dtype:
            raise bad(f"{where} is {h.dtype} in the file, {t.dtype} in the plan")
        whole = (h.shape, h.start, h.end - h.start)
        if t.rows is not None:
            if (t.rows["shape"], t.rows["offset"], t.rows["bytes"]) != whole:
                raise bad(f"{where} is {list(h.shape)} at {h.start} in the file, {list(t.rows['shape'])} at {t.rows['offset']} in the plan")
        elif (t.shape, t.start, t.end - t.start) != whole:
            raise bad(f"{where} is {list(h.shape)} at {h.start} ({h.end - h.start} bytes) in the file, {list(t.shape)} at {t.start} ({t.end - t.start} bytes) in the plan")


class _Files:
    """The files of a plan request, open read-only: one .safetensors file, or an index's shards."""

    def __init__(self, path, tensors, client=None):
        self.path, self.paths, self.names, self.fds = path, [], [], []
        self.selected = None  # the selected names (None: all)
        # References: the server fetches the files (and plans from its own copies); no fd is sent.
        self.refs = client is not None and is_reference(path)
        try:
            if path.endswith(".json"):
                weight_map = _read_index(path, client if self.refs else None)
                if tensors is not None:
                    self.selected = _select(weight_map, tensors, path)
                    if len(set(self.selected)) == len(weight_map):
                        self.selected = None
                chosen = None if self.selected is None else set(self.selected)
                # Node's order (inspect()): shards by first mention in the weight_map, which a split by tensors
                # follows; only those holding a selected tensor.
                shards = list(dict.fromkeys(v for n, v in weight_map.items() if chosen is None or n in chosen))
                base = os.path.dirname(path)
                for shard in shards:
                    if self.refs:
                        self._ref(_beside(path, shard))
                    else:
                        self._open(os.path.join(base, shard), shard)
            else:
                if self.refs:
                    self._ref(path)
                else:
                    self._open(path, os.path.abspath(path))
                if tensors is not None:
                    names = self._ref_names(client, path) if self.refs else _header_names(self.fds[0], path)
                    self.selected = _select(names, tensors, path)
                    if len(set(self.selected)) == len(names):
                        self.selected = None
        except BaseException:
            self.close()
            raise

    def _ref(self, ref):
        self.paths.append(ref)
        self.names.append(ref)

    @staticmethod
    def _ref_names(client, ref):
        """The tensor names of a referenced file, from its header in the server's buffer (fetched once for the load)."""
        buf = client.load(ref)
        try:
            return {k: None for k in parse_header(buf.view(), ref)}
        finally:
            buf.close()

    def _open(self, path, name):
        self.fds.append(open_regular(path))
        self.paths.append(path)
        self.names.append(name)

    def close(self):
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)


def _plan(client, files, spec):
    """The server's plan for `files` (open), as checked PlanTensors."""
    rank, world_size, split = spec
    body = {"path": files.path if files.refs else os.path.abspath(files.path), "files": files.names, "rank": rank, "worldSize": world_size, "split": split}
    if files.refs:
        body["refs"] = files.paths
    if files.selected is not None:
        body["tensors"] = list(dict.fromkeys(files.selected))
    try:
        plan = client._plan(body, files.fds)
    except DmaloadError as e:
        # The server's model codes (Node's) as this client's, so that a caller handles one code whatever the path.
        if e.code == "ERR_MODEL_TENSOR_NOT_FOUND":
            raise DmaloadError("ERR_TENSOR_NOT_FOUND", e.message) from e
        if e.code.startswith("ERR_MODEL_"):
            raise DmaloadError("ERR_INVALID_MODEL", f"{e.message} ({e.code})") from e
        raise

    def bad(what):
        return DmaloadError("ERR_SHARE_REPLY", f"the dmaload server at '{client.path}' sent a malformed plan for '{files.path}': {what}")

    return _check_plan(plan, len(files.paths), split, None if files.selected is None else set(files.selected), bad)


def plan(client, path, rank, world_size, split=None, tensors=None):
    """Client.plan_safetensors()."""
    path = os.fspath(path)
    spec = rank_spec(rank, world_size, split)
    if spec is None:
        raise DmaloadError("ERR_INVALID_ARG_VALUE", "rank and world_size are required")
    files = _Files(path, tensors, client)
    try:
        if files.selected == []:
            return []
        return [t.as_dict(files.paths) for t in _plan(client, files, spec)]
    finally:
        files.close()


def ranked_share(client, path, maker, tensors, spec, populate):
    """This rank's share, as the server plans it: [(TensorInfo, whole)] in plan order, `whole` the read-only view of the
    mapping of the file holding the tensor (each info's [start, end) is the rank's bytes in it; a tensor of no bytes
    has an empty view). The buffers' fds are closed; each mapping stays while a view of it does."""
    files = _Files(path, tensors, client)
    buffers = []
    try:
        if files.selected == []:
            return []
        planned = _plan(client, files, spec)
        for t in planned:
            maker.check(t, files.paths[t.file])
        by_file = {}
        for t in planned:
            by_file.setdefault(t.file, []).append(t)
        share = {}
        for i, group in by_file.items():
            fpath = files.paths[i]
            if all(t.end == t.start for t in group):  # nothing of this file's bytes is this rank's: no load
                share.update((t.name, (TensorInfo(t.name, t.dtype, t.shape, 0, 0), memoryview(b""))) for t in group)
                continue
            # The very inode the plan was made from: the fd sent with the plan request (a reference: its version now,
            # checked against the plan below).
            buf = client.load(fpath) if files.refs else client._load_fd(files.fds[i], fpath)
            buffers.append(buf)
            whole = buf.view()

            def bad(what, fpath=fpath):
                return DmaloadError("ERR_SHARE_REPLY", f"the dmaload server at '{client.path}' sent a plan that disagrees with '{fpath}' (or the file changed since): {what}")

            _check_against_header(group, parse_header(whole, fpath), bad)
            share.update((t.name, (t, whole)) for t in group)
            if populate:
                buf.populate([(t.start, t.end) for t in group])
        return [share[t.name] for t in planned]
    finally:
        for b in buffers:
            b.close()  # the fds; each mapping stays while any view of it does
        files.close()


def _load_ranked(client, path, maker, tensors, spec, populate):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
        return {t.name: maker.make(whole, t) for t, whole in ranked_share(client, path, maker, tensors, spec, populate)}


def load(client, path, framework="numpy", tensors=None, raw=False, rank=None, world_size=None, split=None, populate=True):
    """{name: read-only view} of the tensors of `path`, a .safetensors file or a *.safetensors.index.json whose shards
    are loaded (only those holding a selected tensor), each through `client`'s server.

    framework: "numpy" or "np" (arrays with writeable=False), "torch" or "pt" (tensors that must not be written: torch
    has no read-only tensors, and a write faults) or "bytes" (memoryviews; also raw=True). tensors: None (all), a list of
    names (ERR_TENSOR_NOT_FOUND for one that is missing) or a predicate of the name. Every view shares the served
    pages: nothing is copied, and the mapping stays until the last view is gone.
    rank, world_size, split: this rank's share, as the server plans it (PlanRequest); the client only makes views.
    populate: make the views' bytes resident now (madvise MADV_POPULATE_READ).
    Errors: ERR_INVALID_MODEL, ERR_TENSOR_NOT_FOUND, ERR_UNSUPPORTED_DTYPE, ERR_FRAMEWORK_MISSING, and load()'s."""
    path = os.fspath(path)
    maker = _Maker(framework, raw)
    spec = rank_spec(rank, world_size, split)
    if spec is not None:
        return _load_ranked(client, path, maker, tensors, spec, populate)
    if path.endswith(".json"):
        return _load_index(client, path, maker, tensors, populate)
    return _load_file(client, path, maker, tensors, populate=populate)
