"""Client.load_safetensors() against a real `dmaload serve` (DMALOAD_SOCKET; test/share/python-tensors.test.ts starts
one): the tensors equal the safetensors library's own bit for bit (numpy and torch, every dtype each has; whole files,
selections, an index of two shards), they are read-only views of the served memfd (no byte copied: with populate=False
the client's RSS does not grow until they are read, with populate=True it grows at once by the shared pages and not by
private memory; their data lies in the memfd's mapping), the mapping lives exactly as long as
they do, and bad files, unknown names and dtypes numpy lacks fail with their codes, a bad local file before the server
is asked for it (its counters unchanged); safetensors_metadata() reads the header's __metadata__ (an index's
"metadata"); "np" and "pt" name numpy and torch. numpy, torch and safetensors are optional: the tests that need one
skip, saying so, where it is missing."""
import ctypes
import gc
import hashlib
import json
import os
import pathlib
import shutil
import struct
import tempfile
import unittest

from _helpers import huge_folios_missing, memfd_mappings, needs_numpy, needs_torch, np, open_fds, proc_bytes, random_tensor, smaps_of, st_numpy, st_torch, torch

from dmaload_client import Client, DmaloadError

SOCKET = os.environ.get("DMALOAD_SOCKET")
MiB = 1024 * 1024



