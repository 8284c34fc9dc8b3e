// args.cc — argument checking, JS error helpers, clocks and the view limit (see args.h for why each exists).
#include "args.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>

namespace dmaload {

size_t PageSize() {
  static const size_t ps = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return ps;
}

int64_t NowNs() { return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

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

bool Args::Fd(Napi::Value v, const std::string& what, int& out, bool allowMinusOne) const { return I32(v, what, out, allowMinusOne ? -1 : 0, INT32_MAX); }

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
