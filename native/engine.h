// engine.h — how one request moves, shared by transfer jobs (engine.cc) and persistent queues (queue.cc): the
// request state (continued after partial transfers), its completion rule, retry back-off, and the two drivers — a
// single-threaded io_uring loop and a synchronous pread/pwrite worker. A driver pulls requests from a Source:
//   IoOp* Take(unsigned slot)      next request, or nullptr for now (uring: never blocks)
//   IoOp* TakeBlocking(unsigned w) next request, or nullptr when there will be no more (threads)
//   bool Finished()                no request will come any more (uring, once idle)
//   void WaitIdle()                blocks until Take may succeed or Finished() (uring, idle)
//   bool Abandon(const IoOp&)      stop continuing this request (cancel, or the job failed)
//   void Progress(uint64_t bytes)  bytes the caller asked for that just arrived
//   void Done(unsigned slot, IoOp*)the request ended (err / eof / abandoned say how)
#pragma once
#include <sys/uio.h>
#include <unistd.h>

#include <vector>

#include "args.h"
#include "faults.h"
#include "live.h"
#include "uring.h"

namespace dmaload {

struct IoOp {
  int fd = -1;
  bool write = false;
  bool direct = false;
  int rwFlags = 0;         // preadv2/pwritev2 flags (RWF_DONTCACHE: uncached buffered I/O)
  uint8_t* mem = nullptr;  // the memory the syscall uses
  uint64_t fileOff = 0;
  uint64_t need = 0;      // bytes wanted
  uint64_t ask = 0;       // bytes requested in all (need, padded for direct I/O)
  uint64_t eofAlign = 1;  // direct reads: a total not a multiple of this is end of file (0: any short count is)
  uint64_t got = 0;
  int err = 0;
  bool eof = false;
  bool abandoned = false;
  unsigned tries = 0;         // consecutive EAGAIN/EINTR results, for back-off
  const char* sys = nullptr;  // the failed call when it was not the read or write itself
  void* user = nullptr;       // the source's own record
  const char* call() const { return sys ? sys : write ? "pwrite" : "pread"; }
};

enum class Step { More, Retry, Done };

// One syscall's worth: at most 1 GiB (io_uring lengths are 32-bit; Linux caps a call below 2 GiB anyway).
inline uint64_t NextLen(const IoOp& o) { return std::min<uint64_t>(o.ask - o.got, kGiB); }

// The completion rule, the same for both engines and the queue. `delta` gets the wanted bytes that arrived.
inline Step Advance(IoOp& o, int64_t res, uint64_t& delta) {
  delta = 0;
  if (res == -EAGAIN || res == -EINTR) return Step::Retry;
  if (res < 0) {
    o.err = static_cast<int>(-res);
    return Step::Done;
  }
  uint64_t before = o.got;
  o.got += static_cast<uint64_t>(res);
  o.tries = 0;
  delta = std::min(o.got, o.need) - std::min(before, o.need);
  if (o.got >= o.need) return Step::Done;
  bool shortDirect = o.direct && !o.write && (o.eofAlign == 0 || o.got % o.eofAlign != 0);
  if (res == 0 || shortDirect) {
    // End of file before the bytes the caller expected (the file shrank); a write that moves nothing is an error.
    if (o.write) o.err = EIO;
    else o.eof = true;
    return Step::Done;
  }
  return Step::More;
}

// Back-off for EAGAIN/EINTR: 50 us doubling to 10 ms, so a device that pushes back is not spun on.
inline int64_t BackoffNs(unsigned tries) { return std::min<int64_t>(50'000ll << std::min(tries, 20u), 10'000'000ll); }

inline int64_t InjectIo(bool write, int64_t res) {
  if (int e = FaultHit(write ? kFaultWrite : kFaultRead)) return -e;
  return res;
}

// One pread/pwrite for the rest of the request: bytes or -errno.
inline int64_t SyncIo(const IoOp& o) {
  if (int e = FaultHit(o.write ? kFaultWrite : kFaultRead)) return -e;
  uint8_t* p = o.mem + o.got;
  off_t off = static_cast<off_t>(o.fileOff + o.got);
  ssize_t r;
  if (o.rwFlags) {
    iovec v{p, NextLen(o)};
    r = o.write ? pwritev2(o.fd, &v, 1, off, o.rwFlags) : preadv2(o.fd, &v, 1, off, o.rwFlags);
  } else {
    r = o.write ? pwrite(o.fd, p, NextLen(o), off) : pread(o.fd, p, NextLen(o), off);
  }
  return r < 0 ? Err() : r;
}

// Thread engine: one worker runs requests to their end, one syscall at a time.
template <class S>
void SyncWorker(S& src, unsigned w) {
  while (IoOp* o = src.TakeBlocking(w)) {
    for (;;) {
      uint64_t delta;
      Step st = Advance(*o, SyncIo(*o), delta);
      if (delta) src.Progress(delta);
      if (st == Step::Done) break;
      if (st == Step::Retry) SleepNs(BackoffNs(o->tries++));
      if (src.Abandon(*o)) {
        o->abandoned = true;
        break;
      }
    }
    src.Done(w, o);
  }
}

// io_uring engine: `depth` requests in flight on one ring, owned by the calling thread. Returns only when nothing is
// in flight (an enter failure fails what the kernel did not take and drains what it did). asyncIssue sets
// IOSQE_ASYNC: the kernel issues from its workers, so io_uring_enter never sleeps in the block layer (a large
// direct request can wait there for device tags) and a new submission is picked up at once (queues want that).
template <class S>
void UringDrive(Uring& u, unsigned depth, S& src, int wakeFd = -1, bool asyncIssue = false) {
  std::vector<IoOp*> ops(depth, nullptr);
  std::vector<int64_t> due(depth, -1);  // a request waiting out its back-off: when it may go again
  std::vector<unsigned> freeSlots;
  for (unsigned s = depth; s-- > 0;) freeSlots.push_back(s);
  unsigned inflight = 0;  // in the SQ or in the kernel
  unsigned delayed = 0;
  bool transient = false;  // the last submit was refused for now (EAGAIN/EBUSY/EINTR)

  auto queue = [&](unsigned s) {
    IoOp* o = ops[s];
    u.Queue(o->write ? IORING_OP_WRITE : IORING_OP_READ, o->fd, o->mem + o->got, static_cast<unsigned>(NextLen(*o)), o->fileOff + o->got, s,
            asyncIssue ? IOSQE_ASYNC : 0, o->rwFlags);
    inflight++;
  };
  auto finish = [&](unsigned s) {
    IoOp* o = ops[s];
    ops[s] = nullptr;
    freeSlots.push_back(s);
    src.Done(s, o);
  };
  auto onResult = [&](unsigned s, int64_t res) {
    IoOp* o = ops[s];
    uint64_t delta;
    Step st = Advance(*o, InjectIo(o->write, res), delta);
    if (delta) src.Progress(delta);
    if (st == Step::Done) return finish(s);
    if (src.Abandon(*o)) {
      o->abandoned = true;
      return finish(s);
    }
    if (st == Step::Retry) {
      due[s] = NowNs() + BackoffNs(o->tries++);
      delayed++;
      return;
    }
    queue(s);
  };
  auto reap = [&] {
    return u.Reap([&](uint64_t tag, int32_t res) {
      inflight--;
      onResult(static_cast<unsigned>(tag), res);
    });
  };

  for (;;) {
    int64_t now = NowNs(), next = -1;
    if (delayed) {
      for (unsigned s = 0; s < depth; s++) {
        if (due[s] < 0) continue;
        if (due[s] > now) {
          next = next < 0 ? due[s] : std::min(next, due[s]);
          continue;
        }
        due[s] = -1;
        delayed--;
        if (src.Abandon(*ops[s])) {
          ops[s]->abandoned = true;
          finish(s);
        } else {
          queue(s);
        }
      }
    }
    while (!freeSlots.empty()) {
      unsigned s = freeSlots.back();
      IoOp* o = src.Take(s);
      if (!o) break;
      freeSlots.pop_back();
      ops[s] = o;
      queue(s);
    }
    transient = false;
    if (u.Unsubmitted()) {
      int rc = u.Submit();
      if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) {
        transient = true;
      } else if (rc < 0) {
        // The ring refused: what the kernel did not take fails now; what it took still writes into our memory, so
        // wait for all of it before anything else (enter with GETEVENTS; if even that fails, watch the CQ).
        u.DropUnsubmitted([&](uint64_t tag) {
          inflight--;
          ops[tag]->err = -rc;
          ops[tag]->sys = "io_uring_enter";
          finish(static_cast<unsigned>(tag));
        });
        while (inflight > u.Unsubmitted()) {
          if (reap()) continue;
          int g = u.GetEvents();
          if (g < 0 && g != -EINTR) SleepNs(1'000'000);
        }
        continue;
      }
    }
    if (reap()) continue;
    unsigned inKernel = inflight - u.Unsubmitted();
    if (inflight == 0 && delayed == 0) {
      if (src.Finished()) break;
      src.WaitIdle();
      continue;
    }
    int64_t timeout = next < 0 ? -1 : std::max<int64_t>(0, next - NowNs());
    if (transient) timeout = timeout < 0 ? 1'000'000 : std::min<int64_t>(timeout, 1'000'000);
    if (inKernel == 0 && timeout < 0) timeout = 1'000'000;  // nothing will complete: only a wake or a retry is due
    if (u.Wait(wakeFd, timeout)) {
      uint64_t v;
      while (read(wakeFd, &v, sizeof v) == static_cast<ssize_t>(sizeof v)) {
      }
    }
  }
}

}  // namespace dmaload
