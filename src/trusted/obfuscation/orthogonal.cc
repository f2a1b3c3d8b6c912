#include "trusted/obfuscation/orthogonal.h"

#include <cmath>

#include "common/error.h"

namespace tempo {

namespace {

// n² Gaussians (n·n even or not) for one matrix, row-major into
// g[i·lanes], i < n²: Box–Muller on 24-bit uniforms in (0, 1], Gaussian to
// single precision.
template <typename T>
void gaussians(KeyStream& ks, int64_t n, T* g, int64_t lanes) {
  constexpr float kTwoPi = 6.2831853f, kUnit = 0x1.0p-24f;
  for (int64_t i = 0; i < n * n; i += 2) {
    const float u1 = static_cast<float>((ks.u32() >> 8) + 1) * kUnit, u2 = static_cast<float>(ks.u32() >> 8) * kUnit;
    const float r = std::sqrt(-2.0f * std::log(u1)), t = kTwoPi * u2;
    g[i * lanes] = r * std::cos(t);
    if (i + 1 < n * n) g[(i + 1) * lanes] = r * std::sin(t);
  }
}

// Gram–Schmidt, twice, of the n rows of g (row-major, n×n), then each row
// normalised: on doubles, or on vectors of them (one matrix a lane: the
// same operations, lane by lane, so the same bits).
template <typename T, typename Sqrt>
void orthonormalise(T* g, int64_t n, Sqrt sqrt) {
  for (int64_t i = 0; i < n; ++i) {
    T* gi = g + i * n;
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t j = 0; j < i; ++j) {
        const T* gj = g + j * n;
        T d = T{};
        for (int64_t c = 0; c < n; ++c) d += gi[c] * gj[c];
        for (int64_t c = 0; c < n; ++c) gi[c] -= d * gj[c];
      }
    T s = T{};
    for (int64_t c = 0; c < n; ++c) s += gi[c] * gi[c];
    const T inv = 1.0 / sqrt(s);
    for (int64_t c = 0; c < n; ++c) gi[c] *= inv;
  }
}

typedef double D8 __attribute__((vector_size(64)));  // 8 doubles: 8 matrices, one a lane
constexpr int64_t kLanes = 8, kLaneMax = 16;           // matrices drawn together, up to this size

// `count` (≤ 8) matrices of size n (≤ kLaneMax) in turn from ks, to out[l].
void orthogonal_lanes(KeyStream& ks, int64_t n, int64_t count, int64_t ld, float* const* out) {
  D8 g[kLaneMax * kLaneMax];
  double* lane = reinterpret_cast<double*>(g);
  for (int64_t l = 0; l < count; ++l) gaussians(ks, n, lane + l, kLanes);
  for (int64_t i = 0; i < n * n; ++i)  // unused lanes: a copy of the first (well conditioned, never read)
    for (int64_t l = count; l < kLanes; ++l) g[i][l] = g[i][0];
  orthonormalise(g, n, [](D8 s) {
    D8 r;
    for (int64_t l = 0; l < kLanes; ++l) r[l] = std::sqrt(s[l]);
    return r;
  });
  for (int64_t l = 0; l < count; ++l)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < n; ++c) out[l][i * ld + c] = static_cast<float>(g[i * n + c][l]);
}

}  // namespace

// A Haar-random orthogonal n×n matrix (row-major, leading dimension ld):
// Gram–Schmidt (twice, in double) of a Gaussian matrix.
void random_orthogonal(KeyStream& ks, int64_t n, int64_t ld, float* out) {
  TEMPO_CHECK(n >= 1 && n <= 64, "random_orthogonal: size must be 1 to 64");
  double g[64 * 64];
  gaussians(ks, n, g, 1);
  orthonormalise(g, n, [](double s) { return std::sqrt(s); });
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < n; ++c) out[i * ld + c] = static_cast<float>(g[i * n + c]);
}

void random_orthogonals(KeyStream& ks, const MixGroups& gr, int64_t d, int64_t g0, int64_t g1, float* out) {
  const int64_t ld = gr.largest, sq = ld * ld;
  for (int64_t g = g0; g < g1;) {
    const int64_t n = gr.begin(d, g + 1) - gr.begin(d, g);
    int64_t run = 1;  // groups from g of the same size, up to 8
    while (run < kLanes && g + run < g1 && gr.begin(d, g + run + 1) - gr.begin(d, g + run) == n) ++run;
    if (n > kLaneMax || run == 1) {
      random_orthogonal(ks, n, ld, out + (g - g0) * sq);
      ++g;
      continue;
    }
    float* at[kLanes];
    for (int64_t l = 0; l < run; ++l) at[l] = out + (g + l - g0) * sq;
    orthogonal_lanes(ks, n, run, ld, at);
    g += run;
  }
}

}  // namespace tempo
