// share.cc — what `dmaload serve` and its clients need that Node's net cannot do: Unix-domain SOCK_SEQPACKET sockets
// that carry fds (SCM_RIGHTS), and a reactor that reports their readiness to JS.
//
// How socket I/O stays off the event loop's back without racing libuv: libuv never sees these sockets. Every socket is
// non-blocking and every send, receive and accept is one non-blocking call made on the JS thread (messages are at most
// a few KiB; nothing here moves bulk data). The reactor is one native thread in epoll_wait over the sockets JS
// registered, each EPOLLONESHOT: it reports "socket N is readable/writable" to JS through a thread-safe function and
// never reads or writes a socket itself, so there is exactly one reader of every socket. JS drains what is there and
// re-arms. Closing a socket is JS's job, after removing it from the reactor (ids, not fds, name sockets in events, so a
// late event for a closed socket whose number was reused is recognised and dropped).
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "args.h"
#include "live.h"

namespace dmaload {

namespace {

// "dmaload" + "reactor" / a version: refuses any other External.
const napi_type_tag kReactorTag = {0x646d616c6f616400ULL, 0x72656163746f0001ULL};
constexpr uint64_t kWakeId = UINT64_MAX;
constexpr int kMaxFds = 253;  // SCM_MAX_FD

Napi::Value Ret(Napi::Env env, int64_t rc) { return Num(env, static_cast<double>(rc)); }

bool SocketPath(const Args& a, Napi::Value v, sockaddr_un& sa, socklen_t& len) {
  std::string path;
  if (!a.Str(v, "path", path)) return false;
  if (path.empty() || path.find('\0') != std::string::npos) return a.TypeError("path", "a non-empty path without NUL bytes", "ERR_INVALID_ARG_VALUE");
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (path.size() >= sizeof sa.sun_path) {
    len = 0;  // the caller answers ENAMETOOLONG: a system limit, not a bad argument
    return true;
  }
  memcpy(sa.sun_path, path.data(), path.size());
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return true;
}

// unixListen(path, mode, backlog) -> fd | -errno: a non-blocking SOCK_SEQPACKET socket bound at `path` with exactly
// `mode`. The socket's own inode gets the mode before bind() (Linux creates the file from it, less the umask), so the
// file never exists with wider permissions than asked; a chmod afterwards only adds what the umask took away.
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Args a(info, "unixListen");
  sockaddr_un sa;
  socklen_t len;
  int mode, backlog;
  if (!SocketPath(a, a[0], sa, len) || !a.I32(a[1], "mode", mode, 0, 0777) || !a.I32(a[2], "backlog", backlog, 1, 65535)) return {};
  if (len == 0) return Ret(a.env, -ENAMETOOLONG);
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return Ret(a.env, Err());
  int64_t rc = 0;
  if (fchmod(s, static_cast<mode_t>(mode)) < 0 || bind(s, reinterpret_cast<sockaddr*>(&sa), len) < 0) {
    rc = Err();
  } else {
    struct stat st;
    if (lstat(sa.sun_path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 07777) != static_cast<mode_t>(mode) && chmod(sa.sun_path, static_cast<mode_t>(mode)) < 0) rc = Err();
    if (rc == 0 && listen(s, backlog) < 0) rc = Err();
    if (rc < 0) unlink(sa.sun_path);
  }
  if (rc < 0) {
    close(s);
    return Ret(a.env, rc);
  }
  return Ret(a.env, s);
}

// unixConnect(path) -> fd | -errno: non-blocking; a listener whose backlog is full answers -EAGAIN (try again later),
// none at all -ECONNREFUSED.
Napi::Value UnixConnect(const Napi::CallbackInfo& info) {
  Args a(info, "unixConnect");
  sockaddr_un sa;
  socklen_t len;
  if (!SocketPath(a, a[0], sa, len)) return {};
  if (len == 0) return Ret(a.env, -ENAMETOOLONG);
  int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s < 0) return Ret(a.env, Err());
  if (connect(s, reinterpret_cast<sockaddr*>(&sa), len) < 0) {
    int64_t e = Err();
    close(s);
    return Ret(a.env, e);
  }
  return Ret(a.env, s);
}

// unixAccept(fd) -> fd | -errno (-EAGAIN: nobody waiting); the new socket is non-blocking and close-on-exec.
Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  Args a(info, "unixAccept");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  int c = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
  return Ret(a.env, c < 0 ? Err() : c);
}

bool Bytes(const Args& a, Napi::Value v, const std::string& what, uint8_t*& data, size_t& len) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) return a.TypeError(what, "a Uint8Array");
  auto u = v.As<Napi::Uint8Array>();
  data = u.Data();
  len = u.ElementLength();
  return true;
}

