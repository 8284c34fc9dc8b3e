// mappings.h — regions (mappings the addon made) and what pins them. A mapping is unmapped only when its last pin
// drops (the JS handle, a view, a job, a queue request, a populate), from whichever thread drops it, so an address
// is never reused while a native thread may still read or write there. Also the Target that jobs and queues use.
#pragma once
#include "args.h"
#include "live.h"

#include <memory>
#include <mutex>
#include <unordered_set>

namespace dmaload {

struct View;

class Region : public Owned, public std::enable_shared_from_this<Region> {
 public:
  Region(uint8_t* addr, uint64_t len, void* base, size_t baseLen) : addr(addr), len(len), base(base), baseLen(baseLen) {}
  uint8_t* const addr;  // what JS sees
  const uint64_t len;
  void* const base;  // what to munmap
  const size_t baseLen;

  std::atomic<bool> closed{false};  // munmap()ed or collected: no new views, jobs or advice
  std::atomic<bool> owner{true};    // the JS handle's pin is still held

  void Pin() { pins_.fetch_add(1, std::memory_order_relaxed); }
  bool TryPin();  // fails once the count reached 0 (the mapping is going)
  int Unpin();    // at 0: unregisters and munmaps; returns munmap's 0/-errno then, else 0

  // Drops the owner pin (once) and releases every view; detach=true also detaches their ArrayBuffers (munmap).
  int Close(Napi::Env env, bool detach);
  void Teardown() override;

  std::mutex mu;
  std::unordered_set<View*> views;  // live views still holding a pin; under mu
  napi_env env = nullptr;

 private:
  std::atomic<int64_t> pins_{1};  // the owner's
};

// One pin on a region, with the record kept alive; move-only; unpins when destroyed or released (any thread).
class Lease {
 public:
  Lease() = default;
  explicit Lease(std::shared_ptr<Region> r) : r_(std::move(r)) {}  // takes over a pin already taken
  Lease(Lease&& o) noexcept : r_(std::move(o.r_)) {}
  Lease& operator=(Lease&& o) noexcept {
    Release();
    r_ = std::move(o.r_);
    return *this;
  }
  ~Lease() { Release(); }
  void Release() {
    if (r_) r_->Unpin();
    r_.reset();
  }
  explicit operator bool() const { return r_ != nullptr; }
  const std::shared_ptr<Region>& region() const { return r_; }

 private:
  std::shared_ptr<Region> r_;
};

// Where a request's bytes go or come from: a region (pinned) or a plain ArrayBuffer (kept reachable by a persistent
// reference; one lying inside a region, i.e. a view, also pins that region).
struct Target {
  uint8_t* data = nullptr;
  uint64_t size = 0;
  Lease lease;
  Napi::Reference<Napi::ArrayBuffer> keep;  // JS thread only
};

// Reads a Region handle: TypeError for anything else, ERR_REGION_CLOSED when closed and requireOpen.
bool ReadRegion(const Args& a, Napi::Value v, const std::string& what, std::shared_ptr<Region>& out, bool requireOpen = true);
// Reads a Region or an ArrayBuffer as a target: ERR_BUFFER_DETACHED for a detached or empty buffer.
bool ReadTarget(const Args& a, Napi::Value v, const std::string& what, Target& out);
// Pins the live region containing [p, p+n), if any.
Lease LeaseContaining(const uint8_t* p, uint64_t n);
size_t LiveRegions();
// [off, off+len) lies within `size` bytes (no overflow).
bool InRange(uint64_t off, uint64_t len, uint64_t size);
// InRange for a region, else a RangeError naming the region's size (false, exception pending).
bool CheckRange(const Args& a, const Region& r, uint64_t off, uint64_t len);

void InitMappings(Napi::Env env, Napi::Object exports);

}  // namespace dmaload
