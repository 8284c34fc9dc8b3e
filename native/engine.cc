// engine.cc — transfer(): moves segments between a file and a target, split into requests of at most `chunk` bytes
// with `depth` in flight, by io_uring or a pool of threads. A job owns what it uses — a dup of the fd, a pin on the
// region (or a reference to the ArrayBuffer) — until its last request has ended, and only then resolves.
#include "engine.h"

#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <mutex>

#include "hash.h"
#include "mappings.h"
#include "populate.h"

namespace dmaload {

namespace {

struct Segment {
  uint64_t fileOff, bufOff, len;
};

const napi_type_tag kWorkShareTag = {0x646d616c6f616400ULL, 0x776f726b73680001ULL};

// Segments two jobs of one load may split between them as they go (io 'auto': ranges in the page cache). One job
// takes pieces from the front (the copy from the cache); once Switch()ed, because that way proved the slower here,
// the front takes no more and the other job (direct I/O), after its own segments, takes the rest from the back.
// The back only takes pieces whose file offset and end are multiples of its alignment (and whose memory is aligned
// where it reads into the target itself); what it cannot take, Rest() gives back once both jobs have ended.
class WorkShare {
 public:
  explicit WorkShare(std::vector<Segment> s) : segs(std::move(s)) {
    if (!segs.empty()) b_ = segs.size() - 1, bEnd_ = segs.back().len;
    else f_ = 1;  // empty
  }
  const std::vector<Segment> segs;  // fixed once made; the populate thread walks them

  bool Front(uint64_t chunk, Segment& p) {
    std::lock_guard<std::mutex> l(mu_);
    if (switched_) return false;
    for (;;) {
      uint64_t limit = f_ < b_ ? segs[f_].len : f_ == b_ ? bEnd_ : 0;
      if (f_ <= b_ && fPos_ < limit) {
        uint64_t n = std::min(chunk, limit - fPos_);
        const Segment& s = segs[f_];
        p = {s.fileOff + fPos_, s.bufOff + fPos_, n};
        fPos_ += n;
        return true;
      }
      if (f_ >= b_) return false;
      f_++, fPos_ = 0;
    }
  }

  // `memOk(bufOff)`: whether a direct read may land at that buffer offset.
  template <typename MemOk>
  bool Back(uint64_t chunk, uint64_t align, MemOk memOk, Segment& p) {
    std::lock_guard<std::mutex> l(mu_);
    while (switched_ && (f_ < b_ || (f_ == b_ && fPos_ < bEnd_))) {
      const Segment& s = segs[b_];
      uint64_t lo = f_ == b_ ? fPos_ : 0;
      uint64_t end = bEnd_;
      if (end <= lo) {  // this segment is done from the back (f_ < b_ here)
        b_--, bEnd_ = segs[b_].len;
        continue;
      }
      uint64_t from = end - lo > chunk ? end - chunk : lo;
      uint64_t start = RoundUp(s.fileOff + from, align) - s.fileOff;
      bool ok = start < end && (s.fileOff + end) % align == 0 && memOk(s.bufOff + start);
      if (!ok) {
        // Not a piece a direct read can take: it is left for Rest() (the front takes nothing once switched).
        // An unaligned end (a file's last bytes): only that tail; else the rest of the segment.
        uint64_t cut = lo, down = (s.fileOff + end) / align * align;
        if ((s.fileOff + end) % align != 0 && down > s.fileOff + lo) cut = down - s.fileOff;
        leftovers_.push_back({s.fileOff + cut, s.bufOff + cut, end - cut});
        bEnd_ = cut;
        continue;
      }
      p = {s.fileOff + start, s.bufOff + start, end - start};
      bEnd_ = start;
      return true;
    }
    return false;
  }

  void Switch() {
    std::lock_guard<std::mutex> l(mu_);
    switched_ = true;
  }
  bool Switched() {
    std::lock_guard<std::mutex> l(mu_);
    return switched_;
  }

  // What no job took (once both have ended): the run between the two ends, then what the back left.
  std::vector<Segment> Rest() {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<Segment> out;
    for (size_t i = f_; i <= b_ && i < segs.size(); i++) {
      uint64_t lo = i == f_ ? fPos_ : 0, hi = i == b_ ? bEnd_ : segs[i].len;
      if (hi > lo) out.push_back({segs[i].fileOff + lo, segs[i].bufOff + lo, hi - lo});
    }
    for (size_t i = left_; i < leftovers_.size(); i++) {
      uint64_t lo = i == left_ ? leftPos_ : 0;
      if (leftovers_[i].len > lo) out.push_back({leftovers_[i].fileOff + lo, leftovers_[i].bufOff + lo, leftovers_[i].len - lo});
    }
    std::sort(out.begin(), out.end(), [](const Segment& x, const Segment& y) { return x.bufOff < y.bufOff; });
    return out;
  }