// sendMsg(fd, data, fds) -> bytes sent | -errno: one message, with `fds` attached (SCM_RIGHTS), never blocking and
// never raising SIGPIPE (a peer that went away is -EPIPE).
Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Args a(info, "sendMsg");
  int fd;
  uint8_t* data;
  size_t len;
  if (!a.Fd(a[0], "fd", fd) || !Bytes(a, a[1], "data", data, len)) return {};
  if (!a[2].IsArray()) return a.TypeError("fds", "an array of fds"), Napi::Value();
  auto arr = a[2].As<Napi::Array>();
  if (arr.Length() > kMaxFds) return a.RangeError("fds", "at most " + std::to_string(kMaxFds) + " fds"), Napi::Value();
  std::vector<int> fds(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    if (!a.Fd(arr.Get(i), "fds[" + std::to_string(i) + "]", fds[i])) return {};
  }
  iovec iov{data, len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  std::vector<char> ctl;
  if (!fds.empty()) {
    ctl.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    m.msg_control = ctl.data();
    m.msg_controllen = ctl.size();
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
  return Ret(a.env, n < 0 ? Err() : n);
}

// recvMsg(fd, buf, maxFds) -> [length, flags, ...fds] | -errno: one message into `buf`, never blocking. `length` is the
// message's real length (MSG_TRUNC): larger than buf means the rest was discarded. Received fds are close-on-exec and
// the caller's to close; fds beyond maxFds were never installed (flags has MSG_CTRUNC). length 0 with no fds: the peer
// closed (or sent an empty message, which the protocol never does).
Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Args a(info, "recvMsg");
  int fd, maxFds;
  uint8_t* data;
  size_t len;
  if (!a.Fd(a[0], "fd", fd) || !Bytes(a, a[1], "buf", data, len) || !a.I32(a[2], "maxFds", maxFds, 0, kMaxFds)) return {};
  iovec iov{data, len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  std::vector<char> ctl(CMSG_SPACE(sizeof(int) * static_cast<size_t>(std::max(maxFds, 1))), 0);
  m.msg_control = ctl.data();
  m.msg_controllen = maxFds > 0 ? ctl.size() : 0;
  ssize_t n = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
  if (n < 0) return Ret(a.env, Err());
  std::vector<int> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k; i++) {
      int f;
      memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
      fds.push_back(f);
    }
  }
  // CMSG_SPACE rounds up: the kernel may have installed one more than asked. Honour maxFds exactly.
  int flags = m.msg_flags;
  while (fds.size() > static_cast<size_t>(maxFds)) {
    close(fds.back());
    fds.pop_back();
    flags |= MSG_CTRUNC;
  }
  auto out = Napi::Array::New(a.env, 2 + fds.size());
  if (out.IsEmpty()) {  // a terminating worker: nobody would close them
    for (int f : fds) close(f);
    return {};
  }
  out[0u] = Num(a.env, static_cast<double>(n));
  out[1u] = Num(a.env, flags);
  for (size_t i = 0; i < fds.size(); i++) out[static_cast<uint32_t>(2 + i)] = Num(a.env, fds[i]);
  return out;
}

// fdFlags(fd) -> fcntl(F_GETFL) | -errno: the open file description's access mode and flags (O_PATH included).
Napi::Value FdFlags(const Napi::CallbackInfo& info) {
  Args a(info, "fdFlags");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  int f = fcntl(fd, F_GETFL);
  return Ret(a.env, f < 0 ? Err() : f);
}

// dupFd(fd) -> fd | -errno: a close-on-exec duplicate that JS owns (not counted in live().fds: JS closes it).
Napi::Value DupFdFn(const Napi::CallbackInfo& info) {
  Args a(info, "dupFd");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  return Ret(a.env, d < 0 ? Err() : d);
}

// closeFd(fd) -> 0 | -errno: closes an fd the addon made (memfd, dma-buf, socket, received). Node's fs.closeSync
// warns in worker threads when it closes an fd that fs did not open there.
Napi::Value CloseFdFn(const Napi::CallbackInfo& info) {
  Args a(info, "closeFd");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  return Ret(a.env, close(fd) < 0 ? Err() : 0);
}

// peerCred(fd) -> [pid, uid, gid] | -errno: who is on the other end of a Unix socket (SO_PEERCRED), for logs.
Napi::Value PeerCred(const Napi::CallbackInfo& info) {
  Args a(info, "peerCred");
  int fd;
  if (!a.Fd(a[0], "fd", fd)) return {};
  ucred c{};
  socklen_t l = sizeof c;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &c, &l) < 0) return Ret(a.env, Err());
  auto out = Napi::Array::New(a.env, 3);
  out[0u] = Num(a.env, c.pid);
  out[1u] = Num(a.env, c.uid);
  out[2u] = Num(a.env, c.gid);
  return out;
}

// ---- The reactor.

struct Batch {
  std::vector<double> ev;  // id, events, id, events, …
};

