// fdops.cc — what `dmaload serve` needs to handle fds it did not choose without ever blocking the JS thread on
// somebody else's file system, and to know when a buffer it handed out is gone:
// - fdInspect / fdClose run statx and close on a short-lived native thread each. A FUSE daemon (or an overlay over one)
//   may never answer, and close() always sends FLUSH to it: whatever hangs, hangs there, never on the JS thread. The
//   result comes back through a thread-safe function; a thread that never returns only holds its own fd.
// - reopenFd: a fresh open file description of a memfd (/proc/self/fd/N), so that every client gets its own offset and
//   flags, read-only.
// - inotify over a served buffer (through /proc/self/fd/N): IN_OPEN and IN_CLOSE_* count the descriptions others hold,
//   IN_IGNORED says the last reference (fd or mapping, anywhere) is gone, so the memory is really free.
// - socketOutq: bytes a peer has not read yet (SIOCOUTQ), to find clients that never read their replies.
// - errnoName: the C library's name of any errno (libuv knows only some: ETOOMANYREFS was "Unknown system error").
#include <fcntl.h>
#include <linux/sockios.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "args.h"
#include "live.h"

#ifndef STATX_MNT_ID
#define STATX_MNT_ID 0x00001000U
#endif
#ifndef STATX_MNT_ID_UNIQUE
#define STATX_MNT_ID_UNIQUE 0x00004000U  // Linux 6.8: a mount id never reused
#endif
#ifndef STATX_DIOALIGN
#define STATX_DIOALIGN 0x00002000U
#endif

