// dmaload native addon: thin, syscall-shaped. No policy, no defaults: TypeScript validates every argument and
// decides; this file does the system calls and the hot I/O loop off the JS thread. Failures return -errno.
#include <napi.h>

#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/io_uring.h>
#include <linux/udmabuf.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace {

int64_t Err() { return -static_cast<int64_t>(errno); }

size_t PageSize() {
  static const size_t ps = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return ps;
}

int64_t I64(const Napi::Value& v) { return v.As<Napi::Number>().Int64Value(); }

// ---------------------------------------------------------------------------------------------------------------
// Mappings handed to JS as external ArrayBuffers. The region record is owned by the ArrayBuffer's finalizer; an
// explicit munmap detaches the buffer (so stale views read as empty instead of faulting) and marks the record, so
// the finalizer never unmaps an address that a later mmap has reused.
struct Region {
  void* base;      // what mmap returned (may start before addr when we aligned it)
  size_t baseLen;  // what to munmap
  bool unmapped = false;
};
std::unordered_map<void*, Region*> g_regions;  // keyed by the ArrayBuffer's data pointer; JS thread only

void FinalizeRegion(Napi::Env, void* data, Region* r) {
  if (!r->unmapped) {
    munmap(r->base, r->baseLen);
    g_regions.erase(data);
  }
  delete r;
}

// mmap(length, prot, flags, fd, offset, align) -> ArrayBuffer | -errno.
// align > page size is honoured for anonymous mappings by over-reserving and trimming (2 MiB for huge pages).
Napi::Value Mmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t len = static_cast<size_t>(I64(info[0]));
  int prot = static_cast<int>(I64(info[1]));
  int flags = static_cast<int>(I64(info[2]));
  int fd = static_cast<int>(I64(info[3]));
  off_t off = static_cast<off_t>(I64(info[4]));
  size_t align = static_cast<size_t>(I64(info[5]));
  if (len == 0) return Napi::Number::New(env, -EINVAL);
  void* base;
  size_t baseLen = len;
  void* addr;
  if (fd < 0 && align > PageSize()) {
    size_t reserve = len + align;
    base = mmap(nullptr, reserve, prot, flags, -1, 0);
    if (base == MAP_FAILED) return Napi::Number::New(env, static_cast<double>(Err()));
    uintptr_t b = reinterpret_cast<uintptr_t>(base);
    uintptr_t a = (b + align - 1) & ~(static_cast<uintptr_t>(align) - 1);
    size_t head = a - b;
    size_t tail = reserve - head - len;
    if (head) munmap(base, head);
    if (tail) munmap(reinterpret_cast<void*>(a + len), tail);
    base = addr = reinterpret_cast<void*>(a);
  } else {
    base = addr = mmap(nullptr, len, prot, flags, fd, off);
    if (base == MAP_FAILED) return Napi::Number::New(env, static_cast<double>(Err()));
  }
  auto* r = new Region{base, baseLen};
  g_regions[addr] = r;
  return Napi::ArrayBuffer::New(env, addr, len, FinalizeRegion, r);
}

// munmap(ab) -> 0 | -errno. Detaches the ArrayBuffer first.
Napi::Value Munmap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto ab = info[0].As<Napi::ArrayBuffer>();
  void* data = ab.Data();
  auto it = g_regions.find(data);
  if (data == nullptr || it == g_regions.end()) return Napi::Number::New(env, -EINVAL);
  Region* r = it->second;
  g_regions.erase(it);
  ab.Detach();
  r->unmapped = true;
  int rc = munmap(r->base, r->baseLen);
  return Napi::Number::New(env, rc < 0 ? static_cast<double>(Err()) : 0);
}

// mmapInto(ab, offset, length, prot, flags, fd, fileOffset) -> 0 | -errno: maps `fd` over part of a mapping made
// by mmap() (MAP_FIXED replaces those pages), so several dma-bufs can share one contiguous CPU view. munmap() of
// the whole view later removes them all.
Napi::Value MmapInto(const Napi::CallbackInfo& info) {
  auto ab = info[0].As<Napi::ArrayBuffer>();
  auto* p = static_cast<uint8_t*>(ab.Data()) + I64(info[1]);
  void* r = mmap(p, static_cast<size_t>(I64(info[2])), static_cast<int>(I64(info[3])), static_cast<int>(I64(info[4])) | MAP_FIXED,
                 static_cast<int>(I64(info[5])), static_cast<off_t>(I64(info[6])));
  return Napi::Number::New(info.Env(), r == MAP_FAILED ? static_cast<double>(Err()) : 0);
}