class Reactor : public Owned, public std::enable_shared_from_this<Reactor> {
 public:
  int epfd = -1;
  int wakeFd = -1;
  std::thread thread;
  std::atomic<bool> stop{false};
  Napi::ThreadSafeFunction tsfn;
  EnvData* envData = nullptr;
  bool closed = false;  // JS thread only

  static void CallJs(Napi::Env env, Napi::Function cb, Batch* b) {
    if (env != nullptr && !cb.IsEmpty()) {
      auto arr = Napi::Array::New(env, b->ev.size());
      for (size_t i = 0; i < b->ev.size(); i++) arr[static_cast<uint32_t>(i)] = Num(env, b->ev[i]);
      cb.Call({arr});
    }
    delete b;
  }

  void Loop() {
    epoll_event evs[64];
    while (!stop.load()) {
      int n = epoll_wait(epfd, evs, 64, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        break;  // EBADF/EINVAL: only if the epoll fd went away, which Close() does after joining us
      }
      auto* b = new Batch();
      for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == kWakeId) {
          uint64_t v;
          ssize_t r = read(wakeFd, &v, sizeof v);
          (void)r;
          continue;
        }
        b->ev.push_back(static_cast<double>(evs[i].data.u64));
        b->ev.push_back(static_cast<double>(evs[i].events));
      }
      if (stop.load() || b->ev.empty() || tsfn.NonBlockingCall(b, CallJs) != napi_ok) delete b;
    }
  }

  // Stops and joins the thread and closes the epoll and wake fds. The JS thread (or env teardown) only.
  void Shutdown() {
    stop = true;
    if (wakeFd >= 0) {
      uint64_t one = 1;
      ssize_t r = write(wakeFd, &one, sizeof one);
      (void)r;
    }
    if (thread.joinable()) thread.join();
    CloseDup(epfd);
    CloseDup(wakeFd);
  }

  void Close(Napi::Env env) {
    if (closed) return;
    closed = true;
    Shutdown();
    g_live.queues--;
    tsfn.Release();
    envData->Remove(shared_from_this());
  }

  void Teardown() override {
    if (closed) return;
    closed = true;
    Shutdown();
    g_live.queues--;
  }
};

struct ReactorHandle {
  std::shared_ptr<Reactor> r;
};

void ReactorHandleFinalize(Napi::Env env, ReactorHandle* h) {
  // Collected while open: its thread would wait forever and its sockets' events go nowhere.
  if (!h->r->closed && !GetEnvData(env)->tearingDown) h->r->Close(env);
  delete h;
}

bool ReadReactor(const Args& a, Napi::Value v, std::shared_ptr<Reactor>& out) {
  if (!v.IsExternal() || !v.As<Napi::External<ReactorHandle>>().CheckTypeTag(&kReactorTag)) return a.TypeError("reactor", "a Reactor (from reactorOpen())");
  out = v.As<Napi::External<ReactorHandle>>().Data()->r;
  if (out->closed) {
    ThrowErrorCode(a.env, "ERR_REACTOR_CLOSED", a.Prefix() + "the reactor is closed");
    return false;
  }
  return true;
}

// reactorOpen(callback) -> Reactor | -errno. callback([id, events, id, events, …]) runs on the JS thread. Counted in
// live(): one queue, one thread, two fds, until reactorClose(). Starts unreferenced: reactorRef(r, true) keeps the
// process alive (a listening server, a client waiting for replies).
Napi::Value ReactorOpen(const Napi::CallbackInfo& info) {
  Args a(info, "reactorOpen");
  Napi::Env env = a.env;
  if (!a[0].IsFunction()) return a.TypeError("callback", "a function"), Napi::Value();
  auto r = std::make_shared<Reactor>();
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return Ret(env, Err());
  r->epfd = ep;
  g_live.fds++;
  int w = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (w < 0) {
    int64_t e = Err();
    CloseDup(r->epfd);
    return Ret(env, e);
  }
  r->wakeFd = w;
  g_live.fds++;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeId;
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->wakeFd, &ev) < 0) {
    int64_t e = Err();
    r->Shutdown();
    return Ret(env, e);
  }
  r->tsfn = Napi::ThreadSafeFunction::New(env, a[0].As<Napi::Function>(), "dmaload.reactor", 0, 1);
  if (static_cast<napi_threadsafe_function>(r->tsfn) == nullptr || env.IsExceptionPending()) {
    r->Shutdown();
    return {};
  }
  r->tsfn.Unref(env);
  auto self = r.get();
  if (int e = Spawn(r->thread, [self] { self->Loop(); })) {
    r->tsfn.Release();
    r->Shutdown();
    return Ret(env, -e);
  }
  g_live.queues++;
  r->envData = GetEnvData(env);
  r->envData->Add(r);
  auto* h = new ReactorHandle{r};
  auto ext = Napi::External<ReactorHandle>::New(env, h, ReactorHandleFinalize);
  if (ext.IsEmpty() || napi_type_tag_object(env, ext, &kReactorTag) != napi_ok) {
    if (ext.IsEmpty()) delete h;
    r->Close(env);
    return {};
  }
  return ext;
}

