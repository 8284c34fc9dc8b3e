"""Per-rank loads: load_safetensors(path, rank=, world_size=, split=) gives exactly what Node's
loadModel(path, { rank, worldSize, split }) gives, from the server's plan (PlanRequest; the client only makes views).

Against a real server (DMALOAD_SOCKET; test/share/python-ranks.test.ts starts one, generates the models with
`python3 test_ranks.py --generate DIR` and passes Node's own per-rank results in DMALOAD_RANKS_EXPECT): for world sizes
1 to 8, both splits, a whole file, an index of two shards and a selection of each, every rank's tensors are (1) the
names, order, shapes, row slices and bytes (SHA-256) of Node's loadModel() for that rank, and (2) the same slices of
safetensors.torch.load_file(): rows [r*R//N, (r+1)*R//N) of each 2-D tensor, every other tensor whole (split "rows");
whole tensors, each on exactly one rank (split "tensors"). Dtypes F32, F16, BF16, I64, U8, F8_E4M3; 1-D, 0-D, 3-D and
empty tensors replicated; 2-D tensors whose rows do not divide evenly, and one with fewer rows than ranks.

Against fake servers (no dmaload server needed): a malformed plan reply (fds, seals, sizes, JSON, a plan that
disagrees with the file's header or names a tensor not asked for) is ERR_SHARE_REPLY with every fd closed.
"""
import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import unittest

from _helpers import WHERE, FakeServer, LeakCheck, Msg, memfd, needs_torch, np, proc_bytes, random_tensor, st_torch, torch

from dmaload_client import Client, DmaloadError

SOCKET = os.environ.get("DMALOAD_SOCKET")
MODELS = os.environ.get("DMALOAD_RANKS")
EXPECT = os.environ.get("DMALOAD_RANKS_EXPECT")
PLAN_REPLY, LOAD_REPLY, ERROR = 7, 2, 15
MiB = 1024 * 1024


SINGLE = "ranks.safetensors"
INDEX = os.path.join("shards", "model.safetensors.index.json")
# Spans both shards, in no particular order (the plan is in file order all the same).
SELECTION = ["lm_head.weight", "layers.0.norm", "ids", "layers.0.mlp.up", "conv", "mask"]
WORLDS = range(1, 9)
SPLITS = ("rows", "tensors")


def configs():
    """(key, model path relative to the models folder, selection or None): what the Node test computes with
    loadModel() for every split, world size and rank, and what the Python test loads."""
    return [("file", SINGLE, None), ("file-selection", SINGLE, SELECTION), ("index", INDEX, None), ("index-selection", INDEX, SELECTION)]


def model_tensors():
    """The test model: every dtype of the issue, 2-D tensors whose rows do not divide evenly by most world sizes (37,
    13, 11, 9 and 50 rows), one with fewer rows than ranks (5), and 1-D, 0-D, 3-D and empty tensors (replicated)."""
    g = torch.Generator().manual_seed(20260101)

    def rand_bytes(dtype, *shape):
        return random_tensor(g, dtype, *shape)

    return {
        "embed.weight": torch.randn(37, 24, generator=g),
        "layers.0.attn.q": torch.randn(16, 32, generator=g).bfloat16(),
        "layers.0.attn.k": torch.randn(13, 8, generator=g).half(),
        "layers.0.norm": torch.randn(24, generator=g),
        "layers.0.bias": torch.randn(13, generator=g).half(),
        "layers.0.mlp.up": (torch.randn(11, 40, generator=g) * 8).to(torch.float8_e4m3fn),
        "ids": rand_bytes(torch.int64, 5, 3),
        "mask": rand_bytes(torch.uint8, 9, 17),
        "scale": torch.tensor(0.5),
        "conv": torch.randn(2, 3, 4, generator=g).bfloat16(),
        "empty": torch.zeros(0, 4),
        "lm_head.weight": torch.randn(50, 24, generator=g).bfloat16(),
    }


