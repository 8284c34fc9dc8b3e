// reactor.cc — the reactor of `dmaload serve` and its clients: one native thread in epoll_wait over the sockets JS
// registered (EPOLLONESHOT), reporting "socket N is readable/writable" to JS through a thread-safe function. It never
// reads, writes or closes a socket itself; share.cc's header says why, and share.cc holds the sockets and messages.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <vector>

#include "args.h"
#include "live.h"

namespace dmaload {

namespace {

// "dmaload" + "reactor" / a version: refuses any other External.
const napi_type_tag kReactorTag = {0x646d616c6f616400ULL, 0x72656163746f0001ULL};
constexpr uint64_t kWakeId = UINT64_MAX;

Napi::Value Ret(Napi::Env env, int64_t rc) { return Num(env, static_cast<double>(rc)); }

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
  if (!a[0].IsExternal() || !a[0].As<Napi::External<ReactorHandle>>().CheckTypeTag(&kReactorTag))
    return a.TypeError("reactor", "a Reactor (from reactorOpen())"), Napi::Value();
  a[0].As<Napi::External<ReactorHandle>>().Data()->r->Close(a.env);
  return a.env.Undefined();
}

}  // namespace

void InitReactor(Napi::Env env, Napi::Object exports) {
  exports.Set("reactorOpen", Napi::Function::New(env, ReactorOpen, "reactorOpen"));
  exports.Set("reactorCtl", Napi::Function::New(env, ReactorCtl, "reactorCtl"));
  exports.Set("reactorRef", Napi::Function::New(env, ReactorRef, "reactorRef"));
  exports.Set("reactorClose", Napi::Function::New(env, ReactorClose, "reactorClose"));
}

}  // namespace dmaload
