// dmabuf.cc — the dma-buf targets' ioctls, each one request shaped like the kernel's struct: udmabuf creation,
// DMA heap allocation, CPU access sync, naming, and a DRM PRIME import to prove a device can take the buffer.
#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>
#include <sys/ioctl.h>

#include <cstring>
#include <vector>

#include "args.h"
#include "faults.h"

namespace dmaload {

namespace {

// Every ioctl here goes through this, so tests can fail them ('ioctl' fault).
int Ioctl(int fd, unsigned long req, void* arg) {
  if (int e = FaultHit(kFaultIoctl)) {
    errno = e;
    return -1;
  }
  return ioctl(fd, req, arg);
}

Napi::Value Ret(Napi::Env env, int rc, double ok) { return Num(env, rc < 0 ? static_cast<double>(Err()) : ok); }

// udmabufCreate(devFd, memfd, [[offset, size], ...], flags) -> dma-buf fd | -errno. One item uses UDMABUF_CREATE.
Napi::Value UdmabufCreate(const Napi::CallbackInfo& info) {
  Args a(info, "udmabufCreate");
  int dev, memfd, flags;
  if (!a.Fd(a[0], "devFd", dev) || !a.Fd(a[1], "memfd", memfd)) return {};
  if (!a[2].IsArray()) return a.TypeError("items", "an array of [offset, size] pairs"), Napi::Value();
  auto items = a[2].As<Napi::Array>();
  uint32_t n = items.Length();
  if (n == 0 || n > 65536) return a.RangeError("items.length", "from 1 to 65536"), Napi::Value();
  if (!a.I32(a[3], "flags", flags)) return {};
  std::vector<std::pair<uint64_t, uint64_t>> list(n);
  for (uint32_t i = 0; i < n; i++) {
    Napi::Value it = items.Get(i);
    std::string at = "items[" + std::to_string(i) + "]";
    if (!it.IsArray() || it.As<Napi::Array>().Length() != 2) return a.TypeError(at, "an [offset, size] pair"), Napi::Value();
    auto pair = it.As<Napi::Array>();
    if (!a.U64(pair.Get(0u), at + "[0] (offset)", list[i].first) || !a.U64(pair.Get(1u), at + "[1] (size)", list[i].second)) return {};
  }
  int rc;
  if (n == 1) {
    struct udmabuf_create c {};
    c.memfd = static_cast<uint32_t>(memfd);
    c.flags = static_cast<uint32_t>(flags);
    c.offset = list[0].first;
    c.size = list[0].second;
    rc = Ioctl(dev, UDMABUF_CREATE, &c);
  } else {
    std::vector<uint8_t> mem(sizeof(udmabuf_create_list) + n * sizeof(udmabuf_create_item));
    auto* l = reinterpret_cast<udmabuf_create_list*>(mem.data());
    l->flags = static_cast<uint32_t>(flags);
    l->count = n;
    for (uint32_t i = 0; i < n; i++) {
      l->list[i].memfd = static_cast<uint32_t>(memfd);
      l->list[i].offset = list[i].first;
      l->list[i].size = list[i].second;
    }
    rc = Ioctl(dev, UDMABUF_CREATE_LIST, l);
  }
  return Ret(a.env, rc, rc);
}

// dmaHeapAlloc(heapFd, length) -> dma-buf fd | -errno
Napi::Value DmaHeapAlloc(const Napi::CallbackInfo& info) {
  Args a(info, "dmaHeapAlloc");
  int heap;
  uint64_t len;
  if (!a.Fd(a[0], "heapFd", heap) || !a.U64(a[1], "length", len, kMaxSafe, 1)) return {};
  struct dma_heap_allocation_data d {};
  d.len = len;
  d.fd_flags = O_RDWR | O_CLOEXEC;
  int rc = Ioctl(heap, DMA_HEAP_IOCTL_ALLOC, &d);
  return Ret(a.env, rc, d.fd);
}

// dmaBufSync(fd, flags) -> 0 | -errno; flags: DMA_BUF_SYNC_{START,END} | {READ,WRITE,RW}
Napi::Value DmaBufSync(const Napi::CallbackInfo& info) {
  Args a(info, "dmaBufSync");
  int fd, flags;
  if (!a.Fd(a[0], "fd", fd) || !a.I32(a[1], "flags", flags)) return {};
  struct dma_buf_sync s {};
  s.flags = static_cast<uint64_t>(flags);
  int rc;
  do rc = Ioctl(fd, DMA_BUF_IOCTL_SYNC, &s);
  while (rc < 0 && (errno == EINTR || errno == EAGAIN));
  return Ret(a.env, rc, 0);
}

// dmaBufSetName(fd, name) -> 0 | -errno (the name is cut to DMA_BUF_NAME_LEN - 1 bytes)
Napi::Value DmaBufSetName(const Napi::CallbackInfo& info) {
  Args a(info, "dmaBufSetName");
  int fd;
  std::string name;
  if (!a.Fd(a[0], "fd", fd) || !a.Str(a[1], "name", name)) return {};
  char buf[DMA_BUF_NAME_LEN] = {};
  strncpy(buf, name.c_str(), sizeof buf - 1);
  int rc = Ioctl(fd, DMA_BUF_SET_NAME_B, buf);
  return Ret(a.env, rc, 0);
}

// DRM PRIME import, defined here because libdrm headers are not a build dependency.
struct drm_prime_handle_ {
  uint32_t handle;
  uint32_t flags;
  int32_t fd;
};
struct drm_gem_close_ {
  uint32_t handle;
  uint32_t pad;
};
#define DRM_IOCTL_PRIME_FD_TO_HANDLE_ _IOWR('d', 0x2e, struct drm_prime_handle_)
#define DRM_IOCTL_GEM_CLOSE_ _IOW('d', 0x09, struct drm_gem_close_)

// drmPrimeImport(drmFd, dmabufFd) -> GEM handle (closed again at once) | -errno
Napi::Value DrmPrimeImport(const Napi::CallbackInfo& info) {
  Args a(info, "drmPrimeImport");
  int drm, buf;
  if (!a.Fd(a[0], "drmFd", drm) || !a.Fd(a[1], "dmabufFd", buf)) return {};
  struct drm_prime_handle_ h {};
  h.fd = buf;
  if (Ioctl(drm, DRM_IOCTL_PRIME_FD_TO_HANDLE_, &h) < 0) return Num(a.env, static_cast<double>(Err()));
  struct drm_gem_close_ c {
    h.handle, 0
  };
  ioctl(drm, DRM_IOCTL_GEM_CLOSE_, &c);
  return Num(a.env, h.handle);
}

}  // namespace

void InitDmabuf(Napi::Env env, Napi::Object exports) {
  exports.Set("udmabufCreate", Napi::Function::New(env, UdmabufCreate, "udmabufCreate"));
  exports.Set("dmaHeapAlloc", Napi::Function::New(env, DmaHeapAlloc, "dmaHeapAlloc"));
  exports.Set("dmaBufSync", Napi::Function::New(env, DmaBufSync, "dmaBufSync"));
  exports.Set("dmaBufSetName", Napi::Function::New(env, DmaBufSetName, "dmaBufSetName"));
  exports.Set("drmPrimeImport", Napi::Function::New(env, DrmPrimeImport, "drmPrimeImport"));
}

}  // namespace dmaload
