"""`npm run bench:python` (issue #30's floors): the Python client's load_file() against safetensors' own, on a cold
safetensors file that the user's server has not loaded yet, every byte touched; a second process loading the same
file while the first holds it; and the server's start-up when none runs (the client starts it).

Each measurement runs in a fresh Python process (timed inside it from the call on: the interpreter and the imports
excluded), rounds alternate, the file is evicted from the page cache before each cold row (fsync,
then POSIX_FADV_DONTNEED), and the server loads it afresh each round (its modification time is bumped: a new
version). The second process's cost in memory is the growth of the machine's Shmem (/proc/meminfo: the server's
memfd pages are shmem) while it holds its tensors: a copy would add the file's size.

"Touched": every tensor's bytes summed as float32 (vectorised), the same on both sides; the sums must agree.

Usage: python3 tools/bench/python_load.py [--size MiB] [--rounds N] [--dir DIR]
Besides the server as `dmaload serve` starts by default (a memfd of huge folios where the kernel makes them), one
started with --huge-pages off gives the small-pages row; with a hugetlb pool that holds the file (root: sysctl
vm.nr_hugepages=N), a third server on hugetlb pages gives one more row.
(clients/python/bench/cold_load.py measures Client.load_safetensors and the page cache each method leaves; this one
measures the drop-in load_file(), a second process and the server's start-up, the floors of issue #30.)
Needs torch and safetensors (the venv .ci/run makes), node and the built checkout (npm install).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLI = os.path.join(ROOT, "bin", "dmaload.js")
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
# The Python client's own cold-load bench (Client.load_safetensors against safetensors, each method's page cache
# left) has the eviction this one needs.
sys.path.insert(0, os.path.join(ROOT, "clients", "python", "bench"))
from cold_load import evict  # noqa: E402

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[3])
import torch
which, path = sys.argv[1], sys.argv[2]
def touch(tensors):
    # Every byte read, by a vectorised float32 sum (45 ms per GiB here; a float64-accumulating sum takes 1.6 s and a uint8 sum 8 s, and would hide the loads).
    return sum(float(t.reshape(-1).view(torch.float32).sum()) for t in tensors.values())
if which == "safetensors":
    from safetensors.torch import load_file
else:
    from dmaload_client import load_file
torch.ones(1 << 20).sum(dtype=torch.float64)  # torch's first operation starts its threads: not the loaders' cost
t0 = time.perf_counter()
d = load_file(path)
s = touch(d)
ms = (time.perf_counter() - t0) * 1000
def pss():
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
print(json.dumps({"ms": ms, "sum": s, "pss": pss()}), flush=True)
if len(sys.argv) > 4:
    sys.stdin.readline()  # hold the tensors until told
"""


