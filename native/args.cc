// args.cc — argument checking, JS error helpers, fault injection, live counters, thread creation and per-env
// teardown (see args.h for why each exists).
#include "args.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <system_error>
#include <vector>

namespace dmaload {

size_t PageSize() {
  static const size_t ps = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return ps;
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void SleepNs(int64_t ns) {
  if (ns > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(ns));
}

namespace {
void ThrowWith(Napi::Error e, const char* code) {
  e.Set("code", Napi::String::New(e.Env(), code));
  e.ThrowAsJavaScriptException();
}
std::string Fmt(double d) {
  if (std::isfinite(d) && d == std::trunc(d) && std::fabs(d) < 1e21) return std::to_string(static_cast<long long>(d));
  char b[64];
  snprintf(b, sizeof b, "%g", d);
  return b;
}
}  // namespace

void ThrowTypeCode(Napi::Env env, const char* code, const std::string& msg) { ThrowWith(Napi::TypeError::New(env, msg), code); }
void ThrowRangeCode(Napi::Env env, const char* code, const std::string& msg) { ThrowWith(Napi::RangeError::New(env, msg), code); }
void ThrowErrorCode(Napi::Env env, const char* code, const std::string& msg) { ThrowWith(Napi::Error::New(env, msg), code); }

bool Args::TypeError(const std::string& what, const std::string& must, const char* code) const {
  ThrowTypeCode(env, code, Prefix() + what + " must be " + must);
  return false;
}

bool Args::RangeError(const std::string& what, const std::string& must) const {
  ThrowRangeCode(env, "ERR_OUT_OF_RANGE", Prefix() + what + " must be " + must);
  return false;
}

bool Args::Int(Napi::Value v, const std::string& what, int64_t min, int64_t max, int64_t& out) const {
  if (!v.IsNumber()) return TypeError(what, "a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::trunc(d) || d < static_cast<double>(min) || d > static_cast<double>(max)) {
    return RangeError(what, "an integer >= " + std::to_string(min) + " and <= " + std::to_string(max) + " (got " + Fmt(d) + ")");
  }
  out = static_cast<int64_t>(d);
  return true;
}

bool Args::U64(Napi::Value v, const std::string& what, uint64_t& out, uint64_t max, uint64_t min) const {
  int64_t x;
  if (!Int(v, what, static_cast<int64_t>(min), static_cast<int64_t>(std::min(max, kMaxSafe)), x)) return false;
  out = static_cast<uint64_t>(x);
  return true;
}

bool Args::I32(Napi::Value v, const std::string& what, int& out, int64_t min, int64_t max) const {
  int64_t x;
  if (!Int(v, what, min, max, x)) return false;
  out = static_cast<int>(x);
  return true;
}

bool Args::Fd(Napi::Value v, const std::string& what, int& out, bool allowMinusOne) const {
  return I32(v, what, out, allowMinusOne ? -1 : 0, INT32_MAX);
}

bool Args::Bool(Napi::Value v, const std::string& what, bool& out) const {
  if (!v.IsBoolean()) return TypeError(what, "a boolean");
  out = v.As<Napi::Boolean>().Value();
  return true;
}

bool RwFlags(const Args& a, Napi::Value v, const std::string& what, int& out) {
  out = 0;
  if (v.IsUndefined()) return true;
  int f;
  if (!a.I32(v, what, f)) return false;
  if (f != 0 && f != RWF_DONTCACHE) return a.RangeError(what, "0 or RWF_DONTCACHE (" + std::to_string(RWF_DONTCACHE) + ")");
  out = f;
  return true;
}

bool Args::Str(Napi::Value v, const std::string& what, std::string& out) const {
  if (!v.IsString()) return TypeError(what, "a string");
  out = v.As<Napi::String>().Utf8Value();
  return true;
}

bool Args::Obj(Napi::Value v, const std::string& what, Napi::Object& out) const {
  if (!v.IsObject() || v.IsFunction() || v.IsArray()) return TypeError(what, "an object");
  out = v.As<Napi::Object>();
  return true;
}

// ---- Fault injection (test-only).
std::atomic<int> g_faultOp{kFaultNone};
static std::atomic<int64_t> g_faultLeft{0};
static std::atomic<int> g_faultErrno{0};

int FaultSlow(int op) {
  if (g_faultLeft.fetch_sub(1, std::memory_order_acq_rel) != 1) return 0;
  int e = g_faultErrno.load();
  int expected = op;
  g_faultOp.compare_exchange_strong(expected, kFaultNone);
  return e;
}

void SetFault(int op, int64_t nth, int err) {
  g_faultOp.store(kFaultNone);
  if (nth <= 0 || op == kFaultNone) return;
  g_faultErrno.store(err);
  g_faultLeft.store(nth);
  g_faultOp.store(op);
}

int FaultOpByName(const std::string& n) {
  if (n == "read") return kFaultRead;
  if (n == "write") return kFaultWrite;
  if (n == "enter") return kFaultEnter;
  if (n == "mmap") return kFaultMmap;
  if (n == "ioctl") return kFaultIoctl;
  if (n == "thread") return kFaultThread;
  return kFaultNone;
}

void FaultFromEnv() {
  static std::once_flag once;
  std::call_once(once, [] {
    const char* s = getenv("DMALOAD_FAULT");
    if (!s || !*s) return;
    std::string v(s);
    size_t a = v.find(':'), b = v.rfind(':');
    if (a == std::string::npos || b == a) return;
    int op = FaultOpByName(v.substr(0, a));
    long long nth = atoll(v.substr(a + 1, b - a - 1).c_str());
    int err = atoi(v.substr(b + 1).c_str());
    if (op != kFaultNone && nth > 0 && err > 0) SetFault(op, nth, err);
  });
}

// ---- Live counters, dup'd fds, threads.
Live g_live;

int DupFd(int fd) {
  int d = fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (d < 0) return -errno;
  g_live.fds++;
  return d;
}

void CloseDup(int& fd) {
  if (fd < 0) return;
  close(fd);
  fd = -1;
  g_live.fds--;
}

int Spawn(std::thread& out, std::function<void()> body) {
  if (int e = FaultHit(kFaultThread)) return e;
  g_live.threads++;
  try {
    out = std::thread([b = std::move(body)] {
      b();
      g_live.threads--;
    });
    return 0;
  } catch (const std::system_error& e) {
    g_live.threads--;
    return e.code().value() > 0 ? e.code().value() : EAGAIN;
  } catch (...) {
    g_live.threads--;
    return EAGAIN;
  }
}

// ---- Per-env state.
static void EnvCleanup(void* arg) {
  auto* d = static_cast<EnvData*>(arg);
  d->tearingDown = true;
  // Teardown may remove entries: work on a copy.
  std::vector<std::shared_ptr<Owned>> all(d->owned.begin(), d->owned.end());
  for (auto& o : all) o->Teardown();
  d->owned.clear();
}

void InitEnvData(Napi::Env env) {
  auto* d = new EnvData();
  d->env = env;
  // Registered after Node-API's own hook for this env, so it runs before references and finalizers are torn down.
  napi_add_env_cleanup_hook(env, EnvCleanup, d);
  env.SetInstanceData<EnvData>(d);  // deleted by Node-API at env teardown, after the hook
}

EnvData* GetEnvData(Napi::Env env) { return env.GetInstanceData<EnvData>(); }

uint64_t MaxView(Napi::Env env) {
  static std::atomic<uint64_t> cached{0};
  uint64_t c = cached.load();
  if (c) return c;
  const napi_node_version* v = nullptr;
  uint64_t m = 1ull << 32;  // Node < 22: node::Buffer's kMaxLength; past it the failure path double-frees
  if (napi_get_node_version(env, &v) == napi_ok && v && v->major >= 22) m = kMaxSafe;
  cached.store(m);
  return m;
}

}  // namespace dmaload