def generate(folder):
    """Writes the models into `folder`: one file, and the same tensors as an index of two shards whose weight_map
    mentions shard 2 first (so that the order of first mention, which Node's inspect() and thus the split by tensors
    follow, differs from the shards' sorted order)."""
    tensors = model_tensors()
    st_torch.save_file(tensors, os.path.join(folder, SINGLE), metadata={"format": "pt"})
    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
    names = sorted(tensors)
    shard_of = {n: f"model-0000{1 + (i + 1) % 2}-of-00002.safetensors" for i, n in enumerate(names)}
    assert shard_of[names[0]].startswith("model-00002")
    for shard in sorted(set(shard_of.values())):
        st_torch.save_file({n: tensors[n] for n in names if shard_of[n] == shard}, os.path.join(folder, "shards", shard))
    with open(os.path.join(folder, INDEX), "w") as f:
        json.dump({"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())}, "weight_map": shard_of}, f)
    # What the Node test computes with loadModel(): the same models, selections, splits and world sizes.
    with open(os.path.join(folder, "configs.json"), "w") as f:
        json.dump({"configs": [{"key": k, "path": p, "tensors": sel} for k, p, sel in configs()], "splits": list(SPLITS), "worlds": list(WORLDS)}, f)


def torch_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)


def mapping_of(addr):
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= addr < hi:
                return fields[5].strip() if len(fields) > 5 else ""
    return None


@unittest.skipUnless(SOCKET and MODELS, "DMALOAD_SOCKET and DMALOAD_RANKS are not set: test/share/python-ranks.test.ts runs these against a real server")
class Ranks(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.expect = None
        if EXPECT:
            with open(EXPECT) as f:
                cls.expect = json.load(f)

    def setUp(self):
        self.client = Client(SOCKET, timeout=120)

    def tearDown(self):
        self.client.close()

    def path(self, rel):
        return os.path.join(MODELS, rel)

    def assertCode(self, code, fn, *contains):
        with self.assertRaises(DmaloadError) as cm:
            fn()
        self.assertEqual(cm.exception.code, code, str(cm.exception))
        for s in contains:
            self.assertIn(s, cm.exception.message)
        return cm.exception

    @needs_torch
    def test_every_rank_equals_node_and_the_slices_of_safetensors_load_file(self):
        if self.expect is None:
            self.skipTest("DMALOAD_RANKS_EXPECT is not set: Node's per-rank results come from test/share/python-ranks.test.ts")
        full = st_torch.load_file(self.path(SINGLE))
        checked = 0
        for key, rel, selection in configs():
            wanted = list(full) if selection is None else selection
            for split in SPLITS:
                for ws in WORLDS:
                    with self.subTest(model=key, split=split, world_size=ws):
                        node = self.expect[f"{key}|{split}|{ws}"]
                        self.assertEqual(len(node), ws)
                        owners = {}
                        for r in range(ws):
                            got = self.client.load_safetensors(self.path(rel), framework="torch", rank=r, world_size=ws, split=split, tensors=selection)
                            plan = self.client.plan_safetensors(self.path(rel), r, ws, split, tensors=selection)
                            # (1) exactly Node's: names in the same order, shapes, row slices, bytes
                            mine = []
                            for p in plan:
                                t = got[p["name"]]
                                entry = {"name": p["name"], "dtype": p["dtype"], "shape": list(t.shape), "sha256": hashlib.sha256(torch_bytes(t).numpy().tobytes()).hexdigest()}
                                if "rows" in p:
                                    entry["rows"] = {k: p["rows"][k] for k in ("dim", "start", "end", "shape")}
                                if p.get("replicated"):
                                    entry["replicated"] = True
                                mine.append(entry)
                            self.assertEqual(list(got), [p["name"] for p in plan])
                            self.assertEqual(mine, node[r], f"rank {r}")
                            # (2) the slices of safetensors' own load
                            for name, t in got.items():
                                w = full[name]
                                if split == "rows" and w.dim() == 2 and w.shape[0] > 0:
                                    a, b = r * w.shape[0] // ws, (r + 1) * w.shape[0] // ws
                                    w = w[a:b]
                                else:
                                    owners.setdefault(name, []).append(r)
                                self.assertEqual((t.dtype, tuple(t.shape)), (w.dtype, tuple(w.shape)), f"{name} rank {r}")
                                self.assertTrue(torch.equal(torch_bytes(t), torch_bytes(w)), f"{name} rank {r}")
                                if t.dtype not in (torch.float8_e4m3fn,) and not (t.is_floating_point() and t.isnan().any()):
                                    self.assertTrue(torch.equal(t, w), f"{name} rank {r}")
                                if t.numel():
                                    self.assertTrue(mapping_of(t.data_ptr()).startswith("/memfd:"), f"{name}: a view of the served memfd")
                            if split == "rows":
                                self.assertEqual(sorted(got), sorted(wanted), "split 'rows': every rank has every tensor")
                            checked += 1
                        if split == "tensors":
                            self.assertEqual(sorted(owners), sorted(wanted), "every tensor on some rank")
                            self.assertTrue(all(len(v) == 1 for v in owners.values()), f"each tensor on exactly one rank: {owners}")
                        else:
                            replicated = {n for n, v in owners.items() if len(v) == ws}
                            self.assertEqual(replicated, {n for n in wanted if full[n].dim() != 2 or full[n].shape[0] == 0})
        self.assertEqual(checked, 4 * 2 * sum(WORLDS))

    @needs_torch
    def test_row_slices_of_all_ranks_make_the_whole_tensor(self):
        full = st_torch.load_file(self.path(SINGLE))
        ws = 3
        parts = [self.client.load_safetensors(self.path(INDEX), framework="torch", rank=r, world_size=ws, split="rows") for r in range(ws)]
        for name, w in full.items():
            if w.dim() == 2 and w.shape[0]:
                whole = torch.cat([p[name] for p in parts])
                self.assertTrue(torch.equal(torch_bytes(whole), torch_bytes(w)), name)

    def test_numpy_and_bytes_views_of_a_rank(self):
        if np is None:
            self.skipTest(f"numpy is not installed: {WHERE}")
        sel = ["embed.weight", "ids", "mask", "layers.0.norm"]
        got = self.client.load_safetensors(self.path(SINGLE), rank=2, world_size=4, split="rows", tensors=sel)
        raw = self.client.load_safetensors(self.path(SINGLE), raw=True, rank=2, world_size=4, split="rows", tensors=sel)
        whole = self.client.load_safetensors(self.path(SINGLE), tensors=sel)
        for name in sel:
            w = whole[name]
            if w.ndim == 2:
                w = w[2 * w.shape[0] // 4 : 3 * w.shape[0] // 4]
            self.assertEqual((got[name].dtype, got[name].shape, got[name].tobytes()), (w.dtype, w.shape, w.tobytes()), name)
            self.assertFalse(got[name].flags.writeable)
            self.assertEqual(bytes(raw[name]), w.tobytes(), name)
        # numpy has no BF16: refused before anything is loaded, naming the tensor
        self.assertCode("ERR_UNSUPPORTED_DTYPE", lambda: self.client.load_safetensors(self.path(SINGLE), rank=0, world_size=2, split="rows", tensors=["lm_head.weight"]), "'lm_head.weight'")

    def test_a_plan_gives_row_slices_and_replicated_tensors_like_node(self):
        plan = self.client.plan_safetensors(self.path(SINGLE), 1, 4, "rows", tensors=["embed.weight", "layers.0.norm", "ids"])
        by = {p["name"]: p for p in plan}
        self.assertEqual(by["embed.weight"]["rows"]["start"], 37 // 4)
        self.assertEqual(by["embed.weight"]["rows"]["end"], 2 * 37 // 4)
        self.assertEqual(by["embed.weight"]["shape"], [2 * 37 // 4 - 37 // 4, 24])
        self.assertEqual(by["embed.weight"]["file"], self.path(SINGLE))
        self.assertTrue(by["layers.0.norm"]["replicated"])
        self.assertEqual((by["ids"]["rows"]["start"], by["ids"]["rows"]["end"]), (1, 2))
        # fewer rows than ranks: some rank holds none (an empty view, nothing loaded for it)
        plan7 = self.client.plan_safetensors(self.path(SINGLE), 0, 8, "rows", tensors=["ids"])
        self.assertEqual((plan7[0]["rows"]["start"], plan7[0]["rows"]["end"], plan7[0]["bytes"]), (0, 0, 0))
        got = self.client.load_safetensors(self.path(SINGLE), raw=True, rank=0, world_size=8, split="rows", tensors=["ids"])
        self.assertEqual(bytes(got["ids"]), b"")

    def test_rank_options_are_checked_and_the_servers_codes_reach_the_caller(self):
        f = self.path(SINGLE)
        load = self.client.load_safetensors
        self.assertCode("ERR_OUT_OF_RANGE", lambda: load(f, raw=True, rank=4, world_size=4))
        self.assertCode("ERR_OUT_OF_RANGE", lambda: load(f, raw=True, rank=-1, world_size=4))
        self.assertCode("ERR_OUT_OF_RANGE", lambda: load(f, raw=True, rank=0, world_size=0))
        self.assertCode("ERR_INVALID_ARG_TYPE", lambda: load(f, raw=True, rank=True, world_size=2))
        self.assertCode("ERR_INVALID_ARG_TYPE", lambda: load(f, raw=True, rank=0, world_size=2.0))
        self.assertCode("ERR_INVALID_ARG_VALUE", lambda: load(f, raw=True, rank=0), "world_size")
        self.assertCode("ERR_INVALID_ARG_VALUE", lambda: load(f, raw=True, split="rows"), "rank")
        self.assertCode("ERR_INVALID_ARG_VALUE", lambda: load(f, raw=True, rank=0, world_size=2, split="cols"), "split")
        self.assertCode("ERR_TENSOR_NOT_FOUND", lambda: load(f, raw=True, rank=0, world_size=2, tensors=["nope"]), "'nope'")
        self.assertCode("ERR_TENSOR_NOT_FOUND", lambda: load(self.path(INDEX), raw=True, rank=0, world_size=2, tensors=["nope"]), "'nope'")
        self.assertEqual(load(f, raw=True, rank=0, world_size=2, tensors=[]), {})
        self.assertEqual(sorted(load(f, raw=True, rank=0, world_size=1, tensors=lambda n: n.startswith("layers."))), sorted(n for n in model_names() if n.startswith("layers.")))
        # The server checks them too (the one plan implementation): its codes come through as they are.
        fd = os.open(f, os.O_RDONLY)
        try:
            body = {"path": f, "files": [f], "rank": 5, "worldSize": 4, "split": "rows"}
            self.assertCode("ERR_OUT_OF_RANGE", lambda: self.client._plan(body, [fd]))
            self.assertCode("ERR_MODEL_TENSOR_NOT_FOUND", lambda: self.client._plan(dict(body, rank=0, tensors=["nope"]), [fd]))
        finally:
            os.close(fd)
        # not safetensors: the server's header check
        bad = os.path.join(MODELS, "not-a-model.safetensors")
        with open(bad, "wb") as out:
            out.write(b"\xff" * 64)
        # The server's model codes become this client's (ERR_INVALID_MODEL, as for a bad file without ranks).
        self.assertCode("ERR_INVALID_MODEL", lambda: load(bad, raw=True, rank=0, world_size=2), "ERR_MODEL_")

    def test_populate_maps_this_ranks_bytes_and_no_others(self):
        big = os.path.join(MODELS, "populate.safetensors")
        if not os.path.exists(big):
            with open(big, "wb") as out:
                out.write(st_file({"w": ("U8", [4096, 4096], os.urandom(16 * MiB)), "norm": ("U8", [MiB], os.urandom(MiB))}))
        mine = 4 * MiB + MiB  # rank 1 of 4: a quarter of w's rows, and norm whole
        for populate in (False, True):
            with self.subTest(populate=populate):
                before = proc_bytes("RssShmem")
                got = self.client.load_safetensors(big, raw=True, rank=1, world_size=4, split="rows", populate=populate)
                self.assertEqual(sum(len(v) for v in got.values()), mine)
                grown = proc_bytes("RssShmem") - before
                if populate:
                    self.assertGreaterEqual(grown, mine, "populate=True maps the rank's pages")
                    self.assertLess(grown, mine + MiB, "and only the rank's: the other ranks' rows stay unmapped")
                else:
                    self.assertLess(grown, mine // 10, "populate=False leaves them to page faults")
                del got


def model_names():
    return ["embed.weight", "layers.0.attn.q", "layers.0.attn.k", "layers.0.norm", "layers.0.bias", "layers.0.mlp.up", "ids", "mask", "scale", "conv", "empty", "lm_head.weight"]




# --- against fake servers ----------------------------------------------------------------------------------------------


def st_file(tensors):
    """A safetensors file's bytes from {name: (dtype, shape, data)}."""
    header, data, off = {}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


FAKE = st_file({"w": ("U8", [4, 3], bytes(range(12))), "b": ("U8", [3], b"xyz")})
DATA = 8 + struct.unpack_from("<Q", FAKE)[0]


def good_plan(**patch_w):
    """Rank 1 of 2, split rows: rows 2..4 of w, b whole."""
    w = {"name": "w", "dtype": "U8", "shape": [2, 3], "file": 0, "offset": DATA + 6, "bytes": 6, "rows": {"dim": 0, "start": 2, "end": 4, "shape": [4, 3], "offset": DATA, "bytes": 12}}
    w.update(patch_w)
    return {"format": "safetensors", "tensors": [w, {"name": "b", "dtype": "U8", "shape": [3], "file": 0, "offset": DATA + 12, "bytes": 3, "replicated": True}]}


def plan_reply(plan, n=None, fds=None, seals=None):
    data = plan if isinstance(plan, bytes) else json.dumps(plan).encode()
    kw = {} if seals is None else {"seals": seals}
    return Msg(PLAN_REPLY, {"bytes": len(data) if n is None else n}, fds or (lambda: [memfd(data, **kw)]))


def load_reply(data=FAKE):
    return Msg(LOAD_REPLY, {"size": len(data), "target": "memfd", "parts": [{"offset": 0, "size": len(data)}], "cached": False, "stats": {}}, lambda: [memfd(data)])


class FakePlans(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="dmaload-ranks-")
        self.file = os.path.join(self.dir, "m.safetensors")
        with open(self.file, "wb") as f:
            f.write(FAKE)

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def load(self, script, **kw):
        with FakeServer(script) as srv, Client(srv.path, timeout=10) as c:
            try:
                return c.load_safetensors(self.file, raw=True, rank=1, world_size=2, split="rows", **kw), srv
            finally:
                c.close()

    def test_a_good_plan_gives_views_of_the_rows(self):
        with LeakCheck(self):
            got, srv = self.load([[plan_reply(good_plan())], [load_reply()]])
            self.assertEqual({k: bytes(v) for k, v in got.items()}, {"w": bytes(range(6, 12)), "b": b"xyz"})
            self.assertEqual(srv.requests, 2)
            self.assertEqual(srv.received_fds, 2, "one fd with the plan request, one with the load")
            del got

    def test_malformed_plan_replies_are_refused_with_every_fd_closed(self):
        two = lambda: [memfd(json.dumps(good_plan()).encode()), memfd(b"")]  # noqa: E731
        cases = [
            ("no fd", [Msg(PLAN_REPLY, {"bytes": 10})]),
            ("two fds", [Msg(PLAN_REPLY, {"bytes": len(json.dumps(good_plan()))}, two)]),
            ("a load reply", [load_reply()]),
            ("unsealed", [plan_reply(good_plan(), seals=0)]),
            ("bytes past the memfd", [plan_reply(good_plan(), n=100000)]),
            ("bytes not a count", [plan_reply(good_plan(), n=-1)]),
            ("not JSON", [plan_reply(b"{nope")]),
            ("not an object", [plan_reply(b"[]")]),
            ("deep JSON", [plan_reply(b"[" * 100000 + b"]" * 100000)]),
            ("another format", [plan_reply(dict(good_plan(), format="gguf"))]),
            ("file out of range", [plan_reply(good_plan(file=1))]),
            ("rows that do not add up", [plan_reply(good_plan(offset=DATA + 3))]),
            ("shape not the rows", [plan_reply(good_plan(shape=[3, 3]))]),
            ("bytes not the shape", [plan_reply(good_plan(bytes=5))]),
            ("neither rows nor replicated", [plan_reply(good_plan(rows=None))]),
            ("a name twice", [plan_reply({"format": "safetensors", "tensors": good_plan()["tensors"] * 2})]),
        ]
        for name, first in cases:
            with self.subTest(name), LeakCheck(self):
                with self.assertRaises(DmaloadError) as cm:
                    self.load([first])
                self.assertEqual(cm.exception.code, "ERR_SHARE_REPLY", str(cm.exception))

    def test_a_plan_that_disagrees_with_the_files_header_is_refused(self):
        other = {"format": "safetensors", "tensors": [{"name": "w", "dtype": "U8", "shape": [2, 3], "file": 0, "offset": DATA + 6, "bytes": 6, "rows": {"dim": 0, "start": 2, "end": 4, "shape": [4, 3], "offset": DATA, "bytes": 12}}, {"name": "c", "dtype": "U8", "shape": [3], "file": 0, "offset": DATA + 12, "bytes": 3, "replicated": True}]}
        shifted = good_plan()
        shifted["tensors"][0]["rows"]["offset"] += 1
        shifted["tensors"][0]["offset"] += 1
        cases = [
            ("a tensor the file has not", other, "no tensor 'c'"),
            ("another dtype", {"format": "safetensors", "tensors": [good_plan(dtype="I8")["tensors"][0], good_plan()["tensors"][1]]}, "I8"),
            ("another place", shifted, "'w'"),
        ]
        for name, plan, says in cases:
            with self.subTest(name), LeakCheck(self):
                with self.assertRaises(DmaloadError) as cm:
                    self.load([[plan_reply(plan)], [load_reply()]])
                self.assertEqual(cm.exception.code, "ERR_SHARE_REPLY", str(cm.exception))
                self.assertIn(says, cm.exception.message)

    def test_a_plan_naming_a_tensor_not_asked_for_is_refused(self):
        with LeakCheck(self):
            with self.assertRaises(DmaloadError) as cm:
                self.load([[plan_reply(good_plan())]], tensors=["w"])
            self.assertEqual(cm.exception.code, "ERR_SHARE_REPLY")
            self.assertIn("'b' was not asked for", cm.exception.message)

    def test_the_servers_error_reply_keeps_its_code(self):
        with LeakCheck(self):
            with self.assertRaises(DmaloadError) as cm:
                self.load([[Msg(ERROR, {"code": "ERR_OUT_OF_RANGE", "message": "rank 1 of 2"})]])
            self.assertEqual(cm.exception.code, "ERR_OUT_OF_RANGE")

    def test_an_index_whose_shards_leave_its_folder_is_refused_before_any_request(self):
        index = os.path.join(self.dir, "m.safetensors.index.json")
        with open(index, "w") as f:
            json.dump({"weight_map": {"w": "../m.safetensors"}}, f)
        with FakeServer([]) as srv, Client(srv.path, timeout=10) as c:
            with self.assertRaises(DmaloadError) as cm:
                c.load_safetensors(index, raw=True, rank=0, world_size=2)
            self.assertEqual(cm.exception.code, "ERR_INVALID_MODEL")
            c.close()
        self.assertEqual(srv.requests, 0)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--generate"]:
        if torch is None or st_torch is None:
            print(f"skip: torch and safetensors are not both installed in {sys.executable}: {WHERE}")
            sys.exit(3)
        generate(sys.argv[2])
        sys.exit(0)
    unittest.main()
