// live.h — what the addon holds while it runs, and who lets go of it: the live-resource counters that leak tests read
// (live()), fds dup'd for jobs and queues, native threads (started without ever throwing), and the per-environment
// state torn down when a worker or the process exits.
#pragma once
#include <napi.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <unordered_set>

namespace dmaload {

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

}  // namespace dmaload
