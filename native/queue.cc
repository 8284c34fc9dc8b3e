// queue.cc — persistent queues: one native queue (one ring and its thread, or `depth` worker threads) for a writer's
// or a copy's whole life, instead of a job per buffer. Requests run through the same drivers and completion rule as
// transfer jobs (engine.h). A busy ring is woken for new submissions by an eventfd it polls beside its completions.
#include <sys/eventfd.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <unordered_map>

#include "engine.h"
#include "live.h"
#include "mappings.h"

namespace dmaload {

namespace {

const napi_type_tag kQueueTag = {0x646d616c6f616400ULL, 0x7175657565000002ULL};

struct QReq {
  IoOp op;
  Lease lease;
  uint64_t id = 0;
  uint64_t gen = 0;  // cancel generation at submit time
};

// JS-thread half of a request: its promise and, for an ArrayBuffer target, the reference that keeps it alive.
struct JsReq {
  explicit JsReq(Napi::Env env) : d(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise::Deferred d;
  Napi::Reference<Napi::ArrayBuffer> keep;
};

class Queue : public Owned, public std::enable_shared_from_this<Queue> {
 public:
  ~Queue() override {
    if (wakeFd >= 0) close(wakeFd);
  }
  int fd = -1;  // our dup
  bool write = false, direct = false, uring = true;
  int rwFlags = 0;
  unsigned depth = 1;
  Uring ring;
  int wakeFd = -1;
  // Reads are issued from the kernel's workers so a new request is picked up at once even while a large direct read
  // waits for the device (measured: 0.15 ms instead of up to 86 ms). Writes are not: io-wq runs writes to one file
  // one at a time (hashed by inode), which cost ~15% write throughput here.
  bool asyncIssue = false;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<QReq*> pending;  // FIFO of requests not yet handed to the kernel or a worker; under mu
  bool closing = false;       // under mu
  std::atomic<uint64_t> cancelGen{0};
  std::vector<std::thread> threads;
  std::atomic<unsigned> running{0};
  Napi::ThreadSafeFunction tsfn;

  // JS thread only.
  EnvData* envData = nullptr;
  std::unordered_map<uint64_t, std::unique_ptr<JsReq>> js;
  std::vector<Napi::Promise::Deferred> closeWaiters;
  uint64_t nextId = 1;
  uint64_t outstanding = 0;
  bool closeRequested = false;
  bool closed = false;

  void Wake() {
    cv.notify_all();
    if (wakeFd >= 0) {
      uint64_t one = 1;
      ssize_t w = ::write(wakeFd, &one, sizeof one);
      (void)w;  // EAGAIN only when the counter is full, and then a wake-up is pending anyway
    }
  }
  void RequestClose() {
    {
      std::lock_guard<std::mutex> l(mu);
      closing = true;
    }
    Wake();
  }

  // Queue threads: a request ended.
  void Complete(QReq* r) {
    int e = r->op.err ? r->op.err : r->op.abandoned ? ECANCELED : 0;
    const char* call = r->op.err ? r->op.call() : "";
    uint64_t bytes = std::min(r->op.got, r->op.need), id = r->id;
    r->lease.Release();
    delete r;
    auto self = shared_from_this();
    tsfn.BlockingCall([self, id, bytes, e, call](Napi::Env env, Napi::Function) {
      if (env != nullptr) self->Resolve(env, id, bytes, e, call);
    });
  }
  // Queue threads: one ended; the last one closes the fd and hands the rest to the JS thread.
  void ThreadExit() {
    if (running.fetch_sub(1) != 1) return;
    CloseDup(fd);
    auto self = shared_from_this();
    tsfn.BlockingCall([self](Napi::Env env, Napi::Function) {
      if (env != nullptr) self->OnClosed(env);
    });
  }

  void Resolve(Napi::Env env, uint64_t id, uint64_t bytes, int e, const char* call) {
    auto it = js.find(id);
    if (it == js.end()) return;
    auto r = Napi::Object::New(env);
    r.Set("bytes", Num(env, static_cast<double>(bytes)));
    r.Set("errno", Num(env, e));
    r.Set("syscall", Napi::String::New(env, call));
    auto d = it->second->d;
    it->second->keep.Reset();
    js.erase(it);
    if (--outstanding == 0 && !closeRequested) tsfn.Unref(env);
    d.Resolve(r);
  }

  void JoinAll() {
    for (auto& t : threads) {
      if (t.joinable()) t.join();
    }
    ring.Close();
    if (wakeFd >= 0) close(wakeFd);
    wakeFd = -1;
  }

  void OnClosed(Napi::Env env) {
    if (closed) return;
    closed = true;
    JoinAll();
    g_live.queues--;
    envData->Remove(shared_from_this());
    for (auto& d : closeWaiters) d.Resolve(env.Undefined());
    closeWaiters.clear();
    tsfn.Release();
  }