// populate(ab, offset, length) -> Promise<0 | -errno>: MADV_POPULATE_WRITE off the JS thread (allocation of the
// next part while the current one is read).
class PopulateWorker : public Napi::AsyncWorker {
 public:
  PopulateWorker(Napi::Env env, Napi::ArrayBuffer ab, uint8_t* p, size_t len)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), p_(p), len_(len) {
    keep_ = Napi::Persistent(ab);
  }
  void Execute() override {
    if (madvise(p_, len_, MADV_POPULATE_WRITE) < 0) rc_ = -errno;
  }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), rc_)); }
  Napi::Promise Promise() { return deferred_.Promise(); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::ArrayBuffer> keep_;
  uint8_t* p_;
  size_t len_;
  int rc_ = 0;
};

Napi::Value Populate(const Napi::CallbackInfo& info) {
  auto ab = info[0].As<Napi::ArrayBuffer>();
  auto* w = new PopulateWorker(info.Env(), ab, static_cast<uint8_t*>(ab.Data()) + I64(info[1]), static_cast<size_t>(I64(info[2])));
  auto promise = w->Promise();
  w->Queue();
  return promise;
}

// madvise(ab, offset, length, advice) -> 0 | -errno
Napi::Value Madvise(const Napi::CallbackInfo& info) {
  auto ab = info[0].As<Napi::ArrayBuffer>();
  auto* p = static_cast<uint8_t*>(ab.Data()) + I64(info[1]);
  int rc = madvise(p, static_cast<size_t>(I64(info[2])), static_cast<int>(I64(info[3])));
  return Napi::Number::New(info.Env(), rc < 0 ? static_cast<double>(Err()) : 0);
}

// Mappings made here and not yet unmapped: an exact count for leak checks.
Napi::Value LiveMappings(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(g_regions.size()));
}

// Address of an ArrayBuffer's first byte, for tests that check alignment.
Napi::Value Address(const Napi::CallbackInfo& info) {
  auto ab = info[0].As<Napi::ArrayBuffer>();
  return Napi::BigInt::New(info.Env(), static_cast<uint64_t>(reinterpret_cast<uintptr_t>(ab.Data())));
}

// ---------------------------------------------------------------------------------------------------------------
// Small syscalls.

Napi::Value Strerror(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), strerror(static_cast<int>(I64(info[0]))));
}

// statxDio(fd) -> [memAlign, offsetAlign] (0, 0 when the kernel or file system does not say) | -errno
Napi::Value StatxDio(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  struct statx stx {};
  int rc = static_cast<int>(syscall(SYS_statx, static_cast<int>(I64(info[0])), "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx));
  if (rc < 0) return Napi::Number::New(env, static_cast<double>(Err()));
  auto out = Napi::Array::New(env, 2);
  bool known = (stx.stx_mask & STATX_DIOALIGN) != 0;
  out[0u] = Napi::Number::New(env, known ? stx.stx_dio_mem_align : 0);
  out[1u] = Napi::Number::New(env, known ? stx.stx_dio_offset_align : 0);
  return out;
}

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  std::string name = info[0].As<Napi::String>();
  int fd = static_cast<int>(syscall(SYS_memfd_create, name.c_str(), static_cast<unsigned>(I64(info[1]))));
  return Napi::Number::New(info.Env(), fd < 0 ? static_cast<double>(Err()) : fd);
}

// seals(fd, add) -> current seals | -errno; add = 0 only reads them.
Napi::Value Seals(const Napi::CallbackInfo& info) {
  int fd = static_cast<int>(I64(info[0]));
  int add = static_cast<int>(I64(info[1]));
  if (add && fcntl(fd, F_ADD_SEALS, add) < 0) return Napi::Number::New(info.Env(), static_cast<double>(Err()));
  int s = fcntl(fd, F_GET_SEALS);
  return Napi::Number::New(info.Env(), s < 0 ? static_cast<double>(Err()) : s);
}

// fallocate(fd, mode, offset, len) -> 0 | -errno
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  int rc = fallocate(static_cast<int>(I64(info[0])), static_cast<int>(I64(info[1])), I64(info[2]), I64(info[3]));
  return Napi::Number::New(info.Env(), rc < 0 ? static_cast<double>(Err()) : 0);
}

// fadvise(fd, offset, len, advice) -> 0 | -errno
Napi::Value Fadvise(const Napi::CallbackInfo& info) {
  int rc = posix_fadvise(static_cast<int>(I64(info[0])), I64(info[1]), I64(info[2]), static_cast<int>(I64(info[3])));
  return Napi::Number::New(info.Env(), rc != 0 ? -rc : 0);
}

