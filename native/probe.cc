// probe.cc — small synchronous syscalls the TypeScript asks about files and the kernel: statx alignment, page-cache
// residency, memfd and seals, fallocate/fadvise, strerror, the io_uring probe, O_NONBLOCK, naming an O_TMPFILE.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "args.h"
#include "uring.h"

#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif

namespace dmaload {

namespace {

Napi::Value Ret(Napi::Env env, int rc, double ok) { return Num(env, rc < 0 ? static_cast<double>(Err()) : ok); }

Napi::Value Strerror(const Napi::CallbackInfo& info) {
  Args a(info, "strerror");
  int e;
  if (!a.I32(a[0], "errno", e, -INT32_MAX, INT32_MAX)) return {};
  return Napi::String::New(a.env, strerror(e));
}

// statxDio(fd) -> [memAlign, offsetAlign] (0, 0 when the kernel or file system does not say) | -errno
Napi::Value StatxDio(const Napi::CallbackInfo& info) {
  Args a(info, "statxDio");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  struct statx stx {};
  int rc = static_cast<int>(syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx));
  if (rc < 0) return Num(a.env, static_cast<double>(Err()));
  auto out = Napi::Array::New(a.env, 2);
  bool known = (stx.stx_mask & STATX_DIOALIGN) != 0;
  out[0u] = Num(a.env, known ? stx.stx_dio_mem_align : 0);
  out[1u] = Num(a.env, known ? stx.stx_dio_offset_align : 0);
  return out;
}

// memfdCreate(name, flags) -> fd | -errno
Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Args a(info, "memfdCreate");
  std::string name;
  int flags;
  if (!a.Str(a[0], "name", name) || !a.I32(a[1], "flags", flags)) return {};
  int fd = static_cast<int>(syscall(SYS_memfd_create, name.c_str(), static_cast<unsigned>(flags)));
  return Ret(a.env, fd, fd);
}

// seals(fd, add) -> current seals | -errno; add = 0 only reads them.
Napi::Value Seals(const Napi::CallbackInfo& info) {
  Args a(info, "seals");
  int fd, add;
  if (!a.Fd(a[0], "fd", fd) || !a.I32(a[1], "add", add)) return {};
  if (add && fcntl(fd, F_ADD_SEALS, add) < 0) return Num(a.env, static_cast<double>(Err()));
  int s = fcntl(fd, F_GET_SEALS);
  return Ret(a.env, s, s);
}

// fallocate(fd, mode, offset, length) -> 0 | -errno
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  Args a(info, "fallocate");
  int fd, mode;
  uint64_t off, len;
  if (!a.Fd(a[0], "fd", fd) || !a.I32(a[1], "mode", mode) || !a.U64(a[2], "offset", off) || !a.U64(a[3], "length", len)) return {};
  int rc = fallocate(fd, mode, static_cast<off_t>(off), static_cast<off_t>(len));
  return Ret(a.env, rc, 0);
}

// fadvise(fd, offset, length, advice) -> 0 | -errno
Napi::Value Fadvise(const Napi::CallbackInfo& info) {
  Args a(info, "fadvise");
  int fd, advice;
  uint64_t off, len;
  if (!a.Fd(a[0], "fd", fd) || !a.U64(a[1], "offset", off) || !a.U64(a[2], "length", len) || !a.I32(a[3], "advice", advice)) return {};
  int rc = posix_fadvise(fd, static_cast<off_t>(off), static_cast<off_t>(len), advice);
  return Num(a.env, rc != 0 ? -rc : 0);
}

// residency(fd, offset, length, pages?) -> bytes of [offset, offset+length) resident in the page cache, by mincore
// over a temporary read-only mapping (mapping a file does not read it). With a Uint8Array as the fourth argument,
// also fills one byte per page (1 = resident), as many as fit.
Napi::Value Residency(const Napi::CallbackInfo& info) {
  Args a(info, "residency");
  int fd;
  uint64_t uoff, ulen;
  if (!a.Fd(a[0], "fd", fd) || !a.U64(a[1], "offset", uoff) || !a.U64(a[2], "length", ulen)) return {};
  Napi::Value pv = a[3];
  bool wantPages = !pv.IsUndefined();
  if (wantPages && (!pv.IsTypedArray() || pv.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array))
    return a.TypeError("pages", "a Uint8Array or undefined"), Napi::Value();
  if (ulen == 0) return Num(a.env, 0);
  int64_t off = static_cast<int64_t>(uoff), len = static_cast<int64_t>(ulen);
  const int64_t ps = static_cast<int64_t>(PageSize());
  int64_t start = off & ~(ps - 1);
  size_t mlen = static_cast<size_t>(off + len - start);
  void* m = mmap(nullptr, mlen, PROT_READ, MAP_SHARED, fd, start);
  if (m == MAP_FAILED) return Num(a.env, static_cast<double>(Err()));
  size_t pages = (mlen + ps - 1) / ps;
  std::vector<unsigned char> vec(pages);
  int rc = mincore(m, mlen, vec.data());
  int64_t err = rc < 0 ? Err() : 0;
  munmap(m, mlen);
  if (err) return Num(a.env, static_cast<double>(err));
  if (wantPages) {
    auto out = pv.As<Napi::Uint8Array>();
    size_t n = std::min(out.ElementLength(), pages);
    uint8_t* p = out.Data();
    if (p)
      for (size_t i = 0; i < n; i++) p[i] = vec[i] & 1;
  }
  int64_t resident = 0;
  for (size_t i = 0; i < pages; i++) {
    if (!(vec[i] & 1)) continue;
    int64_t p0 = start + static_cast<int64_t>(i) * ps;
    int64_t lo = std::max(p0, off), hi = std::min(p0 + ps, off + len);
    if (hi > lo) resident += hi - lo;
  }
  return Num(a.env, static_cast<double>(resident));
}