// reactorCtl(reactor, op, fd, id, events) -> 0 | -errno. op: 1 add, 2 modify (re-arm), 3 delete. Every registration is
// EPOLLONESHOT: after an event, nothing more is reported for that socket until JS re-arms it.
Napi::Value ReactorCtl(const Napi::CallbackInfo& info) {
  Args a(info, "reactorCtl");
  std::shared_ptr<Reactor> r;
  int op, fd, events;
  uint64_t id;
  if (!ReadReactor(a, a[0], r) || !a.I32(a[1], "op", op, 1, 3) || !a.Fd(a[2], "fd", fd) || !a.U64(a[3], "id", id) ||
      !a.I32(a[4], "events", events, 0, EPOLLIN | EPOLLOUT | EPOLLRDHUP))
    return {};
  if (fd == r->epfd || fd == r->wakeFd) return a.RangeError("fd", "a socket, not the reactor's own fd"), Napi::Value();
  epoll_event ev{};
  ev.events = static_cast<uint32_t>(events) | EPOLLONESHOT;
  ev.data.u64 = id;
  int ctl = op == 1 ? EPOLL_CTL_ADD : op == 2 ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
  int rc = epoll_ctl(r->epfd, ctl, fd, &ev);
  return Ret(a.env, rc < 0 ? Err() : 0);
}

// reactorRef(reactor, ref): whether the reactor keeps the process alive.
Napi::Value ReactorRef(const Napi::CallbackInfo& info) {
  Args a(info, "reactorRef");
  std::shared_ptr<Reactor> r;
  bool ref;
  if (!ReadReactor(a, a[0], r) || !a.Bool(a[1], "ref", ref)) return {};
  if (ref) r->tsfn.Ref(a.env);
  else r->tsfn.Unref(a.env);
  return a.env.Undefined();
}

// reactorClose(reactor): stops and joins the thread, closes its fds. Sockets stay JS's to close. Idempotent.
Napi::Value ReactorClose(const Napi::CallbackInfo& info) {
  Args a(info, "reactorClose");
  if (!a[0].IsExternal() || !a[0].As<Napi::External<ReactorHandle>>().CheckTypeTag(&kReactorTag)) return a.TypeError("reactor", "a Reactor (from reactorOpen())"), Napi::Value();
  a[0].As<Napi::External<ReactorHandle>>().Data()->r->Close(a.env);
  return a.env.Undefined();
}

}  // namespace

void InitShare(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, UnixListen, "unixListen"));
  exports.Set("unixConnect", Napi::Function::New(env, UnixConnect, "unixConnect"));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept, "unixAccept"));
  exports.Set("sendMsg", Napi::Function::New(env, SendMsg, "sendMsg"));
  exports.Set("recvMsg", Napi::Function::New(env, RecvMsg, "recvMsg"));
  exports.Set("fdFlags", Napi::Function::New(env, FdFlags, "fdFlags"));
  exports.Set("dupFd", Napi::Function::New(env, DupFdFn, "dupFd"));
  exports.Set("closeFd", Napi::Function::New(env, CloseFdFn, "closeFd"));
  exports.Set("peerCred", Napi::Function::New(env, PeerCred, "peerCred"));
  exports.Set("reactorOpen", Napi::Function::New(env, ReactorOpen, "reactorOpen"));
  exports.Set("reactorCtl", Napi::Function::New(env, ReactorCtl, "reactorCtl"));
  exports.Set("reactorRef", Napi::Function::New(env, ReactorRef, "reactorRef"));
  exports.Set("reactorClose", Napi::Function::New(env, ReactorClose, "reactorClose"));
  auto c = Napi::Object::New(env);
  auto set = [&](const char* k, double v) { c.Set(k, Num(env, v)); };
  set("EPOLLIN", EPOLLIN);
  set("EPOLLOUT", EPOLLOUT);
  set("EPOLLERR", EPOLLERR);
  set("EPOLLHUP", EPOLLHUP);
  set("EPOLLRDHUP", EPOLLRDHUP);
  set("MSG_TRUNC", MSG_TRUNC);
  set("MSG_CTRUNC", MSG_CTRUNC);
  set("O_PATH", O_PATH);
  set("O_ACCMODE", O_ACCMODE);
  set("O_NONBLOCK", O_NONBLOCK);
  set("F_SEAL_FUTURE_WRITE", 0x0010);
  set("MAX_FDS", kMaxFds);
  exports.Set("shareConstants", c);
}

}  // namespace dmaload