// residency(fd, offset, length, pageBytes?) -> bytes of [offset, offset+length) resident in the page cache, by
// mincore over a temporary read-only mapping (mapping a file does not read it). With a Uint8Array as the fourth
// argument, also fills one byte per page (1 = resident) for callers that decide per range.
Napi::Value Residency(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = static_cast<int>(I64(info[0]));
  int64_t off = I64(info[1]);
  int64_t len = I64(info[2]);
  if (len <= 0) return Napi::Number::New(env, 0);
  size_t ps = PageSize();
  int64_t start = off & ~static_cast<int64_t>(ps - 1);
  size_t mlen = static_cast<size_t>(off + len - start);
  void* m = mmap(nullptr, mlen, PROT_READ, MAP_SHARED, fd, start);
  if (m == MAP_FAILED) return Napi::Number::New(env, static_cast<double>(Err()));
  size_t pages = (mlen + ps - 1) / ps;
  std::vector<unsigned char> vec(pages);
  int rc = mincore(m, mlen, vec.data());
  int64_t err = rc < 0 ? Err() : 0;
  munmap(m, mlen);
  if (err) return Napi::Number::New(env, static_cast<double>(err));
  if (info.Length() > 3 && info[3].IsTypedArray()) {
    auto out = info[3].As<Napi::Uint8Array>();
    size_t n = std::min(out.ElementLength(), pages);
    for (size_t i = 0; i < n; i++) out[i] = vec[i] & 1;
  }
  int64_t resident = 0;
  for (size_t i = 0; i < pages; i++) {
    if (!(vec[i] & 1)) continue;
    int64_t ps0 = start + static_cast<int64_t>(i * ps);
    int64_t lo = std::max(ps0, off), hi = std::min(ps0 + static_cast<int64_t>(ps), off + len);
    if (hi > lo) resident += hi - lo;
  }
  return Napi::Number::New(env, static_cast<double>(resident));
}

// ioctl helpers for the dma-buf targets: each one request, shaped like the kernel's struct.
Napi::Value UdmabufCreate(const Napi::CallbackInfo& info) {
  // (devFd, memfd, [[offset, size], ...], flags) -> dma-buf fd | -errno. One item uses UDMABUF_CREATE.
  int dev = static_cast<int>(I64(info[0]));
  int memfd = static_cast<int>(I64(info[1]));
  auto items = info[2].As<Napi::Array>();
  unsigned flags = static_cast<unsigned>(I64(info[3]));
  int rc;
  if (items.Length() == 1) {
    auto it = items.Get(0u).As<Napi::Array>();
    struct udmabuf_create c {};
    c.memfd = static_cast<uint32_t>(memfd);
    c.flags = flags;
    c.offset = static_cast<uint64_t>(I64(it.Get(0u)));
    c.size = static_cast<uint64_t>(I64(it.Get(1u)));
    rc = ioctl(dev, UDMABUF_CREATE, &c);
  } else {
    size_t n = items.Length();
    std::vector<uint8_t> mem(sizeof(udmabuf_create_list) + n * sizeof(udmabuf_create_item));
    auto* l = reinterpret_cast<udmabuf_create_list*>(mem.data());
    l->flags = flags;
    l->count = static_cast<uint32_t>(n);
    for (size_t i = 0; i < n; i++) {
      auto it = items.Get(static_cast<uint32_t>(i)).As<Napi::Array>();
      l->list[i].memfd = static_cast<uint32_t>(memfd);
      l->list[i].offset = static_cast<uint64_t>(I64(it.Get(0u)));
      l->list[i].size = static_cast<uint64_t>(I64(it.Get(1u)));
    }
    rc = ioctl(dev, UDMABUF_CREATE_LIST, l);
  }
  return Napi::Number::New(info.Env(), rc < 0 ? static_cast<double>(Err()) : rc);
}

Napi::Value DmaHeapAlloc(const Napi::CallbackInfo& info) {
  // (heapFd, len) -> dma-buf fd | -errno
  struct dma_heap_allocation_data d {};
  d.len = static_cast<uint64_t>(I64(info[1]));
  d.fd_flags = O_RDWR | O_CLOEXEC;
  int rc = ioctl(static_cast<int>(I64(info[0])), DMA_HEAP_IOCTL_ALLOC, &d);
  return Napi::Number::New(info.Env(), rc < 0 ? static_cast<double>(Err()) : d.fd);
}

Napi::Value DmaBufSync(const Napi::CallbackInfo& info) {
  // (fd, flags) -> 0 | -errno; flags: DMA_BUF_SYNC_{START,END} | {READ,WRITE,RW}
  struct dma_buf_sync s {};
  s.flags = static_cast<uint64_t>(I64(info[1]));
  int rc;
  do rc = ioctl(static_cast<int>(I64(info[0])), DMA_BUF_IOCTL_SYNC, &s);
  while (rc < 0 && (errno == EINTR || errno == EAGAIN));
  return Napi::Number::New(info.Env(), rc < 0 ? static_cast<double>(Err()) : 0);
}

Napi::Value DmaBufSetName(const Napi::CallbackInfo& info) {
  std::string name = info[1].As<Napi::String>();
  char buf[DMA_BUF_NAME_LEN] = {};
  strncpy(buf, name.c_str(), sizeof buf - 1);
  int rc = ioctl(static_cast<int>(I64(info[0])), DMA_BUF_SET_NAME_B, buf);
  return Napi::Number::New(info.Env(), rc < 0 ? static_cast<double>(Err()) : 0);
}

