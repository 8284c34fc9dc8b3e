// uring.h — io_uring over raw syscalls (no liburing): just what a queue of reads and writes needs. One thread owns
// a ring. Waiting is done by ppoll on the ring fd (readable when completions are posted), so the same wait can
// also watch a wake-up eventfd and honour a timeout for retry back-off.
#pragma once
#include <linux/io_uring.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>

#include "args.h"
#include "faults.h"

namespace dmaload {

class Uring {
 public:
  Uring() = default;
  Uring(const Uring&) = delete;
  Uring& operator=(const Uring&) = delete;
  ~Uring() { Close(); }

  int Init(unsigned entries) {
    io_uring_params p{};
    fd_ = static_cast<int>(syscall(__NR_io_uring_setup, entries, &p));
    if (fd_ < 0) return -errno;
    sqLen_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    cqLen_ = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    bool single = p.features & IORING_FEAT_SINGLE_MMAP;
    if (single) sqLen_ = cqLen_ = std::max(sqLen_, cqLen_);
    sqPtr_ = mmap(nullptr, sqLen_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQ_RING);
    if (sqPtr_ == MAP_FAILED) return Fail();
    cqPtr_ = single ? sqPtr_ : mmap(nullptr, cqLen_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_CQ_RING);
    if (cqPtr_ == MAP_FAILED) return Fail();
    sqesLen_ = p.sq_entries * sizeof(io_uring_sqe);
    void* s = mmap(nullptr, sqesLen_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd_, IORING_OFF_SQES);
    if (s == MAP_FAILED) return Fail();
    sqes_ = static_cast<io_uring_sqe*>(s);
    auto* sq = static_cast<uint8_t*>(sqPtr_);
    auto* cq = static_cast<uint8_t*>(cqPtr_);
    sqHead_ = reinterpret_cast<unsigned*>(sq + p.sq_off.head);
    sqTail_ = reinterpret_cast<unsigned*>(sq + p.sq_off.tail);
    sqMask_ = reinterpret_cast<unsigned*>(sq + p.sq_off.ring_mask);
    sqArray_ = reinterpret_cast<unsigned*>(sq + p.sq_off.array);
    cqHead_ = reinterpret_cast<unsigned*>(cq + p.cq_off.head);
    cqTail_ = reinterpret_cast<unsigned*>(cq + p.cq_off.tail);
    cqMask_ = reinterpret_cast<unsigned*>(cq + p.cq_off.ring_mask);
    cqes_ = reinterpret_cast<io_uring_cqe*>(cq + p.cq_off.cqes);
    return 0;
  }

  // Only call once nothing is in flight: the kernel may still write into buffers of requests it holds.
  void Close() {
    if (sqes_) munmap(sqes_, sqesLen_);
    if (cqPtr_ != MAP_FAILED && cqPtr_ != sqPtr_) munmap(cqPtr_, cqLen_);
    if (sqPtr_ != MAP_FAILED) munmap(sqPtr_, sqLen_);
    if (fd_ >= 0) close(fd_);
    sqes_ = nullptr;
    sqPtr_ = cqPtr_ = MAP_FAILED;
    fd_ = -1;
  }

  void Queue(uint8_t op, int file, void* buf, unsigned len, uint64_t off, uint64_t tag, uint8_t sqeFlags = 0, int rwFlags = 0) {
    unsigned tail = *sqTail_;  // only this thread writes the tail
    unsigned idx = tail & *sqMask_;
    io_uring_sqe* s = &sqes_[idx];
    memset(s, 0, sizeof *s);
    s->opcode = op;
    s->flags = sqeFlags;
    s->fd = file;
    s->addr = reinterpret_cast<uint64_t>(buf);
    s->len = len;
    s->off = off;
    s->user_data = tag;
    s->rw_flags = static_cast<__kernel_rwf_t>(rwFlags);
    sqArray_[idx] = idx;
    __atomic_store_n(sqTail_, tail + 1, __ATOMIC_RELEASE);
  }

  // SQEs written but not yet taken by the kernel.
  unsigned Unsubmitted() const { return *sqTail_ - __atomic_load_n(sqHead_, __ATOMIC_ACQUIRE); }

  // Hands the queued SQEs to the kernel without waiting: count taken, or -errno.
  int Submit() { return Enter(Unsubmitted(), 0, 0); }

  // Waits for at least one completion through io_uring_enter (used when draining after a failure).
  int GetEvents() { return Enter(0, 1, IORING_ENTER_GETEVENTS); }

  // After a failed submit: takes back every SQE the kernel did not consume, telling `f` their tags.
  template <typename F>
  void DropUnsubmitted(F&& f) {
    unsigned head = __atomic_load_n(sqHead_, __ATOMIC_ACQUIRE);
    unsigned tail = *sqTail_;
    for (unsigned i = head; i != tail; i++) f(sqes_[sqArray_[i & *sqMask_]].user_data);
    __atomic_store_n(sqTail_, head, __ATOMIC_RELEASE);
  }

  template <typename F>
  unsigned Reap(F&& f) {
    unsigned head = *cqHead_;
    unsigned tail = __atomic_load_n(cqTail_, __ATOMIC_ACQUIRE);
    unsigned n = 0;
    while (head != tail) {
      io_uring_cqe* c = &cqes_[head & *cqMask_];
      uint64_t tag = c->user_data;
      int32_t res = c->res;
      head++;
      n++;
      __atomic_store_n(cqHead_, head, __ATOMIC_RELEASE);  // before f: f may queue more
      f(tag, res);
    }
    return n;
  }

  bool CqEmpty() const { return *cqHead_ == __atomic_load_n(cqTail_, __ATOMIC_ACQUIRE); }

  // Sleeps until a completion is posted, wakeFd is readable, or timeoutNs passes (< 0: no timeout).
  // Returns true when wakeFd fired.
  bool Wait(int wakeFd, int64_t timeoutNs) {
    if (!CqEmpty()) return false;
    pollfd p[2] = {{fd_, POLLIN, 0}, {wakeFd, POLLIN, 0}};
    timespec ts{static_cast<time_t>(timeoutNs / 1000000000), static_cast<long>(timeoutNs % 1000000000)};
    int n = ppoll(p, wakeFd >= 0 ? 2 : 1, timeoutNs >= 0 ? &ts : nullptr, nullptr);
    return n > 0 && wakeFd >= 0 && (p[1].revents & POLLIN);
  }

 private:
  int Fail() {
    int e = -errno;
    Close();
    return e;
  }
  int Enter(unsigned toSubmit, unsigned minComplete, unsigned flags) {
    if (int e = FaultHit(kFaultEnter)) return -e;
    int rc = static_cast<int>(syscall(__NR_io_uring_enter, fd_, toSubmit, minComplete, flags, nullptr, 0));
    return rc < 0 ? -errno : rc;
  }

  int fd_ = -1;
  void* sqPtr_ = MAP_FAILED;
  size_t sqLen_ = 0;
  void* cqPtr_ = MAP_FAILED;
  size_t cqLen_ = 0;
  io_uring_sqe* sqes_ = nullptr;
  size_t sqesLen_ = 0;
  unsigned *sqHead_ = nullptr, *sqTail_ = nullptr, *sqMask_ = nullptr, *sqArray_ = nullptr;
  unsigned *cqHead_ = nullptr, *cqTail_ = nullptr, *cqMask_ = nullptr;
  io_uring_cqe* cqes_ = nullptr;
};

}  // namespace dmaload
