"""One rank of a torchrun job loading its share of a model through `dmaload serve` (test/share/torchrun.test.ts):

    python3 torchrun_worker.py generate MODEL            # a seeded safetensors model of ~280 MiB, several dtypes
    python3 -m torch.distributed.run --standalone --nproc-per-node 4 torchrun_worker.py run \\
        --socket SOCK --model MODEL --server-pid PID [--split rows]

Each rank (gloo backend, CPU) measures its PSS (/proc/self/smaps_rollup), loads
Client(SOCK).load_safetensors(MODEL, framework="torch", rank=r, world_size=N, split=...) and, once every rank holds its
tensors, measures its PSS again (rank 0 also the server's, before and after): the sum of the increases is what the job
costs in memory. Only then does each rank compare its tensors with the same slices of safetensors.torch.load_file()
(rows [r*R//N, (r+1)*R//N) of 2-D tensors, everything else whole; split "tensors": whole tensors, each on one rank),
and the ranks all-reduce their mismatches and bytes. For comparison, the PSS that load_file() adds to the ranks is
reported too (not asserted). Rank 0 prints one line `@@torchrun {json}`; the exit code is 1
on any mismatch.
"""
import argparse
import json
import os
import sys
import time

MiB = 1024 * 1024


def pss(pid="self"):
    """Proportional set size in bytes: shared pages divided among the processes mapping them."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def generate(path):
    """~280 MiB of seeded bytes as BF16, F32, F16, F8_E4M3, I64 and U8 tensors: 2-D ones whose rows do not divide by 4,
    1-D ones (replicated by split rows). Bytes, not values: the comparisons are of bytes."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(4242)

    def rand(dtype, *shape):
        n = 1
        for d in shape:
            n *= d
        item = torch.empty((), dtype=dtype).element_size()
        return torch.randint(0, 256, (n * item,), dtype=torch.uint8, generator=g).view(dtype).reshape(shape)

    t = {"model.embed_tokens.weight": rand(torch.bfloat16, 16001, 2048), "lm_head.weight": rand(torch.uint8, 4097, 2048), "model.ids": rand(torch.int64, 1001, 16)}
    for i in range(4):
        p = f"model.layers.{i}."
        t[p + "attn.q_proj.weight"] = rand(torch.float32, 1027, 4096)
        t[p + "mlp.up_proj.weight"] = rand(torch.float16, 4099, 4096)
        t[p + "mlp.scales"] = rand(torch.float8_e4m3fn, 2047, 1024)
        t[p + "input_layernorm.weight"] = rand(torch.float32, 4096)
        t[p + "bias"] = rand(torch.bfloat16, 4096)
    save_file(t, path)
    return os.path.getsize(path)


def run(a):
    import torch
    import torch.distributed as dist
    from safetensors.torch import load_file

    from dmaload_client import Client

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    server_before = pss(a.server_pid) if rank == 0 else 0
    before = pss()
    dist.barrier()
    t0 = time.perf_counter()
    with Client(a.socket, timeout=120) as client:
        got = client.load_safetensors(a.model, framework="torch", rank=rank, world_size=world, split=a.split)
    load_ms = (time.perf_counter() - t0) * 1000
    dist.barrier()  # every rank holds its tensors now
    after = pss()
    server_after = pss(a.server_pid) if rank == 0 else 0
    dist.barrier()  # every rank measured before anyone copies anything

    want = load_file(a.model)
    mismatches = 0
    held = 0
    for name, w in want.items():
        if a.split == "rows" and w.dim() == 2 and w.shape[0] > 0:
            w = w[rank * w.shape[0] // world : (rank + 1) * w.shape[0] // world]
        elif name not in got:
            if a.split == "rows":
                mismatches += 1  # split rows: every rank has every tensor
            continue
        g = got.get(name)
        if g is None or g.dtype != w.dtype or g.shape != w.shape or not torch.equal(g.reshape(-1).view(torch.uint8), w.reshape(-1).view(torch.uint8)):
            mismatches += 1
            print(f"rank {rank}: {name} differs", file=sys.stderr)
        held += g.numel() * g.element_size() if g is not None else 0
    dist.barrier()  # for comparison: what safetensors' own load, every byte of it read, adds (a diagnostic)
    after_load_file = pss()
    extra = [n for n in got if n not in want]
    mismatches += len(extra)
    counts = torch.tensor([mismatches, held, len(got)], dtype=torch.float64)
    dist.all_reduce(counts)
    stats = [None] * world
    dist.all_gather_object(stats, {"rank": rank, "pssBefore": before, "pssAfter": after, "pssLoadFile": after_load_file, "loadMs": round(load_ms, 1), "tensors": len(got), "bytes": held})
    if rank == 0:
        out = {
            "world": world,
            "split": a.split,
            "fileSize": os.path.getsize(a.model),
            "mismatches": int(counts[0]),
            "bytesHeld": int(counts[1]),
            "ranks": stats,
            "server": {"pssBefore": server_before, "pssAfter": server_after},
            "pssIncrease": sum(s["pssAfter"] - s["pssBefore"] for s in stats) + server_after - server_before,
            "pssLoadFileIncrease": sum(s["pssLoadFile"] - s["pssAfter"] for s in stats),
        }
        print("@@torchrun " + json.dumps(out), flush=True)
    del got, want
    dist.barrier()
    dist.destroy_process_group()
    return 1 if int(counts[0]) else 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("model")
    r = sub.add_parser("run")
    r.add_argument("--socket", required=True)
    r.add_argument("--model", required=True)
    r.add_argument("--server-pid", required=True, type=int)
    r.add_argument("--split", default="rows", choices=["rows", "tensors"])
    a = p.parse_args()
    if a.cmd == "generate":
        print(json.dumps({"size": generate(a.model)}))
        return 0
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