// syncRange(fd, offset, length, flags) -> 0 | -errno: sync_file_range, so that eviction can first make dirty pages
// clean (POSIX_FADV_DONTNEED skips dirty pages and pages under writeback).
Napi::Value SyncRange(const Napi::CallbackInfo& info) {
  Args a(info, "syncRange");
  int fd, flags;
  uint64_t off, len;
  if (!a.Fd(a[0], "fd", fd) || !a.U64(a[1], "offset", off) || !a.U64(a[2], "length", len) || !a.I32(a[3], "flags", flags, 0, 7)) return {};
  return Ret(a.env, sync_file_range(fd, static_cast<off_t>(off), static_cast<off_t>(len), static_cast<unsigned>(flags)), 0);
}

// uncachedProbe(fd) -> 0 | -errno: does this file take RWF_DONTCACHE (uncached buffered I/O, Linux 6.14+; per file
// system, EOPNOTSUPP where not)? A 1-byte preadv2 far past the end of the file: the kernel checks the flag before
// it reads, and past the end there is nothing to read or read ahead, so the probe leaves no trace in the page cache.
// A write-only fd is probed through a read-only reopen of the same file.
Napi::Value UncachedProbe(const Napi::CallbackInfo& info) {
  Args a(info, "uncachedProbe");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return Num(a.env, static_cast<double>(Err()));
  int rfd = fd;
  if ((fl & O_ACCMODE) == O_WRONLY) {
    rfd = open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDONLY | O_CLOEXEC);
    if (rfd < 0) return Num(a.env, static_cast<double>(Err()));
  }
  char byte;
  iovec v{&byte, 1};
  int64_t rc = preadv2(rfd, &v, 1, INT64_MAX - 1, RWF_DONTCACHE) < 0 ? Err() : 0;
  if (rfd != fd) close(rfd);
  return Num(a.env, static_cast<double>(rc));
}

// uringProbe() -> 0 | -errno: can this process set up a ring (seccomp and old kernels say no)?
Napi::Value UringProbe(const Napi::CallbackInfo& info) {
  Uring u;
  return Num(info.Env(), u.Init(4));
}

// clearNonblock(fd) -> 0 | -errno: direct I/O wants blocking semantics whatever the fd was opened with.
Napi::Value ClearNonblock(const Napi::CallbackInfo& info) {
  Args a(info, "clearNonblock");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return Num(a.env, static_cast<double>(Err()));
  if (!(fl & O_NONBLOCK)) return Num(a.env, 0);
  return Ret(a.env, fcntl(fd, F_SETFL, fl & ~O_NONBLOCK), 0);
}

// linkTmpfile(fd, path) -> 0 | -errno: gives an O_TMPFILE file its name once it is complete.
Napi::Value LinkTmpfile(const Napi::CallbackInfo& info) {
  Args a(info, "linkTmpfile");
  int fd;
  std::string path;
  if (!a.Fd(a[0], "fd", fd) || !a.Str(a[1], "path", path)) return {};
  if (path.empty() || path.find('\0') != std::string::npos)
    return a.TypeError("path", "a non-empty path without NUL bytes", "ERR_INVALID_ARG_VALUE"), Napi::Value();
  std::string src = "/proc/self/fd/" + std::to_string(fd);
  return Ret(a.env, linkat(AT_FDCWD, src.c_str(), AT_FDCWD, path.c_str(), AT_SYMLINK_FOLLOW), 0);
}

}  // namespace

void InitProbe(Napi::Env env, Napi::Object exports) {
  exports.Set("strerror", Napi::Function::New(env, Strerror, "strerror"));
  exports.Set("statxDio", Napi::Function::New(env, StatxDio, "statxDio"));
  exports.Set("memfdCreate", Napi::Function::New(env, MemfdCreate, "memfdCreate"));
  exports.Set("seals", Napi::Function::New(env, Seals, "seals"));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate, "fallocate"));
  exports.Set("fadvise", Napi::Function::New(env, Fadvise, "fadvise"));
  exports.Set("syncRange", Napi::Function::New(env, SyncRange, "syncRange"));
  exports.Set("residency", Napi::Function::New(env, Residency, "residency"));
  exports.Set("uncachedProbe", Napi::Function::New(env, UncachedProbe, "uncachedProbe"));
  exports.Set("uringProbe", Napi::Function::New(env, UringProbe, "uringProbe"));
  exports.Set("clearNonblock", Napi::Function::New(env, ClearNonblock, "clearNonblock"));
  exports.Set("linkTmpfile", Napi::Function::New(env, LinkTmpfile, "linkTmpfile"));
}

}  // namespace dmaload
