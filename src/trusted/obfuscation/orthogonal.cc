#include "trusted/obfuscation/orthogonal.h"

#include <cmath>

#include "common/error.h"

namespace tempo {

// A Haar-random orthogonal n×n matrix (row-major, leading dimension ld):
// Gram–Schmidt (twice, in double) of a Gaussian matrix.
void random_orthogonal(KeyStream& ks, int64_t n, int64_t ld, float* out) {
  TEMPO_CHECK(n >= 1 && n <= 64, "random_orthogonal: size must be 1 to 64");
  // Box–Muller on 24-bit uniforms in (0, 1]: Gaussian to single precision.
  constexpr float kTwoPi = 6.2831853f, kUnit = 0x1.0p-24f;
  double g[64 * 64];
  for (int64_t i = 0; i < n * n; i += 2) {
    const float u1 = static_cast<float>((ks.u32() >> 8) + 1) * kUnit, u2 = static_cast<float>(ks.u32() >> 8) * kUnit;
    const float r = std::sqrt(-2.0f * std::log(u1)), t = kTwoPi * u2;
    g[i] = r * std::cos(t);
    if (i + 1 < n * n) g[i + 1] = r * std::sin(t);
  }
  for (int64_t i = 0; i < n; ++i) {
    double* gi = g + i * n;
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t j = 0; j < i; ++j) {
        const double* gj = g + j * n;
        double d = 0;
        for (int64_t c = 0; c < n; ++c) d += gi[c] * gj[c];
        for (int64_t c = 0; c < n; ++c) gi[c] -= d * gj[c];
      }
    double s = 0;
    for (int64_t c = 0; c < n; ++c) s += gi[c] * gi[c];
    const double inv = 1.0 / std::sqrt(s);
    for (int64_t c = 0; c < n; ++c) gi[c] *= inv;
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < n; ++c) out[i * ld + c] = static_cast<float>(g[i * n + c]);
}

}  // namespace tempo
