// engine.cc — transfer(): moves segments between a file and a target, split into requests of at most `chunk` bytes
// with `depth` in flight, by io_uring or a pool of threads. A job owns what it uses — a dup of the fd, a pin on the
// region (or a reference to the ArrayBuffer) — until its last request has ended, and only then resolves.
#include "engine.h"

#include <sys/mman.h>

#include <cstring>
#include <mutex>

#include "hash.h"
#include "mappings.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

namespace dmaload {

namespace {

struct Segment {
  uint64_t fileOff, bufOff, len;
};

class Job : public Owned, public std::enable_shared_from_this<Job> {
 public:
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}

  // Settings, fixed before the thread starts.
  int fd = -1;  // our dup
  bool write = false, direct = false, bounce = false, populate = false, uring = true;
  int rwFlags = 0;
  uint64_t chunk = 0, padTo = 0;
  unsigned depth = 1;
  std::vector<Segment> segs;
  Target target;
  bool wantProgress = false;
  std::shared_ptr<Hasher> hasher;  // reads: each completed request's bytes go to it (verification while loading)

  // State shared by the job's threads.
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
  std::atomic<uint64_t> done{0};
  std::atomic<int> err{0};
  const char* failedCall = "";
  std::atomic<bool> shortRead{false};
  std::atomic<uint64_t> populated{UINT64_MAX};
  std::atomic<int64_t> lastProgressNs{0};
  std::atomic<bool> progressQueued{false};
  uint64_t total = 0;

  // JS side.
  Napi::ThreadSafeFunction tsfn;
  Napi::Promise::Deferred deferred;
  EnvData* envData = nullptr;
  std::thread thread;
  bool finished = false;  // JS thread only

  uint64_t Padded(uint64_t n) const { return padTo > 1 ? (n + padTo - 1) / padTo * padTo : n; }
  void Fail(int e, const char* call) {
    int expected = 0;
    if (err.compare_exchange_strong(expected, e)) failedCall = call;
  }
  bool Stopping() const { return err.load() != 0 || cancel->load() || shortRead.load(); }

  // The next request's piece of a segment, in buffer order.
  bool NextPiece(Segment& p) {
    std::lock_guard<std::mutex> l(cursorMu_);
    while (segIdx_ < segs.size() && segPos_ >= segs[segIdx_].len) {
      segIdx_++;
      segPos_ = 0;
    }
    if (segIdx_ == segs.size()) return false;
    const Segment& s = segs[segIdx_];
    uint64_t n = std::min(chunk, s.len - segPos_);
    p = {s.fileOff + segPos_, s.bufOff + segPos_, n};
    segPos_ += n;
    return true;
  }

  void WaitPopulated(uint64_t end) const {
    // The populate thread only runs ahead; if it falls behind, the I/O faults pages itself, so never wait long.
    for (int spins = 0; populated.load(std::memory_order_acquire) < end && spins < 64; spins++) std::this_thread::yield();
  }

  void Progress(uint64_t bytes) {
    uint64_t now = done.fetch_add(bytes) + bytes;
    if (!wantProgress) return;
    int64_t t = NowNs();
    // At most ~60 calls a second, and never more than one waiting on the JS thread.
    if (now < total && t - lastProgressNs.load() < 16'000'000) return;
    if (progressQueued.exchange(true)) return;
    lastProgressNs = t;
    auto self = shared_from_this();
    tsfn.NonBlockingCall([self](Napi::Env env, Napi::Function cb) {
      self->progressQueued = false;
      if (env != nullptr && !cb.IsEmpty()) cb.Call({Num(env, static_cast<double>(self->done.load()))});
    });
  }

  void Run();
  void Finish(Napi::Env env);
  void Teardown() override;
  Napi::Object Result(Napi::Env env) const {
    auto r = Napi::Object::New(env);
    r.Set("bytes", Num(env, static_cast<double>(done.load())));
    r.Set("errno", Num(env, err.load()));
    r.Set("syscall", Napi::String::New(env, failedCall));
    r.Set("short", Napi::Boolean::New(env, shortRead.load()));
    r.Set("cancelled", Napi::Boolean::New(env, cancel->load()));
    return r;
  }

