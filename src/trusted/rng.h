// Deterministic pseudo-random numbers for initialisation, shuffling,
// augmentation and dropout (not for keys: those come from ChaCha20 keyed by a
// libsodium secret). xoshiro256** seeded through splitmix64; the same seed
// gives the same stream on every platform and standard library.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace tempo {

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed) {
    for (auto& s : s_) {
      seed += 0x9e3779b97f4a7c15ULL;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      s = z ^ (z >> 31);
    }
  }
  uint64_t next() {
    uint64_t r = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return r;
  }
  // Uniform in [0, 1), 53 bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  // Uniform integer in [0, n), unbiased.
  uint64_t below(uint64_t n) {
    uint64_t lim = -n % n, r;
    do r = next();
    while (r < lim);
    return r % n;
  }
  double normal() {
    double u1 = uniform(), u2 = uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
  // A fresh stream derived from this one's seed and a tag (for sub-streams
  // that must not depend on how much another consumer has drawn).
  static Rng derive(uint64_t seed, uint64_t tag) { return Rng(seed * 0x100000001b3ULL ^ (tag + 0x51ed270b27a4c3d1ULL)); }
  // The whole generator state (sealed checkpoints).
  std::array<uint64_t, 4> state() const { return {s_[0], s_[1], s_[2], s_[3]}; }
  void set_state(const std::array<uint64_t, 4>& s) {
    for (int i = 0; i < 4; ++i) s_[i] = s[static_cast<size_t>(i)];
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

}  // namespace tempo
