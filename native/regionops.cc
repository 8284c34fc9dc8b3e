// regionops.cc — what JS does to the memory of a live region, through ReadRegion and a pin (mappings.h): madvise,
// mmapInto (dma-bufs mapped over whole pages of it), populate (fault pages in off the JS thread) and address. Making,
// viewing and unmapping regions is mappings.cc's.
#include <sys/mman.h>

#include "faults.h"
#include "mappings.h"
#include "populate.h"

namespace dmaload {

namespace {

// madvise(region, offset, length, advice) -> 0 | -errno
Napi::Value Madvise(const Napi::CallbackInfo& info) {
  Args a(info, "madvise");
  std::shared_ptr<Region> r;
  uint64_t off, len;
  int advice;
  if (!ReadRegion(a, a[0], "region", r) || !a.U64(a[1], "offset", off) || !a.U64(a[2], "length", len) || !a.I32(a[3], "advice", advice) ||
      !CheckRange(a, *r, off, len))
    return {};
  int rc = madvise(r->addr + off, len, advice);
  return Num(a.env, rc < 0 ? static_cast<double>(Err()) : 0);
}

// mmapInto(region, offset, length, prot, flags, fd, fileOffset) -> 0 | -errno: maps fd over whole pages of the
// region (MAP_FIXED), so several dma-bufs share one contiguous CPU view; munmap of the region removes them all.
Napi::Value MmapInto(const Napi::CallbackInfo& info) {
  Args a(info, "mmapInto");
  std::shared_ptr<Region> r;
  uint64_t off, len, fileOff;
  int prot, flags, fd;
  if (!ReadRegion(a, a[0], "region", r) || !a.U64(a[1], "offset", off) || !a.U64(a[2], "length", len, kMaxSafe, 1) || !a.I32(a[3], "prot", prot) ||
      !a.I32(a[4], "flags", flags) || !a.Fd(a[5], "fd", fd) || !a.U64(a[6], "fileOffset", fileOff) || !CheckRange(a, *r, off, len))
    return {};
  size_t ps = PageSize();
  if (off % ps || len % ps) return a.RangeError("offset and length", "multiples of the page size " + std::to_string(ps)), Napi::Value();
  if (int e = FaultHit(kFaultMmap)) return Num(a.env, -e);
  void* m = mmap(r->addr + off, len, prot, (flags & ~MAP_FIXED_NOREPLACE) | MAP_FIXED, fd, static_cast<off_t>(fileOff));
  if (m == MAP_FAILED) return Num(a.env, static_cast<double>(Err()));
  madvise(m, len, MADV_DONTFORK);  // a new mapping: kept out of children as mmap() does (see there)
  return Num(a.env, 0);
}

// populate(region, offset, length, huge = false) -> Promise<0 | -errno>: MADV_POPULATE_WRITE on libuv's pool, region
// pinned; `huge`: whole aligned 2 MiB extents as huge folios (PopulateRange).
class PopulateWorker : public Napi::AsyncWorker {
 public:
  PopulateWorker(Napi::Env env, Lease lease, uint8_t* p, uint64_t len, bool huge)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), lease_(std::move(lease)), p_(p), len_(len), huge_(huge) {}
  void Execute() override {
    if (len_ && PopulateRange(p_, len_, huge_) < 0) rc_ = -errno;
    lease_.Release();
  }
  void OnOK() override { deferred_.Resolve(Num(Env(), rc_)); }
  Napi::Promise Promise() { return deferred_.Promise(); }

 private:
  Napi::Promise::Deferred deferred_;
  Lease lease_;
  uint8_t* p_;
  uint64_t len_;
  std::atomic<bool> huge_;
  int rc_ = 0;
};

Napi::Value Populate(const Napi::CallbackInfo& info) {
  Args a(info, "populate");
  std::shared_ptr<Region> r;
  uint64_t off, len;
  bool huge = false;
  if (!ReadRegion(a, a[0], "region", r) || !a.U64(a[1], "offset", off) || !a.U64(a[2], "length", len) || !CheckRange(a, *r, off, len) ||
      (!a[3].IsUndefined() && !a.Bool(a[3], "huge", huge)))
    return {};
  r->Pin();
  uint8_t* p = r->addr + off;
  auto* w = new PopulateWorker(a.env, Lease(std::move(r)), p, len, huge);
  auto promise = w->Promise();
  w->Queue();
  return promise;
}

// address(region | ArrayBuffer) -> bigint: the first byte's address, for alignment checks (0n when detached).
Napi::Value Address(const Napi::CallbackInfo& info) {
  Args a(info, "address");
  uintptr_t p;
  if (a[0].IsExternal()) {
    std::shared_ptr<Region> r;
    if (!ReadRegion(a, a[0], "target", r, false)) return {};
    p = reinterpret_cast<uintptr_t>(r->addr);
  } else if (a[0].IsArrayBuffer()) {
    p = reinterpret_cast<uintptr_t>(a[0].As<Napi::ArrayBuffer>().Data());
  } else {
    return a.TypeError("target", "a Region or an ArrayBuffer"), Napi::Value();
  }
  return Napi::BigInt::New(a.env, static_cast<uint64_t>(p));
}

}  // namespace

void InitRegionOps(Napi::Env env, Napi::Object exports) {
  exports.Set("madvise", Napi::Function::New(env, Madvise, "madvise"));
  exports.Set("mmapInto", Napi::Function::New(env, MmapInto, "mmapInto"));
  exports.Set("populate", Napi::Function::New(env, Populate, "populate"));
  exports.Set("address", Napi::Function::New(env, Address, "address"));
}

}  // namespace dmaload
