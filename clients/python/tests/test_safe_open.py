"""safetensors' API over a real `dmaload serve` (DMALOAD_SOCKET; test/share/python-tensors.test.ts starts one):
dmaload_client.safe_open() and load_file() against the safetensors library's own safe_open(), get_slice() and
load_file() as the oracle, bit for bit: every dtype the installed safetensors and torch have (F4 and the F8 types
included), empty and 0-d tensors, __metadata__ (and None without it), keys() and offset_keys(), slices of every kind
safetensors takes on every dimension, an index of three shards as one object (loading only the shards asked for), a
model folder, per-rank shares, numpy; every tensor on the CPU a read-only view of the served memfd (no copy), other
devices ("meta") copies. Then what needs neither: which server (socket=, DMALOAD_SOCKET, ERR_SHARE_NO_SERVER), which
file in a folder (ERR_MODEL_AMBIGUOUS, ERR_MODEL_NOT_FOUND), closing, errors. References (http://) run against a
server of their own (`node bin/dmaload.js serve --allow-source`, a Range-capable HTTP server in this process), where
node and dist/ are there. numpy, torch and safetensors are optional: the tests needing one skip, saying so."""
import gc
import http.server
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from _helpers import memfd_mappings, needs_numpy, needs_torch, np, open_fds, random_tensor, st_numpy, st_torch, torch

import dmaload_client
from dmaload_client import Client, DmaloadError, load_file, safe_open
from dmaload_client._safetensors import DTYPES

SOCKET = os.environ.get("DMALOAD_SOCKET")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))

if st_torch is not None:
    import safetensors  # the oracle: its safe_open()


def write_safetensors(path, tensors, metadata=None):
    """A safetensors file written by hand: tensors is {name: (dtype, shape, data bytes)}."""
    header, data, off = {}, b"", 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
    return path


def mapping_of(addr):
    """The path column of /proc/self/maps for the mapping holding `addr` ('' for anonymous memory)."""
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= addr < hi:
                return fields[5].strip() if len(fields) > 5 else ""
    return None


def offsets_of(path):
    """{name: data_offsets} from the header of the safetensors file at `path`."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}


def tbytes(t):
    """A torch tensor's bytes in C order, as uint8 (any dtype, contiguous or not)."""
    if t.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return t.contiguous().reshape(-1).view(torch.uint8)


def every_torch_dtype():
    """{safetensors dtype: torch dtype} of every dtype the installed safetensors.torch knows: those it maps by name
    (the F8 types, U16-U64, C64 ...) and those it only sizes for saving (F8_E8M0, F4 as torch.float4_e2m1fn_x2),
    named as the format names them."""
    out = {name: dt for name, dt in getattr(st_torch, "_TYPES", {}).items() if dt is not None}
    by_torch_name = {info[2]: name for name, info in DTYPES.items()}
    for dt in getattr(st_torch, "_SIZE", {}):
        name = by_torch_name.get(str(dt).replace("torch.", "")) if dt is not None else None
        if name is not None and name not in out:
            out[name] = dt
    return out


