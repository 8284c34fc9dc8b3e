// populate.h — faulting fresh memory in ahead of the reads, in huge folios where asked (the engine's populate
// threads and populate() both).
#pragma once
#include <sys/mman.h>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include "args.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

namespace dmaload {

// Faults [p, p + len) in. With `collapsing`, each whole, aligned 2 MiB extent (of shmem: the memfd target) becomes one
// huge folio: its first page faulted in, then MADV_COLLAPSE, which works whatever shmem_enabled says (but 'deny') and
// keeps what the pages hold. A huge folio costs one allocation instead of 512, its readers map it with one PMD, and
// freeing it is as cheap (a 1 GiB memfd here: unmapped and freed in 4 ms instead of 220-310, a reader's mapping
// touched in 6 ms instead of 94-136). Where it fails (EINVAL before Linux 6.1 or without THP: not tried again;
// ENOMEM; EAGAIN three more times), that extent gets small pages. Returns 0 or -1 (errno) as madvise.
inline int PopulateRange(uint8_t* p, uint64_t len, std::atomic<bool>& collapsing) {
  constexpr uintptr_t kHuge = 2u << 20;
  uint8_t* end = p + len;
  while (p < end && collapsing.load(std::memory_order_relaxed)) {
    uint8_t* x = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1));
    if (x + kHuge > end) break;
    if (x > p && madvise(p, x - p, MADV_POPULATE_WRITE) < 0) return -1;
    if (madvise(x, PageSize(), MADV_POPULATE_WRITE) < 0) return -1;
    // EAGAIN: a page of the extent was busy (faulted in by a writer a moment ago, not on the LRU yet): try again.
    int rc = madvise(x, kHuge, MADV_COLLAPSE);
    for (int again = 0; rc < 0 && errno == EAGAIN && again < 3; again++) rc = madvise(x, kHuge, MADV_COLLAPSE);
    if (rc < 0) {
      if (errno == EINVAL) collapsing = false;
      if (madvise(x, kHuge, MADV_POPULATE_WRITE) < 0) return -1;
    }
    p = x + kHuge;
  }
  return p < end ? madvise(p, end - p, MADV_POPULATE_WRITE) : 0;
}

}  // namespace dmaload
