// sha256.h — SHA-256 (FIPS 180-4) for verifying files as they load: the x86 SHA extensions where the CPU has them
// (about 2 GB/s per core), else portable code. Which one runs is decided once per process (DMALOAD_SHA256=portable
// forces the portable code, for tests and comparison).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dmaload {

class Sha256 {
 public:
  Sha256();
  void Update(const uint8_t* p, size_t n);
  // The digest as 64 lowercase hex digits; the object is spent afterwards.
  std::string HexDigest();

 private:
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t bufLen_ = 0;
  uint64_t total_ = 0;
};

// "sha-ni" or "portable": what Sha256 uses in this process.
const char* Sha256Impl();
// For tests: hashes with the chosen implementation ("sha-ni" fails with false where the CPU lacks it).
bool Sha256With(const char* impl, const uint8_t* p, size_t n, std::string& hex);

}  // namespace dmaload
