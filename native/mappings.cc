// mappings.cc — regions and views: mmap, view, unview, maxView, regionSize, munmap(Soon), revokeViews, live mappings. What
// JS does to the memory of a live region (madvise, mmapInto, populate, address) is in regionops.cc; mbind in numa.cc.
// A Region handle is a type-tagged External; JS reaches the bytes only through views (external ArrayBuffers) that
// each pin the region, so munmap can detach them and the OS mapping outlives every job still using it.
#include "mappings.h"

#include <linux/magic.h>
#include <linux/mempolicy.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <vector>

#include "faults.h"

namespace dmaload {

bool InRange(uint64_t off, uint64_t len, uint64_t size) { return off <= size && len <= size - off; }

bool CheckRange(const Args& a, const Region& r, uint64_t off, uint64_t len) {
  if (InRange(off, len, r.len)) return true;
  return a.RangeError("offset + length", "<= the region's size " + std::to_string(r.len) + " (got " + std::to_string(off) + " + " + std::to_string(len) + ")");
}

namespace {

// "dmaload" + "region" / a version: refuses any other addon's External.
const napi_type_tag kRegionTag = {0x646d616c6f616400ULL, 0x726567696f6e0002ULL};

// Live regions by address, for counting and for finding the region behind an ArrayBuffer view.
std::mutex g_regMu;
std::map<uintptr_t, std::weak_ptr<Region>> g_regions;

struct RegionHandle {
  std::shared_ptr<Region> r;
};

}  // namespace

struct View {
  std::shared_ptr<Region> region;
  napi_ref weak = nullptr;            // JS thread only
  std::atomic<bool> released{false};  // its pin was dropped (by its finalizer, munmap or teardown): set once
};

bool Region::TryPin() {
  int64_t n = pins_.load();
  while (n > 0) {
    if (pins_.compare_exchange_weak(n, n + 1)) return true;
  }
  return false;
}

int Region::Unpin() {
  if (pins_.fetch_sub(1, std::memory_order_acq_rel) != 1) return 0;
  {
    std::lock_guard<std::mutex> l(g_regMu);
    g_regions.erase(reinterpret_cast<uintptr_t>(addr));
  }
  return munmap(base, baseLen) < 0 ? static_cast<int>(Err()) : 0;
}

size_t LiveRegions() {
  std::lock_guard<std::mutex> l(g_regMu);
  return g_regions.size();
}

Lease LeaseContaining(const uint8_t* p, uint64_t n) {
  std::lock_guard<std::mutex> l(g_regMu);
  auto it = g_regions.upper_bound(reinterpret_cast<uintptr_t>(p));
  if (it == g_regions.begin()) return Lease();
  --it;
  auto r = it->second.lock();
  if (!r || p < r->addr || n > r->len || p - r->addr > static_cast<ptrdiff_t>(r->len - n)) return Lease();
  if (!r->TryPin()) return Lease();
  return Lease(std::move(r));
}

static void ViewFinalize(napi_env env, void*, void* hint) {
  auto* v = static_cast<View*>(hint);
  if (!v->released.exchange(true)) {
    Region& r = *v->region;
    bool last;
    {
      std::lock_guard<std::mutex> l(r.mu);
      r.views.erase(v);
      last = r.views.empty();
    }
    EnvData* d = GetEnvData(Napi::Env(env));
    if (last && !r.owner.load() && d && !d->tearingDown) d->Remove(v->region);
    r.Unpin();
  }
  if (v->weak) napi_delete_reference(env, v->weak);
  delete v;
}

// munmap (detach=true): detaches each view and drops its pin. A view already detached by someone else — e.g.
// ArrayBuffer.prototype.transfer() (Node 22+) moved the memory into a buffer we cannot reach — or collected but not
// yet finalized keeps its pin: Node runs the finalizer only when the last buffer holding the memory is gone.
// Teardown (detach=false): drops every pin; no JS runs after it.
static void ReleaseViews(Region& r, napi_env env, bool detach) {
  std::unordered_set<View*> vs, kept;
  {
    std::lock_guard<std::mutex> l(r.mu);
    vs.swap(r.views);
  }
  for (View* v : vs) {
    napi_value ab = nullptr;
    if (v->weak) napi_get_reference_value(env, v->weak, &ab);
    if (detach) {
      bool detached = true;
      if (!ab || napi_is_detached_arraybuffer(env, ab, &detached) != napi_ok || detached) {
        kept.insert(v);
        continue;
      }
    }
    if (v->released.exchange(true)) continue;  // set before detaching: detach may run the finalizer right here
    auto region = v->region;                   // v may be freed by that finalizer
    if (detach) {
      napi_detach_arraybuffer(env, ab);
    } else if (v->weak) {
      napi_delete_reference(env, v->weak);
      v->weak = nullptr;
    }
    region->Unpin();
  }
  if (!kept.empty()) {
    std::lock_guard<std::mutex> l(r.mu);
    r.views.insert(kept.begin(), kept.end());
  }
}

int Region::Close(Napi::Env e, bool detach) {
  if (!owner.exchange(false)) return -EINVAL;
  closed = true;
  auto self = shared_from_this();
  if (detach) ReleaseViews(*this, e, true);
  bool noViews;
  {
    std::lock_guard<std::mutex> l(mu);
    noViews = views.empty();
  }
  EnvData* d = GetEnvData(e);
  if (noViews && d && !d->tearingDown) d->Remove(self);
  return Unpin();
}

void Region::Teardown() {
  closed = true;
  ReleaseViews(*this, env, false);
  if (owner.exchange(false)) Unpin();
}

static void RegionHandleFinalize(Napi::Env env, RegionHandle* h) {
  // Collected without munmap: drop the owner's pin; live views keep the mapping until they go too.
  if (h->r->owner.load()) h->r->Close(env, false);
  delete h;
}

bool ReadRegion(const Args& a, Napi::Value v, const std::string& what, std::shared_ptr<Region>& out, bool requireOpen) {
  if (!v.IsExternal() || !v.As<Napi::External<RegionHandle>>().CheckTypeTag(&kRegionTag)) return a.TypeError(what, "a Region (from mmap())");
  out = v.As<Napi::External<RegionHandle>>().Data()->r;
  if (requireOpen && out->closed.load()) {
    ThrowErrorCode(a.env, "ERR_REGION_CLOSED", a.Prefix() + what + " was munmapped");
    return false;
  }
  return true;
}

bool ReadTarget(const Args& a, Napi::Value v, const std::string& what, Target& out) {
  if (v.IsExternal()) {
    std::shared_ptr<Region> r;
    if (!ReadRegion(a, v, what, r)) return false;
    r->Pin();  // the JS handle's pin is held (not closed), so the count is above 0
    out.data = r->addr;
    out.size = r->len;
    out.lease = Lease(std::move(r));
    return true;
  }
  if (!v.IsArrayBuffer()) return a.TypeError(what, "a Region or an ArrayBuffer");
  auto ab = v.As<Napi::ArrayBuffer>();
  if (ab.IsDetached() || ab.Data() == nullptr || ab.ByteLength() == 0) {
    return a.TypeError(what, "an attached, non-empty ArrayBuffer", "ERR_BUFFER_DETACHED");
  }
  out.data = static_cast<uint8_t*>(ab.Data());
  out.size = ab.ByteLength();
  out.keep = Napi::Persistent(ab);
  out.lease = LeaseContaining(out.data, out.size);  // a view: its region must outlive the request too
  return true;
}

namespace {

// The huge page size of a hugetlbfs file (a memfd made with MFD_HUGETLB), or 0 for any other file: the kernel
// maps and unmaps such a file in whole huge pages only, so a region over it must span whole ones.
size_t HugetlbPageOf(int fd) {
  struct statfs sfs;
  if (fstatfs(fd, &sfs) < 0 || sfs.f_type != HUGETLBFS_MAGIC) return 0;
  return sfs.f_bsize > 0 ? static_cast<size_t>(sfs.f_bsize) : 0;
}

// mmap(length, prot, flags, fd, offset, align) -> Region | -errno. align > page size is honoured by over-reserving
// and trimming (2 MiB for huge pages), for anonymous mappings and files of small pages alike (a file's mapping is
// placed over the aligned part of an anonymous reservation). MAP_HUGETLB: align must be the huge page size; the
// kernel aligns such a mapping itself, and the region spans whole huge pages (over-reserving would take pool
// pages the caller never asked for, and a hugetlb mapping cannot be trimmed inside a huge page). A hugetlbfs file
// is mapped in whole huge pages likewise.
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Args a(info, "mmap");
  uint64_t len, off, align;
  int prot, flags, fd;
  if (!a.U64(a[0], "length", len, kMaxSafe, 1) || !a.I32(a[1], "prot", prot) || !a.I32(a[2], "flags", flags) || !a.Fd(a[3], "fd", fd, true) ||
      !a.U64(a[4], "offset", off) || !a.U64(a[5], "align", align, kGiB))
    return {};
  if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) return a.RangeError("flags", "without MAP_FIXED (use mmapInto)"), Napi::Value();
  if (align & (align - 1)) return a.RangeError("align", "0 or a power of two"), Napi::Value();
  bool hugetlb = (flags & MAP_HUGETLB) != 0;
  if (hugetlb && (fd >= 0 || align < PageSize())) return a.RangeError("align", "the huge page size with MAP_HUGETLB (anonymous only)"), Napi::Value();
  if (int e = FaultHit(kFaultMmap)) return Num(a.env, -e);
  size_t ps = PageSize();
  size_t unit = hugetlb ? align : fd >= 0 ? std::max(ps, HugetlbPageOf(fd)) : ps;
  if (unit & (unit - 1)) unit = ps;
  size_t mlen = (len + unit - 1) & ~(unit - 1);
  uint8_t* addr;
  if (align > ps && !hugetlb && unit == ps) {
    // A file's mapping is placed over an aligned reservation (a shmem file's huge folios are then mapped by PMDs).
    size_t reserve = mlen + align;
    void* base = fd < 0 ? mmap(nullptr, reserve, prot, flags, -1, 0) : mmap(nullptr, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) return Num(a.env, static_cast<double>(Err()));
    uintptr_t b = reinterpret_cast<uintptr_t>(base);
    uintptr_t al = (b + align - 1) & ~(static_cast<uintptr_t>(align) - 1);
    size_t head = al - b, tail = reserve - head - mlen;
    if (fd >= 0 && mmap(reinterpret_cast<void*>(al), mlen, prot, flags | MAP_FIXED, fd, static_cast<off_t>(off)) == MAP_FAILED) {
      int64_t e = Err();
      munmap(base, reserve);
      return Num(a.env, static_cast<double>(e));
    }
    if (head) munmap(base, head);
    if (tail) munmap(reinterpret_cast<void*>(al + mlen), tail);
    addr = reinterpret_cast<uint8_t*>(al);
  } else {
    void* m = mmap(nullptr, mlen, prot, flags, fd, static_cast<off_t>(off));
    if (m == MAP_FAILED) return Num(a.env, static_cast<double>(Err()));
    addr = static_cast<uint8_t*>(m);
  }
  // Never in a child: fork() would copy the page tables of a private mapping and make every page copy-on-write (a
  // spawn with 1 GiB loaded cost 58 ms instead of 7, and the next direct-I/O reload faulted on every page), and a
  // child must not see memory a device or a job may still be writing. A child that needs the bytes gets the fd.
  madvise(addr, mlen, MADV_DONTFORK);
  auto r = std::make_shared<Region>(addr, len, addr, mlen);
  r->env = a.env;
  {
    std::lock_guard<std::mutex> l(g_regMu);
    g_regions[reinterpret_cast<uintptr_t>(addr)] = r;
  }
  GetEnvData(a.env)->Add(r);
  auto* h = new RegionHandle{r};
  auto ext = Napi::External<RegionHandle>::New(a.env, h, RegionHandleFinalize);
  // Fails while a worker is terminating: nothing will own the mapping, so undo it.
  if (ext.IsEmpty() || napi_type_tag_object(a.env, ext, &kRegionTag) != napi_ok) {
    if (ext.IsEmpty()) delete h;
    r->Close(a.env, false);
    return {};
  }
  return ext;
}