 private:
  void RunThreads(std::vector<uint8_t*>& bounceBufs);
  void PopulateAhead(const std::atomic<bool>& stop);
  std::mutex cursorMu_;
  size_t segIdx_ = 0;
  uint64_t segPos_ = 0;
};

// A job's requests for the drivers in engine.h: one slot per ring entry or worker, each with its bounce buffer.
class JobSource {
 public:
  JobSource(Job& j, unsigned n, std::vector<uint8_t*>& bounce) : j_(j), slots_(n), dst_(n), bounce_(bounce) {}

  IoOp* Take(unsigned s) {
    if (j_.Stopping()) return nullptr;
    Segment p;
    if (!j_.NextPiece(p)) {
      noMore_ = true;
      return nullptr;
    }
    uint8_t* d = j_.target.data + p.bufOff;
    j_.WaitPopulated(p.bufOff + p.len);
    IoOp& o = slots_[s];
    o = IoOp{};
    o.fd = j_.fd;
    o.write = j_.write;
    o.direct = j_.direct;
    o.rwFlags = j_.rwFlags;
    o.mem = j_.bounce ? bounce_[s] : d;
    o.fileOff = p.fileOff;
    o.need = p.len;
    o.ask = j_.Padded(p.len);
    o.eofAlign = std::max<uint64_t>(j_.padTo, 1);
    dst_[s] = d;
    if (j_.bounce && j_.write) memcpy(bounce_[s], d, p.len);
    return &o;
  }
  IoOp* TakeBlocking(unsigned w) { return Take(w); }
  bool Finished() const { return noMore_ || j_.Stopping(); }
  void WaitIdle() {}
  bool Abandon(const IoOp&) const { return j_.Stopping(); }
  void Progress(uint64_t n) { j_.Progress(n); }
  void Done(unsigned s, IoOp* o) {
    if (j_.bounce && !j_.write && o->got) memcpy(dst_[s], o->mem, std::min(o->got, o->need));
    if (o->err) j_.Fail(o->err, o->call());
    else if (o->eof) j_.shortRead = true;
    else if (j_.hasher && !o->abandoned && j_.target.lease.region()->TryPin())
      HasherPush(*j_.hasher, o->fileOff, dst_[s], o->need, Lease(j_.target.lease.region()));
  }

