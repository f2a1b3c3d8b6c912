#include "trusted/obfuscation/col_mix.h"

#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/obfuscation/orthogonal.h"

namespace tempo {

namespace {
typedef float V8 __attribute__((vector_size(32), aligned(4)));  // 8 floats, unaligned access
}  // namespace

ColMix::ColMix(int block) : block_(block) {
  TEMPO_CHECK(block >= 2 && block <= 32, "column mixing block must be between 2 and 32");
}

const ColMix::Entry& ColMix::entry(int id) const {
  TEMPO_CHECK(id >= 0 && static_cast<size_t>(id) < entries_.size() && entries_[static_cast<size_t>(id)].valid,
              "column mixing of a product that was not mixed");
  return entries_[static_cast<size_t>(id)];
}

int64_t ColMix::cols(int id) const { return entry(id).k; }

void ColMix::draw(int id, int64_t k, KeyStream& ks) {
  TEMPO_CHECK(id >= 0 && k >= 1, "column mixing needs a product id and columns");
  if (static_cast<size_t>(id) >= entries_.size()) entries_.resize(static_cast<size_t>(id) + 1);
  Entry& e = entries_[static_cast<size_t>(id)];
  e.k = k;
  e.perm.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) e.perm[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  for (int64_t i = k - 1; i > 0; --i)
    std::swap(e.perm[static_cast<size_t>(i)], e.perm[ks.below(static_cast<uint32_t>(i + 1))]);
  e.inv.resize(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) e.inv[static_cast<size_t>(e.perm[static_cast<size_t>(i)])] = static_cast<int32_t>(i);
  const MixGroups gr(k, block_);
  const int64_t ld = gr.largest, sq = ld * ld;
  e.ld = ld;
  e.starts.resize(static_cast<size_t>(gr.count + 1));
  for (int64_t g = 0; g <= gr.count; ++g) e.starts[static_cast<size_t>(g)] = gr.begin(k, g);
  e.q.assign(static_cast<size_t>(gr.count * sq), 0.0f);
  e.qt.assign(e.q.size(), 0.0f);
  for (int64_t g = 0; g < gr.count; ++g) {
    const int64_t n = e.starts[static_cast<size_t>(g + 1)] - e.starts[static_cast<size_t>(g)];
    float* q = e.q.data() + g * sq;
    random_orthogonal(ks, n, ld, q);
    float* qt = e.qt.data() + g * sq;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t u = 0; u < n; ++u) qt[u * ld + t] = q[t * ld + u];
  }
  e.q2.assign(static_cast<size_t>(gr.count / 2 * 128), 0.0f);
  e.qt2.assign(e.q2.size(), 0.0f);
  for (int64_t p = 0; p < gr.count / 2; ++p)
    for (int64_t side = 0; side < 2; ++side) {
      const int64_t g = 2 * p + side;
      if (e.starts[static_cast<size_t>(g + 1)] - e.starts[static_cast<size_t>(g)] != 8) continue;
      for (int64_t j = 0; j < 8; ++j)
        for (int64_t u = 0; u < 8; ++u) {
          e.q2[static_cast<size_t>(p * 128 + j * 16 + side * 8 + u)] = e.q[static_cast<size_t>(g * sq + j * ld + u)];
          e.qt2[static_cast<size_t>(p * 128 + j * 16 + side * 8 + u)] = e.qt[static_cast<size_t>(g * sq + j * ld + u)];
        }
    }
  e.valid = true;
}

void ColMix::mix(int id, const float* src, int64_t rows, float* dst) const { transform(id, src, rows, dst, false); }

void ColMix::unmix(int id, const float* src, int64_t rows, float* dst) const { transform(id, src, rows, dst, true); }

// Mixing: y[s + t] = Σ_u Q[t][u]·x[perm[s + u]] (the row's group g, columns
// s.. of the result); unmixing: x[perm[s + u]] = Σ_t Q[t][u]·y[s + t]. Rows
// are independent; a row is built in a small buffer, so dst may be src.
// Both build the row in group order (contiguous stores); mixing gathers its
// inputs, unmixing gathers its outputs into place at the end (dst[j] =
// buf[inv[j]]), which costs less than scattering them group by group.
void ColMix::transform(int id, const float* src, int64_t rows, float* dst, bool back) const {
  const Entry& e = entry(id);
  parallel_for(rows, [&](int64_t lo, int64_t hi) {
    float* y = row_buffer(e.k);
    for (int64_t i = lo; i < hi; ++i) transform_row(e, src + i * e.k, dst + i * e.k, y, back);
  }, 64);
}