def torch_model(seed=5):
    """Tensors of every dtype: random bit patterns (NaNs and all), 0-d, empty ones, and a 3-D one to slice."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, (name, dt) in enumerate(sorted(every_torch_dtype().items())):
        key = name.lower()
        if dt is torch.bool:
            out[key] = torch.rand(4, 6, 5, generator=g) > 0.5
        else:
            out[key] = random_tensor(g, dt, 4, 6, 5 + i % 3 if name != "F4" else 4)  # F4: 8 values (4 bytes) a row
        if name not in ("F4",):
            out[key + ".empty"] = torch.zeros(0, 3, dtype=dt)
            out[key + ".scalar"] = random_tensor(g, dt) if dt is not torch.bool else torch.tensor(True)
    out["f32.hollow"] = torch.zeros(3, 0, 2)
    return out


IDX = [
    0, -1, 1, 3, slice(None), slice(1, 3), slice(None, None, 2), slice(1, None, 3), slice(-2, None), slice(5, 100),
    slice(3, 1), (slice(None), 0), (0, slice(1, 3)), (Ellipsis, 1), (1, Ellipsis), (slice(None), slice(None), slice(0, 4, 3)),
    (slice(1, 3), slice(2, 5), slice(1, 2)), (None, 0), (0, None, slice(1, 2)), (), Ellipsis, (slice(0, 1), 2, slice(None, None, 2)),
    (-1, -1, -1), (2, 3), (Ellipsis, slice(1, 2), 0),
]
BAD_IDX = [4, -5, (0, 0, 0, 0), (0, 9)]


@unittest.skipUnless(SOCKET, "DMALOAD_SOCKET is not set: run a dmaload server and point it there (test/share/python-tensors.test.ts does)")
class Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dmaload-safe-open-", dir=os.environ.get("DMALOAD_TEST_DATA") or None)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def setUp(self):
        self.client = Client(SOCKET, timeout=120)

    def tearDown(self):
        self.client.close()

    def path(self, *names):
        return os.path.join(self.dir, *names)

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

    def assertSameTorch(self, got, want, what):
        self.assertIsInstance(got, torch.Tensor, what)
        self.assertEqual((got.dtype, tuple(got.shape)), (want.dtype, tuple(want.shape)), what)
        self.assertTrue(torch.equal(tbytes(got), tbytes(want)), f"{what}: not bit-equal")

    def assertSameOrder(self, got, want, offsets):
        """The same names in file order, as safetensors gives them: by offset (safetensors orders the tensors that
        share an offset, empty ones, differently from run to run; here they keep the header's order)."""
        self.assertEqual(sorted(got), sorted(want))
        self.assertEqual([offsets[n] for n in got], [offsets[n] for n in want])
        self.assertEqual([offsets[n] for n in got], sorted(offsets[n] for n in got))

    def assertServed(self, t, what):
        """`t` (a torch tensor or numpy array) is a view of the served memfd: not a byte copied."""
        addr = t.data_ptr() if torch is not None and isinstance(t, torch.Tensor) else t.__array_interface__["data"][0]
        self.assertTrue(mapping_of(addr).startswith("/memfd:"), f"{what} is not a view of the served memfd ({mapping_of(addr)!r})")


class Torch(Base):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if st_torch is None:
            return
        cls.tensors = torch_model()
        cls.file = os.path.join(cls.dir, "every-dtype.safetensors")
        st_torch.save_file(cls.tensors, cls.file, metadata={"format": "pt", "note": "ünïcode"})

    @needs_torch
    def test_every_dtype_get_tensor_keys_and_metadata_equal_safetensors_bit_for_bit(self):
        with safe_open(self.file, framework="pt") as f, safetensors.safe_open(self.file, framework="pt") as want:
            self.assertEqual(f.keys(), want.keys())
            self.assertSameOrder(f.offset_keys(), want.offset_keys(), offsets_of(self.file))
            self.assertEqual(f.metadata(), want.metadata())
            self.assertGreaterEqual(len(f.keys()), 3 * 15, "every dtype, empty and 0-d")
            for name in want.keys():
                g = f.get_tensor(name)
                self.assertSameTorch(g, want.get_tensor(name), name)
                if g.numel():
                    self.assertServed(g, name)
                sl, ws = f.get_slice(name), want.get_slice(name)
                self.assertEqual((sl.get_shape(), sl.get_dtype()), (ws.get_shape(), ws.get_dtype()), name)
        seen = {t.dtype for t in self.tensors.values()}
        for dt in every_torch_dtype().values():
            self.assertIn(dt, seen)

    @needs_torch
    def test_load_file_equals_safetensors_torch_load_file_in_its_order(self):
        want = st_torch.load_file(self.file)
        got = load_file(self.file)
        self.assertSameOrder(list(got), list(want), offsets_of(self.file))
        for name, w in want.items():
            self.assertSameTorch(got[name], w, name)
            if w.numel():
                self.assertServed(got[name], name)
        self.assertEqual(len({mapping_of(t.data_ptr()) for t in got.values() if t.numel()}), 1, "one mapping for them all")

    @needs_torch
    def test_slices_on_every_dimension_equal_safetensors_slices_and_are_views(self):
        compared = 0
        with safe_open(self.file, "pt") as f, safetensors.safe_open(self.file, "pt") as want:
            for name in want.keys():
                shape = want.get_slice(name).get_shape()
                if len(shape) != 3 or want.get_slice(name).get_dtype() == "F4":
                    continue
                s, w = f.get_slice(name), want.get_slice(name)
                compared += 1
                for idx in IDX:
                    with self.subTest(tensor=name, index=idx):
                        try:
                            expected = w[idx]
                        except Exception as e:  # what safetensors refuses, this does too
                            with self.assertRaises(type(e)):
                                s[idx]
                            continue
                        got = s[idx]
                        self.assertSameTorch(got, expected, f"{name}[{idx!r}]")
                        self.assertEqual(got.is_contiguous(), expected.is_contiguous())
                        if got.numel():
                            self.assertServed(got, f"{name}[{idx!r}]")  # a view, contiguous or strided: no copy
                for idx in BAD_IDX:
                    with self.subTest(tensor=name, index=idx):
                        with self.assertRaises(IndexError):
                            w[idx]
                        with self.assertRaises(IndexError):
                            s[idx]
        self.assertGreaterEqual(compared, len(every_torch_dtype()) - 1, "a 3-D tensor of every dtype but F4 sliced")

    @needs_torch
    def test_f4_packed_two_values_a_byte_as_safetensors_gives_it(self):
        if "F4" not in every_torch_dtype():  # an older torch or safetensors: F4 is refused with its code
            f4 = write_safetensors(self.path("f4-old.safetensors"), {"w": ("F4", [2, 4], b"abcd")})
            with safe_open(f4, "pt") as f:
                self.assertCode("ERR_UNSUPPORTED_DTYPE", lambda: f.get_tensor("w"), "'w'", "F4")
            return
        with safe_open(self.file, "pt") as f, safetensors.safe_open(self.file, "pt") as want:
            w = want.get_tensor("f4")
            self.assertSameTorch(f.get_tensor("f4"), w, "f4")
            self.assertEqual(f.get_slice("f4").get_shape(), want.get_slice("f4").get_shape())  # the header's: [4, 6, 8]
            # safetensors' own get_slice() of F4 fails (it reshapes to the unpacked shape); here the index applies to
            # the packed tensor, so the oracle is its get_tensor() indexed by torch.
            for idx in [slice(1, 3), (0, slice(2, 5)), (Ellipsis, slice(0, 2)), 2]:
                self.assertSameTorch(f.get_slice("f4")[idx], w[idx], f"f4[{idx!r}]")
        odd = write_safetensors(self.path("f4-odd.safetensors"), {"w": ("F4", [2, 3], b"abc")})
        with safe_open(odd, "pt") as f:
            self.assertCode("ERR_UNSUPPORTED_DTYPE", lambda: f.get_tensor("w"), "'w'", "F4", "even")
        half = write_safetensors(self.path("f4-half.safetensors"), {"w": ("F4", [3], b"ab")})
        self.assertCode("ERR_INVALID_MODEL", lambda: safe_open(half, "pt"), "'w'", "whole bytes")

    @needs_torch
    def test_an_index_of_three_shards_is_one_object_loading_only_the_shards_asked_for(self):
        d = tempfile.mkdtemp(dir=self.dir)
        names = sorted(self.tensors)
        shard_of = {n: f"model-0000{i % 3 + 1}-of-00003.safetensors" for i, n in enumerate(names)}
        for shard in sorted(set(shard_of.values())):
            st_torch.save_file({n: self.tensors[n] for n in names if shard_of[n] == shard}, os.path.join(d, shard), metadata={"format": "pt", "shard": shard})
        index = os.path.join(d, "model.safetensors.index.json")
        with open(index, "w") as out:
            json.dump({"metadata": {"total_size": 1}, "weight_map": shard_of}, out)
        order = list(dict.fromkeys(shard_of.values()))
        before = self.served()
        with safe_open(index, "pt") as f:
            self.assertEqual(f.keys(), names)
            self.assertEqual(f.metadata(), {"format": "pt", "shard": order[0]}, "the first shard's __metadata__")
            self.assertEqual(self.served(), before, "keys() and metadata() read headers only")
            one = next(n for n in names if shard_of[n] == order[1])
            with safetensors.safe_open(os.path.join(d, order[1]), "pt") as w:
                self.assertSameTorch(f.get_tensor(one), w.get_tensor(one), one)
                self.assertEqual(f.get_slice(one).get_shape(), w.get_slice(one).get_shape())
            self.assertEqual(self.served(), before + 1, "only the shard holding it was loaded")
            offset_keys, want_all, offsets = [], {}, {}
            for shard in order:
                offsets.update((n, (shard, o)) for n, o in offsets_of(os.path.join(d, shard)).items())
                with safetensors.safe_open(os.path.join(d, shard), "pt") as w:
                    offset_keys += w.offset_keys()
                    for n in w.keys():
                        want_all[n] = w.get_tensor(n)
                        self.assertSameTorch(f.get_tensor(n), want_all[n], n)
                        shape = w.get_slice(n).get_shape()
                        if len(shape) == 3 and all(shape) and w.get_slice(n).get_dtype() != "F4":
                            for idx in [(slice(1, 3), 0), (Ellipsis, slice(None, None, 2)), -1]:
                                self.assertSameTorch(f.get_slice(n)[idx], w.get_slice(n)[idx], f"{n}[{idx!r}]")
            self.assertSameOrder(f.offset_keys(), offset_keys, offsets)  # shard after shard, each in file order
            self.assertCode("ERR_TENSOR_NOT_FOUND", lambda: f.get_tensor("nope"), "'nope'", index)
        got = load_file(index)
        self.assertSameOrder(list(got), offset_keys, offsets)
        for n, w in want_all.items():
            self.assertSameTorch(got[n], w, n)
        # The folder holding it: the index is its model.
        got = load_file(d)
        self.assertEqual(sorted(got), names)
        # Only shards asked for are loaded: without shard 3 on disk, the others' tensors still come.
        os.rename(os.path.join(d, order[2]), os.path.join(d, "gone"))
        with safe_open(index, "pt") as f:
            self.assertSameTorch(f.get_tensor(one), want_all[one], one)
            with self.assertRaises(FileNotFoundError):
                f.get_tensor(next(n for n in names if shard_of[n] == order[2]))

    @needs_torch
    def test_a_folder_s_model_as_node_finds_it(self):
        d = tempfile.mkdtemp(dir=self.dir)
        small = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
        st_torch.save_file(small, os.path.join(d, "weights.safetensors"))
        self.assertEqual(load_file(d)["w"].tolist(), small["w"].tolist(), "the one *.safetensors")
        st_torch.save_file({"x": torch.ones(2)}, os.path.join(d, "other.safetensors"))
        self.assertCode("ERR_MODEL_NOT_FOUND", lambda: safe_open(d, "pt"), d, "2 .safetensors files")
        st_torch.save_file({"m": torch.zeros(1)}, os.path.join(d, "model.safetensors"))
        with safe_open(d, "pt") as f:
            self.assertEqual(f.keys(), ["m"], "model.safetensors wins")
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as out:
            json.dump({"weight_map": {"w": "weights.safetensors"}}, out)
        with safe_open(d, "pt") as f:
            self.assertEqual(f.keys(), ["m"], "model.safetensors beside its own index still wins (transformers' order)")
        with open(os.path.join(d, "extra.safetensors.index.json"), "w") as out:
            json.dump({"weight_map": {"x": "other.safetensors"}}, out)
        self.assertCode("ERR_MODEL_AMBIGUOUS", lambda: safe_open(d, "pt"), "extra.safetensors.index.json", "model.safetensors.index.json", "model.safetensors")
        os.remove(os.path.join(d, "model.safetensors"))
        os.remove(os.path.join(d, "model.safetensors.index.json"))
        with safe_open(d, "pt") as f:
            self.assertEqual(f.keys(), ["x"], "the one index")
        empty = tempfile.mkdtemp(dir=self.dir)
        self.assertCode("ERR_MODEL_NOT_FOUND", lambda: load_file(empty), empty)

    @needs_torch
    def test_per_rank_shares_are_the_rows_of_safetensors_own_tensors(self):
        f2 = self.path("ranks.safetensors")
        g = torch.Generator().manual_seed(9)
        model = {"emb": random_tensor(g, torch.bfloat16, 10, 4), "proj": random_tensor(g, torch.float8_e4m3fn, 7, 3), "norm": torch.randn(4, generator=g), "few": torch.randn(2, 5, generator=g)}
        st_torch.save_file(model, f2, metadata={"format": "pt"})
        want = st_torch.load_file(f2)
        for world in (1, 3):
            for rank in range(world):
                with self.subTest(world=world, rank=rank):
                    got = load_file(f2, rank=rank, world_size=world, split="rows")
                    with safe_open(f2, "pt", rank=rank, world_size=world, split="rows") as f:
                        self.assertEqual(f.keys(), sorted(want))
                        self.assertEqual(f.metadata(), {"format": "pt"})
                        for n, w in want.items():
                            part = w[rank * w.shape[0] // world : (rank + 1) * w.shape[0] // world] if w.dim() == 2 else w
                            self.assertSameTorch(f.get_tensor(n), part, n)
                            self.assertSameTorch(got[n], part, n)
                            self.assertEqual(f.get_slice(n).get_shape(), list(part.shape))
                            self.assertSameTorch(f.get_slice(n)[..., :2], part[..., :2], n)
                            if part.numel():
                                self.assertServed(f.get_tensor(n), n)
        shares = [load_file(f2, rank=r, world_size=2) for r in range(2)]  # split "tensors": whole tensors, each once
        self.assertEqual(sorted(list(shares[0]) + list(shares[1])), sorted(want))
        for share in shares:
            for n, t in share.items():
                self.assertSameTorch(t, want[n], n)

    @needs_torch
    def test_another_device_gets_copies_there(self):
        for device in ["meta"] + (["cuda"] if torch.cuda.is_available() else []):
            with self.subTest(device=device):
                got = load_file(self.file, device=device)
                want = st_torch.load_file(self.file)
                with safe_open(self.file, "pt", device=device) as f:
                    t = f.get_tensor("f32")
                    s = f.get_slice("bf16")[1:3, ..., 0]
                self.assertEqual(t.device.type, device)
                self.assertEqual((s.device.type, tuple(s.shape), s.dtype), (device, (2, 6), torch.bfloat16))
                for n, w in want.items():
                    self.assertEqual((got[n].device.type, got[n].dtype, tuple(got[n].shape)), (device, w.dtype, tuple(w.shape)), n)
                    if device != "meta":
                        self.assertSameTorch(got[n].cpu(), w, n)
        with safe_open(self.file, "pt", device=torch.device("cpu")) as f:
            self.assertServed(f.get_tensor("f32"), "device=torch.device('cpu')")
        self.assertCode("ERR_INVALID_ARG_VALUE", lambda: safe_open(self.file, "pt", device="nodevice"), "nodevice")


class Numpy(Base):
    @needs_numpy
    def test_every_numpy_dtype_arrays_and_slices_equal_safetensors_numpy(self):
        rng = np.random.default_rng(4)
        arrays = {
            "bool": rng.random((4, 6, 5)) > 0.5,
            "u8": rng.integers(0, 255, (4, 6, 5), dtype=np.uint8),
            "i8": rng.integers(-128, 127, (4, 6, 5), dtype=np.int8),
            "i16": rng.integers(-(2**15), 2**15 - 1, (4, 6, 5), dtype=np.int16),
            "u16": rng.integers(0, 2**16 - 1, (4, 6, 5), dtype=np.uint16),
            "i32": rng.integers(-(2**31), 2**31 - 1, (4, 6, 5), dtype=np.int32),
            "u32": rng.integers(0, 2**32 - 1, (4, 6, 5), dtype=np.uint32),
            "i64": rng.integers(-(2**62), 2**62, (4, 6, 5), dtype=np.int64),
            "u64": rng.integers(0, 2**63, (4, 6, 5), dtype=np.uint64),
            "f16": rng.standard_normal((4, 6, 5)).astype(np.float16),
            "f32": rng.standard_normal((4, 6, 5)).astype(np.float32),
            "f64": rng.standard_normal((4, 6, 5)),
            "c64": (rng.standard_normal((4, 6, 5)) + 1j * rng.standard_normal((4, 6, 5))).astype(np.complex64),
            "scalar": np.array(3.5, dtype=np.float32),
            "empty": np.zeros((0, 3), dtype=np.int16),
        }
        f = self.path("numpy.safetensors")
        st_numpy.save_file(arrays, f)
        want = st_numpy.load_file(f)
        got = load_file(f, framework="np")
        self.assertEqual(list(got), list(want))
        for name, w in want.items():
            g = got[name]
            self.assertEqual((g.dtype, g.shape, g.tobytes()), (w.dtype, w.shape, w.tobytes()), name)
            self.assertFalse(g.flags.writeable, name)
            if g.size:
                self.assertServed(g, name)
        with self.assertRaises(ValueError):
            got["f32"][0, 0, 0] = 1.0
        with safe_open(f, "numpy") as s, safetensors_np_open(f) as w:
            self.assertEqual((s.keys(), s.metadata()), (w.keys(), w.metadata()))
            self.assertSameOrder(s.offset_keys(), w.offset_keys(), offsets_of(f))
            self.assertIsNone(s.metadata(), "no __metadata__: None, as safetensors gives it")
            for name in w.keys():
                if len(w.get_slice(name).get_shape()) != 3:
                    continue
                compared = 0
                for idx in IDX:
                    try:
                        expected = w.get_slice(name)[idx]
                    except Exception:  # safetensors' numpy slices take fewer forms than numpy's indexing (no None...)
                        continue
                    with self.subTest(tensor=name, index=idx):
                        r = s.get_slice(name)[idx]
                        self.assertEqual((r.dtype, r.shape, r.tobytes()), (expected.dtype, expected.shape, expected.tobytes()))
                        self.assertFalse(r.flags.writeable)
                        compared += 1
                self.assertGreater(compared, 12, name)

    @needs_numpy
    def test_dtypes_numpy_lacks_are_refused_before_anything_is_loaded(self):
        f = write_safetensors(self.path("bf16.safetensors"), {"ok": ("F32", [1], b"\0\0\x80\x3f"), "w": ("BF16", [2], b"\0" * 4)})
        before = self.served()
        self.assertCode("ERR_UNSUPPORTED_DTYPE", lambda: load_file(f, framework="np"), "'w'", "BF16")
        self.assertEqual(self.served(), before, "refused before the server was asked for it")
        with safe_open(f, "np") as s:
            self.assertEqual(s.get_tensor("ok").tolist(), [1.0])
            self.assertEqual(s.get_slice("w").get_dtype(), "BF16")
            self.assertCode("ERR_UNSUPPORTED_DTYPE", lambda: s.get_tensor("w"), "'w'", "BF16")
        self.assertCode("ERR_INVALID_ARG_VALUE", lambda: safe_open(f, "np", device="cuda"), "cuda")


def safetensors_np_open(path):
    import safetensors

    return safetensors.safe_open(path, framework="np")


FW = "np" if np is not None else "pt" if torch is not None else None
needs_either = unittest.skipIf(FW is None, "neither numpy nor torch is installed: safe_open() gives arrays or tensors (pip install numpy)")


class Plain(Base):
    """What needs numpy or torch, whichever is there, but not safetensors."""

    @needs_either
    def test_which_server_socket_then_dmaload_socket_else_err_share_no_server(self):
        f = write_safetensors(self.path("plain.safetensors"), {"w": ("U8", [2], b"ab")}, metadata={"k": "v"})
        saved = os.environ.pop("DMALOAD_SOCKET")
        # No socket named: the per-user server would be started; with a command that does not exist, that fails saying
        # what to do (test/share/python-autostart.test.ts starts a real one).
        cli = os.environ.get("DMALOAD_CLI")
        os.environ["DMALOAD_CLI"] = self.path("no-such-dmaload")
        try:
            e = self.assertCode("ERR_SHARE_NO_SERVER", lambda: safe_open(f, FW), "dmaload serve --socket", "DMALOAD_SOCKET", "socket=")
            self.assertCode("ERR_SHARE_NO_SERVER", lambda: load_file(f, framework=FW), "DMALOAD_SOCKET")
            self._restore_cli(cli)
            self.assertIsInstance(e, DmaloadError)
            nobody = self.path("nobody.sock")
            self.assertCode("ERR_SHARE_NO_SERVER", lambda: safe_open(f, FW, socket=nobody), nobody, f"dmaload serve --socket {nobody}")
            os.environ["DMALOAD_SOCKET"] = nobody
            self.assertCode("ERR_SHARE_NO_SERVER", lambda: safe_open(f, FW), nobody, "DMALOAD_SOCKET")
            os.environ["DMALOAD_SOCKET"] = ""
            self.assertCode("ERR_SHARE_NO_SERVER", lambda: safe_open(f, FW), "DMALOAD_SOCKET")
            with safe_open(f, FW, socket=saved) as s:  # socket= wins
                self.assertEqual(s.metadata(), {"k": "v"})
            with safe_open(f, FW, socket=self.client) as s:  # a Client, left open
                self.assertEqual(s.keys(), ["w"])
            self.assertIn("misses", self.client.status(), "the client passed in is still open")
        finally:
            os.environ["DMALOAD_SOCKET"] = saved
            self._restore_cli(cli)
        with safe_open(f, FW) as s:
            self.assertEqual(s.keys(), ["w"])

    @staticmethod
    def _restore_cli(cli):
        if cli is None:
            os.environ.pop("DMALOAD_CLI", None)
        else:
            os.environ["DMALOAD_CLI"] = cli

    @needs_either
    def test_closed_after_with_tensors_stay_valid_and_nothing_leaks(self):
        f = write_safetensors(self.path("close.safetensors"), {"a": ("U8", [3], b"abc"), "b": ("I32", [2], struct.pack("<2i", 7, -7))})
        gc.collect()
        fds, maps = open_fds(), memfd_mappings()
        with safe_open(f, FW) as s:
            a = s.get_tensor("a")
        self.assertCode("ERR_FILE_CLOSED", s.keys, f)
        self.assertCode("ERR_FILE_CLOSED", lambda: s.get_tensor("a"), f)
        s.close()  # twice is fine
        self.assertEqual(bytes(a.tolist()), b"abc", "still valid after close")
        self.assertEqual(memfd_mappings(), maps + 1, "the view keeps its mapping")
        del a
        gc.collect()
        self.assertEqual(memfd_mappings(), maps, "the mapping goes with the last view")
        self.assertEqual(open_fds(), fds, "no fd left open: the connection and the file's are closed")

    @needs_either
    def test_errors_have_codes(self):
        f = write_safetensors(self.path("err.safetensors"), {"w": ("U8", [2], b"ab")})
        self.assertCode("ERR_INVALID_ARG_VALUE", lambda: safe_open(f, "tf"), "pt", "np")
        self.assertCode("ERR_INVALID_ARG_VALUE", lambda: safe_open(f, FW, rank=0), "world_size")
        self.assertCode("ERR_OUT_OF_RANGE", lambda: safe_open(f, FW, rank=2, world_size=2))
        bad = self.path("README.md")
        with open(bad, "w") as out:
            out.write("# not a model\n" * 1000)
        before = self.served()
        self.assertCode("ERR_INVALID_MODEL", lambda: safe_open(bad, FW), bad, "header length")
        self.assertEqual(self.served(), before, "refused at open, before the server was asked for it")
        with self.assertRaises(FileNotFoundError):
            safe_open(self.path("missing.safetensors"), FW)
        for ref in ("hf://org/name", "hf://org/name@main", "s3://bucket/", "https://example.com/models/"):
            with self.subTest(ref):
                self.assertCode("ERR_INVALID_ARG_VALUE", lambda: safe_open(ref, FW), "not a file")
        with safe_open(f, FW) as s:
            self.assertCode("ERR_TENSOR_NOT_FOUND", lambda: s.get_tensor("x"), "'x'", f)
            self.assertCode("ERR_TENSOR_NOT_FOUND", lambda: s.get_slice("x"), "'x'")
        for fw, lib in (("np", np), ("numpy", np), ("pt", torch), ("torch", torch)):
            if lib is None:
                self.assertCode("ERR_FRAMEWORK_MISSING", lambda: safe_open(f, fw), "pip install")

    def test_the_package_exports_and_the_command_line(self):
        self.assertIn("safe_open", dmaload_client.__all__)
        self.assertIn("load_file", dmaload_client.__all__)
        import sys

        r = subprocess.run([sys.executable, "-m", "dmaload_client", SOCKET, "--status"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("hits", json.loads(r.stdout))


# --- references: a server of this test's own, allowed to fetch from an HTTP server in this process ------------------


class _Files(http.server.SimpleHTTPRequestHandler):
    """GET with `Range: bytes=A-B` (206), as a static server answers it."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m is None:
            self.send_response(200)
            body = data
        else:
            lo, hi = int(m.group(1)), min(int(m.group(2) or len(data) - 1), len(data) - 1)
            if lo > hi:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {lo}-{hi}/{len(data)}")
            body = data[lo : hi + 1]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)


def _node():
    node = os.environ.get("DMALOAD_NODE") or shutil.which("node")
    main = os.path.join(REPO, "dist", "src", "cli", "main.js")
    if not node or not os.path.exists(main):
        return None
    return node


@unittest.skipUnless(_node(), "node or the built dmaload (dist/) is missing: the reference tests start a server of their own")
class References(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="dmaload-refs-", dir=os.environ.get("DMALOAD_TEST_DATA") or None)
        cls.www = os.path.join(cls.dir, "www")
        os.makedirs(os.path.join(cls.www, "models"))
        os.makedirs(os.path.join(cls.www, "private"))
        cls.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Files(*a, directory=cls.www))
        cls.http.daemon_threads = True
        threading.Thread(target=cls.http.serve_forever, daemon=True).start()
        cls.base = f"http://127.0.0.1:{cls.http.server_address[1]}"
        cls.socket = os.path.join(cls.dir, "refs.sock")
        env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        # Under scripts/test-asan.sh the sanitizer runtime is not preloaded for Python (nor for what it starts): the
        # server must then load the ordinary addon, not the instrumented one DMALOAD_ADDON names.
        env.pop("LD_PRELOAD", None)
        env.pop("DMALOAD_ADDON", None)
        cls.log = open(os.path.join(cls.dir, "serve.log"), "w+")
        cls.server = subprocess.Popen(
            [_node(), os.path.join(REPO, "bin", "dmaload.js"), "serve", "--socket", cls.socket, "--allow-source", f"{cls.base}/models/"],
            stdout=cls.log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(cls.socket):
            if cls.server.poll() is not None or time.monotonic() > deadline:
                cls.log.seek(0)
                raise AssertionError(f"dmaload serve did not start: {cls.log.read()}")
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        cls.server.terminate()
        try:
            cls.server.wait(15)
        except subprocess.TimeoutExpired:
            cls.server.kill()
            cls.server.wait()
        cls.log.close()
        cls.http.shutdown()
        cls.http.server_close()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def assertCode(self, code, fn, *contains):
        with self.assertRaises(DmaloadError) as cm:
            fn()
        self.assertEqual(cm.exception.code, code, str(cm.exception))
        for s in contains:
            self.assertIn(s, cm.exception.message)

    @needs_torch
    def test_a_referenced_index_and_file_are_fetched_by_the_server_and_equal_safetensors(self):
        models = os.path.join(self.www, "models")
        g = torch.Generator().manual_seed(11)
        a = {"a.w": random_tensor(g, torch.bfloat16, 8, 4), "a.b": random_tensor(g, torch.float8_e5m2, 5)}
        b = {"b.w": random_tensor(g, torch.float32, 3, 3), "b.i": random_tensor(g, torch.int64, 2)}
        st_torch.save_file(a, os.path.join(models, "s-1.safetensors"), metadata={"format": "pt"})
        st_torch.save_file(b, os.path.join(models, "s-2.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(models, "model.safetensors.index.json"), "w") as out:
            json.dump({"weight_map": {**{n: "s-1.safetensors" for n in a}, **{n: "s-2.safetensors" for n in b}}}, out)
        shutil.copy(os.path.join(models, "s-2.safetensors"), os.path.join(self.www, "private", "s-2.safetensors"))
        want = {**st_torch.load_file(os.path.join(models, "s-1.safetensors")), **st_torch.load_file(os.path.join(models, "s-2.safetensors"))}
        ref = f"{self.base}/models/model.safetensors.index.json"
        with safe_open(ref, "pt", socket=self.socket) as f:
            self.assertEqual(f.keys(), sorted(want))
            self.assertEqual(f.metadata(), {"format": "pt"})
            for n, w in want.items():
                got = f.get_tensor(n)
                self.assertEqual((got.dtype, tuple(got.shape)), (w.dtype, tuple(w.shape)), n)
                self.assertTrue(torch.equal(tbytes(got), tbytes(w)), n)
                self.assertTrue(mapping_of(got.data_ptr()).startswith("/memfd:"), n)
            self.assertTrue(torch.equal(tbytes(f.get_slice("a.w")[2:5, 1:]), tbytes(want["a.w"][2:5, 1:])))
        got = load_file(f"{self.base}/models/s-2.safetensors", socket=self.socket)
        self.assertEqual(sorted(got), sorted(b))
        for n in b:
            self.assertTrue(torch.equal(tbytes(got[n]), tbytes(b[n])), n)
        shares = [load_file(ref, socket=self.socket, rank=r, world_size=2, split="rows") for r in range(2)]
        self.assertTrue(torch.equal(tbytes(torch.cat([shares[0]["a.w"], shares[1]["a.w"]])), tbytes(want["a.w"])), "rows of ranks 0 and 1")
        self.assertCode("ERR_SHARE_SOURCE_NOT_ALLOWED", lambda: load_file(f"{self.base}/private/s-2.safetensors", socket=self.socket), "--allow-source")


if __name__ == "__main__":
    unittest.main()