// DRM PRIME import, defined here because libdrm headers are not a build dependency.
struct drm_prime_handle_ {
  uint32_t handle;
  uint32_t flags;
  int32_t fd;
};
#define DRM_IOCTL_PRIME_FD_TO_HANDLE_ _IOWR('d', 0x2e, struct drm_prime_handle_)
#define DRM_IOCTL_GEM_CLOSE_ _IOW('d', 0x09, struct drm_gem_close_)
struct drm_gem_close_ {
  uint32_t handle;
  uint32_t pad;
};

Napi::Value DrmPrimeImport(const Napi::CallbackInfo& info) {
  // (drmFd, dmabufFd) -> GEM handle (closed again at once) | -errno
  int drm = static_cast<int>(I64(info[0]));
  struct drm_prime_handle_ h {};
  h.fd = static_cast<int32_t>(I64(info[1]));
  if (ioctl(drm, DRM_IOCTL_PRIME_FD_TO_HANDLE_, &h) < 0) return Napi::Number::New(info.Env(), static_cast<double>(Err()));
  struct drm_gem_close_ c {h.handle, 0};
  ioctl(drm, DRM_IOCTL_GEM_CLOSE_, &c);
  return Napi::Number::New(info.Env(), h.handle);
}

// ---------------------------------------------------------------------------------------------------------------
// The bench's other ways to move a file into a memfd, each a plain loop over one syscall. Synchronous: called only
// from the bench's child processes, which do nothing else. (method, in, out, length, pipeSize) -> bytes | -errno.
// method: 0 sendfile, 1 splice through a pipe, 2 copy_file_range.
Napi::Value CopyLoop(const Napi::CallbackInfo& info) {
  int method = static_cast<int>(I64(info[0]));
  int in = static_cast<int>(I64(info[1]));
  int out = static_cast<int>(I64(info[2]));
  int64_t len = I64(info[3]);
  int pipeSize = static_cast<int>(I64(info[4]));
  int64_t done = 0;
  int pfd[2] = {-1, -1};
  if (method == 1) {
    if (pipe2(pfd, O_CLOEXEC) < 0) return Napi::Number::New(info.Env(), static_cast<double>(Err()));
    fcntl(pfd[1], F_SETPIPE_SZ, pipeSize);  // best effort: a smaller pipe only means more calls
  }
  int64_t err = 0;
  while (done < len) {
    size_t want = static_cast<size_t>(std::min<int64_t>(len - done, 1 << 30));
    ssize_t n;
    loff_t inOff = done, outOff = done;
    if (method == 0) {
      off_t o = done;
      n = sendfile(out, in, &o, want);
    } else if (method == 2) {
      n = copy_file_range(in, &inOff, out, &outOff, want, 0);
    } else {
      n = splice(in, &inOff, pfd[1], nullptr, std::min<size_t>(want, static_cast<size_t>(pipeSize)), SPLICE_F_MOVE);
      if (n > 0) {
        for (ssize_t left = n; left > 0;) {
          ssize_t m = splice(pfd[0], nullptr, out, &outOff, static_cast<size_t>(left), SPLICE_F_MOVE);
          if (m < 0 && errno == EINTR) continue;
          if (m <= 0) {
            n = m < 0 ? -1 : 0;
            break;
          }
          left -= m;
        }
      }
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = Err();
      break;
    }
    if (n == 0) break;
    done += n;
  }
  if (pfd[0] >= 0) close(pfd[0]);
  if (pfd[1] >= 0) close(pfd[1]);
  return Napi::Number::New(info.Env(), static_cast<double>(err ? err : done));
}

// ---------------------------------------------------------------------------------------------------------------
// io_uring over raw syscalls: just what a queue of reads/writes needs.
struct Uring {
  int fd = -1;
  void* sqPtr = MAP_FAILED;
  size_t sqLen = 0;
  void* cqPtr = MAP_FAILED;
  size_t cqLen = 0;
  io_uring_sqe* sqes = static_cast<io_uring_sqe*>(MAP_FAILED);
  size_t sqesLen = 0;
  unsigned *sqHead, *sqTail, *sqMask, *sqArray, *cqHead, *cqTail, *cqMask;
  io_uring_cqe* cqes;
  unsigned pending = 0;  // sqes written but not yet submitted