void ColMix::mix_here(int id, float* const* rows, int64_t n) const {
  const Entry& e = entry(id);
  float* y = row_buffer(e.k);
  for (int64_t t = 0; t < n; ++t) transform_row(e, rows[t], rows[t], y, false);
}

void ColMix::unmix_here(int id, float* const* rows, int64_t n) const {
  const Entry& e = entry(id);
  float* y = row_buffer(e.k);
  for (int64_t t = 0; t < n; ++t) transform_row(e, rows[t], rows[t], y, true);
}

float* ColMix::row_buffer(int64_t k) {
  thread_local std::vector<float> row;  // grows once per thread
  if (row.size() < static_cast<size_t>(k)) row.resize(static_cast<size_t>(k));
  return row.data();
}

void ColMix::transform_row(const Entry& e, const float* x, float* dst, float* y, bool back) const {
  const int64_t k = e.k, ld = e.ld, sq = ld * ld;
  const int64_t groups = static_cast<int64_t>(e.starts.size()) - 1;
  const int32_t* perm = e.perm.data();
  const int64_t* starts = e.starts.data();
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t s = starts[g], n = starts[g + 1] - s;
    const int32_t* pg = perm + s;
#if defined(__AVX512F__)
    if (g % 2 == 0 && g + 1 < groups && n == 8 && starts[g + 2] - starts[g + 1] == 8) {
      // Groups g and g + 1 at once, one in each half of a 16-wide vector:
      // their 16 inputs in one register, input j of each half broadcast
      // to its half, times row j of both matrices (the same sums, in the
      // same order, as the 8-wide path below).
      const float* m = (back ? e.q2.data() : e.qt2.data()) + g / 2 * 128;
      const __m512 in = back ? _mm512_loadu_ps(x + s) : _mm512_i32gather_ps(_mm512_loadu_si512(pg), x, 4);
      __m512 acc = _mm512_setzero_ps();
      for (int j = 0; j < 8; ++j) {
        const __m512i pick = _mm512_set_epi32(8 + j, 8 + j, 8 + j, 8 + j, 8 + j, 8 + j, 8 + j, 8 + j, j, j, j, j, j,
                                              j, j, j);
        acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(pick, in), _mm512_loadu_ps(m + j * 16), acc);
      }
      _mm512_storeu_ps(y + s, acc);
      ++g;
      continue;
    }
#endif
    if (n == 8) {
      // out = Σ_j in[j]·M[j] with M the rows of Qᵀ (mixing) or of Q (unmixing).
      const float* m = (back ? e.q.data() : e.qt.data()) + g * sq;
      V8 acc = {};
      for (int64_t j = 0; j < 8; ++j) {
        const float in = back ? x[s + j] : x[pg[j]];
        acc += in * *reinterpret_cast<const V8*>(m + j * ld);
      }
      *reinterpret_cast<V8*>(y + s) = acc;
      continue;
    }
    const float* q = e.q.data() + g * sq;
    for (int64_t o = 0; o < n; ++o) {
      float acc = 0;
      for (int64_t j = 0; j < n; ++j) acc += back ? q[j * ld + o] * x[s + j] : q[o * ld + j] * x[pg[j]];
      y[s + o] = acc;
    }
  }
  if (!back) {
    std::memcpy(dst, y, static_cast<size_t>(k) * sizeof(float));
    return;
  }
  const int32_t* inv = e.inv.data();
  int64_t j = 0;
#if defined(__AVX512F__)
  for (; j + 16 <= k; j += 16)
    _mm512_storeu_ps(dst + j, _mm512_i32gather_ps(_mm512_loadu_si512(inv + j), y, 4));
#endif
  for (; j < k; ++j) dst[j] = y[inv[j]];
}

}  // namespace tempo
