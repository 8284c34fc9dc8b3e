"""GGUF files through the server: Client.load_gguf(). The server parses the header (the library's own GGUF reader, in a
PlanRequest of one rank) and answers with the metadata and every tensor's type, shape and place; this client only
makes views of the served buffer, as it does for safetensors. Tensors of a type with a dtype (F32, F16, BF16, F64 and
the integer types) come as arrays of that dtype; quantized blocks (Q4_0 … Q8_K, IQ*, TQ*, MXFP4, …) as raw uint8 arrays
whose last dimension is the row's bytes, with the ggml type named in `types` — as gguf-py's GGUFReader gives them.
Shapes are numpy's order (gguf's ne[] reversed), as gguf-py's `tensor.data` has them."""

import os

from . import _safetensors as _st
from ._files import is_reference, open_regular
from .errors import DmaloadError

# ggml types whose elements are one of the client's dtypes (the safetensors names of the same types).
TYPED = {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}


class GGUF:
    """A loaded GGUF file: `metadata` {key: value} (strings, numbers, bools, lists; 64-bit integers past 2**53 as
    decimal strings), `tensors` {name: array view}, `types` {name: ggml type name}, `shapes` {name: gguf's own
    ne[] order}. The views stay valid after the Client closes (each holds the mapping)."""

    def __init__(self, path, metadata, tensors, types, shapes):
        self.path, self.metadata, self.tensors, self.types, self.shapes = path, metadata, tensors, types, shapes

    def __repr__(self):
        return f"<GGUF {self.path!r}: {len(self.tensors)} tensors, {len(self.metadata)} metadata keys>"


def load(client, path, framework="numpy", tensors=None, populate=True):
    """Client.load_gguf()."""
    path = os.fspath(path)
    maker = _st._Maker(framework, False)
    ref = is_reference(path)
    fd = None if ref else open_regular(path)
    try:
        body = {"path": path if ref else os.path.abspath(path), "files": [path], "rank": 0, "worldSize": 1, "split": "tensors"}
        if ref:
            body["refs"] = [path]
        plan = client._plan(body, [] if ref else [fd])

        def bad(what):
            return DmaloadError("ERR_SHARE_REPLY", f"the dmaload server at '{client.path}' sent a malformed plan for '{path}': {what}")

        if plan.get("format") != "gguf":
            raise DmaloadError("ERR_INVALID_MODEL", f"'{path}' is not a GGUF file (it is {plan.get('format')!r:.50}): use load_safetensors()")
        metadata = plan.get("metadata")
        entries = plan.get("tensors")
        if not isinstance(metadata, dict) or not isinstance(entries, list):
            raise bad("no metadata object or tensor list")
        infos = [_info(e, bad) for e in entries]
        if tensors is not None:
            chosen = set(_st._select({t.name: None for t, _, _ in infos}, tensors, path))
            infos = [x for x in infos if x[0].name in chosen]
        buf = client.load(path) if ref else client._load_fd(fd, path)
    finally:
        if fd is not None:
            os.close(fd)
    try:
        whole = buf.view()
        out, types, shapes = {}, {}, {}
        for t, ggml_type, dims in infos:
            if t.end > len(whole):
                raise DmaloadError("ERR_FILE_CHANGED", f"'{path}' is {len(whole)} bytes now, too short for tensor '{t.name}'; load it again")
            view = t
            if ggml_type not in TYPED or (maker.framework == "numpy" and ggml_type == "BF16"):
                # Raw blocks, gguf-py's byte shape: the rows' bytes last.
                rows = 1
                for d in t.shape[:-1]:
                    rows *= d
                last = (t.end - t.start) // rows if rows else 0
                view = _st.TensorInfo(t.name, "U8", tuple(t.shape[:-1]) + (last,), t.start, t.end)
            maker.check(view, path)
            out[t.name] = _st._make_all(maker, whole, [view])[t.name]
            types[t.name] = ggml_type
            shapes[t.name] = dims
        if populate:
            buf.populate([(t.start, t.end) for t, _, _ in infos])
        return GGUF(path, metadata, out, types, shapes)
    finally:
        buf.close()


def _info(e, bad):
    """(TensorInfo in numpy's order, ggml type name, gguf's own dims) of one planned tensor, its fields checked."""
    if not isinstance(e, dict):
        raise bad("a tensor that is not an object")
    name, dtype, shape, offset, nbytes = (e.get(k) for k in ("name", "dtype", "shape", "offset", "bytes"))
    if not isinstance(name, str) or not isinstance(dtype, str):
        raise bad("a tensor without name or type")
    if not isinstance(shape, list) or not all(_st._is_count(d) for d in shape) or not _st._is_count(offset) or not _st._is_count(nbytes):
        raise bad(f"tensor '{name:.200}' has shape {shape!r:.100}, offset {offset!r:.50}, bytes {nbytes!r:.50}")
    np_shape = tuple(reversed(shape))
    t = _st.TensorInfo(name, dtype, np_shape, offset, offset + nbytes)
    need = _st.dtype_bytes(dtype, t.numel) if dtype in TYPED else None
    if need is not None and need != nbytes:
        raise bad(f"tensor '{name:.200}' has {nbytes} bytes for shape {shape} of {dtype}")
    return t, dtype, list(shape)