 private:
  Job& j_;
  std::vector<IoOp> slots_;
  std::vector<uint8_t*> dst_;
  std::vector<uint8_t*>& bounce_;
  bool noMore_ = false;
};

void Job::PopulateAhead(const std::atomic<bool>& stop) {
  // 8 MiB steps: big enough to amortise the call, small enough to stay just ahead of the reads.
  const uint64_t step = 8ull << 20;
  const uint64_t ps = PageSize();
  for (const Segment& s : segs) {
    uint64_t lo = s.bufOff & ~(ps - 1);
    uint64_t hi = std::min((s.bufOff + Padded(s.len) + ps - 1) & ~(ps - 1), (target.size + ps - 1) & ~(ps - 1));
    lo = std::max(lo, populated.load(std::memory_order_relaxed));
    for (uint64_t off = lo; off < hi; off += step) {
      if (stop.load()) return;
      uint64_t len = std::min(step, hi - off);
      // Fails on kernels before 5.14 (EINVAL) or on memory that cannot be written: the I/O faults pages itself.
      if (madvise(target.data + off, len, MADV_POPULATE_WRITE) < 0) return;
      populated.store(off + len, std::memory_order_release);
    }
  }
}

void Job::RunThreads(std::vector<uint8_t*>& bounceBufs) {
  JobSource src(*this, depth, bounceBufs);
  std::vector<std::thread> pool(depth - 1);
  // The job's own thread is worker 0; a pool thread that cannot be created only means fewer in flight.
  for (unsigned w = 1; w < depth; w++) {
    if (Spawn(pool[w - 1], [&src, w] { SyncWorker(src, w); }) != 0) break;
  }
  SyncWorker(src, 0);
  for (auto& t : pool) {
    if (t.joinable()) t.join();
  }
}

void Job::Run() {
  std::vector<uint8_t*> bounceBufs;
  void* bounceMem = MAP_FAILED;
  size_t bounceLen = 0;
  if (bounce) {
    bounceLen = Padded(chunk) * depth;
    int e = FaultHit(kFaultMmap);
    if (!e) {
      bounceMem = mmap(nullptr, bounceLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
      if (bounceMem == MAP_FAILED) e = errno;
      else madvise(bounceMem, bounceLen, MADV_DONTFORK);  // reads land here while JS may spawn: keep it out of children
    }
    if (e) Fail(e, "mmap");
    else
      for (unsigned s = 0; s < depth; s++) bounceBufs.push_back(static_cast<uint8_t*>(bounceMem) + s * Padded(chunk));
  }
  std::thread populater;
  std::atomic<bool> stopPopulate{false};
  if (populate && !err.load() && !write) {
    populated = 0;
    // Populating is only an optimisation: without its thread, the reads fault pages in themselves.
    if (Spawn(populater, [this, &stopPopulate] {
          PopulateAhead(stopPopulate);
          populated.store(UINT64_MAX, std::memory_order_release);
        }) != 0)
      populated = UINT64_MAX;
  }
  if (!err.load() && !segs.empty()) {
    if (uring) {
      Uring u;
      int rc = u.Init(depth);
      if (rc < 0) {
        Fail(-rc, "io_uring_setup");
      } else {
        JobSource src(*this, depth, bounceBufs);
        UringDrive(u, depth, src);
      }
    } else {
      RunThreads(bounceBufs);
    }
  }
  stopPopulate = true;
  if (populater.joinable()) populater.join();
  if (bounceMem != MAP_FAILED) munmap(bounceMem, bounceLen);
  // Every request has ended: the memory and the fd are ours no longer.
  CloseDup(fd);
  target.lease.Release();
  auto self = shared_from_this();
  tsfn.BlockingCall([self](Napi::Env env, Napi::Function) {
    if (env != nullptr) self->Finish(env);
  });
  tsfn.Release();
}

void Job::Finish(Napi::Env env) {
  if (finished) return;
  finished = true;
  if (thread.joinable()) thread.join();  // it has queued this call and is returning: the wait is short
  target.keep.Reset();
  g_live.jobs--;
  auto self = shared_from_this();
  envData->Remove(self);
  deferred.Resolve(Result(env));
}

void Job::Teardown() {
  // The env is going away: stop, wait for the threads (they end within one request), drop JS references.
  cancel->store(true);
  if (thread.joinable()) thread.join();
  target.keep.Reset();
  if (!finished) {
    finished = true;
    g_live.jobs--;
  }
}

bool IsPow2(uint64_t x) { return x && !(x & (x - 1)); }

// transfer(opts, onProgress?) -> { promise, cancel() }. Every check happens before anything starts.
Napi::Value Transfer(const Napi::CallbackInfo& info) {
  Args a(info, "transfer");
  Napi::Env env = a.env;
  Napi::Object o;
  if (!a.Obj(a[0], "opts", o)) return {};
  auto j = std::make_shared<Job>(env);
  int fd;
  uint64_t depth, chunk, padTo;
  std::string engine;
  if (!a.Fd(o.Get("fd"), "opts.fd", fd) || !a.Bool(o.Get("write"), "opts.write", j->write) || !a.Bool(o.Get("direct"), "opts.direct", j->direct) ||
      !a.U64(o.Get("chunk"), "opts.chunk", chunk, kGiB, 1) || !a.U64(o.Get("depth"), "opts.depth", depth, 4096, 1) ||
      !a.U64(o.Get("padTo"), "opts.padTo", padTo, 1u << 20) || !a.Str(o.Get("engine"), "opts.engine", engine) ||
      !a.Bool(o.Get("bounce"), "opts.bounce", j->bounce) || !a.Bool(o.Get("populate"), "opts.populate", j->populate) ||
      !RwFlags(a, o.Get("rwFlags"), "opts.rwFlags", j->rwFlags))
    return {};
  if (padTo > 1 && !IsPow2(padTo)) return a.RangeError("opts.padTo", "0, 1 or a power of two <= 1048576"), Napi::Value();
  if (padTo > 1 && chunk % padTo) return a.RangeError("opts.chunk", "a multiple of opts.padTo (" + std::to_string(padTo) + ")"), Napi::Value();
  if (engine != "uring" && engine != "threads") return a.TypeError("opts.engine", "'uring' or 'threads'", "ERR_INVALID_ARG_VALUE"), Napi::Value();
  j->chunk = chunk;
  j->depth = static_cast<unsigned>(depth);
  j->padTo = padTo;
  j->uring = engine == "uring";
  Napi::Value cbv = a[1];
  if (!cbv.IsUndefined() && !cbv.IsFunction()) return a.TypeError("onProgress", "a function or undefined"), Napi::Value();
  // Segments first: reading them can run JS (getters), which must not see a target we already hold a pointer into.
  Napi::Value sv = o.Get("segments");
  if (!sv.IsArray()) return a.TypeError("opts.segments", "an array of numbers"), Napi::Value();
  auto arr = sv.As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n % 3) return a.RangeError("opts.segments.length", "a multiple of 3 ([fileOffset, bufOffset, length, ...])"), Napi::Value();
  uint64_t prevEnd = 0;
  for (uint32_t i = 0; i < n; i += 3) {
    Segment s;
    std::string at = "opts.segments[" + std::to_string(i);
    if (!a.U64(arr.Get(i), at + "] (fileOffset)", s.fileOff) || !a.U64(arr.Get(i + 1), "opts.segments[" + std::to_string(i + 1) + "] (bufOffset)", s.bufOff) ||
        !a.U64(arr.Get(i + 2), "opts.segments[" + std::to_string(i + 2) + "] (length)", s.len, kMaxSafe, 1))
      return {};
    uint64_t padded = j->Padded(s.len);
    if (s.bufOff < prevEnd)
      return a.RangeError(at + "+1] (bufOffset)", ">= " + std::to_string(prevEnd) + ": segments in increasing buffer order, padded ranges not overlapping"),
             Napi::Value();
    if (s.fileOff + padded > static_cast<uint64_t>(INT64_MAX)) return a.RangeError(at + "] + padded length", "<= 2^63-1"), Napi::Value();
    prevEnd = s.bufOff + padded;
    j->total += s.len;
    j->segs.push_back(s);
  }
  // Hasher before the target, for the same reason as the segments.
  Napi::Value hv = o.Get("hash");
  if (!hv.IsUndefined() && !ReadHasher(a, hv, "opts.hash", j->hasher)) return {};
  if (j->hasher && j->write) return a.TypeError("opts.hash", "undefined for a write (only reads are verified)", "ERR_INVALID_ARG_VALUE"), Napi::Value();
  if (!ReadTarget(a, o.Get("target"), "opts.target", j->target)) return {};
  // The hash runs behind the job and pins what it has not hashed yet: only a region can be pinned from its thread.
  if (j->hasher && !j->target.lease) return a.TypeError("opts.target", "a Region when opts.hash is given"), Napi::Value();
  if (prevEnd > j->target.size) {
    for (const Segment& s : j->segs) {
      uint64_t padded = j->Padded(s.len);
      if (s.bufOff > j->target.size || padded > j->target.size - s.bufOff)
        return a.RangeError("opts.segments (bufOffset + padded length)", "<= the target's size " + std::to_string(j->target.size) + " (got " +
                                                                             std::to_string(s.bufOff) + " + " + std::to_string(padded) + ")"),
               Napi::Value();
    }
  }

  auto result = Napi::Object::New(env);
  result.Set("promise", j->deferred.Promise());
  auto cancel = j->cancel;
  result.Set("cancel", Napi::Function::New(
                           env, [cancel](const Napi::CallbackInfo&) { cancel->store(true); }, "cancel"));
  auto failNow = [&](int e, const char* call) {
    CloseDup(j->fd);
    j->target.lease.Release();
    j->target.keep.Reset();
    j->Fail(e, call);
    j->deferred.Resolve(j->Result(env));
    return result;
  };
  int d = DupFd(fd);
  if (d < 0) return failNow(-d, "fcntl");
  j->fd = d;
  j->wantProgress = cbv.IsFunction();
  j->tsfn = j->wantProgress ? Napi::ThreadSafeFunction::New(env, cbv.As<Napi::Function>(), "dmaload.transfer", 0, 1)
                            : Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}), "dmaload.transfer", 0, 1);
  if (static_cast<napi_threadsafe_function>(j->tsfn) == nullptr || env.IsExceptionPending()) {
    CloseDup(j->fd);
    return {};
  }
  j->envData = GetEnvData(env);
  int e = Spawn(j->thread, [j] { j->Run(); });
  if (e) {
    j->tsfn.Release();
    return failNow(EAGAIN, "pthread_create");
  }
  g_live.jobs++;
  j->envData->Add(j);
  return result;
}

}  // namespace

void InitEngine(Napi::Env env, Napi::Object exports) { exports.Set("transfer", Napi::Function::New(env, Transfer, "transfer")); }

}  // namespace dmaload