  int Init(unsigned entries) {
    io_uring_params p {};
    fd = static_cast<int>(syscall(__NR_io_uring_setup, entries, &p));
    if (fd < 0) return -errno;
    sqLen = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cqLen = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    bool single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single) sqLen = cqLen = std::max(sqLen, cqLen);
    sqPtr = mmap(nullptr, sqLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (sqPtr == MAP_FAILED) return -errno;
    cqPtr = single ? sqPtr : mmap(nullptr, cqLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
    if (cqPtr == MAP_FAILED) return -errno;
    sqesLen = p.sq_entries * sizeof(io_uring_sqe);
    sqes = static_cast<io_uring_sqe*>(mmap(nullptr, sqesLen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES));
    if (sqes == MAP_FAILED) return -errno;
    auto* sq = static_cast<uint8_t*>(sqPtr);
    auto* cq = static_cast<uint8_t*>(cqPtr);
    sqHead = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
    sqTail = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sqMask = reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sqArray = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    cqHead = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cqTail = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cqMask = reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
    return 0;
  }

  ~Uring() {
    if (sqes != MAP_FAILED) munmap(sqes, sqesLen);
    if (cqPtr != MAP_FAILED && cqPtr != sqPtr) munmap(cqPtr, cqLen);
    if (sqPtr != MAP_FAILED) munmap(sqPtr, sqLen);
    if (fd >= 0) close(fd);
  }

  void Queue(uint8_t op, int file, void* buf, unsigned len, uint64_t off, uint64_t tag) {
    unsigned tail = *sqTail;  // only this thread writes the tail
    unsigned idx = tail & *sqMask;
    io_uring_sqe* s = &sqes[idx];
    memset(s, 0, sizeof *s);
    s->opcode = op;
    s->fd = file;
    s->addr = reinterpret_cast<uint64_t>(buf);
    s->len = len;
    s->off = off;
    s->user_data = tag;
    sqArray[idx] = idx;
    __atomic_store_n(sqTail, tail + 1, __ATOMIC_RELEASE);
    pending++;
  }

  // Submits what is queued and waits for at least one completion.
  int SubmitAndWait() {
    for (;;) {
      int rc = static_cast<int>(syscall(__NR_io_uring_enter, fd, pending, 1, IORING_ENTER_GETEVENTS, nullptr, 0));
      if (rc >= 0) {
        pending -= std::min(pending, static_cast<unsigned>(rc));
        return 0;
      }
      if (errno != EINTR && errno != EAGAIN && errno != EBUSY) return -errno;
    }
  }

  template <typename F>
  void Reap(F&& f) {
    unsigned head = *cqHead;
    unsigned tail = __atomic_load_n(cqTail, __ATOMIC_ACQUIRE);
    while (head != tail) {
      io_uring_cqe* c = &cqes[head & *cqMask];
      f(c->user_data, c->res);
      head++;
    }
    __atomic_store_n(cqHead, head, __ATOMIC_RELEASE);
  }
};

Napi::Value UringProbe(const Napi::CallbackInfo& info) {
  Uring u;
  int rc = u.Init(4);
  return Napi::Number::New(info.Env(), rc);
}

// ---------------------------------------------------------------------------------------------------------------
// transfer: moves segments (file offset, buffer offset, length) between a file and memory at `dst`, split into
// requests of at most `chunk` bytes, `depth` requests in flight, by io_uring or by a pool of threads doing pread/pwrite. Requests are padded up to
// `padTo` bytes (direct I/O needs whole blocks; the caller's buffer has room). With a bounce size, reads land in
// aligned private buffers and are copied to `dst` (for mappings that direct I/O cannot target).
struct Piece {
  uint64_t fileOff;
  uint64_t bufOff;
  uint64_t need;
};

struct Job {
  int fd;
  bool write;
  bool direct;  // file opened with O_DIRECT: a short transfer at an unaligned count means EOF
  uint8_t* dst;
  std::vector<Piece> pieces;  // every request, in buffer order
  uint64_t length = 0;        // bytes wanted in all
  uint64_t chunk;
  unsigned depth;
  uint64_t padTo;
  bool useUring;
  bool bounce;
  bool populate;  // fault the destination in ahead of the reads, on another thread
  std::shared_ptr<std::atomic<bool>> cancel;
  // results
  std::atomic<uint64_t> done{0};
  std::atomic<int> err{0};
  std::atomic<bool> shortRead{false};
  std::atomic<uint64_t> populated{0};
  std::string failedCall;
  Napi::ThreadSafeFunction tsfn;
  Napi::Promise::Deferred deferred;
  Napi::Reference<Napi::ArrayBuffer> keep;
  std::atomic<int64_t> lastProgressNs{0};
  std::atomic<bool> progressQueued{false};
  bool wantProgress;
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}

  void AddSegment(uint64_t fileOff, uint64_t bufOff, uint64_t len) {
    for (uint64_t o = 0; o < len; o += chunk) pieces.push_back({fileOff + o, bufOff + o, std::min(chunk, len - o)});
    length += len;
  }
  uint64_t Padded(uint64_t n) const { return padTo > 1 ? (n + padTo - 1) / padTo * padTo : n; }

  void Fail(int e, const char* call) {
    int expected = 0;
    if (err.compare_exchange_strong(expected, e)) failedCall = call;
  }
  bool Stopping() const { return err.load() != 0 || cancel->load() || shortRead.load(); }

