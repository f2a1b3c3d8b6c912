#include "trusted/obfuscation/col_mix.h"

#include <algorithm>
#include <cstring>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/copy.h"
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
  random_orthogonals(ks, gr, k, 0, gr.count, e.q.data());
  for (int64_t g = 0; g < gr.count; ++g) {
    const int64_t n = e.starts[static_cast<size_t>(g + 1)] - e.starts[static_cast<size_t>(g)];
    const float* q = e.q.data() + g * sq;
    float* qt = e.qt.data() + g * sq;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t u = 0; u < n; ++u) qt[u * ld + t] = q[t * ld + u];
  }
  e.valid = true;
}

void ColMix::mix(int id, const float* src, int64_t rows, float* dst) const {
  transform(id, src, rows, dst, false, true);
}

void ColMix::unmix(int id, const float* src, int64_t rows, float* dst, bool place) const {
  transform(id, src, rows, dst, true, place);
}

// Mixing: y[s + t] = Σ_u Q[t][u]·x[perm[s + u]] (the row's group g, columns
// s.. of the result); unmixing: x[perm[s + u]] = Σ_t Q[t][u]·y[s + t]. Rows
// are independent; a row is built in a small buffer, so dst may be src.
// Both build the row in group order (contiguous stores); mixing gathers its
// inputs, unmixing gathers its outputs into place at the end (dst[j] =
// buf[inv[j]]), which costs less than scattering them group by group.
void ColMix::transform(int id, const float* src, int64_t rows, float* dst, bool back, bool place) const {
  const Entry& e = entry(id);
  const bool stream = dst != src && rows * e.k * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  parallel_for(rows, [&](int64_t lo, int64_t hi) {
    const float* in[kBlockRows];
    float* out[kBlockRows];
    for (int64_t i = lo; i < hi; i += kBlockRows) {
      const int64_t n = std::min<int64_t>(kBlockRows, hi - i);
      for (int64_t t = 0; t < n; ++t) in[t] = src + (i + t) * e.k, out[t] = dst + (i + t) * e.k;
      transform_rows(e, in, out, n, back, place, stream);
    }
    if (stream) stream_fence();
  }, 64);
}

void ColMix::mix_here(int id, float* const* rows, int64_t n) const { transform_rows(entry(id), rows, rows, n, false); }

void ColMix::unmix_here(int id, float* const* rows, int64_t n, bool place) const {
  transform_rows(entry(id), rows, rows, n, true, place);
}

// A group at a time over all n rows: its matrix stays in registers while
// each row's 8 inputs are broadcast from memory straight into the
// multiply-adds (no gather, no lane shuffles). The rows are built in
// group order in a buffer of this thread's, then copied (mixing) or
// gathered (unmixing: dst[j] = buf[inv[j]]) into place, so out may be in.
// Each output is one chain of multiply-adds, out = Σ_j in[j]·M[j] from
// zero, j ascending: the same bits as the row-at-a-time form this
// replaced, whatever the block.
void ColMix::transform_rows(const Entry& e, const float* const* in, float* const* out, int64_t n, bool back,
                            bool place, bool stream) const {
  const int64_t k = e.k, ld = e.ld, sq = ld * ld;
  thread_local std::vector<float> buf;  // grows once per thread
  if (buf.size() < static_cast<size_t>(n * k)) buf.resize(static_cast<size_t>(n * k));
  float* y = buf.data();
  const int64_t groups = static_cast<int64_t>(e.starts.size()) - 1;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t s = e.starts[static_cast<size_t>(g)], ng = e.starts[static_cast<size_t>(g + 1)] - s;
    const int32_t* pg = e.perm.data() + s;
    if (ng == 8) {
      // Rows of Qᵀ (mixing) or of Q (unmixing).
      const float* mq = (back ? e.q.data() : e.qt.data()) + g * sq;
      V8 m[8];
      int64_t from[8];
      for (int64_t j = 0; j < 8; ++j) {
        m[j] = *reinterpret_cast<const V8*>(mq + j * ld);
        from[j] = back ? s + j : pg[j];
      }
      for (int64_t r = 0; r < n; ++r) {
        const float* x = in[r];
        V8 acc = {};
        for (int64_t j = 0; j < 8; ++j) acc += x[from[j]] * m[j];
        *reinterpret_cast<V8*>(y + r * k + s) = acc;
      }
      continue;
    }
    const float* q = e.q.data() + g * sq;
    for (int64_t r = 0; r < n; ++r) {
      const float* x = in[r];
      for (int64_t o = 0; o < ng; ++o) {
        float acc = 0;
        for (int64_t j = 0; j < ng; ++j) acc += back ? q[j * ld + o] * x[s + j] : q[o * ld + j] * x[pg[j]];
        y[r * k + s + o] = acc;
      }
    }
  }
  for (int64_t r = 0; r < n; ++r) place_row(e, y + r * k, out[r], back && place, stream);
}

// The row built in group order (y) into dst: as it is, or (gather: an
// unmixing that places its columns) each column gathered back to its place;
// stream: with non-temporal stores (the caller fences).
void ColMix::place_row(const Entry& e, const float* y, float* dst, bool gather, bool stream) {
  const int64_t k = e.k;
  if (!gather) {
    if (stream) stream_floats(dst, y, k);
    else std::memcpy(dst, y, static_cast<size_t>(k) * sizeof(float));
    return;
  }
  if (stream) {
    thread_local std::vector<float> row;
    if (row.size() < static_cast<size_t>(k)) row.resize(static_cast<size_t>(k));
    place_row(e, y, row.data(), true, false);
    stream_floats(dst, row.data(), k);
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