// view(region, offset, length) -> ArrayBuffer over [offset, offset+length): zero-copy, pins the region.
Napi::Value ViewFn(const Napi::CallbackInfo& info) {
  Args a(info, "view");
  std::shared_ptr<Region> r;
  uint64_t off, len;
  if (!ReadRegion(a, a[0], "region", r) || !a.U64(a[1], "offset", off) || !a.U64(a[2], "length", len) || !CheckRange(a, *r, off, len)) return {};
  if (len > MaxView(a.env)) return a.RangeError("length", "<= maxView() = " + std::to_string(MaxView(a.env)) + " on this Node.js"), Napi::Value();
  if (len == 0) return Napi::ArrayBuffer::New(a.env, 0);  // owns nothing, pins nothing
  r->Pin();
  auto* v = new View{r};
  {
    std::lock_guard<std::mutex> l(r->mu);
    r->views.insert(v);
  }
  napi_value ab;
  napi_status st = napi_create_external_arraybuffer(a.env, r->addr + off, len, ViewFinalize, v, &ab);
  if (st != napi_ok) {
    // Node may or may not have taken the finalizer: leave v to it (a few bytes), but take the pin back.
    {
      std::lock_guard<std::mutex> l(r->mu);
      r->views.erase(v);
    }
    if (!v->released.exchange(true)) r->Unpin();
    ThrowErrorCode(a.env, "ERR_NAPI", a.Prefix() + "napi_create_external_arraybuffer failed");
    return {};
  }
  napi_create_reference(a.env, ab, 0, &v->weak);
  return Napi::Value(a.env, ab);
}

