// live.cc — live counters, dup'd fds, threads and per-env teardown (see live.h for why each exists).
#include "live.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>
#include <vector>

#include "faults.h"

namespace dmaload {

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

}  // namespace dmaload
