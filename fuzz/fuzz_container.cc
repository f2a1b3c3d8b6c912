// Fuzzes open_container (encrypted data sets, models, checkpoints) with a
// fixed key and key pair: any outcome other than a payload of the announced
// size or a tempo::Error is a finding. Forged files must never authenticate;
// the header parsing and the size checks before allocation are what runs.
#include <cstdint>
#include <cstdlib>

#include "common/error.h"
#include "trusted/confidential/container.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const tempo::SymKey key = [] {
    tempo::SymKey k{};
    for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i * 13 + 1);
    return k;
  }();
  static const tempo::BoxKeyPair pair = tempo::random_box_keypair();
  try {
    const tempo::ContainerInfo info = tempo::container_info(data, size, "fuzz");
    const bool sym = !info.to_public_key;
    std::vector<uint8_t> out =
        tempo::open_container(data, size, "fuzz", info.kind, sym ? &key : nullptr, sym ? nullptr : &pair);
    if (out.size() != info.payload_bytes) std::abort();
  } catch (const tempo::Error&) {
  }
  return 0;
}