 private:
  static uint64_t RoundUp(uint64_t x, uint64_t a) { return a > 1 ? (x + a - 1) / a * a : x; }
  std::mutex mu_;
  bool switched_ = false;
  // Still to take: segments f_..b_, from fPos_ in the first, up to bEnd_ in the last (f_ > b_: none).
  size_t f_ = 0, b_ = 0;
  uint64_t fPos_ = 0, bEnd_ = 0;
  std::vector<Segment> leftovers_;  // pieces the back could not read, for Rest()
  size_t left_ = 0;
  uint64_t leftPos_ = 0;
};

class Job : public Owned, public std::enable_shared_from_this<Job> {
 public:
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}

  // Settings, fixed before the thread starts.
  int fd = -1;  // our dup
  bool write = false, direct = false, bounce = false, populate = false, uring = true;
  bool collapse = false;  // populate shmem in huge folios (MADV_COLLAPSE), small pages where that fails
  int rwFlags = 0;
  uint64_t chunk = 0, padTo = 0;
  unsigned depth = 1;
  std::vector<Segment> segs;
  Target target;
  bool wantProgress = false;
  std::shared_ptr<Hasher> hasher;    // reads: each completed request's bytes go to it (verification while loading)
  std::shared_ptr<WorkShare> share;  // segments split with another job, after our own
  bool shareBack = false;            // we take the share's pieces from its back

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
    if (segIdx_ == segs.size()) {
      if (!share) return false;
      if (!shareBack) return share->Front(chunk, p);
      uint64_t align = std::max<uint64_t>(padTo, 1);
      return share->Back(
          chunk, align, [&](uint64_t bufOff) { return bounce || reinterpret_cast<uintptr_t>(target.data + bufOff) % align == 0; }, p);
    }
    const Segment& s = segs[segIdx_];
    uint64_t n = std::min(chunk, s.len - segPos_);
    p = {s.fileOff + segPos_, s.bufOff + segPos_, n};
    segPos_ += n;
    return true;
  }

