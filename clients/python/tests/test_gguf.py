"""Client.load_gguf() against a real `dmaload serve` (DMALOAD_SOCKET; test/share/python-tensors.test.ts starts one):
GGUF files written by gguf-py's GGUFWriter (llama.cpp's own Python package) with typed and quantized tensors and
metadata of every kind, read back through the server and compared with gguf-py's GGUFReader of the same file — the
oracle: each tensor's bytes, dtype and shape as `tensor.data` has them, and the metadata values. Skipped without
gguf or numpy (pip install gguf numpy)."""

import os
import shutil
import tempfile
import unittest

from _helpers import needs_numpy, np, torch

from dmaload_client import Client, DmaloadError

try:
    import gguf
except ImportError:  # pragma: no cover - where gguf-py is not installed
    gguf = None

SOCKET = os.environ.get("DMALOAD_SOCKET")
needs_gguf = unittest.skipUnless(gguf is not None, "gguf (gguf-py, llama.cpp's reader and writer: the oracle) is not installed: pip install gguf")


def write_gguf(path):
    """A GGUF file of typed and quantized tensors and metadata of each kind; returns the writer's inputs by name."""
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("test.u32", 7)
    w.add_int64("test.i64", -(2**40))
    w.add_uint64("test.big", 2**60 + 3)
    w.add_float32("test.f32", 0.5)
    w.add_bool("test.yes", True)
    w.add_string("test.s", "h\u00e9llo")
    w.add_array("test.ints", [1, 2, 3])
    w.add_array("test.strs", ["a", "bc"])
    made = {
        "f32": rng.standard_normal((4, 24)).astype(np.float32),
        "f16": rng.standard_normal((8, 8)).astype(np.float16),
        "f64": rng.standard_normal(5),
        "i8": rng.integers(-100, 100, 17).astype(np.int8),
        "i16": rng.integers(-1000, 1000, (3, 5)).astype(np.int16),
        "i32": rng.integers(-(2**30), 2**30, 10).astype(np.int32),
        "i64": rng.integers(-(2**60), 2**60, 4),
    }
    for name, a in made.items():
        w.add_tensor(name, a)
    # Raw blocks, given in gguf-py's byte shape: 3 rows of 64 Q8_0 elements (2 blocks of 34 bytes), 2 rows of 256 Q4_K
    # elements (1 block of 144 bytes), and BF16 as its bytes.
    raw = {
        "q8": (rng.integers(0, 256, (3, 68)).astype(np.uint8), gguf.GGMLQuantizationType.Q8_0),
        "q4k": (rng.integers(0, 256, (2, 144)).astype(np.uint8), gguf.GGMLQuantizationType.Q4_K),
        "bf16": (rng.integers(0, 256, (4, 32)).astype(np.uint8), gguf.GGMLQuantizationType.BF16),
    }
    for name, (a, t) in raw.items():
        w.add_tensor(name, a, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def field_value(f):
    """A GGUFReader field's value, as plain Python."""
    v = f.contents()
    return v.tolist() if hasattr(v, "tolist") else v


@unittest.skipUnless(SOCKET, "DMALOAD_SOCKET is not set: run a dmaload server and point it there (test/share/python-tensors.test.ts does)")
@needs_numpy
@needs_gguf
class Gguf(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dmaload-gguf-", dir=os.environ.get("DMALOAD_TEST_DATA") or None)
        cls.file = write_gguf(os.path.join(cls.dir, "model.gguf"))
        cls.reader = gguf.GGUFReader(cls.file)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.client = Client(SOCKET, timeout=120)

    def tearDown(self):
        self.client.close()

    def test_tensors_equal_gguf_py_readers_bytes_dtype_and_shape(self):
        g = self.client.load_gguf(self.file)
        self.assertEqual(sorted(g.tensors), sorted(t.name for t in self.reader.tensors))
        for t in self.reader.tensors:
            mine = g.tensors[t.name]
            self.assertEqual(g.types[t.name], t.tensor_type.name, t.name)
            self.assertEqual(g.shapes[t.name], [int(d) for d in t.shape], t.name)
            self.assertEqual(mine.shape, t.data.shape, t.name)
            self.assertEqual(mine.dtype, t.data.dtype, t.name)
            self.assertEqual(mine.tobytes(), t.data.tobytes(), t.name)
            self.assertFalse(mine.flags.writeable, f"{t.name} is a read-only view")

    def test_metadata_equals_gguf_py_readers(self):
        g = self.client.load_gguf(self.file)
        for key in ("general.architecture", "test.u32", "test.i64", "test.f32", "test.yes", "test.s", "test.ints", "test.strs"):
            self.assertEqual(g.metadata[key], field_value(self.reader.fields[key]), key)
        # Past 2**53 a JSON number would round: the exact value as a decimal string.
        self.assertEqual(g.metadata["test.big"], str(field_value(self.reader.fields["test.big"])))

    def test_a_selection_and_torch(self):
        g = self.client.load_gguf(self.file, tensors=["f16", "q8"])
        self.assertEqual(sorted(g.tensors), ["f16", "q8"])
        self.assertCode("ERR_TENSOR_NOT_FOUND", lambda: self.client.load_gguf(self.file, tensors=["nope"]))
        if torch is None:
            return
        t = self.client.load_gguf(self.file, framework="pt")
        by = {r.name: r for r in self.reader.tensors}
        self.assertEqual(t.tensors["bf16"].dtype, torch.bfloat16)
        self.assertEqual(bytes(t.tensors["bf16"].contiguous().view(torch.uint8).numpy()), by["bf16"].data.tobytes())
        self.assertEqual(tuple(t.tensors["f32"].shape), by["f32"].data.shape)
        self.assertTrue(torch.equal(t.tensors["i64"], torch.from_numpy(by["i64"].data.copy())))

    def test_not_gguf_is_err_invalid_model(self):
        p = os.path.join(self.dir, "plain.safetensors")
        with open(p, "wb") as f:
            f.write(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
        self.assertCode("ERR_INVALID_MODEL", lambda: self.client.load_gguf(p))

    def assertCode(self, code, fn):
        with self.assertRaises(DmaloadError) as cm:
            fn()
        self.assertEqual(cm.exception.code, code, str(cm.exception))


if __name__ == "__main__":
    unittest.main()