def write_safetensors(path, tensors, metadata=None, header_patch=None):
    """A safetensors file written by hand: tensors is {name: (dtype, shape, data bytes)}; header_patch(header) may
    spoil the header before it is written."""
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    if header_patch:
        header_patch(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
    return path


def header_bytes(h):
    return struct.pack("<Q", len(h)) + h


def mapping_of(addr):
    """The path column of /proc/self/maps for the mapping holding `addr` ('' for anonymous memory)."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= addr < hi:
                return fields[5].strip() if len(fields) > 5 else ""
    return None




def np_addr(a):
    return a.__array_interface__["data"][0]


@unittest.skipUnless(SOCKET, "DMALOAD_SOCKET is not set: run a dmaload server and point it there (test/share/python-tensors.test.ts does)")
class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dmaload-tensors-", dir=os.environ.get("DMALOAD_TEST_DATA") or None)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.client = Client(SOCKET, timeout=120)

    def tearDown(self):
        self.client.close()

    def path(self, name):
        return os.path.join(self.dir, name)

    def served(self):
        """How many loads the server has answered (from its cache or not)."""
        s = self.client.status()
        return s["hits"] + s["misses"]

    def assertCode(self, code, fn, *contains):
        with self.assertRaises(DmaloadError) as cm:
            fn()
        self.assertEqual(cm.exception.code, code, str(cm.exception))
        for s in contains:
            self.assertIn(s, cm.exception.message)
        return cm.exception


class Numpy(Base):
    @needs_numpy
    def test_every_numpy_dtype_equals_safetensors_numpy_bit_for_bit(self):
        rng = np.random.default_rng(1)
        arrays = {
            "bool": rng.random((3, 5)) > 0.5,
            "u8": rng.integers(0, 255, (7,), dtype=np.uint8),
            "i8": rng.integers(-128, 127, (2, 3, 4), dtype=np.int8),
            "i16": rng.integers(-(2**15), 2**15 - 1, (33,), dtype=np.int16),
            "u16": rng.integers(0, 2**16 - 1, (5, 5), dtype=np.uint16),
            "i32": rng.integers(-(2**31), 2**31 - 1, (9,), dtype=np.int32),
            "u32": rng.integers(0, 2**32 - 1, (4, 2), dtype=np.uint32),
            "i64": rng.integers(-(2**62), 2**62, (6,), dtype=np.int64),
            "u64": rng.integers(0, 2**63, (3,), dtype=np.uint64),
            "f16": rng.standard_normal((8, 8)).astype(np.float16),
            "f32": rng.standard_normal((100, 3)).astype(np.float32),
            "f64": np.array([np.nan, -0.0, np.inf, 1e-310]),
            "c64": (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64),
            "scalar": np.array(3.5, dtype=np.float32),
            "empty": np.zeros((0, 3), dtype=np.float32),
        }
        f = self.path("numpy.safetensors")
        st_numpy.save_file(arrays, f, metadata={"format": "np"})
        want = st_numpy.load_file(f)
        got = self.client.load_safetensors(f)  # framework="numpy" is the default
        self.assertEqual(set(got), set(want))
        for name, w in want.items():
            g = got[name]
            self.assertIsInstance(g, np.ndarray)
            self.assertEqual((g.dtype, g.shape), (w.dtype, w.shape), name)
            self.assertEqual(g.tobytes(), w.tobytes(), name)
            self.assertFalse(g.flags.writeable, name)
            if g.size:
                self.assertTrue(mapping_of(np_addr(g)).startswith("/memfd:"), f"{name} is a view of the served memfd")
        with self.assertRaises(ValueError):
            got["f32"][0, 0] = 1.0

    @needs_numpy
    def test_a_selection_by_names_or_predicate(self):
        f = self.path("select.safetensors")
        st_numpy.save_file({n: np.full((4,), i, dtype=np.int32) for i, n in enumerate(["a.w", "a.b", "b.w", "b.b"])}, f)
        got = self.client.load_safetensors(f, tensors=["b.w", "a.b"])
        self.assertEqual(list(got), ["b.w", "a.b"])
        self.assertEqual(got["b.w"].tolist(), [2, 2, 2, 2])
        got = self.client.load_safetensors(f, tensors=lambda n: n.endswith(".w"))
        self.assertEqual(sorted(got), ["a.w", "b.w"])
        self.assertEqual(self.client.load_safetensors(f, tensors=[]), {})
        self.assertCode("ERR_TENSOR_NOT_FOUND", lambda: self.client.load_safetensors(f, tensors=["a.w", "c.w"]), "'c.w'", f)
        self.assertCode("ERR_INVALID_ARG_TYPE", lambda: self.client.load_safetensors(f, tensors="a.w"))
        self.assertCode("ERR_INVALID_ARG_VALUE", lambda: self.client.load_safetensors(f, framework="jax"))

    @needs_numpy
    def test_dtypes_numpy_lacks_fail_with_a_code_naming_tensor_and_dtype(self):
        for dtype in ("BF16", "F8_E4M3", "F8_E5M2"):
            with self.subTest(dtype):
                f = write_safetensors(self.path(f"{dtype}.safetensors"), {"ok": ("F32", [1], b"\0\0\x80\x3f"), "w.q": (dtype, [2], b"\0" * (2 * (2 if dtype == "BF16" else 1)))})
                self.assertCode("ERR_UNSUPPORTED_DTYPE", lambda: self.client.load_safetensors(f), "'w.q'", dtype, 'framework="torch"', "raw=True")
                self.assertEqual(self.client.load_safetensors(f, tensors=["ok"])["ok"].tolist(), [1.0])
        f = write_safetensors(self.path("f4.safetensors"), {"w": ("F4", [4], b"\0\0")})
        self.assertCode("ERR_UNSUPPORTED_DTYPE", lambda: self.client.load_safetensors(f), "'w'", "F4")

    @needs_numpy
    def test_an_index_of_two_shards_loads_only_the_shards_it_needs(self):
        d = tempfile.mkdtemp(dir=self.dir)
        one = {"l0.w": np.arange(6, dtype=np.float32).reshape(2, 3), "l0.b": np.arange(2, dtype=np.int64)}
        two = {"l1.w": np.arange(4, dtype=np.float16), "l1.b": np.array([True, False])}
        st_numpy.save_file(one, os.path.join(d, "model-00001-of-00002.safetensors"))
        st_numpy.save_file(two, os.path.join(d, "model-00002-of-00002.safetensors"))
        weight_map = {**{n: "model-00001-of-00002.safetensors" for n in one}, **{n: "model-00002-of-00002.safetensors" for n in two}}
        index = os.path.join(d, "model.safetensors.index.json")
        with open(index, "w") as f:
            json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
        got = self.client.load_safetensors(index)
        self.assertEqual(set(got), set(weight_map))
        for name, w in {**one, **two}.items():
            self.assertEqual((got[name].dtype, got[name].shape, got[name].tobytes()), (w.dtype, w.shape, w.tobytes()), name)
        del got
        # Only shards holding a selected tensor are loaded: without shard 2 on disk, shard 1's tensors still load.
        os.rename(os.path.join(d, "model-00002-of-00002.safetensors"), os.path.join(d, "gone"))
        got = self.client.load_safetensors(index, tensors=["l0.b"])
        self.assertEqual(list(got), ["l0.b"])
        self.assertEqual(got["l0.b"].tolist(), [0, 1])
        with self.assertRaises(FileNotFoundError):
            self.client.load_safetensors(index, tensors=lambda n: n.startswith("l1."))
        self.assertCode("ERR_TENSOR_NOT_FOUND", lambda: self.client.load_safetensors(index, tensors=["l9.w"]), "'l9.w'", index)
        # The index names a tensor its shard does not have.
        os.rename(os.path.join(d, "gone"), os.path.join(d, "model-00002-of-00002.safetensors"))
        with open(index, "w") as f:
            json.dump({"weight_map": {**weight_map, "l0.x": "model-00001-of-00002.safetensors"}}, f)
        self.assertCode("ERR_INVALID_MODEL", lambda: self.client.load_safetensors(index, tensors=["l0.x"]), "'l0.x'")
        with open(index, "w") as f:
            f.write('{"weight_map": [1]}')
        self.assertCode("ERR_INVALID_MODEL", lambda: self.client.load_safetensors(index), "weight_map")


class Format(Base):
    """What needs neither numpy nor torch."""

    def test_raw_gives_read_only_memoryviews_of_any_dtype(self):
        f = write_safetensors(self.path("raw.safetensors"), {"x": ("BF16", [2], b"\x80\x3f\x00\x40"), "y": ("F4", [4], b"\x12\x34"), "z": ("U8", [3], b"abc")}, metadata={"k": "v"})
        for got in (self.client.load_safetensors(f, raw=True), self.client.load_safetensors(f, framework="bytes")):
            self.assertEqual({k: bytes(v) for k, v in got.items()}, {"x": b"\x80\x3f\x00\x40", "y": b"\x12\x34", "z": b"abc"})
            self.assertTrue(all(v.readonly for v in got.values()))

    def test_bad_files_fail_with_err_invalid_model_naming_file_and_tensor(self):
        t = {"a": ("F32", [2], b"\0" * 8), "b": ("I16", [3], b"\0" * 6)}

        def patch(fn):
            def p(h):
                fn(h)

            return p

        cases = [
            ("size mismatch", patch(lambda h: h["b"].update(shape=[4])), ["'b'", "6 bytes"]),
            ("offsets past the data", patch(lambda h: h["b"].update(data_offsets=[8, 100])), ["'b'", "outside"]),
            ("offsets reversed", patch(lambda h: h["a"].update(data_offsets=[8, 0])), ["'a'"]),
            ("overlap", patch(lambda h: (h["a"].update(data_offsets=[0, 8]), h["b"].update(data_offsets=[6, 12]))), ["'a'", "'b'", "overlap"]),
            ("offsets not numbers", patch(lambda h: h["a"].update(data_offsets=["0", "8"])), ["'a'"]),
            ("negative shape", patch(lambda h: h["a"].update(shape=[-2])), ["'a'"]),
            ("no dtype", patch(lambda h: h["a"].pop("dtype")), ["'a'"]),
            ("entry not an object", patch(lambda h: h.update(a=[1])), ["'a'"]),
        ]
        for name, p, contains in cases:
            with self.subTest(name):
                f = write_safetensors(self.path("bad.safetensors"), t, header_patch=p)
                before = self.served()
                self.assertCode("ERR_INVALID_MODEL", lambda: self.client.load_safetensors(f, raw=True), f, *contains)
                self.assertEqual(self.served(), before, "refused before the server was asked to load it")
        raw_cases = [
            ("shorter than 8 bytes", b"\x01\x02"),
            ("header length past the end", struct.pack("<Q", 1000) + b"{}"),
            ("header not JSON", struct.pack("<Q", 4) + b"{x:1"),
            ("header not an object", struct.pack("<Q", 2) + b"[]"),
            ("deeply nested header", struct.pack("<Q", 60000) + b"[" * 30000 + b"]" * 30000),
            ("duplicate name", header_bytes(b'{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}')),
        ]
        for name, data in raw_cases:
            with self.subTest(name):
                f = self.path("bad-raw.safetensors")
                with open(f, "wb") as out:
                    out.write(data)
                before = self.served()
                self.assertCode("ERR_INVALID_MODEL", lambda: self.client.load_safetensors(f, raw=True), f)
                self.assertEqual(self.served(), before, "refused before the server was asked to load it")

    def test_a_file_that_is_not_safetensors_is_refused_before_the_server_loads_it(self):
        # A text file: its first 8 bytes read as a header length of 8.7e18. The server must not load and cache it all
        # to find that out: the client reads the header through its own fd first, as inspect does.
        f = self.path("README.md")
        with open(f, "wb") as out:
            out.write(b"# A model card, not a model\n" * 40000)
        before, cached = self.served(), self.client.status()["cachedBytes"]
        for kw in ({"raw": True}, {"framework": "bytes"}):
            self.assertCode("ERR_INVALID_MODEL", lambda: self.client.load_safetensors(f, **kw), f, "header length")
        self.assertCode("ERR_INVALID_MODEL", lambda: self.client.safetensors_metadata(f), f, "header length")
        self.assertEqual(self.served(), before, "nothing was asked of the server")
        self.assertEqual(self.client.status()["cachedBytes"], cached, "nothing was cached")
        # A header that parses but promises more data than the file holds: refused before the load too.
        short = write_safetensors(self.path("short.safetensors"), {"w": ("U8", [8], b"12345678")})
        with open(short, "r+b") as out:
            out.truncate(os.path.getsize(short) - 3)
        self.assertCode("ERR_INVALID_MODEL", lambda: self.client.load_safetensors(short, raw=True), short, "'w'")
        # An index with a shard that is not safetensors: every shard's header is checked before any is loaded.
        d = tempfile.mkdtemp(dir=self.dir)
        good = write_safetensors(os.path.join(d, "a.safetensors"), {"x": ("U8", [2], b"ab")})
        shutil.copy(f, os.path.join(d, "b.safetensors"))
        index = os.path.join(d, "model.safetensors.index.json")
        with open(index, "w") as out:
            json.dump({"weight_map": {"x": "a.safetensors", "y": "b.safetensors"}}, out)  # the good shard first
        self.assertCode("ERR_INVALID_MODEL", lambda: self.client.load_safetensors(index, raw=True), os.path.join(d, "b.safetensors"))
        self.assertEqual(self.served(), before, "nothing was asked of the server")
        # A good file still loads (one request).
        self.assertEqual({k: bytes(v) for k, v in self.client.load_safetensors(good, raw=True).items()}, {"x": b"ab"})
        self.assertEqual(self.served(), before + 1)

    def test_np_and_pt_are_safetensors_names_for_numpy_and_torch(self):
        f = write_safetensors(self.path("alias.safetensors"), {"w": ("F32", [2], struct.pack("<2f", 1.5, -2.0))})
        if np is not None:
            got = self.client.load_safetensors(f, framework="np")
            self.assertIsInstance(got["w"], np.ndarray)
            self.assertEqual(got["w"].tolist(), [1.5, -2.0])
        else:
            self.assertCode("ERR_FRAMEWORK_MISSING", lambda: self.client.load_safetensors(f, framework="np"), "numpy")
        if torch is not None:
            got = self.client.load_safetensors(f, framework="pt")
            self.assertIsInstance(got["w"], torch.Tensor)
            self.assertEqual(got["w"].tolist(), [1.5, -2.0])
        else:
            self.assertCode("ERR_FRAMEWORK_MISSING", lambda: self.client.load_safetensors(f, framework="pt"), "torch")
        e = self.assertCode("ERR_INVALID_ARG_VALUE", lambda: self.client.load_safetensors(f, framework="tf"))
        for name in ("numpy", "np", "torch", "pt", "bytes"):
            self.assertIn(name, e.message)

    def test_safetensors_metadata_is_the_header_s_own_read_without_a_load(self):
        meta = {"format": "pt", "note": "ünïcode, \"quoted\""}
        f = write_safetensors(self.path("meta.safetensors"), {"w": ("U8", [2], b"ab")}, metadata=meta)
        plain = write_safetensors(self.path("plain.safetensors"), {"w": ("U8", [2], b"ab")})
        before = self.served()
        self.assertEqual(self.client.safetensors_metadata(f), meta)
        self.assertEqual(self.client.safetensors_metadata(pathlib.Path(f)), meta)
        self.assertEqual(self.client.safetensors_metadata(plain), {}, "no __metadata__: an empty dict, as Node's inspect() gives")
        self.assertEqual(self.served(), before, "read through this process's own fd: nothing asked of the server")
        # An index: its own "metadata" object ({} without one), as Node's inspect() gives.
        d = tempfile.mkdtemp(dir=self.dir)
        shutil.copy(f, os.path.join(d, "a.safetensors"))
        index = os.path.join(d, "model.safetensors.index.json")
        with open(index, "w") as out:
            json.dump({"metadata": {"total_size": 2}, "weight_map": {"w": "a.safetensors"}}, out)
        self.assertEqual(self.client.safetensors_metadata(index), {"total_size": 2})
        with open(index, "w") as out:
            json.dump({"weight_map": {"w": "a.safetensors"}}, out)
        self.assertEqual(self.client.safetensors_metadata(index), {})
        with open(index, "w") as out:
            json.dump({"metadata": [1], "weight_map": {"w": "a.safetensors"}}, out)
        self.assertCode("ERR_INVALID_MODEL", lambda: self.client.safetensors_metadata(index), index, "metadata")
        # __metadata__ must be an object of strings (the safetensors library and Node refuse anything else).
        for bad in ([1], {"n": 1}, {"n": None}):
            with self.subTest(bad):
                b = write_safetensors(self.path("bad-meta.safetensors"), {"w": ("U8", [2], b"ab")}, metadata=bad)
                self.assertCode("ERR_INVALID_MODEL", lambda: self.client.safetensors_metadata(b), b, "__metadata__")
                self.assertCode("ERR_INVALID_MODEL", lambda: self.client.load_safetensors(b, raw=True), b, "__metadata__")
        self.assertEqual(self.served(), before)
        # The metadata does not change what load_safetensors() returns: tensors only.
        self.assertEqual(list(self.client.load_safetensors(f, raw=True)), ["w"])


def torch_bytes(t):
    return t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def torch_tensors():
    g = torch.Generator().manual_seed(3)

    def rand_bytes(dtype, *shape):
        return random_tensor(g, dtype, *shape)

    out = {
        "bool": torch.rand(4, 4, generator=g) > 0.5,
        "u8": rand_bytes(torch.uint8, 9),
        "i8": rand_bytes(torch.int8, 2, 5),
        "i16": rand_bytes(torch.int16, 3, 3),
        "u16": rand_bytes(torch.uint16, 7),
        "i32": rand_bytes(torch.int32, 4, 1),
        "u32": rand_bytes(torch.uint32, 5),
        "i64": rand_bytes(torch.int64, 2, 2),
        "u64": rand_bytes(torch.uint64, 3),
        "f16": torch.randn(6, 2, generator=g).half(),
        "bf16": torch.randn(5, 3, generator=g).bfloat16(),
        "f32": torch.randn(10, 10, generator=g),
        "f64": torch.randn(3, generator=g).double(),
        "f8_e4m3": torch.randn(16, generator=g).to(torch.float8_e4m3fn),
        "f8_e5m2": torch.randn(2, 8, generator=g).to(torch.float8_e5m2),
        "c64": torch.randn(4, generator=g, dtype=torch.complex64),
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 4),
    }
    return out


class Torch(Base):
    @needs_torch
    def test_every_safetensors_dtype_equals_safetensors_torch_bit_for_bit(self):
        f = self.path("torch.safetensors")
        st_torch.save_file(torch_tensors(), f)
        want = st_torch.load_file(f)
        got = self.client.load_safetensors(f, framework="torch")
        self.assertEqual(set(got), set(want))
        for name, w in want.items():
            g = got[name]
            self.assertIsInstance(g, torch.Tensor)
            self.assertEqual((g.dtype, tuple(g.shape)), (w.dtype, tuple(w.shape)), name)
            self.assertTrue(torch.equal(torch_bytes(g), torch_bytes(w)), name)
            if g.numel():
                self.assertTrue(mapping_of(g.data_ptr()).startswith("/memfd:"), f"{name} is a view of the served memfd")
        self.assertTrue(torch.equal(got["f32"], want["f32"]))
        self.assertTrue(torch.equal(got["bf16"], want["bf16"]))

    @needs_torch
    def test_a_selection_and_an_index_of_two_shards(self):
        d = tempfile.mkdtemp(dir=self.dir)
        tensors = torch_tensors()
        names = sorted(tensors)
        half = {n: "a.safetensors" if i % 2 else "b.safetensors" for i, n in enumerate(names)}
        for shard in ("a.safetensors", "b.safetensors"):
            st_torch.save_file({n: tensors[n] for n in names if half[n] == shard}, os.path.join(d, shard))
        index = os.path.join(d, "m.safetensors.index.json")
        with open(index, "w") as f:
            json.dump({"weight_map": half}, f)
        got = self.client.load_safetensors(index, framework="torch")
        self.assertEqual(list(got), names)
        for n in names:
            self.assertTrue(torch.equal(torch_bytes(got[n]), torch_bytes(tensors[n])), n)
        got = self.client.load_safetensors(index, framework="torch", tensors=["bf16", "f8_e4m3"])
        self.assertEqual(list(got), ["bf16", "f8_e4m3"])
        self.assertTrue(torch.equal(got["f8_e4m3"].view(torch.uint8), tensors["f8_e4m3"].view(torch.uint8)))
        self.assertCode("ERR_TENSOR_NOT_FOUND", lambda: self.client.load_safetensors(index, framework="torch", tensors=["nope"]), "'nope'")


class ZeroCopy(Base):
    SIZE = 80 * MiB  # >= 64 MiB, in 5 tensors

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.file = os.path.join(cls.dir, "big.safetensors")
        chunk = cls.SIZE // 5
        write_safetensors(cls.file, {f"t{i}": ("I32", [chunk // 4], os.urandom(chunk)) for i in range(5)})
        cls.hashes = {}
        with open(cls.file, "rb") as f:
            hdr = f.read(8)
            f.seek(8 + struct.unpack("<Q", hdr)[0])
            for i in range(5):
                cls.hashes[f"t{i}"] = hashlib.sha256(f.read(chunk)).hexdigest()

    def check(self, framework, addr, as_bytes, populate=False):
        with Client(SOCKET) as c:  # the server holds it now: what follows measures this process alone
            c.load(self.file).close()
        gc.collect()
        fds, maps, before, anon = open_fds(), memfd_mappings(), proc_bytes("Rss", "/proc/self/smaps_rollup"), proc_bytes("RssAnon")
        got = self.client.load_safetensors(self.file, framework=framework, populate=populate)
        taken = proc_bytes("Rss", "/proc/self/smaps_rollup") - before
        if populate:  # resident at once, one madvise(MADV_POPULATE_READ): the served pages, not a copy
            self.assertGreater(taken, self.SIZE * 0.99, f"{framework}: populate=True made only {taken} bytes resident (of {self.SIZE})")
            copied = proc_bytes("RssAnon") - anon
            self.assertLess(copied, self.SIZE * 0.05, f"{framework}: {copied} bytes of private memory for {self.SIZE} of tensors")
        else:
            self.assertLess(taken, self.SIZE * 0.05, f"{framework}: taking the tensors made {taken} bytes resident (of {self.SIZE})")
        self.assertEqual(len({mapping_of(addr(t)) for t in got.values()}), 1, "one mapping for them all")
        self.assertTrue(mapping_of(addr(got["t0"])).startswith("/memfd:"))
        for name in got:  # reading them maps the served pages: the measurement sees memory, were it copied
            self.assertEqual(hashlib.sha256(as_bytes(got[name])).hexdigest(), self.hashes[name], name)
        read = proc_bytes("Rss", "/proc/self/smaps_rollup") - before
        self.assertGreater(read, self.SIZE * 0.9, f"{framework}: reading every byte made only {read} bytes resident")
        # The mapping lives as long as the tensors do, and goes with the last of them.
        first = got.pop("t0")
        del got
        gc.collect()
        self.assertEqual(memfd_mappings(), maps + 1, "the last tensor keeps the mapping")
        self.assertEqual(as_bytes(first)[:4], as_bytes(first)[:4])
        del first
        gc.collect()
        self.assertEqual(memfd_mappings(), maps, "the mapping goes with the last tensor")
        self.assertEqual(open_fds(), fds, "no fd is left open")

    @needs_numpy
    def test_numpy_arrays_share_the_served_pages(self):
        self.check("numpy", np_addr, lambda a: a.data)

    @needs_torch
    def test_torch_tensors_share_the_served_pages(self):
        self.check("torch", lambda t: t.data_ptr(), lambda t: t.numpy().data)

    def test_raw_memoryviews_share_the_served_pages(self):
        self.check("bytes", buffer_addr, lambda v: v)

    @needs_torch
    def test_populate_makes_them_resident_at_once_without_a_copy(self):
        self.check("torch", lambda t: t.data_ptr(), lambda t: t.numpy().data, populate=True)

    def test_populate_without_numpy_or_torch(self):
        self.check("bytes", buffer_addr, lambda v: v, populate=True)

    def test_the_servers_huge_folios_are_mapped_whole(self):
        why = huge_folios_missing()
        if why:
            self.skipTest(why)
        got = self.client.load_safetensors(self.file, framework="bytes")
        for name, v in got.items():
            self.assertEqual(hashlib.sha256(v).hexdigest(), self.hashes[name], name)
        start, pmd = smaps_of(buffer_addr(got["t0"]), "ShmemPmdMapped")
        self.assertEqual(start % (2 * MiB), 0, "mapped at a multiple of 2 MiB")
        # Every whole 2 MiB of the file's 80 MiB and its header, read above, is mapped by a PMD.
        self.assertGreaterEqual(pmd, self.SIZE - 2 * MiB, f"ShmemPmdMapped {pmd}")



class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def buffer_addr(obj):
    """The address of a (read-only) buffer's bytes: ctypes' from_buffer wants a writable one."""
    b = _PyBuffer()
    get, release = ctypes.pythonapi.PyObject_GetBuffer, ctypes.pythonapi.PyBuffer_Release
    get.argtypes, get.restype = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int], ctypes.c_int
    release.argtypes, release.restype = [ctypes.POINTER(_PyBuffer)], None
    if get(obj, ctypes.byref(b), 0) != 0:
        raise AssertionError("PyObject_GetBuffer failed")
    try:
        return b.buf
    finally:
        release(ctypes.byref(b))


if __name__ == "__main__":
    unittest.main()