  void Teardown() override {
    closeRequested = true;
    for (QReq* r : CancelPending()) delete r;  // its lease unpins
    RequestClose();
    JoinAll();
    CloseDup(fd);
    for (auto& [id, r] : js) r->keep.Reset();
    js.clear();
    if (!closed) {
      closed = true;
      g_live.queues--;
    }
  }

  // Takes the requests no kernel or worker has seen yet; the caller completes them with ECANCELED.
  std::deque<QReq*> CancelPending() {
    std::deque<QReq*> out;
    std::lock_guard<std::mutex> l(mu);
    cancelGen++;
    out.swap(pending);
    return out;
  }
};

class QueueSource {
 public:
  explicit QueueSource(Queue& q) : q_(q) {}
  IoOp* Take(unsigned) {
    std::lock_guard<std::mutex> l(q_.mu);
    return Pop();
  }
  IoOp* TakeBlocking(unsigned) {
    std::unique_lock<std::mutex> l(q_.mu);
    q_.cv.wait(l, [&] { return !q_.pending.empty() || q_.closing; });
    return Pop();
  }
  bool Finished() {
    std::lock_guard<std::mutex> l(q_.mu);
    return q_.closing && q_.pending.empty();
  }
  void WaitIdle() {
    std::unique_lock<std::mutex> l(q_.mu);
    q_.cv.wait(l, [&] { return !q_.pending.empty() || q_.closing; });
  }
  bool Abandon(const IoOp& o) const { return static_cast<QReq*>(o.user)->gen < q_.cancelGen.load(); }
  void Progress(uint64_t) {}
  void Done(unsigned, IoOp* o) { q_.Complete(static_cast<QReq*>(o->user)); }