namespace dmaload {

namespace {

Napi::Value Ret(Napi::Env env, int64_t rc) { return Num(env, static_cast<double>(rc)); }

struct FdResult {
  int rc = 0;  // 0 or -errno
  int flags = 0;
  struct statx stx {};
};

void CallInspect(Napi::Env env, Napi::Function cb, FdResult* r) {
  if (env != nullptr && !cb.IsEmpty()) {
    if (r->rc < 0) {
      cb.Call({Num(env, r->rc)});
    } else {
      auto o = Napi::Object::New(env);
      const auto& s = r->stx;
      o.Set("flags", Num(env, r->flags));
      o.Set("mode", Num(env, s.stx_mode));
      o.Set("uid", Num(env, s.stx_uid));
      o.Set("size", Napi::BigInt::New(env, static_cast<uint64_t>(s.stx_size)));
      o.Set("ino", Napi::BigInt::New(env, static_cast<uint64_t>(s.stx_ino)));
      o.Set("devMajor", Num(env, s.stx_dev_major));
      o.Set("devMinor", Num(env, s.stx_dev_minor));
      auto ns = [&](const statx_timestamp& t) {
        return Napi::BigInt::New(env, static_cast<int64_t>(static_cast<int64_t>(t.tv_sec) * 1000000000LL + t.tv_nsec));
      };
      o.Set("mtimeNs", ns(s.stx_mtime));
      o.Set("ctimeNs", ns(s.stx_ctime));
      bool unique = (s.stx_mask & STATX_MNT_ID_UNIQUE) != 0;
      bool any = unique || (s.stx_mask & STATX_MNT_ID) != 0;
      o.Set("mntId", any ? Napi::Value(Napi::BigInt::New(env, static_cast<uint64_t>(s.stx_mnt_id))) : env.Null());
      o.Set("mntUnique", Napi::Boolean::New(env, unique));
      bool dio = (s.stx_mask & STATX_DIOALIGN) != 0;
      o.Set("dioMemAlign", Num(env, dio ? s.stx_dio_mem_align : 0));
      o.Set("dioOffsetAlign", Num(env, dio ? s.stx_dio_offset_align : 0));
      cb.Call({o});
    }
  }
  delete r;
}

void CallClose(Napi::Env env, Napi::Function cb, FdResult* r) {
  if (env != nullptr && !cb.IsEmpty()) cb.Call({Num(env, r->rc)});
  delete r;
}

// Runs `work` on a detached native thread and hands its result to `cb` on the JS thread. The thread-safe function is
// unreferenced: a thread stuck for good (a FUSE daemon that never answers) never keeps the process alive by itself.
template <typename Call>
bool RunDetached(const Args& a, Napi::Value cbv, const char* name, std::function<void(FdResult&)> work, Call call) {
  auto tsfn = Napi::ThreadSafeFunction::New(a.env, cbv.As<Napi::Function>(), name, 0, 1);
  if (static_cast<napi_threadsafe_function>(tsfn) == nullptr || a.env.IsExceptionPending()) return false;
  tsfn.Unref(a.env);
  std::thread t;
  int e = Spawn(t, [tsfn, work = std::move(work), call]() mutable {
    auto* r = new FdResult();
    work(*r);
    if (tsfn.BlockingCall(r, call) != napi_ok) delete r;
    tsfn.Release();
  });
  if (e) {
    tsfn.Release();
    ThrowErrorCode(a.env, "ERR_DMALOAD_NATIVE", a.Prefix() + "could not start a thread: " + strerror(e));
    return false;
  }
  t.detach();
  return true;
}

// fdInspect(fd, callback): statx and fcntl(F_GETFL) of `fd` on a thread of its own, through a duplicate (so JS may
// close `fd` at any time without the thread touching a reused number). callback(-errno | { flags, mode, uid, size,
// ino, devMajor, devMinor, mtimeNs, ctimeNs, mntId, mntUnique }); sizes, inodes, times and mount ids are BigInts.
Napi::Value FdInspect(const Napi::CallbackInfo& info) {
  Args a(info, "fdInspect");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  if (!a[1].IsFunction()) return a.TypeError("callback", "a function"), Napi::Value();
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (d < 0) return Ret(a.env, Err());
  bool ok = RunDetached(
      a, a[1], "dmaload.fdInspect",
      [d](FdResult& r) {
        unsigned mask = STATX_BASIC_STATS | STATX_MNT_ID | STATX_MNT_ID_UNIQUE | STATX_DIOALIGN;
        if (statx(d, "", AT_EMPTY_PATH | AT_STATX_SYNC_AS_STAT, mask, &r.stx) < 0) r.rc = static_cast<int>(Err());
        int f = fcntl(d, F_GETFL);
        if (f < 0 && r.rc == 0) r.rc = static_cast<int>(Err());
        r.flags = f;
        close(d);
      },
      CallInspect);
  if (!ok) {
    close(d);
    return {};
  }
  return Ret(a.env, 0);
}

// fdClose(fd, callback): takes `fd` and closes it on a thread of its own; callback(0 | -errno). The fd number is
// the thread's from this call on: JS must forget it.
Napi::Value FdClose(const Napi::CallbackInfo& info) {
  Args a(info, "fdClose");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  if (!a[1].IsFunction()) return a.TypeError("callback", "a function"), Napi::Value();
  if (!RunDetached(
          a, a[1], "dmaload.fdClose", [fd](FdResult& r) { r.rc = close(fd) < 0 ? static_cast<int>(Err()) : 0; }, CallClose))
    return {};
  return Ret(a.env, 0);
}

// fdOpen(fd, direct, callback): a new open file description of the file `fd` is open on (/proc/self/fd/N, read-only,
// close-on-exec, O_DIRECT when `direct`), opened on a thread of its own through a duplicate (an open can wait on a
// client's file system for good); callback(newFd | -errno). The new fd is JS's from the callback on.
Napi::Value FdOpen(const Napi::CallbackInfo& info) {
  Args a(info, "fdOpen");
  int fd;
  bool direct;
  if (!a.Fd(a[0], "fd", fd) || !a.Bool(a[1], "direct", direct)) return {};
  if (!a[2].IsFunction()) return a.TypeError("callback", "a function"), Napi::Value();
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (d < 0) return Ret(a.env, Err());
  bool ok = RunDetached(
      a, a[2], "dmaload.fdOpen",
      [d, direct](FdResult& r) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", d);
        int n = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | (direct ? O_DIRECT : 0));
        r.rc = n < 0 ? static_cast<int>(Err()) : n;
        close(d);
      },
      CallClose);
  if (!ok) {
    close(d);
    return {};
  }
  return Ret(a.env, 0);
}

// reopenFd(fd, flags) -> fd | -errno: a new open file description of the same file (/proc/self/fd/N), close-on-exec.
// flags: O_RDONLY or O_RDWR, optionally O_NONBLOCK. For memfds and other in-memory files only: it opens the file.
Napi::Value ReopenFd(const Napi::CallbackInfo& info) {
  Args a(info, "reopenFd");
  int fd, flags;
  if (!a.Fd(a[0], "fd", fd) || !a.I32(a[1], "flags", flags, 0, INT32_MAX)) return {};
  if ((flags & ~(O_ACCMODE | O_NONBLOCK)) != 0 || (flags & O_ACCMODE) == O_WRONLY)
    return a.RangeError("flags", "O_RDONLY or O_RDWR, optionally with O_NONBLOCK"), Napi::Value();
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int r = open(path, flags | O_CLOEXEC);
  return Ret(a.env, r < 0 ? Err() : r);
}

// inotifyInit() -> fd | -errno: non-blocking, close-on-exec; JS owns it.
Napi::Value InotifyInit(const Napi::CallbackInfo& info) {
  Args a(info, "inotifyInit");
  int r = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  return Ret(a.env, r < 0 ? Err() : r);
}