// unview(ab) -> true | false: the library's own short-lived views (a padding fill, a staging copy) give their pin
// back at once instead of when the garbage collector gets to them, so unmapping a region is never left waiting on a
// finalizer for memory nobody can reach. Detaches `ab`; false when it is not a live view of a region.
Napi::Value UnviewFn(const Napi::CallbackInfo& info) {
  Args a(info, "unview");
  if (!info[0].IsArrayBuffer()) return a.TypeError("view", "an ArrayBuffer from view()"), Napi::Value();
  auto ab = info[0].As<Napi::ArrayBuffer>();
  if (ab.IsDetached() || ab.ByteLength() == 0) return Napi::Boolean::New(a.env, false);
  Lease lease = LeaseContaining(static_cast<const uint8_t*>(ab.Data()), ab.ByteLength());
  if (!lease) return Napi::Boolean::New(a.env, false);
  std::shared_ptr<Region> r = lease.region();
  View* found = nullptr;
  bool last = false;
  {
    std::lock_guard<std::mutex> l(r->mu);
    for (View* v : r->views) {
      napi_value val = nullptr;
      bool same = false;
      if (v->weak && napi_get_reference_value(a.env, v->weak, &val) == napi_ok && val && napi_strict_equals(a.env, val, ab, &same) == napi_ok && same) {
        found = v;
        r->views.erase(v);
        last = r->views.empty();
        break;
      }
    }
  }
  if (!found || found->released.exchange(true)) return Napi::Boolean::New(a.env, false);
  EnvData* d = GetEnvData(a.env);
  if (last && !r->owner.load() && d && !d->tearingDown) d->Remove(r);
  napi_delete_reference(a.env, found->weak);
  found->weak = nullptr;
  ab.Detach();  // its finalizer now sees `released` and only frees the record
  r->Unpin();
  return Napi::Boolean::New(a.env, true);
}

