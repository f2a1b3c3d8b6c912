// Bytes that must not outlive their use: keys and secrets. Move-only (a copy
// is explicit, clone(), so every place that holds one more copy of a key
// says so), wiped with sodium_memzero when destroyed or moved from, and
// compared in constant time.
#pragma once

#include <sodium.h>

#include <array>
#include <cstddef>
#include <cstdint>

namespace tempo {

template <size_t N>
class SecretBytes {
 public:
  SecretBytes() { bytes_.fill(0); }
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  SecretBytes(SecretBytes&& o) noexcept : bytes_(o.bytes_) { o.wipe(); }
  SecretBytes& operator=(SecretBytes&& o) noexcept {
    if (this != &o) {
      bytes_ = o.bytes_;
      o.wipe();
    }
    return *this;
  }
  ~SecretBytes() { wipe(); }

  // One more copy of the secret, on purpose.
  SecretBytes clone() const {
    SecretBytes c;
    c.bytes_ = bytes_;
    return c;
  }
  void wipe() { sodium_memzero(bytes_.data(), N); }

  uint8_t* data() { return bytes_.data(); }
  const uint8_t* data() const { return bytes_.data(); }
  static constexpr size_t size() { return N; }
  uint8_t* begin() { return bytes_.data(); }
  uint8_t* end() { return bytes_.data() + N; }
  const uint8_t* begin() const { return bytes_.data(); }
  const uint8_t* end() const { return bytes_.data() + N; }
  uint8_t& operator[](size_t i) { return bytes_[i]; }
  uint8_t operator[](size_t i) const { return bytes_[i]; }

  friend bool operator==(const SecretBytes& a, const SecretBytes& b) {
    return sodium_memcmp(a.bytes_.data(), b.bytes_.data(), N) == 0;
  }
  friend bool operator!=(const SecretBytes& a, const SecretBytes& b) { return !(a == b); }

 private:
  std::array<uint8_t, N> bytes_;
};

}  // namespace tempo
