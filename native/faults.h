// faults.h — test-only fault injection, armed by setFault() (addon.cc) or DMALOAD_FAULT; apart from the argument
// checks (args.h) because only the syscall sites that can fail on purpose need it.
#pragma once
#include <atomic>
#include <cstdint>
#include <string>

namespace dmaload {

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

}  // namespace dmaload
