// hash.h — a running SHA-256 of one file, fed pieces as reads complete, in any order, from any thread.
#pragma once
#include "mappings.h"

namespace dmaload {

class Hasher;

// Reads a Hasher handle (from hashOpen()): TypeError for anything else.
bool ReadHasher(const Args& a, Napi::Value v, const std::string& what, std::shared_ptr<Hasher>& out);
// Hands the hasher `len` bytes of the file at `fileOff`, which sit at `p` inside the region `lease` pins; the pin is
// held until those bytes are hashed (or the hasher is cancelled). Any thread.
void HasherPush(Hasher& h, uint64_t fileOff, const uint8_t* p, uint64_t len, Lease lease);

void InitHash(Napi::Env env, Napi::Object exports);

}  // namespace dmaload
