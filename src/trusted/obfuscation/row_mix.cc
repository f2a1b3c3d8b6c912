#include "trusted/obfuscation/row_mix.h"

#include "trusted/obfuscation/orthogonal.h"

#include <algorithm>
#include <cmath>

#include "common/copy.h"
#include "common/error.h"
#include "common/parallel.h"

namespace tempo {

namespace {

// out[o] = Σ_i coef[o·co + i·ci] · in[i] for o, i < n, rows of `cols`
// floats: 16 columns at a time with the n input vectors in registers, so
// each input and output value is loaded or stored once (N: n known at
// compile time, the common case; 0: any n).
typedef float V16 __attribute__((vector_size(64), aligned(4)));  // 16 floats, unaligned access

template <int N>
void combine(int64_t n, const float* coef, int64_t co, int64_t ci, const float* const* in, float* const* out,
             int64_t cols) {
  if constexpr (N > 0) n = N;
  constexpr int64_t kV = 16;
  int64_t c0 = 0;
  for (; c0 + kV <= cols; c0 += kV) {
    V16 x[N > 0 ? N : 64];
    for (int64_t i = 0; i < n; ++i) x[i] = *reinterpret_cast<const V16*>(in[i] + c0);
    for (int64_t o = 0; o < n; ++o) {
      V16 acc = x[0] * coef[o * co];
      for (int64_t i = 1; i < n; ++i) acc += x[i] * coef[o * co + i * ci];
      *reinterpret_cast<V16*>(out[o] + c0) = acc;
    }
  }
  for (; c0 < cols; ++c0)
    for (int64_t o = 0; o < n; ++o) {
      float acc = 0;
      for (int64_t i = 0; i < n; ++i) acc += coef[o * co + i * ci] * in[i][c0];
      out[o][c0] = acc;
    }
}

void combine_any(int64_t n, const float* coef, int64_t co, int64_t ci, const float* const* in, float* const* out,
                 int64_t cols) {
  if (n == 8) combine<8>(n, coef, co, ci, in, out, cols);
  else combine<0>(n, coef, co, ci, in, out, cols);
}

}  // namespace

RowMix::RowMix(int block) : block_(block) {
  TEMPO_CHECK(block >= 2 && block <= 32, "row mixing block must be between 2 and 32");
}

const RowMix::Entry& RowMix::entry(int id) const {
  TEMPO_CHECK(id >= 0 && static_cast<size_t>(id) < entries_.size() && entries_[static_cast<size_t>(id)].valid,
              "row mixing of a product that was not mixed");
  return entries_[static_cast<size_t>(id)];
}

const Product& RowMix::apply(const Product& p, KeyStream& ks, const After& after) {
  const Product& q = draw(p, ks);
  mix(p.id, p.a, p.k, entries_[static_cast<size_t>(p.id)].a.data(), after);
  return q;
}

const Product& RowMix::draw(const Product& p, KeyStream& ks) {
  TEMPO_CHECK(p.id >= 0, "a mixed product needs an id");
  if (static_cast<size_t>(p.id) >= entries_.size()) entries_.resize(static_cast<size_t>(p.id) + 1);
  Entry& e = entries_[static_cast<size_t>(p.id)];
  const int64_t m = p.m;
  const MixGroups gr(m, block_);
  e.perm.resize(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) e.perm[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  for (int64_t i = m - 1; i > 0; --i)
    std::swap(e.perm[static_cast<size_t>(i)], e.perm[ks.below(static_cast<uint32_t>(i + 1))]);
  const int64_t sq = gr.largest * gr.largest;
  e.q_mats.resize(static_cast<size_t>(gr.count * sq));
  // The matrices in a fixed number of pieces, each from its own stretch of
  // the stream: the draws depend on the stream only, not on the threads.
  constexpr int64_t kPieces = 16;
  parallel_for(kPieces, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      KeyStream piece = ks.fork(static_cast<uint32_t>(c));
      const int64_t g0 = gr.count * c / kPieces;
      random_orthogonals(piece, gr, m, g0, gr.count * (c + 1) / kPieces, e.q_mats.data() + g0 * sq);
    }
  });
  e.a.resize(static_cast<size_t>(m * p.k));
  e.valid = true;
  e.q = p;
  e.q.a = e.a.data();
  return e.q;
}