  void Progress(uint64_t bytes) {
    uint64_t now = done.fetch_add(bytes) + bytes;
    if (!wantProgress) return;
    int64_t t = std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
    // At most ~60 calls a second, and never more than one waiting on the JS thread.
    if (now < length && t - lastProgressNs.load() < 16'000'000) return;
    if (progressQueued.exchange(true)) return;
    lastProgressNs = t;
    tsfn.NonBlockingCall([this](Napi::Env env, Napi::Function cb) {
      progressQueued = false;
      cb.Call({Napi::Number::New(env, static_cast<double>(done.load()))});
    });
  }
};

// Per-request state; a partial transfer is continued from where it stopped.
struct Req {
  uint64_t fileOff;
  uint8_t* mem;       // where the bytes go (or come from): dst, or a bounce buffer
  uint8_t* finalDst;  // with bounce, where the bytes are copied after the read
  uint64_t need;      // bytes the caller wants from this request
  uint64_t got;       // bytes transferred so far
};

// Handles one completion of `res` bytes; returns true when the request needs another submission.
bool Complete(Job& j, Req& r, int64_t res) {
  if (res < 0) {
    j.Fail(static_cast<int>(-res), j.write ? "pwrite" : "pread");
    return false;
  }
  uint64_t before = r.got;
  r.got += static_cast<uint64_t>(res);
  if (r.got >= r.need) {
    if (j.bounce && !j.write) memcpy(r.finalDst, r.mem, r.need);
    j.Progress(r.need - std::min(before, r.need));
    return false;
  }
  if (res == 0 || (j.direct && !j.write && r.got % (j.padTo ? j.padTo : 1) != 0)) {
    // End of file before the bytes the caller expected: the file shrank under us.
    if (j.write) j.Fail(EIO, "pwrite");
    else j.shortRead = true;
    if (j.bounce && !j.write) memcpy(r.finalDst, r.mem, r.got);
    j.Progress(r.got - before);
    return false;
  }
  j.Progress(static_cast<uint64_t>(res));
  return true;
}

void WaitPopulated(Job& j, uint64_t end) {
  if (!j.populate) return;
  // The populate thread only runs ahead; if it falls behind, the I/O faults pages itself, so never wait long.
  for (int spins = 0; j.populated.load(std::memory_order_acquire) < end && spins < 64; spins++) std::this_thread::yield();
}

void RunUring(Job& j, std::vector<uint8_t*>& bounce) {
  Uring u;
  int rc = u.Init(j.depth);
  if (rc < 0) return j.Fail(-rc, "io_uring_setup");
  std::vector<Req> slots(j.depth);
  std::vector<unsigned> freeSlots;
  for (unsigned s = 0; s < j.depth; s++) freeSlots.push_back(j.depth - 1 - s);
  uint64_t next = 0, n = j.pieces.size();
  unsigned inflight = 0;
  uint8_t op = j.write ? IORING_OP_WRITE : IORING_OP_READ;
  auto submit = [&](unsigned s) {
    Req& r = slots[s];
    uint64_t len = j.Padded(r.need) - r.got;
    u.Queue(op, j.fd, r.mem + r.got, static_cast<unsigned>(len), r.fileOff + r.got, s);
    inflight++;
  };
  for (;;) {
    while (!j.Stopping() && !freeSlots.empty() && next < n) {
      unsigned s = freeSlots.back();
      freeSlots.pop_back();
      const Piece& p = j.pieces[next];
      uint8_t* d = j.dst + p.bufOff;
      WaitPopulated(j, p.bufOff + p.need);
      slots[s] = Req{p.fileOff, j.bounce ? bounce[s] : d, d, p.need, 0};
      if (j.bounce && j.write) memcpy(bounce[s], d, p.need);
      submit(s);
      next++;
    }
    if (inflight == 0) break;
    if ((rc = u.SubmitAndWait()) < 0) {
      // The ring is unusable; requests in flight still complete into our memory, so wait them out by closing it.
      j.Fail(-rc, "io_uring_enter");
      return;
    }
    u.Reap([&](uint64_t tag, int32_t res) {
      inflight--;
      unsigned s = static_cast<unsigned>(tag);
      if (res == -EAGAIN || res == -EINTR) return submit(s);
      if (Complete(j, slots[s], res) && !j.Stopping()) return submit(s);
      freeSlots.push_back(s);
    });
  }
}