  void WaitPopulated(uint64_t end) {
    if (populated.load(std::memory_order_acquire) >= end) return;
    // Wait for the populate threads rather than fault the pages in here: a read faulting the very pages a populate
    // thread is at only contends with it (measured: a 1 GiB memfd load took 1.5-3.6 s and 1.8-4.7 CPU-s that way,
    // the populate threads alone ~0.6 s). They stop (populated = max) on failure, so this never waits on nothing.
    std::unique_lock<std::mutex> l(popMu_);
    while (populated.load(std::memory_order_acquire) < end && !Stopping()) popCv_.wait_for(l, std::chrono::milliseconds(5));
  }
  void PopulatedTo(uint64_t end) {
    {
      std::lock_guard<std::mutex> l(popMu_);
      populated.store(end, std::memory_order_release);
    }
    popCv_.notify_all();
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
  std::mutex popMu_;  // guards the populate threads' progress; popCv_ wakes reads waiting on it
  std::condition_variable popCv_;
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

// Fresh pages cost most of a load into new memory (a shmem page about 1 us of CPU here, more when the host must back
// it too): fault them in ahead of the reads on up to this many threads, as many as the CPUs we may run on.
constexpr unsigned kMaxPopulateThreads = 4;

unsigned PopulateThreads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::clamp<unsigned>(static_cast<unsigned>(CPU_COUNT(&set)), 1, kMaxPopulateThreads);
}

void Job::PopulateAhead(const std::atomic<bool>& stop) {
  // 8 MiB steps: big enough to amortise the call, small enough to stay just ahead of the reads.
  const uint64_t step = 8ull << 20;
  const uint64_t ps = PageSize();
  // The front of a share is ours to read in order after our own segments; its back may be taken by the other job,
  // whose pages we then fault in needlessly but harmlessly (a populate never changes a page that is there).
  std::vector<const Segment*> order;
  for (const Segment& s : segs) order.push_back(&s);
  if (share && !shareBack)
    for (const Segment& s : share->segs) order.push_back(&s);
  // Steps in buffer order, each page in one step only.
  std::vector<std::pair<uint64_t, uint64_t>> steps;  // [off, end)
  uint64_t covered = 0;
  for (const Segment* sp : order) {
    const Segment& s = *sp;
    uint64_t lo = std::max(s.bufOff & ~(ps - 1), covered);
    uint64_t hi = std::min((s.bufOff + Padded(s.len) + ps - 1) & ~(ps - 1), (target.size + ps - 1) & ~(ps - 1));
    for (uint64_t off = lo; off < hi; off += step) steps.emplace_back(off, std::min(off + step, hi));
    covered = std::max(covered, hi);
  }
  // Threads take steps in order; `populated` is the end of the longest run of finished steps from the first.
  std::atomic<bool> collapsing{collapse};
  std::vector<uint8_t> finished(steps.size());
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  size_t run = 0;  // guarded by popMu_
  auto work = [&] {
    for (;;) {
      if (stop.load() || failed.load()) return;
      size_t i = next.fetch_add(1);
      if (i >= steps.size()) return;
      // Fails on kernels before 5.14 (EINVAL) or on memory that cannot be written: the I/O faults pages itself.
      if (PopulateRange(target.data + steps[i].first, steps[i].second - steps[i].first, collapsing) < 0) {
        failed = true;
        return;
      }
      bool moved = false;
      {
        std::lock_guard<std::mutex> l(popMu_);
        finished[i] = 1;
        size_t was = run;
        while (run < steps.size() && finished[run]) run++;
        if ((moved = run > was)) populated.store(steps[run - 1].second, std::memory_order_release);
      }
      if (moved) popCv_.notify_all();
    }
  };
  size_t threads = std::min<size_t>(PopulateThreads(), steps.size());
  std::vector<std::thread> helpers(threads > 1 ? threads - 1 : 0);
  for (auto& t : helpers) {
    if (Spawn(t, work) != 0) break;  // fewer threads only means slower
  }
  work();
  for (auto& t : helpers) {
    if (t.joinable()) t.join();
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
    // Populating is only an optimisation: without its threads, the reads fault pages in themselves.
    if (Spawn(populater, [this, &stopPopulate] {
          PopulateAhead(stopPopulate);
          PopulatedTo(UINT64_MAX);
        }) != 0)
      populated = UINT64_MAX;
  }
  if (!err.load() && (!segs.empty() || share)) {
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

// [fileOffset, bufOffset, length, ...] in increasing buffer order, padded ranges not overlapping; `end` gets the
// last padded end.
bool ReadSegments(const Args& a, Napi::Value sv, const std::string& what, uint64_t padTo, std::vector<Segment>& out, uint64_t& end) {
  if (!sv.IsArray()) return a.TypeError(what, "an array of numbers");
  auto arr = sv.As<Napi::Array>();
  uint32_t n = arr.Length();
  if (n % 3) return a.RangeError(what + ".length", "a multiple of 3 ([fileOffset, bufOffset, length, ...])");
  auto padded = [&](uint64_t len) { return padTo > 1 ? (len + padTo - 1) / padTo * padTo : len; };
  uint64_t prevEnd = 0;
  for (uint32_t i = 0; i < n; i += 3) {
    Segment s;
    std::string at = what + "[" + std::to_string(i);
    if (!a.U64(arr.Get(i), at + "] (fileOffset)", s.fileOff) || !a.U64(arr.Get(i + 1), what + "[" + std::to_string(i + 1) + "] (bufOffset)", s.bufOff) ||
        !a.U64(arr.Get(i + 2), what + "[" + std::to_string(i + 2) + "] (length)", s.len, kMaxSafe, 1))
      return false;
    if (s.bufOff < prevEnd)
      return a.RangeError(at + "+1] (bufOffset)", ">= " + std::to_string(prevEnd) + ": segments in increasing buffer order, padded ranges not overlapping");
    if (s.fileOff + padded(s.len) > static_cast<uint64_t>(INT64_MAX)) return a.RangeError(at + "] + padded length", "<= 2^63-1");
    prevEnd = s.bufOff + padded(s.len);
    out.push_back(s);
  }
  end = prevEnd;
  return true;
}

// workShare(segments) -> a WorkShare for two reads of one target (transfer's opts.share): one takes its pieces from
// the front, the other (opts.shareBack) from the back once its own segments are read.
Napi::Value WorkShareFn(const Napi::CallbackInfo& info) {
  Args a(info, "workShare");
  std::vector<Segment> segs;
  uint64_t end;
  if (!ReadSegments(a, a[0], "segments", 1, segs, end)) return {};
  auto* held = new std::shared_ptr<WorkShare>(std::make_shared<WorkShare>(std::move(segs)));
  auto ext = Napi::External<std::shared_ptr<WorkShare>>::New(a.env, held, [](Napi::Env, std::shared_ptr<WorkShare>* p) { delete p; });
  if (ext.IsEmpty()) delete held;
  if (ext.IsEmpty() || napi_type_tag_object(a.env, ext, &kWorkShareTag) != napi_ok) return {};
  return ext;
}

bool ReadWorkShare(const Args& a, Napi::Value v, const std::string& what, std::shared_ptr<WorkShare>& out) {
  if (!v.IsExternal() || !v.As<Napi::External<std::shared_ptr<WorkShare>>>().CheckTypeTag(&kWorkShareTag))
    return a.TypeError(what, "a WorkShare (from workShare())");
  out = *v.As<Napi::External<std::shared_ptr<WorkShare>>>().Data();
  return true;
}

// workShareSwitch(share): the front takes no more; the back (direct I/O) takes what is left. Any time, once.
Napi::Value WorkShareSwitch(const Napi::CallbackInfo& info) {
  Args a(info, "workShareSwitch");
  std::shared_ptr<WorkShare> w;
  if (!ReadWorkShare(a, a[0], "share", w)) return {};
  w->Switch();
  return a.env.Undefined();
}

// workShareRest(share) -> [fileOffset, bufOffset, length, ...]: what neither job took, once both have ended.
Napi::Value WorkShareRest(const Napi::CallbackInfo& info) {
  Args a(info, "workShareRest");
  std::shared_ptr<WorkShare> w;
  if (!ReadWorkShare(a, a[0], "share", w)) return {};
  auto rest = w->Rest();
  auto arr = Napi::Array::New(a.env, rest.size() * 3);
  for (size_t i = 0; i < rest.size(); i++) {
    arr.Set(3 * i, Num(a.env, static_cast<double>(rest[i].fileOff)));
    arr.Set(3 * i + 1, Num(a.env, static_cast<double>(rest[i].bufOff)));
    arr.Set(3 * i + 2, Num(a.env, static_cast<double>(rest[i].len)));
  }
  return arr;
}

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
      !RwFlags(a, o.Get("rwFlags"), "opts.rwFlags", j->rwFlags) ||
      (!o.Get("collapse").IsUndefined() && !a.Bool(o.Get("collapse"), "opts.collapse", j->collapse)))
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
  uint64_t prevEnd = 0;
  if (!ReadSegments(a, o.Get("segments"), "opts.segments", j->padTo, j->segs, prevEnd)) return {};
  for (const Segment& s : j->segs) j->total += s.len;
  Napi::Value shv = o.Get("share");
  if (!shv.IsUndefined()) {
    if (!ReadWorkShare(a, shv, "opts.share", j->share)) return {};
    Napi::Value back = o.Get("shareBack");
    if (!back.IsUndefined() && !a.Bool(back, "opts.shareBack", j->shareBack)) return {};
    if (j->write) return a.TypeError("opts.share", "undefined for a write", "ERR_INVALID_ARG_VALUE"), Napi::Value();
    // The front's pieces are not aligned: padded direct reads of them could pass a segment's end.
    if (!j->shareBack && j->padTo > 1)
      return a.TypeError("opts.shareBack", "true for a job with opts.padTo > 1 (the front takes unaligned pieces)", "ERR_INVALID_ARG_VALUE"), Napi::Value();
    // The back only takes aligned pieces (never padded), the front is not padded: the share's own ends bound both.
    for (const Segment& s : j->share->segs) prevEnd = std::max(prevEnd, s.bufOff + s.len);
  }
  // Hasher before the target, for the same reason as the segments.
  Napi::Value hv = o.Get("hash");
  if (!hv.IsUndefined() && !ReadHasher(a, hv, "opts.hash", j->hasher)) return {};
  if (j->hasher && j->write) return a.TypeError("opts.hash", "undefined for a write (only reads are verified)", "ERR_INVALID_ARG_VALUE"), Napi::Value();
  if (!ReadTarget(a, o.Get("target"), "opts.target", j->target)) return {};
  // The hash runs behind the job and pins what it has not hashed yet: only a region can be pinned from its thread.
  if (j->hasher && !j->target.lease) return a.TypeError("opts.target", "a Region when opts.hash is given"), Napi::Value();
  if (prevEnd > j->target.size) {
    if (j->share)
      for (const Segment& s : j->share->segs)
        if (s.bufOff > j->target.size || s.len > j->target.size - s.bufOff)
          return a.RangeError("opts.share (bufOffset + length)", "<= the target's size " + std::to_string(j->target.size)), Napi::Value();
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

void InitEngine(Napi::Env env, Napi::Object exports) {
  exports.Set("transfer", Napi::Function::New(env, Transfer, "transfer"));
  exports.Set("workShare", Napi::Function::New(env, WorkShareFn, "workShare"));
  exports.Set("workShareSwitch", Napi::Function::New(env, WorkShareSwitch, "workShareSwitch"));
  exports.Set("workShareRest", Napi::Function::New(env, WorkShareRest, "workShareRest"));
}

}  // namespace dmaload
