// args.h — what every export shares. The addon is a trust boundary: each export checks its own arguments and throws
// Node-style TypeError/RangeError (with `code`) instead of acting on garbage. Also here: -errno helpers, test-only
// fault injection, the live-resource counters that leak tests read, thread creation that never throws, and the
// per-environment state torn down when a worker or the process exits.
#pragma once
#include <napi.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <unordered_set>

#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x00000080  // uncached buffered I/O, Linux 6.14 (older headers lack it)
#endif

namespace dmaload {

constexpr uint64_t kMaxSafe = (1ull << 53) - 1;  // Number.MAX_SAFE_INTEGER
constexpr uint64_t kGiB = 1ull << 30;

inline int64_t Err() { return -static_cast<int64_t>(errno); }
size_t PageSize();
int64_t NowNs();
void SleepNs(int64_t ns);
inline Napi::Number Num(Napi::Env env, double v) { return Napi::Number::New(env, v); }

// ---- JS errors: every throw sets `code`; the caller returns at once (NAPI_DISABLE_CPP_EXCEPTIONS).
void ThrowTypeCode(Napi::Env env, const char* code, const std::string& msg);
void ThrowRangeCode(Napi::Env env, const char* code, const std::string& msg);
void ThrowErrorCode(Napi::Env env, const char* code, const std::string& msg);

// Reads and checks arguments of one export; every reader returns false with a JS exception pending.
class Args {
 public:
  Args(const Napi::CallbackInfo& info, const char* fn) : info_(info), env(info.Env()), fn(fn) {}
  Napi::Value operator[](size_t i) const { return info_[i]; }
  size_t Length() const { return info_.Length(); }

  std::string Prefix() const { return std::string("dmaload native: ") + fn + ": "; }
  bool TypeError(const std::string& what, const std::string& must, const char* code = "ERR_INVALID_ARG_TYPE") const;
  bool RangeError(const std::string& what, const std::string& must) const;

  // An integer in [min, max] (all safe integers): TypeError when not a number, RangeError otherwise.
  bool Int(Napi::Value v, const std::string& what, int64_t min, int64_t max, int64_t& out) const;
  bool U64(Napi::Value v, const std::string& what, uint64_t& out, uint64_t max = kMaxSafe, uint64_t min = 0) const;
  bool I32(Napi::Value v, const std::string& what, int& out, int64_t min = 0, int64_t max = INT32_MAX) const;
  bool Fd(Napi::Value v, const std::string& what, int& out, bool allowMinusOne = false) const;
  bool Bool(Napi::Value v, const std::string& what, bool& out) const;
  bool Str(Napi::Value v, const std::string& what, std::string& out) const;
  bool Obj(Napi::Value v, const std::string& what, Napi::Object& out) const;

 private:
  const Napi::CallbackInfo& info_;

 public:
  Napi::Env env;
  const char* fn;
};

// Optional preadv2/pwritev2 flags of a transfer or a queue: undefined or 0, or RWF_DONTCACHE (the only one used).
bool RwFlags(const Args& a, Napi::Value v, const std::string& what, int& out);

// ---- Fault injection. TEST-ONLY: lets tests make the nth read/write completion, io_uring_enter, mmap, dma-buf ioctl
// or thread creation fail with a chosen errno, to prove every error path frees what it holds. Costs one relaxed
// atomic load per event when unset.
enum FaultOp : int { kFaultNone = 0, kFaultRead, kFaultWrite, kFaultEnter, kFaultMmap, kFaultIoctl, kFaultThread };
extern std::atomic<int> g_faultOp;
int FaultSlow(int op);
inline int FaultHit(int op) {
  int cur = g_faultOp.load(std::memory_order_relaxed);
  return cur == kFaultNone || cur != op ? 0 : FaultSlow(op);
}
void SetFault(int op, int64_t nth, int err);
int FaultOpByName(const std::string& name);
void FaultFromEnv();  // DMALOAD_FAULT="op:nth:errno", read once at module init

// ---- Live counters: exact numbers that tests assert return to baseline after every failure and abort.
struct Live {
  std::atomic<int64_t> jobs{0};     // transfer jobs not yet resolved
  std::atomic<int64_t> threads{0};  // native threads started here that have not exited
  std::atomic<int64_t> queues{0};   // queues and share reactors not yet closed
  std::atomic<int64_t> fds{0};      // fds dup'd (or, for reactors, opened) here and still open
};
extern Live g_live;

// fcntl(F_DUPFD_CLOEXEC), counted in live().fds: jobs and queues own their fd, whatever JS does with its own.
int DupFd(int fd);  // >= 0 or -errno
void CloseDup(int& fd);

// Starts a native thread counted in live().threads until its body returns. Returns 0 or an errno (EAGAIN when the
// system or the 'thread' fault refuses). Never throws: std::thread's std::system_error is caught here.
int Spawn(std::thread& out, std::function<void()> body);

// ---- Per-environment state. A worker or the process can exit while native threads still use JS-owned memory or
// hold references; at that moment (an env cleanup hook, which runs before the isolate frees anything) each owned
// object cancels, waits for its threads and drops its JS references.
struct Owned {
  virtual ~Owned() = default;
  virtual void Teardown() = 0;  // JS thread, env still alive
};
struct EnvData {
  napi_env env = nullptr;
  bool tearingDown = false;
  std::unordered_set<std::shared_ptr<Owned>> owned;  // JS thread only
  void Add(std::shared_ptr<Owned> o) { owned.insert(std::move(o)); }
  void Remove(const std::shared_ptr<Owned>& o) { owned.erase(o); }
};
EnvData* GetEnvData(Napi::Env env);
void InitEnvData(Napi::Env env);

// Node's major version decides the longest external ArrayBuffer it accepts.
uint64_t MaxView(Napi::Env env);

}  // namespace dmaload
