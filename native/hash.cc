// hash.cc — verification while loading: a Hasher owns a SHA-256 state and one thread. Transfer jobs (and JS, for
// queue reads) hand it pieces of the file as their reads complete, in whatever order they complete; it hashes them
// in file order as soon as the next byte is there, overlapped with the reads still in flight, never as a second pass
// over the file. A piece pins the region it lies in until it is hashed, so memory is never unmapped under the hash.
// Pieces may overlap (blocks rounded out): only the bytes past what was hashed count.
#include "hash.h"

#include <condition_variable>
#include <map>
#include <mutex>

#include "live.h"
#include "sha256.h"

namespace dmaload {

namespace {

const napi_type_tag kHasherTag = {0x646d616c6f616400ULL, 0x6861736865720001ULL};

struct Piece {
  const uint8_t* p;
  uint64_t len;
  Lease lease;
};

}  // namespace

class Hasher : public Owned, public std::enable_shared_from_this<Hasher> {
 public:
  explicit Hasher(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
  uint64_t total = 0;

  std::mutex mu;
  std::condition_variable cv;
  std::multimap<uint64_t, Piece> pending;  // by file offset; under mu
  bool ended = false;                      // no more pieces will come; under mu
  std::atomic<bool> cancelled{false};
  std::atomic<uint64_t> hashed{0};  // bytes of the file hashed, from offset 0
  std::atomic<bool> reportQueued{false};
  std::string digest;  // once complete
  int64_t busyNs = 0;  // time spent hashing

  std::thread thread;
  Napi::ThreadSafeFunction tsfn;
  Napi::Promise::Deferred deferred;
  EnvData* envData = nullptr;
  bool finished = false;  // JS thread only

  void Push(uint64_t off, const uint8_t* p, uint64_t len, Lease lease) {
    if (len == 0 || cancelled.load()) return;
    {
      std::lock_guard<std::mutex> l(mu);
      if (ended) return;  // a late piece (after end()): the result is already decided by what came before
      pending.emplace(off, Piece{p, len, std::move(lease)});
    }
    cv.notify_one();
  }
  void End() {
    {
      std::lock_guard<std::mutex> l(mu);
      ended = true;
    }
    cv.notify_one();
  }
  void Cancel() {
    cancelled = true;
    End();
  }

  void Run() {
    Sha256 sha;
    const uint64_t step = 4ull << 20;  // cancellation is checked between steps
    for (;;) {
      std::unique_lock<std::mutex> l(mu);
      cv.wait(l, [&] { return cancelled.load() || ended || (!pending.empty() && pending.begin()->first <= hashed.load()); });
      if (cancelled.load()) break;
      if (pending.empty() || pending.begin()->first > hashed.load()) break;  // ended, and the next byte never came
      auto node = pending.extract(pending.begin());
      l.unlock();
      uint64_t off = node.key(), at = hashed.load();
      Piece& pc = node.mapped();
      if (off + pc.len > total) pc.len = total > off ? total - off : 0;  // never past the file's end
      if (off + pc.len > at) {
        int64_t t0 = NowNs();
        for (uint64_t pos = at - off; pos < pc.len && !cancelled.load(); pos += step) {
          uint64_t n = std::min(step, pc.len - pos);
          sha.Update(pc.p + pos, n);
          hashed.store(off + pos + n, std::memory_order_release);
        }
        busyNs += NowNs() - t0;
        Report();
      }
      pc.lease.Release();
    }
    {
      std::lock_guard<std::mutex> l(mu);
      pending.clear();  // releases the pins of pieces never hashed
    }
    if (!cancelled.load() && hashed.load() == total) digest = sha.HexDigest();
    auto self = shared_from_this();
    tsfn.BlockingCall([self](Napi::Env env, Napi::Function) {
      if (env != nullptr) self->Finish(env);
    });
    tsfn.Release();
  }

  // Tells JS how far the hash got: at most one call waiting on the JS thread.
  void Report() {
    if (reportQueued.exchange(true)) return;
    auto self = shared_from_this();
    tsfn.NonBlockingCall([self](Napi::Env env, Napi::Function cb) {
      self->reportQueued = false;
      if (env != nullptr && !cb.IsEmpty()) cb.Call({Num(env, static_cast<double>(self->hashed.load()))});
    });
  }

  void Finish(Napi::Env env) {
    if (finished) return;
    finished = true;
    if (thread.joinable()) thread.join();
    envData->Remove(shared_from_this());
    auto r = Napi::Object::New(env);
    r.Set("hashed", Num(env, static_cast<double>(hashed.load())));
    r.Set("digest", digest.empty() ? env.Undefined() : Napi::String::New(env, digest));
    r.Set("cancelled", Napi::Boolean::New(env, cancelled.load()));
    r.Set("busyMs", Num(env, static_cast<double>(busyNs) / 1e6));
    deferred.Resolve(r);
  }

  void Teardown() override {
    Cancel();
    if (thread.joinable()) thread.join();
    finished = true;
  }
};

void HasherPush(Hasher& h, uint64_t fileOff, const uint8_t* p, uint64_t len, Lease lease) { h.Push(fileOff, p, len, std::move(lease)); }

namespace {

struct HasherHandle {
  std::shared_ptr<Hasher> h;
};

void HasherHandleFinalize(Napi::Env, HasherHandle* h) {
  // Collected without end() or cancel(): stop the thread; it resolves a promise no one holds.
  h->h->Cancel();
  delete h;
}

// hashOpen(total, onHashed?) -> { hasher, promise } | -errno (the thread could not start): the promise resolves once the thread ended (after end() with
// every byte there: { hashed: total, digest }; otherwise digest undefined).
Napi::Value HashOpen(const Napi::CallbackInfo& info) {
  Args a(info, "hashOpen");
  Napi::Env env = a.env;
  auto h = std::make_shared<Hasher>(env);
  if (!a.U64(a[0], "total", h->total)) return {};
  Napi::Value cb = a[1];
  if (!cb.IsUndefined() && !cb.IsFunction()) return a.TypeError("onHashed", "a function or undefined"), Napi::Value();
  Napi::Function fn = cb.IsFunction() ? cb.As<Napi::Function>() : Napi::Function::New(env, [](const Napi::CallbackInfo&) {});
  h->tsfn = Napi::ThreadSafeFunction::New(env, fn, "dmaload.hash", 0, 1);
  if (static_cast<napi_threadsafe_function>(h->tsfn) == nullptr || env.IsExceptionPending()) return {};
  if (int e = Spawn(h->thread, [h] { h->Run(); })) {
    h->tsfn.Release();
    return Num(env, -e);
  }
  h->envData = GetEnvData(env);
  h->envData->Add(h);
  auto* handle = new HasherHandle{h};
  auto ext = Napi::External<HasherHandle>::New(env, handle, HasherHandleFinalize);
  if (ext.IsEmpty() || napi_type_tag_object(env, ext, &kHasherTag) != napi_ok) {
    if (ext.IsEmpty()) delete handle;
    h->Cancel();
    return {};
  }
  auto out = Napi::Object::New(env);
  out.Set("hasher", ext);
  out.Set("promise", h->deferred.Promise());
  return out;
}

// hashFeed(hasher, region, bufOffset, fileOffset, length): bytes a queue read brought into a region.
Napi::Value HashFeed(const Napi::CallbackInfo& info) {
  Args a(info, "hashFeed");
  std::shared_ptr<Hasher> h;
  std::shared_ptr<Region> r;
  uint64_t bufOff, fileOff, len;
  if (!ReadHasher(a, a[0], "hasher", h) || !ReadRegion(a, a[1], "region", r) || !a.U64(a[2], "bufOffset", bufOff) || !a.U64(a[3], "fileOffset", fileOff) ||
      !a.U64(a[4], "length", len))
    return {};
  if (bufOff > r->len || len > r->len - bufOff)
    return a.RangeError("bufOffset + length",
                        "<= the region's size " + std::to_string(r->len) + " (got " + std::to_string(bufOff) + " + " + std::to_string(len) + ")"),
           Napi::Value();
  if (!r->TryPin()) return ThrowErrorCode(a.env, "ERR_REGION_CLOSED", a.Prefix() + "the region is closed"), Napi::Value();
  h->Push(fileOff, r->addr + bufOff, len, Lease(r));
  return a.env.Undefined();
}

// hashEnd(hasher): no more pieces; the thread hashes what follows on from what it has and resolves.
Napi::Value HashEnd(const Napi::CallbackInfo& info) {
  Args a(info, "hashEnd");
  std::shared_ptr<Hasher> h;
  if (!ReadHasher(a, a[0], "hasher", h)) return {};
  h->End();
  return a.env.Undefined();
}

// hashCancel(hasher): stop now; pieces not hashed are dropped (their pins released) and the digest stays undefined.
Napi::Value HashCancel(const Napi::CallbackInfo& info) {
  Args a(info, "hashCancel");
  std::shared_ptr<Hasher> h;
  if (!ReadHasher(a, a[0], "hasher", h)) return {};
  h->Cancel();
  return a.env.Undefined();
}

// sha256(arrayBuffer | view, impl?) -> hex: hashes bytes in memory on the JS thread (tests, small inputs), with the
// process's implementation or the one named ('openssl' | 'sha-ni' | 'portable'; null where the process or CPU lacks it).
Napi::Value Sha256Fn(const Napi::CallbackInfo& info) {
  Args a(info, "sha256");
  Napi::Value v = a[0];
  const uint8_t* p;
  size_t n;
  if (v.IsTypedArray()) {
    auto t = v.As<Napi::TypedArray>();
    p = static_cast<const uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
    n = t.ByteLength();
  } else if (v.IsArrayBuffer()) {
    p = static_cast<const uint8_t*>(v.As<Napi::ArrayBuffer>().Data());
    n = v.As<Napi::ArrayBuffer>().ByteLength();
  } else {
    return a.TypeError("bytes", "an ArrayBuffer or a typed array"), Napi::Value();
  }
  std::string impl = Sha256Impl(), hex;
  if (!a[1].IsUndefined() && !a.Str(a[1], "impl", impl)) return {};
  if (impl != "openssl" && impl != "sha-ni" && impl != "portable")
    return a.TypeError("impl", "'openssl', 'sha-ni' or 'portable'", "ERR_INVALID_ARG_VALUE"), Napi::Value();
  if (!Sha256With(impl.c_str(), p ? p : reinterpret_cast<const uint8_t*>(""), n, hex)) return a.env.Null();
  return Napi::String::New(a.env, hex);
}

}  // namespace

bool ReadHasher(const Args& a, Napi::Value v, const std::string& what, std::shared_ptr<Hasher>& out) {
  if (!v.IsExternal() || !v.As<Napi::External<HasherHandle>>().CheckTypeTag(&kHasherTag)) return a.TypeError(what, "a Hasher (from hashOpen())");
  out = v.As<Napi::External<HasherHandle>>().Data()->h;
  return true;
}

void InitHash(Napi::Env env, Napi::Object exports) {
  exports.Set("hashOpen", Napi::Function::New(env, HashOpen, "hashOpen"));
  exports.Set("hashFeed", Napi::Function::New(env, HashFeed, "hashFeed"));
  exports.Set("hashEnd", Napi::Function::New(env, HashEnd, "hashEnd"));
  exports.Set("hashCancel", Napi::Function::New(env, HashCancel, "hashCancel"));
  exports.Set("sha256", Napi::Function::New(env, Sha256Fn, "sha256"));
  exports.Set("sha256Impl", Napi::String::New(env, Sha256Impl()));
}

}  // namespace dmaload