 private:
  IoOp* Pop() {
    if (q_.pending.empty()) return nullptr;
    QReq* r = q_.pending.front();
    q_.pending.pop_front();
    return &r->op;
  }
  Queue& q_;
};

struct QueueHandle {
  std::shared_ptr<Queue> q;
};

void QueueHandleFinalize(Napi::Env, QueueHandle* h) {
  // Collected while open: close without touching JS; the threads finish what they hold and clean up.
  if (!h->q->closeRequested) {
    h->q->closeRequested = true;
    h->q->RequestClose();
  }
  delete h;
}

bool ReadQueue(const Args& a, Napi::Value v, std::shared_ptr<Queue>& out) {
  if (!v.IsExternal() || !v.As<Napi::External<QueueHandle>>().CheckTypeTag(&kQueueTag)) return a.TypeError("queue", "a Queue (from queueOpen())");
  out = v.As<Napi::External<QueueHandle>>().Data()->q;
  return true;
}

// queueOpen({ fd, write, direct, depth, engine }) -> Queue | -errno
Napi::Value QueueOpen(const Napi::CallbackInfo& info) {
  Args a(info, "queueOpen");
  Napi::Env env = a.env;
  Napi::Object o;
  int fd;
  uint64_t depth;
  std::string engine;
  auto q = std::make_shared<Queue>();
  if (!a.Obj(a[0], "opts", o) || !a.Fd(o.Get("fd"), "opts.fd", fd) || !a.Bool(o.Get("write"), "opts.write", q->write) ||
      !a.Bool(o.Get("direct"), "opts.direct", q->direct) || !a.U64(o.Get("depth"), "opts.depth", depth, 4096, 1) ||
      !a.Str(o.Get("engine"), "opts.engine", engine) || !RwFlags(a, o.Get("rwFlags"), "opts.rwFlags", q->rwFlags))
    return {};
  if (engine != "uring" && engine != "threads") return a.TypeError("opts.engine", "'uring' or 'threads'", "ERR_INVALID_ARG_VALUE"), Napi::Value();
  q->depth = static_cast<unsigned>(depth);
  q->uring = engine == "uring";
  q->asyncIssue = !q->write;
  int d = DupFd(fd);
  if (d < 0) return Num(env, d);
  q->fd = d;
  if (q->uring) {
    int rc = q->ring.Init(q->depth);
    if (rc == 0) {
      q->wakeFd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      if (q->wakeFd < 0) rc = static_cast<int>(Err());
    }
    if (rc < 0) {
      CloseDup(q->fd);
      return Num(env, rc);
    }
  }
  q->tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "dmaload.queue", 0, 1);
  if (static_cast<napi_threadsafe_function>(q->tsfn) == nullptr || env.IsExceptionPending()) {
    CloseDup(q->fd);
    return {};
  }
  q->tsfn.Unref(env);  // an idle open queue does not keep the process alive
  unsigned want = q->uring ? 1 : q->depth;
  q->threads.resize(want);
  q->running = want;
  unsigned started = 0;
  for (unsigned w = 0; w < want; w++) {
    int e = Spawn(q->threads[w], [q, w] {
      QueueSource src(*q);
      if (q->uring) UringDrive(q->ring, q->depth, src, q->wakeFd, q->asyncIssue);
      else SyncWorker(src, w);
      q->ThreadExit();
    });
    if (e) {
      q->running -= want - w;  // never started: they will not exit
      break;
    }
    started++;
  }
  if (started == 0) {
    q->tsfn.Release();
    q->ring.Close();
    CloseDup(q->fd);
    return Num(env, -EAGAIN);
  }
  q->envData = GetEnvData(env);
  q->envData->Add(q);
  g_live.queues++;
  auto* h = new QueueHandle{q};
  auto ext = Napi::External<QueueHandle>::New(env, h, QueueHandleFinalize);
  if (ext.IsEmpty() || napi_type_tag_object(env, ext, &kQueueTag) != napi_ok) {
    // A terminating worker: no handle will ever close it, so close it now (its threads clean up).
    if (ext.IsEmpty()) delete h;
    q->closeRequested = true;
    q->RequestClose();
    return {};
  }
  return ext;
}

// queueSubmit(queue, target, bufOffset, fileOffset, length) -> Promise<{ bytes, errno, syscall }>
Napi::Value QueueSubmit(const Napi::CallbackInfo& info) {
  Args a(info, "queueSubmit");
  std::shared_ptr<Queue> q;
  Target t;
  uint64_t bufOff, fileOff, len;
  if (!ReadQueue(a, a[0], q)) return {};
  if (q->closeRequested) return ThrowErrorCode(a.env, "ERR_QUEUE_CLOSED", a.Prefix() + "the queue is closed"), Napi::Value();
  if (!ReadTarget(a, a[1], "target", t) || !a.U64(a[2], "bufOffset", bufOff) || !a.U64(a[3], "fileOffset", fileOff) || !a.U64(a[4], "length", len, kMaxSafe, 1))
    return {};
  if (bufOff > t.size || len > t.size - bufOff)
    return a.RangeError("bufOffset + length",
                        "<= the target's size " + std::to_string(t.size) + " (got " + std::to_string(bufOff) + " + " + std::to_string(len) + ")"),
           Napi::Value();
  auto* r = new QReq();
  r->op.fd = q->fd;
  r->op.write = q->write;
  r->op.direct = q->direct;
  r->op.rwFlags = q->rwFlags;
  r->op.mem = t.data + bufOff;
  r->op.fileOff = fileOff;
  r->op.need = r->op.ask = len;
  r->op.eofAlign = 0;  // a direct read that comes back short has met the end of the file
  r->op.user = r;
  r->lease = std::move(t.lease);
  r->id = q->nextId++;
  r->gen = q->cancelGen.load();
  auto jr = std::make_unique<JsReq>(a.env);
  jr->keep = std::move(t.keep);
  auto promise = jr->d.Promise();
  q->js.emplace(r->id, std::move(jr));
  if (q->outstanding++ == 0) q->tsfn.Ref(a.env);
  {
    std::lock_guard<std::mutex> l(q->mu);
    q->pending.push_back(r);
  }
  q->Wake();
  return promise;
}

// queueCancel(queue): requests not yet handed to the kernel (or a worker) end with ECANCELED; others finish.
Napi::Value QueueCancel(const Napi::CallbackInfo& info) {
  Args a(info, "queueCancel");
  std::shared_ptr<Queue> q;
  if (!ReadQueue(a, a[0], q)) return {};
  for (QReq* r : q->CancelPending()) {
    uint64_t id = r->id;
    r->lease.Release();
    delete r;
    q->Resolve(a.env, id, 0, ECANCELED, "");
  }
  return a.env.Undefined();
}

// queueClose(queue) -> Promise<void>: resolves once every request has ended, the fd is closed and threads joined.
Napi::Value QueueClose(const Napi::CallbackInfo& info) {
  Args a(info, "queueClose");
  std::shared_ptr<Queue> q;
  if (!ReadQueue(a, a[0], q)) return {};
  auto d = Napi::Promise::Deferred::New(a.env);
  if (q->closed) {
    d.Resolve(a.env.Undefined());
    return d.Promise();
  }
  q->closeWaiters.push_back(d);
  if (!q->closeRequested) {
    q->closeRequested = true;
    q->tsfn.Ref(a.env);
    q->RequestClose();
  }
  return d.Promise();
}

}  // namespace

void InitQueue(Napi::Env env, Napi::Object exports) {
  exports.Set("queueOpen", Napi::Function::New(env, QueueOpen, "queueOpen"));
  exports.Set("queueSubmit", Napi::Function::New(env, QueueSubmit, "queueSubmit"));
  exports.Set("queueCancel", Napi::Function::New(env, QueueCancel, "queueCancel"));
  exports.Set("queueClose", Napi::Function::New(env, QueueClose, "queueClose"));
}

}  // namespace dmaload