Napi::Value MaxViewFn(const Napi::CallbackInfo& info) { return Num(info.Env(), static_cast<double>(MaxView(info.Env()))); }

Napi::Value RegionSize(const Napi::CallbackInfo& info) {
  Args a(info, "regionSize");
  std::shared_ptr<Region> r;
  if (!ReadRegion(a, a[0], "region", r, false)) return {};
  return Num(a.env, static_cast<double>(r->len));
}

// munmap(region) -> 0 | -errno: detaches every view and drops the handle's pin; the OS mapping goes when the last
// job using it ends. A second munmap gives -EINVAL.
Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Args a(info, "munmap");
  std::shared_ptr<Region> r;
  if (!ReadRegion(a, a[0], "region", r, false)) return {};
  return Num(a.env, r->Close(a.env, true));
}

// munmapSoon(region) -> Promise<0 | -errno>: munmap(region), with the unmapping itself on a thread of its own:
// tearing down a GiB of page tables takes ~130 ms here, which would stall the event loop (a server's other clients).
// Not on libuv's pool, which a server's clients can keep busy (see fdops.cc). Views are detached at once, as munmap
// does; the promise settles once this call's pin is dropped (the mapping is gone unless a job still holds it). A
// region already munmapped gives -EINVAL.
Napi::Value MunmapSoon(const Napi::CallbackInfo& info) {
  Args a(info, "munmapSoon");
  std::shared_ptr<Region> r;
  if (!ReadRegion(a, a[0], "region", r, false)) return {};
  auto deferred = Napi::Promise::Deferred::New(a.env);
  auto promise = deferred.Promise();
  // This call's own pin, so that dropping the owner's cannot unmap here on the JS thread.
  if (!r->TryPin()) return deferred.Resolve(Num(a.env, -EINVAL)), promise;
  if (int rc = r->Close(a.env, true); rc < 0) {
    r->Unpin();
    return deferred.Resolve(Num(a.env, rc)), promise;
  }
  auto tsfn = Napi::ThreadSafeFunction::New(a.env, Napi::Function::New(a.env, [](const Napi::CallbackInfo&) {}), "dmaload.munmapSoon", 0, 1);
  if (static_cast<napi_threadsafe_function>(tsfn) == nullptr || a.env.IsExceptionPending()) {
    r->Unpin();  // no way back from a thread: unmap here rather than not at all (the exception is thrown)
    return {};
  }
  auto* done = new Napi::Promise::Deferred(deferred);
  std::thread t;
  int e = Spawn(t, [tsfn, r, done]() mutable {
    auto* rc = new int(r->Unpin());
    r.reset();
    auto settle = [done](Napi::Env env, Napi::Function, int* v) {
      if (env != nullptr) done->Resolve(Num(env, *v));
      delete v;
      delete done;
    };
    if (tsfn.BlockingCall(rc, settle) != napi_ok) {  // the environment is going: nobody waits any more
      delete rc;
      delete done;
    }
    tsfn.Release();
  });
  if (e) {  // no thread: unmap here rather than not at all
    tsfn.Release();
    delete done;
    deferred.Resolve(Num(a.env, r->Unpin()));
    return promise;
  }
  t.detach();
  return promise;
}

