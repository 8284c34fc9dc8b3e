// args.h — what every export shares. The addon is a trust boundary: each export checks its own arguments and throws
// Node-style TypeError/RangeError (with `code`) instead of acting on garbage. Also here: -errno and clock helpers and
// the longest view this Node.js accepts. Test-only fault injection is in faults.h; the live-resource counters, thread
// creation and per-environment teardown are in live.h.
#pragma once
#include <napi.h>
#include <sys/uio.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <string>

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

// Node's major version decides the longest external ArrayBuffer it accepts.
uint64_t MaxView(Napi::Env env);

}  // namespace dmaload