// inotifyWatch(ifd, fd, mask) -> wd | -errno: watches the file `fd` is open on (through /proc/self/fd/N).
Napi::Value InotifyWatch(const Napi::CallbackInfo& info) {
  Args a(info, "inotifyWatch");
  int ifd, fd;
  int64_t mask;
  if (!a.Fd(a[0], "ifd", ifd) || !a.Fd(a[1], "fd", fd) || !a.Int(a[2], "mask", 1, UINT32_MAX, mask)) return {};
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int r = inotify_add_watch(ifd, path, static_cast<uint32_t>(mask));
  return Ret(a.env, r < 0 ? Err() : r);
}

// inotifyUnwatch(ifd, wd) -> 0 | -errno (an IN_IGNORED event follows).
Napi::Value InotifyUnwatch(const Napi::CallbackInfo& info) {
  Args a(info, "inotifyUnwatch");
  int ifd, wd;
  if (!a.Fd(a[0], "ifd", ifd) || !a.I32(a[1], "wd", wd, 0, INT32_MAX)) return {};
  return Ret(a.env, inotify_rm_watch(ifd, wd) < 0 ? Err() : 0);
}

// inotifyRead(ifd) -> [wd, mask, wd, mask, …] (empty: nothing pending) | -errno: every event pending now.
Napi::Value InotifyRead(const Napi::CallbackInfo& info) {
  Args a(info, "inotifyRead");
  int ifd;
  if (!a.Fd(a[0], "ifd", ifd)) return {};
  std::vector<double> out;
  alignas(inotify_event) char buf[16384];
  for (;;) {
    ssize_t n = read(ifd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      return Ret(a.env, Err());
    }
    if (n == 0) break;
    for (ssize_t off = 0; off + static_cast<ssize_t>(sizeof(inotify_event)) <= n;) {
      inotify_event ev;
      memcpy(&ev, buf + off, sizeof ev);
      out.push_back(ev.wd);
      out.push_back(ev.mask);
      off += sizeof(inotify_event) + ev.len;
    }
  }
  auto arr = Napi::Array::New(a.env, out.size());
  for (size_t i = 0; i < out.size(); i++) arr[static_cast<uint32_t>(i)] = Num(a.env, out[i]);
  return arr;
}

// socketOutq(fd) -> bytes the peer has not read yet | -errno (SIOCOUTQ; for Unix sockets, what sits in its queue).
Napi::Value SocketOutq(const Napi::CallbackInfo& info) {
  Args a(info, "socketOutq");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  int n = 0;
  return Ret(a.env, ioctl(fd, SIOCOUTQ, &n) < 0 ? Err() : n);
}

// errnoName(errno) -> 'ETOOMANYREFS' | undefined (an unknown number).
Napi::Value ErrnoName(const Napi::CallbackInfo& info) {
  Args a(info, "errnoName");
  int e;
  if (!a.I32(a[0], "errno", e, 0, 4095)) return {};
  const char* s = strerrorname_np(e);
  return s ? Napi::Value(Napi::String::New(a.env, s)) : a.env.Undefined();
}

}  // namespace

void InitFdOps(Napi::Env env, Napi::Object exports) {
  exports.Set("fdInspect", Napi::Function::New(env, FdInspect, "fdInspect"));
  exports.Set("fdClose", Napi::Function::New(env, FdClose, "fdClose"));
  exports.Set("fdOpen", Napi::Function::New(env, FdOpen, "fdOpen"));
  exports.Set("reopenFd", Napi::Function::New(env, ReopenFd, "reopenFd"));
  exports.Set("inotifyInit", Napi::Function::New(env, InotifyInit, "inotifyInit"));
  exports.Set("inotifyWatch", Napi::Function::New(env, InotifyWatch, "inotifyWatch"));
  exports.Set("inotifyUnwatch", Napi::Function::New(env, InotifyUnwatch, "inotifyUnwatch"));
  exports.Set("inotifyRead", Napi::Function::New(env, InotifyRead, "inotifyRead"));
  exports.Set("socketOutq", Napi::Function::New(env, SocketOutq, "socketOutq"));
  exports.Set("errnoName", Napi::Function::New(env, ErrnoName, "errnoName"));
  auto c = Napi::Object::New(env);
  auto set = [&](const char* k, double v) { c.Set(k, Num(env, v)); };
  set("IN_OPEN", IN_OPEN);
  set("IN_CLOSE_WRITE", IN_CLOSE_WRITE);
  set("IN_CLOSE_NOWRITE", IN_CLOSE_NOWRITE);
  set("IN_DELETE_SELF", IN_DELETE_SELF);
  set("IN_IGNORED", IN_IGNORED);
  set("IN_Q_OVERFLOW", IN_Q_OVERFLOW);
  set("O_RDONLY", O_RDONLY);
  set("O_RDWR", O_RDWR);
  exports.Set("fdConstants", c);
}

}  // namespace dmaload