// revokeViews(region) -> undefined: detaches every reachable view of a live region and drops their pins, as munmap
// does, but keeps the mapping: memory that changes hands (load({ into }), a pool) must not stay visible through
// the old owner's views. A view the collector took but has not finalized keeps its pin, as in munmap.
Napi::Value RevokeViews(const Napi::CallbackInfo& info) {
  Args a(info, "revokeViews");
  std::shared_ptr<Region> r;
  if (!ReadRegion(a, a[0], "region", r)) return {};
  ReleaseViews(*r, a.env, true);
  return a.env.Undefined();
}

Napi::Value LiveMappings(const Napi::CallbackInfo& info) { return Num(info.Env(), static_cast<double>(LiveRegions())); }

}  // namespace

void InitMappings(Napi::Env env, Napi::Object exports) {
  exports.Set("mmap", Napi::Function::New(env, Mmap, "mmap"));
  exports.Set("view", Napi::Function::New(env, ViewFn, "view"));
  exports.Set("maxView", Napi::Function::New(env, MaxViewFn, "maxView"));
  exports.Set("unview", Napi::Function::New(env, UnviewFn, "unview"));
  exports.Set("regionSize", Napi::Function::New(env, RegionSize, "regionSize"));
  exports.Set("munmap", Napi::Function::New(env, Munmap, "munmap"));
  exports.Set("munmapSoon", Napi::Function::New(env, MunmapSoon, "munmapSoon"));
  exports.Set("revokeViews", Napi::Function::New(env, RevokeViews, "revokeViews"));
  exports.Set("liveMappings", Napi::Function::New(env, LiveMappings, "liveMappings"));
}

}  // namespace dmaload
