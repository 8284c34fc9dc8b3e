// faults.cc — test-only fault injection (see faults.h).
#include "faults.h"

#include <cstdlib>
#include <mutex>

namespace dmaload {

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

}  // namespace dmaload
