// sha256.h — SHA-256 (FIPS 180-4) for verifying files as they load: OpenSSL's (the one Node carries, found in the
// process at run time), else the x86 SHA extensions where the CPU has them, else portable code. Which one runs is
// decided once per process; DMALOAD_SHA256=openssl|sha-ni|portable forces one (for comparison and tests).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dmaload {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void Update(const uint8_t* p, size_t n);
  // The digest as 64 lowercase hex digits; the object is spent afterwards.
  std::string HexDigest();

 private:
  void* evp_ = nullptr;  // OpenSSL's EVP_MD_CTX, when its SHA-256 is the one in use
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t bufLen_ = 0;
  uint64_t total_ = 0;
};

// "openssl", "sha-ni" or "portable": what Sha256 uses in this process.
const char* Sha256Impl();
// For tests and the bench: hashes with the implementation named (false where this process or CPU lacks it).
bool Sha256With(const char* impl, const uint8_t* p, size_t n, std::string& hex);

}  // namespace dmaload