RowMix::Grouping RowMix::grouping(int id) const {
  const Entry& e = entry(id);
  const auto m = static_cast<int64_t>(e.perm.size());
  const MixGroups gr(m, block_);
  Grouping out{e.perm, {}};
  for (int64_t g = 0; g <= gr.count; ++g) out.starts.push_back(gr.begin(m, g));
  return out;
}

float* RowMix::mixed_a(int id) {
  entry(id);  // checks that it was mixed
  return entries_[static_cast<size_t>(id)].a.data();
}

const Product* RowMix::sent(const Product& p) const {
  if (p.id < 0 || static_cast<size_t>(p.id) >= entries_.size()) return nullptr;
  const Entry& e = entries_[static_cast<size_t>(p.id)];
  return e.valid && e.q.m == p.m && e.q.k == p.k && e.q.n == p.n ? &e.q : nullptr;
}

// Mixing sends group g's rows perm[s..s+n) to rows s..s+n through Q_g;
// unmixing sends them back through Q_gᵀ.
void RowMix::mix(int id, const float* src, int64_t cols, float* dst, const After& after) const {
  transform(id, src, cols, dst, false, after);
}

void RowMix::unmix(int id, const float* src, int64_t cols, float* dst, const After& after) const {
  transform(id, src, cols, dst, true, after);
}

void RowMix::unmix_from(int id, int64_t cols, const Fill& fill, float* dst, const After& after) const {
  transform(id, nullptr, cols, dst, true, after, &fill);
}

void RowMix::transform(int id, const float* src, int64_t cols, float* dst, bool back, const After& after,
                       const Fill* fill) const {
  const Entry& e = entry(id);
  const int64_t m = static_cast<int64_t>(e.perm.size());
  const MixGroups gr(m, block_);
  const int64_t sq = gr.largest * gr.largest, ld = gr.largest;
  // A result larger than the caches is built a group at a time in a buffer
  // of this thread's (where `after` works on it), then streamed to dst: a
  // plain store would first read every line of dst from memory. Without
  // dst the rows are made in that buffer for `after` alone.
  const bool stream = dst && m * cols * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  const bool stage = stream || !dst;
  parallel_for(gr.count, [&](int64_t lo, int64_t hi) {
    const float* in[64];
    float* out[64];
    int64_t index[64];
    thread_local std::vector<float> made, staged;  // the rows fill() makes; the rows before they are streamed
    if (fill && made.size() < static_cast<size_t>(ld * cols)) made.resize(static_cast<size_t>(ld * cols));
    if (stage && staged.size() < static_cast<size_t>(ld * cols)) staged.resize(static_cast<size_t>(ld * cols));
    for (int64_t g = lo; g < hi; ++g) {
      const int64_t s = gr.begin(m, g), n = gr.begin(m, g + 1) - s;
      if (fill) (*fill)(s, s + n, made.data());
      for (int64_t t = 0; t < n; ++t) {
        const int64_t scattered = e.perm[static_cast<size_t>(s + t)];
        in[t] = fill ? made.data() + t * cols : src + (back ? s + t : scattered) * cols;
        index[t] = back ? scattered : s + t;
        out[t] = stage ? staged.data() + t * cols : dst + index[t] * cols;
      }
      const float* q = e.q_mats.data() + g * sq;
      if (back) combine_any(n, q, 1, ld, in, out, cols);  // out[u] = Σ_t Q[t][u]·in[t]
      else combine_any(n, q, ld, 1, in, out, cols);       // out[t] = Σ_u Q[t][u]·in[u]
      if (after) after(out, index, n);
      if (stream)
        for (int64_t t = 0; t < n; ++t) stream_floats(dst + index[t] * cols, out[t], cols);
    }
    stream_fence();  // ours, and any `after` made
  }, 16);
}

}  // namespace tempo
