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
//
// This file holds the sockets and their messages (SCM_RIGHTS) and fd helpers; the reactor is reactor.cc.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "args.h"

namespace dmaload {

namespace {

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
    if (lstat(sa.sun_path, &st) == 0 && S_ISSOCK(st.st_mode) && (st.st_mode & 07777) != static_cast<mode_t>(mode) &&
        chmod(sa.sun_path, static_cast<mode_t>(mode)) < 0)
      rc = Err();
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
