// numa.cc — NUMA placement of the addon's mappings: mbind(2) of a region before its pages are faulted in, and
// move_pages(2) in query mode to say where each page is (a diagnostic). Raw syscalls: no libnuma.
#include <linux/mempolicy.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "mappings.h"

namespace dmaload {

namespace {

// The highest node number mbind takes here: Linux's MAX_NUMNODES is at most 1 << 10 (CONFIG_NODES_SHIFT).
constexpr int64_t kMaxNode = 1 << 10;

// mbind(region, offset, length, mode, nodes, flags) -> 0 | -errno: the memory policy of [offset, offset+length) of a
// region (raw syscall: no libnuma). It decides where pages faulted in afterwards come from, so the caller binds
// before populating. On a shared memfd mapping the kernel stores it as the file's shared policy (shmem), which
// every later fault of the file follows. mode: MPOL_DEFAULT (nodes empty), MPOL_PREFERRED, MPOL_BIND or
// MPOL_INTERLEAVE (nodes not empty); flags: 0, MPOL_MF_STRICT, MPOL_MF_MOVE. Which nodes exist is the caller's
// business: the kernel answers EINVAL for one without memory.
Napi::Value Mbind(const Napi::CallbackInfo& info) {
  Args a(info, "mbind");
  std::shared_ptr<Region> r;
  uint64_t off, len;
  int mode, flags;
  if (!ReadRegion(a, a[0], "region", r) || !a.U64(a[1], "offset", off) || !a.U64(a[2], "length", len, kMaxSafe, 1) ||
      !a.I32(a[3], "mode", mode, MPOL_DEFAULT, MPOL_INTERLEAVE) || !CheckRange(a, *r, off, len))
    return {};
  if (off % PageSize()) return a.RangeError("offset", "a multiple of the page size " + std::to_string(PageSize())), Napi::Value();
  if (!a[4].IsArray()) return a.TypeError("nodes", "an array of node numbers"), Napi::Value();
  auto arr = a[4].As<Napi::Array>();
  if (arr.Length() > static_cast<uint32_t>(kMaxNode)) return a.RangeError("nodes", "at most " + std::to_string(kMaxNode) + " nodes"), Napi::Value();
  std::vector<unsigned long> mask(kMaxNode / (8 * sizeof(unsigned long)), 0);
  int64_t highest = -1;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    int64_t n;
    if (!a.Int(arr.Get(i), "nodes[" + std::to_string(i) + "]", 0, kMaxNode - 1, n)) return {};
    mask[n / (8 * sizeof(unsigned long))] |= 1ul << (n % (8 * sizeof(unsigned long)));
    highest = std::max(highest, n);
  }
  if ((mode == MPOL_DEFAULT) != (highest < 0)) return a.RangeError("nodes", mode == MPOL_DEFAULT ? "empty with MPOL_DEFAULT" : "not empty"), Napi::Value();
  if (!a.I32(a[5], "flags", flags)) return {};
  if (flags & ~(MPOL_MF_STRICT | MPOL_MF_MOVE)) return a.RangeError("flags", "0, MPOL_MF_STRICT and/or MPOL_MF_MOVE"), Napi::Value();
  // maxnode counts bits plus one (the kernel drops the last); a mask of whole longs covers every node asked for.
  unsigned long maxnode = highest < 0 ? 0 : static_cast<unsigned long>(highest / (8 * sizeof(unsigned long)) + 1) * 8 * sizeof(unsigned long) + 1;
  long rc =
      syscall(SYS_mbind, r->addr + off, static_cast<unsigned long>(len), mode, highest < 0 ? nullptr : mask.data(), maxnode, static_cast<unsigned>(flags));
  return Num(a.env, rc < 0 ? static_cast<double>(Err()) : 0);
}

// numaPageNodes(target, offset, length) -> Int32Array | -errno. A diagnostic: the NUMA node of every page that
// [offset, offset+length) of a region or a view touches, from move_pages(2) in query mode (nodes = NULL: nothing
// moves), one entry per small page; an entry is the node, or -errno for that page (-ENOENT: not faulted in,
// -EFAULT: not mapped). The call's own failure (-ENOSYS: a kernel without NUMA) is the number.
Napi::Value NumaPageNodes(const Napi::CallbackInfo& info) {
  Args a(info, "numaPageNodes");
  Target t;
  uint64_t off, len;
  if (!ReadTarget(a, a[0], "target", t) || !a.U64(a[1], "offset", off) || !a.U64(a[2], "length", len)) return {};
  if (!InRange(off, len, t.size)) return a.RangeError("offset + length", "<= the target's size " + std::to_string(t.size)), Napi::Value();
  size_t ps = PageSize();
  uintptr_t first = reinterpret_cast<uintptr_t>(t.data + off) & ~(ps - 1);
  uintptr_t end = len == 0 ? first : (reinterpret_cast<uintptr_t>(t.data + off + len) + ps - 1) & ~(ps - 1);
  size_t count = (end - first) / ps;
  auto out = Napi::Int32Array::New(a.env, count);
  constexpr size_t kBatch = 16384;
  std::vector<void*> pages;
  std::vector<int> status;
  for (size_t done = 0; done < count; done += kBatch) {
    size_t n = std::min(kBatch, count - done);
    pages.resize(n);
    status.assign(n, 0);
    for (size_t i = 0; i < n; i++) pages[i] = reinterpret_cast<void*>(first + (done + i) * ps);
    long rc = syscall(SYS_move_pages, 0, static_cast<unsigned long>(n), pages.data(), nullptr, status.data(), 0);
    if (rc < 0) return Num(a.env, static_cast<double>(Err()));
    for (size_t i = 0; i < n; i++) out[done + i] = status[i];
  }
  return out;
}

}  // namespace

void InitNuma(Napi::Env env, Napi::Object exports) {
  exports.Set("mbind", Napi::Function::New(env, Mbind, "mbind"));
  exports.Set("numaPageNodes", Napi::Function::New(env, NumaPageNodes, "numaPageNodes"));
}

}  // namespace dmaload