def meminfo(key):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def make_file(path, size):
    import torch
    from safetensors.torch import save_file

    n = size // 4 // 8
    g = torch.Generator().manual_seed(0x5EED)
    tensors = {f"layer{i}.weight": torch.rand((n // 1024, 1024), generator=g) for i in range(8)}
    save_file(tensors, path)
    return os.path.getsize(path)


def child(which, path, hold=False, env=None):
    argv = [sys.executable, "-c", CHILD, which, path, os.path.join(ROOT, "clients", "python")] + (["hold"] if hold else [])
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if not line:
        raise SystemExit(f"{which} failed: {p.stderr.read()}")
    r = json.loads(line)
    if not hold:
        p.wait()
        return r, None
    return r, p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024, help="MiB (default 1024)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=os.environ.get("DMALOAD_BENCH_DIR") or os.path.join(ROOT, ".cache", "bench-python"))
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    work = tempfile.mkdtemp(dir=a.dir)
    path = os.path.join(work, "model.safetensors")
    size = make_file(path, a.size << 20)
    # The hugetlb row needs a pool that holds the file (sysctl vm.nr_hugepages); this bench does not reserve one.
    huge_free = meminfo("HugePages_Free") // 1024 * meminfo("Hugepagesize")
    hugetlb = huge_free >= size
    servers = {}
    ST, FIRST, SECOND = "safetensors.torch.load_file + touch", "dmaload_client.load_file + touch (server's first load)", "second process while the first holds it"
    SMALL, HUGE = "the first load, the server on small pages (--huge-pages off)", "the first load, the server on hugetlb pages"
    rows = {ST: [], FIRST: [], SECOND: [], SMALL: []}
    if hugetlb:
        rows[HUGE] = []
    # The servers: as started by default (a memfd of huge folios where the kernel makes them, else small pages), on
    # small pages, and on hugetlb pages where a pool holds the file.
    flags = {"default": [], "small": ["--huge-pages", "off"], "hugetlb": ["--huge-pages", "hugetlb"]}
    try:
        for kind in ["default", "small"] + (["hugetlb"] if hugetlb else []):
            sock = os.path.join(work, f"serve-{kind}.sock")
            extra = flags[kind]
            servers[kind] = (sock, subprocess.Popen(["node", CLI, "serve", "--socket", sock, "--budget", f"{max(4 * size >> 20, 1024)}MiB"] + extra, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            deadline = time.monotonic() + 20
            while not os.path.exists(sock):
                if time.monotonic() > deadline or servers[kind][1].poll() is not None:
                    raise SystemExit(f"the server ({kind} pages) did not start")
                time.sleep(0.02)
        env = dict(os.environ, DMALOAD_SOCKET=servers["default"][0])
        pss_growth = []  # Shmem growth per round
        sums = set()
        for r in range(a.rounds):
            os.utime(path)  # a new version: the server loads it afresh
            evict(path)
            st, _ = child("safetensors", path)
            rows[ST].append(st["ms"])
            os.utime(path)
            evict(path)
            first, holder = child("dmaload", path, hold=True, env=env)
            rows[FIRST].append(first["ms"])
            shmem0 = meminfo("Shmem")
            second, holder2 = child("dmaload", path, hold=True, env=env)
            rows[SECOND].append(second["ms"])
            pss_growth.append(meminfo("Shmem") - shmem0)
            for h in (holder, holder2):
                h.stdin.write("\n")
                h.stdin.flush()
                h.wait()
            sums.update([st["sum"], first["sum"], second["sum"]])
            line = f"round {r + 1}: safetensors {st['ms']:.0f} ms, dmaload {first['ms']:.0f} ms, second {second['ms']:.0f} ms"
            for kind, row in [("small", SMALL)] + ([("hugetlb", HUGE)] if hugetlb else []):
                os.utime(path)
                evict(path)
                other, _ = child("dmaload", path, env=dict(os.environ, DMALOAD_SOCKET=servers[kind][0]))
                rows[row].append(other["ms"])
                sums.add(other["sum"])
                line += f", {kind} {other['ms']:.0f} ms"
            print(line, file=sys.stderr)
        if max(sums) - min(sums) > 1e-6 * max(abs(x) for x in sums):
            raise SystemExit(f"the sums differ: {sums}")
    finally:
        for _, server in servers.values():
            server.terminate()
            server.wait()

    # Start-up: no server at the per-user socket; the client starts one (DMALOAD_CLI) and waits for it.
    rt = tempfile.mkdtemp(dir=a.dir)
    os.chmod(rt, 0o700)
    env2 = {k: v for k, v in os.environ.items() if k != "DMALOAD_SOCKET"}
    env2.update(XDG_RUNTIME_DIR=rt, DMALOAD_CLI=CLI, DMALOAD_IDLE_EXIT="5s")
    starts = []
    for _ in range(a.rounds):
        code = "import time,sys; sys.path.insert(0, sys.argv[1]); from dmaload_client._safe_open import _default_client; t=time.perf_counter(); c=_default_client()[0]; print((time.perf_counter()-t)*1000); c.close()"
        out = subprocess.run([sys.executable, "-c", code, os.path.join(ROOT, "clients", "python")], env=env2, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"the client could not start a server: {out.stderr}")
        starts.append(float(out.stdout.strip()))
        # Stop that server before the next round (it would answer, and nothing would start).
        sockp = os.path.join(rt, "dmaload", "serve.sock")
        subprocess.run(["pkill", "-f", f"serve --socket {sockp}"], capture_output=True)
        deadline = time.monotonic() + 5
        while os.path.exists(sockp) and time.monotonic() < deadline:
            time.sleep(0.05)

    med = {k: statistics.median(v) for k, v in rows.items()}
    base = med[ST]
    print(f"{size / 2**20:.0f} MiB safetensors file (8 F32 tensors), cold, every byte touched; median of {a.rounds} rounds (min–max)")
    print(f"{'row':58} {'ms':>20} {'× safetensors':>14}")
    for k, v in rows.items():
        print(f"{k:58} {med[k]:8.0f} ({min(v):.0f}–{max(v):.0f}) {med[k] / base:13.2f}×")
    print(f"second process: {med[SECOND] / med[FIRST]:.2f}× the first load's time")
    g = statistics.median(pss_growth)
    print(f"second process: the machine's Shmem grew {g / 2**20:.1f} MiB while it held the tensors ({100 * g / size:.2f} % of the file)")
    print(f"server start-up by the client (no server running): {statistics.median(starts):.0f} ms (min {min(starts):.0f}, max {max(starts):.0f})")
    if not hugetlb:
        print(f"hugetlb row: not run (the pool has {huge_free >> 20} MiB free, the file needs {size >> 20} MiB: sysctl vm.nr_hugepages)")
    subprocess.run(["rm", "-rf", work, rt])


if __name__ == "__main__":
    main()
