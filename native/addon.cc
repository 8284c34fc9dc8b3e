// addon.cc — module init: per-env state, the exports of every file, the constants, and the test-only hooks
// (setFault, live). Nothing else lives here.
#include <fcntl.h>
#include <linux/dma-buf.h>
#include <linux/mempolicy.h>
#include <sys/mman.h>

#include "args.h"
#include "faults.h"
#include "live.h"
#include "mappings.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x00000080
#endif

namespace dmaload {

void InitRegionOps(Napi::Env env, Napi::Object exports);
void InitEngine(Napi::Env env, Napi::Object exports);
void InitQueue(Napi::Env env, Napi::Object exports);
void InitDmabuf(Napi::Env env, Napi::Object exports);
void InitCopyLoops(Napi::Env env, Napi::Object exports);
void InitProbe(Napi::Env env, Napi::Object exports);
void InitShare(Napi::Env env, Napi::Object exports);
void InitReactor(Napi::Env env, Napi::Object exports);
void InitFdOps(Napi::Env env, Napi::Object exports);
void InitHash(Napi::Env env, Napi::Object exports);
void InitNuma(Napi::Env env, Napi::Object exports);

namespace {

// setFault(op, nth, errno): TEST-ONLY. The nth event of `op` from now fails with errno; nth = 0 clears.
Napi::Value SetFaultFn(const Napi::CallbackInfo& info) {
  Args a(info, "setFault");
  std::string name;
  uint64_t nth;
  int err;
  if (!a.Str(a[0], "op", name) || !a.U64(a[1], "nth", nth) || !a.I32(a[2], "errno", err, 0, 4095)) return {};
  int op = FaultOpByName(name);
  if (op == kFaultNone) return a.TypeError("op", "one of 'read', 'write', 'enter', 'mmap', 'ioctl', 'thread'", "ERR_INVALID_ARG_VALUE"), Napi::Value();
  if (nth > 0 && err == 0) return a.RangeError("errno", "an errno from 1 to 4095 when nth > 0"), Napi::Value();
  SetFault(op, static_cast<int64_t>(nth), err);
  return info.Env().Undefined();
}

// live() -> { mappings, jobs, threads, queues, fds }: exact counts for leak tests (process-wide).
Napi::Value LiveFn(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto o = Napi::Object::New(env);
  o.Set("mappings", Num(env, static_cast<double>(LiveRegions())));
  o.Set("jobs", Num(env, static_cast<double>(g_live.jobs.load())));
  o.Set("threads", Num(env, static_cast<double>(g_live.threads.load())));
  o.Set("queues", Num(env, static_cast<double>(g_live.queues.load())));
  o.Set("fds", Num(env, static_cast<double>(g_live.fds.load())));
  return o;
}

Napi::Object Constants(Napi::Env env) {
  auto c = Napi::Object::New(env);
  auto set = [&](const char* k, double v) { c.Set(k, Num(env, v)); };
  set("PAGE_SIZE", static_cast<double>(PageSize()));
  set("PROT_NONE", PROT_NONE);
  set("PROT_READ", PROT_READ);
  set("PROT_WRITE", PROT_WRITE);
  set("MAP_SHARED", MAP_SHARED);
  set("MAP_PRIVATE", MAP_PRIVATE);
  set("MAP_ANONYMOUS", MAP_ANONYMOUS);
  set("MAP_NORESERVE", MAP_NORESERVE);
  set("MAP_POPULATE", MAP_POPULATE);
  set("MAP_HUGETLB", MAP_HUGETLB);
  set("MADV_HUGEPAGE", MADV_HUGEPAGE);
  set("MPOL_DEFAULT", MPOL_DEFAULT);
  set("MPOL_PREFERRED", MPOL_PREFERRED);
  set("MPOL_BIND", MPOL_BIND);
  set("MPOL_INTERLEAVE", MPOL_INTERLEAVE);
  set("MPOL_MF_STRICT", MPOL_MF_STRICT);
  set("MPOL_MF_MOVE", MPOL_MF_MOVE);
  set("MADV_POPULATE_WRITE", MADV_POPULATE_WRITE);
  set("MADV_DONTNEED", MADV_DONTNEED);
  set("MFD_CLOEXEC", MFD_CLOEXEC);
  set("MFD_ALLOW_SEALING", MFD_ALLOW_SEALING);
  set("MFD_HUGETLB", MFD_HUGETLB);
  set("F_SEAL_SEAL", F_SEAL_SEAL);
  set("F_SEAL_SHRINK", F_SEAL_SHRINK);
  set("F_SEAL_GROW", F_SEAL_GROW);
  set("F_SEAL_WRITE", F_SEAL_WRITE);
  set("POSIX_FADV_DONTNEED", POSIX_FADV_DONTNEED);
  set("POSIX_FADV_SEQUENTIAL", POSIX_FADV_SEQUENTIAL);
  set("POSIX_FADV_RANDOM", POSIX_FADV_RANDOM);
  set("DMA_BUF_SYNC_READ", static_cast<double>(DMA_BUF_SYNC_READ));
  set("DMA_BUF_SYNC_WRITE", static_cast<double>(DMA_BUF_SYNC_WRITE));
  set("DMA_BUF_SYNC_RW", static_cast<double>(DMA_BUF_SYNC_RW));
  set("DMA_BUF_SYNC_START", static_cast<double>(DMA_BUF_SYNC_START));
  set("DMA_BUF_SYNC_END", static_cast<double>(DMA_BUF_SYNC_END));
  set("O_TMPFILE", O_TMPFILE);  // glibc's value, O_DIRECTORY included
  set("RWF_DONTCACHE", RWF_DONTCACHE);
  set("SYNC_FILE_RANGE_WAIT_BEFORE", SYNC_FILE_RANGE_WAIT_BEFORE);
  set("SYNC_FILE_RANGE_WRITE", SYNC_FILE_RANGE_WRITE);
  set("SYNC_FILE_RANGE_WAIT_AFTER", SYNC_FILE_RANGE_WAIT_AFTER);
  set("EAGAIN", EAGAIN);
  set("ECANCELED", ECANCELED);
  // The errnos policy code tests for, from the C library's headers rather than literals in TypeScript.
  set("ENOENT", ENOENT);
  set("ENOSYS", ENOSYS);
  set("EINVAL", EINVAL);
  set("EACCES", EACCES);
  set("EISDIR", EISDIR);
  set("EPIPE", EPIPE);
  set("ENAMETOOLONG", ENAMETOOLONG);
  set("EADDRINUSE", EADDRINUSE);
  set("ECONNABORTED", ECONNABORTED);
  set("ECONNRESET", ECONNRESET);
  set("ECONNREFUSED", ECONNREFUSED);
  set("ETOOMANYREFS", ETOOMANYREFS);
  return c;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  FaultFromEnv();
  InitEnvData(env);
  InitMappings(env, exports);
  InitRegionOps(env, exports);
  InitEngine(env, exports);
  InitQueue(env, exports);
  InitDmabuf(env, exports);
  InitCopyLoops(env, exports);
  InitProbe(env, exports);
  InitShare(env, exports);
  InitReactor(env, exports);
  InitFdOps(env, exports);
  InitHash(env, exports);
  InitNuma(env, exports);
  exports.Set("setFault", Napi::Function::New(env, SetFaultFn, "setFault"));
  exports.Set("live", Napi::Function::New(env, LiveFn, "live"));
  exports.Set("constants", Constants(env));
  return exports;
}

}  // namespace

}  // namespace dmaload

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return dmaload::Init(env, exports); }
NODE_API_MODULE(dmaload, InitModule)