void RunThreads(Job& j, std::vector<uint8_t*>& bounce) {
  std::atomic<uint64_t> next{0};
  uint64_t n = j.pieces.size();
  auto worker = [&](unsigned w) {
    for (;;) {
      if (j.Stopping()) return;
      uint64_t i = next.fetch_add(1);
      if (i >= n) return;
      const Piece& p = j.pieces[i];
      uint8_t* d = j.dst + p.bufOff;
      WaitPopulated(j, p.bufOff + p.need);
      Req r{p.fileOff, j.bounce ? bounce[w] : d, d, p.need, 0};
      if (j.bounce && j.write) memcpy(bounce[w], d, r.need);
      for (;;) {
        uint64_t len = j.Padded(r.need) - r.got;
        ssize_t res = j.write ? pwrite(j.fd, r.mem + r.got, len, static_cast<off_t>(r.fileOff + r.got))
                              : pread(j.fd, r.mem + r.got, len, static_cast<off_t>(r.fileOff + r.got));
        if (res < 0 && errno == EINTR) continue;
        if (!Complete(j, r, res < 0 ? -errno : res) || j.Stopping()) break;
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned w = 1; w < j.depth; w++) pool.emplace_back(worker, w);
  worker(0);
  for (auto& t : pool) t.join();
}

void RunJob(Job* j) {
  std::vector<uint8_t*> bounce;
  void* bounceMem = MAP_FAILED;
  size_t bounceLen = 0;
  if (j->bounce) {
    bounceLen = j->Padded(j->chunk) * j->depth;
    bounceMem = mmap(nullptr, bounceLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (bounceMem == MAP_FAILED) j->Fail(errno, "mmap");
    else
      for (unsigned s = 0; s < j->depth; s++) bounce.push_back(static_cast<uint8_t*>(bounceMem) + s * j->Padded(j->chunk));
  }
  std::thread populater;
  std::atomic<bool> stopPopulate{false};
  if (j->populate && !j->err.load()) {
    populater = std::thread([j, &stopPopulate] {
      // 8 MiB steps: big enough to amortise the call, small enough to stay just ahead of the reads.
      const uint64_t step = 8ull << 20;
      size_t ps = PageSize();
      for (size_t i = 0; i < j->pieces.size() && !stopPopulate.load(); i++) {
        // Pieces are in buffer order; populate each one's pages (whole pages, padded as the reads are).
        const Piece& p = j->pieces[i];
        uint64_t lo = p.bufOff & ~static_cast<uint64_t>(ps - 1);
        uint64_t hi = (p.bufOff + j->Padded(p.need) + ps - 1) & ~static_cast<uint64_t>(ps - 1);
        lo = std::max(lo, j->populated.load(std::memory_order_relaxed));
        for (uint64_t off = lo; off < hi && !stopPopulate.load(); off += step) {
          uint64_t len = std::min(step, hi - off);
          // Fails on kernels before 5.14 (EINVAL): then the I/O faults the pages in itself.
          if (madvise(j->dst + off, len, MADV_POPULATE_WRITE) < 0) stopPopulate = true;
          else j->populated.store(off + len, std::memory_order_release);
        }
      }
      j->populated.store(UINT64_MAX, std::memory_order_release);
    });
  }
  if (!j->err.load() && !j->pieces.empty()) {
    if (j->useUring) RunUring(*j, bounce);
    else RunThreads(*j, bounce);
  }
  stopPopulate = true;
  if (populater.joinable()) populater.join();
  if (bounceMem != MAP_FAILED) munmap(bounceMem, bounceLen);
  Napi::ThreadSafeFunction tsfn = j->tsfn;
  tsfn.BlockingCall([j](Napi::Env env, Napi::Function) {
    auto r = Napi::Object::New(env);
    r.Set("bytes", Napi::Number::New(env, static_cast<double>(j->done.load())));
    r.Set("errno", Napi::Number::New(env, j->err.load()));
    r.Set("syscall", Napi::String::New(env, j->failedCall));
    r.Set("short", Napi::Boolean::New(env, j->shortRead.load()));
    r.Set("cancelled", Napi::Boolean::New(env, j->cancel->load()));
    j->keep.Reset();
    j->deferred.Resolve(r);
    delete j;
  });
  tsfn.Release();
}

// transfer(opts, onProgress?) -> { promise, cancel() }. opts: { fd, write, direct, buffer (ArrayBuffer), segments
// (flat [fileOffset, bufOffset, length, ...], in buffer order), chunk, depth, padTo, engine: 'uring' | 'threads',
// bounce, populate }.
Napi::Value Transfer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto o = info[0].As<Napi::Object>();
  auto* j = new Job(env);
  auto ab = o.Get("buffer").As<Napi::ArrayBuffer>();
  j->fd = static_cast<int>(I64(o.Get("fd")));
  j->write = o.Get("write").ToBoolean();
  j->direct = o.Get("direct").ToBoolean();
  j->dst = static_cast<uint8_t*>(ab.Data());
  j->chunk = static_cast<uint64_t>(I64(o.Get("chunk")));
  auto segs = o.Get("segments").As<Napi::Array>();
  for (uint32_t i = 0; i + 2 < segs.Length(); i += 3) {
    j->AddSegment(static_cast<uint64_t>(I64(segs.Get(i))), static_cast<uint64_t>(I64(segs.Get(i + 1))), static_cast<uint64_t>(I64(segs.Get(i + 2))));
  }
  j->depth = static_cast<unsigned>(I64(o.Get("depth")));
  j->padTo = static_cast<uint64_t>(I64(o.Get("padTo")));
  j->useUring = o.Get("engine").As<Napi::String>().Utf8Value() == "uring";
  j->bounce = o.Get("bounce").ToBoolean();
  j->populate = o.Get("populate").ToBoolean();
  j->cancel = std::make_shared<std::atomic<bool>>(false);
  j->keep = Napi::Persistent(ab);
  Napi::Function cb;
  j->wantProgress = info.Length() > 1 && info[1].IsFunction();
  cb = j->wantProgress ? info[1].As<Napi::Function>() : Napi::Function::New(env, [](const Napi::CallbackInfo&) {});
  j->tsfn = Napi::ThreadSafeFunction::New(env, cb, "dmaload.transfer", 0, 1);
  auto result = Napi::Object::New(env);
  result.Set("promise", j->deferred.Promise());
  auto cancel = j->cancel;
  result.Set("cancel", Napi::Function::New(env, [cancel](const Napi::CallbackInfo&) { cancel->store(true); }));
  std::thread([j] {
    RunJob(j);
  }).detach();
  return result;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("mmap", Napi::Function::New(env, Mmap));
  exports.Set("munmap", Napi::Function::New(env, Munmap));
  exports.Set("madvise", Napi::Function::New(env, Madvise));
  exports.Set("mmapInto", Napi::Function::New(env, MmapInto));
  exports.Set("populate", Napi::Function::New(env, Populate));
  exports.Set("address", Napi::Function::New(env, Address));
  exports.Set("liveMappings", Napi::Function::New(env, LiveMappings));
  exports.Set("strerror", Napi::Function::New(env, Strerror));
  exports.Set("statxDio", Napi::Function::New(env, StatxDio));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate));
  exports.Set("seals", Napi::Function::New(env, Seals));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
  exports.Set("fadvise", Napi::Function::New(env, Fadvise));
  exports.Set("residency", Napi::Function::New(env, Residency));
  exports.Set("uringProbe", Napi::Function::New(env, UringProbe));
  exports.Set("transfer", Napi::Function::New(env, Transfer));
  exports.Set("copyLoop", Napi::Function::New(env, CopyLoop));
  exports.Set("udmabufCreate", Napi::Function::New(env, UdmabufCreate));
  exports.Set("dmaHeapAlloc", Napi::Function::New(env, DmaHeapAlloc));
  exports.Set("dmaBufSync", Napi::Function::New(env, DmaBufSync));
  exports.Set("dmaBufSetName", Napi::Function::New(env, DmaBufSetName));
  exports.Set("drmPrimeImport", Napi::Function::New(env, DrmPrimeImport));
  auto c = Napi::Object::New(env);
  c.Set("PAGE_SIZE", static_cast<double>(PageSize()));
  c.Set("PROT_READ", PROT_READ);
  c.Set("PROT_WRITE", PROT_WRITE);
  c.Set("MAP_SHARED", MAP_SHARED);
  c.Set("MAP_PRIVATE", MAP_PRIVATE);
  c.Set("MAP_ANONYMOUS", MAP_ANONYMOUS);
  c.Set("MAP_NORESERVE", MAP_NORESERVE);
  c.Set("MAP_POPULATE", MAP_POPULATE);
  c.Set("PROT_NONE", PROT_NONE);
  c.Set("MADV_HUGEPAGE", MADV_HUGEPAGE);
  c.Set("MADV_POPULATE_WRITE", MADV_POPULATE_WRITE);
  c.Set("MADV_DONTNEED", MADV_DONTNEED);
  c.Set("MFD_CLOEXEC", MFD_CLOEXEC);
  c.Set("MFD_ALLOW_SEALING", MFD_ALLOW_SEALING);
  c.Set("F_SEAL_SEAL", F_SEAL_SEAL);
  c.Set("F_SEAL_SHRINK", F_SEAL_SHRINK);
  c.Set("F_SEAL_GROW", F_SEAL_GROW);
  c.Set("F_SEAL_WRITE", F_SEAL_WRITE);
  c.Set("POSIX_FADV_DONTNEED", POSIX_FADV_DONTNEED);
  c.Set("POSIX_FADV_SEQUENTIAL", POSIX_FADV_SEQUENTIAL);
  c.Set("POSIX_FADV_RANDOM", POSIX_FADV_RANDOM);
  c.Set("DMA_BUF_SYNC_READ", static_cast<double>(DMA_BUF_SYNC_READ));
  c.Set("DMA_BUF_SYNC_WRITE", static_cast<double>(DMA_BUF_SYNC_WRITE));
  c.Set("DMA_BUF_SYNC_RW", static_cast<double>(DMA_BUF_SYNC_RW));
  c.Set("DMA_BUF_SYNC_START", static_cast<double>(DMA_BUF_SYNC_START));
  c.Set("DMA_BUF_SYNC_END", static_cast<double>(DMA_BUF_SYNC_END));
  exports.Set("constants", c);
  return exports;
}

}  // namespace

NODE_API_MODULE(dmaload, Init)
