"""The first cold load of a safetensors model, until every byte is resident in this process: through a fresh
`dmaload serve` (Client.load_safetensors, populate=True: one madvise(MADV_POPULATE_READ)) against
safetensors.torch.load_file() followed by a touch of every page. Same run, methods alternating, the file evicted from
the page cache before each load (posix_fadvise DONTNEED, checked with mincore), a new server for every dmaload round
(so its cache is empty too). Reports each method's times and the file's bytes left in the page cache afterwards.

    PYTHONPATH=clients/python python3 clients/python/bench/cold_load.py [--size-mib 1024] [--rounds 3] [--dir DIR]

Methods:
  dmaload            load_safetensors(path, framework="torch") (populate=True, the default): resident on return
  dmaload-touch      load_safetensors(..., populate=False), then one read per page (a page fault per page)
  safetensors        safetensors.torch.load_file(path), then one read per page (its mmap faults the file in)

Needs torch and safetensors; node and a built dmaload (npm run build) for the server. Prints a table and one JSON line.
"""
import argparse
import ctypes
import json
import mmap
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SERVE_ARGS = []  # extra options for `dmaload serve` (--serve-arg)
sys.path.insert(0, os.path.dirname(HERE))

MiB = 1024 * 1024
PAGE = mmap.PAGESIZE


def generate(path, size):
    """A seeded model of about `size` bytes: BF16, F16, F32, F8_E4M3 and U8 matrices, some 1-D tensors."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(7)
    per = max(1, size // 16)  # 16 matrices
    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn]
    t = {}
    for i in range(16):
        dt = dtypes[i % 4] if i < 15 else torch.uint8
        item = torch.empty((), dtype=dt).element_size()
        cols = 4096
        rows = max(1, per // (cols * item))
        t[f"layers.{i}.weight"] = torch.randint(0, 256, (rows * cols * item,), dtype=torch.uint8, generator=g).view(dt).reshape(rows, cols)
        t[f"layers.{i}.norm"] = torch.randn(cols, generator=g)
    save_file(t, path)


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_bytes(path):
    """Bytes of the file in the page cache (mincore over a mapping of it)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        m = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        try:
            pages = (size + PAGE - 1) // PAGE
            vec = ctypes.create_string_buffer(pages)
            addr = _map_address(m)
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(b & 1 for b in vec.raw) * PAGE
        finally:
            m.close()
    finally:
        os.close(fd)


def _map_address(m):
    """The address of an mmap.mmap's mapping (read-only maps cannot be ctypes buffers; PyObject_GetBuffer can)."""

    class Py_buffer(ctypes.Structure):
        _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int), ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]

    b = Py_buffer()
    get, release = ctypes.pythonapi.PyObject_GetBuffer, ctypes.pythonapi.PyBuffer_Release
    get.argtypes, get.restype = [ctypes.py_object, ctypes.POINTER(Py_buffer), ctypes.c_int], ctypes.c_int
    release.argtypes, release.restype = [ctypes.POINTER(Py_buffer)], None
    if get(m, ctypes.byref(b), 0) != 0:
        raise OSError("PyObject_GetBuffer failed")
    try:
        return b.buf
    finally:
        release(ctypes.byref(b))


def touch(tensors):
    """Reads one byte of every page each tensor spans (and its last byte)."""
    import torch

    s = 0
    for t in tensors.values():
        if t.numel():
            b = t.reshape(-1).view(torch.uint8)
            s += int(b[::PAGE].sum()) + int(b[-1])
    return s


class Server:
    def __init__(self, socket_path):
        self.socket = socket_path
        self.p = subprocess.Popen(["node", os.path.join(REPO, "bin", "dmaload.js"), "serve", "--socket", socket_path, *SERVE_ARGS], stderr=subprocess.PIPE, text=True)
        line = self.p.stderr.readline()
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"dmaload serve did not start: {line}")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def run_dmaload(path, sock, populate):
    from dmaload_client import Client

    server = Server(sock)
    try:
        t0 = time.perf_counter()
        with Client(sock, timeout=600) as c:
            got = c.load_safetensors(path, framework="torch", populate=populate)
            if not populate:
                touch(got)
            ms = (time.perf_counter() - t0) * 1000
            with c.load(path) as hit:  # a cache hit, untimed: its stats tell how long the server's read took
                server_ms = hit.stats.get("loadMs")
        del got
    finally:
        server.stop()
    return ms, server_ms


def run_safetensors(path):
    from safetensors.torch import load_file

    t0 = time.perf_counter()
    got = load_file(path)
    touch(got)
    ms = (time.perf_counter() - t0) * 1000
    del got
    return ms, None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where the model goes (default: the system temp folder); it should do direct I/O")
    p.add_argument("--keep", action="store_true", help="keep the generated model")
    p.add_argument("--serve-arg", action="append", default=[], help="an option for `dmaload serve` (repeatable), e.g. --serve-arg=--huge-pages --serve-arg=hugetlb")
    a = p.parse_args()
    SERVE_ARGS.extend(a.serve_arg)
    work = tempfile.mkdtemp(prefix="dmaload-cold-", dir=a.dir)
    path = os.path.join(work, "model.safetensors")
    sock = os.path.join(tempfile.mkdtemp(prefix="dmaload-cold-sock-"), "s.sock")
    generate(path, a.size_mib * MiB)
    size = os.path.getsize(path)
    methods = {"dmaload": lambda: run_dmaload(path, sock, True), "dmaload-touch": lambda: run_dmaload(path, sock, False), "safetensors": lambda: run_safetensors(path)}
    results = {m: {"ms": [], "serverMs": [], "cacheLeft": []} for m in methods}
    try:
        for r in range(a.rounds):
            order = list(methods) if r % 2 == 0 else list(reversed(methods))
            for m in order:
                evict(path)
                left = cached_bytes(path)
                if left > size // 100:
                    print(f"warning: {left} bytes still cached after eviction", file=sys.stderr)
                ms, server_ms = methods[m]()
                results[m]["ms"].append(round(ms, 1))
                results[m]["serverMs"].append(server_ms)
                results[m]["cacheLeft"].append(cached_bytes(path))
                of = f" (server read {server_ms:.0f} ms)" if server_ms is not None else ""
                print(f"round {r + 1} {m:14s} {ms:8.1f} ms  {size / MiB / (ms / 1000):7.0f} MiB/s  page cache left {cached_bytes(path) / MiB:7.1f} MiB{of}", flush=True)
    finally:
        if not a.keep:
            os.unlink(path)
            os.rmdir(work)
        try:
            os.rmdir(os.path.dirname(sock))
        except OSError:
            pass
    print(f"\n{size / MiB:.0f} MiB model, {a.rounds} rounds, median:")
    for m, res in results.items():
        med = statistics.median(res["ms"])
        server = [x for x in res["serverMs"] if x is not None]
        of = f"  (server read {statistics.median(server):.0f} ms)" if server else ""
        print(f"  {m:14s} {med:8.1f} ms  {size / MiB / (med / 1000):7.0f} MiB/s  page cache left {statistics.median(res['cacheLeft']) / MiB:.1f} MiB{of}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(json.dumps({"size": size, "results": results}))


if __name__ == "__main__":
    main()
