#include "trusted/obfuscation/block_mix.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"
#include "trusted/obfuscation/orthogonal.h"

namespace tempo {

namespace {
constexpr int64_t kWide = 16;
typedef float V8 __attribute__((vector_size(32), aligned(4)));  // 8 floats, unaligned access
inline V8 load8(const float* p) { return *reinterpret_cast<const V8*>(p); }
}  // namespace

void BlockMix::draw(KeyStream& ks, int64_t d, int b) {
  TEMPO_CHECK(b == 0 || (b >= 2 && b <= 32), "block mixing: the group size must be 0 (off) or 2 to 32");
  TEMPO_CHECK(d >= 1, "block mixing: empty block");
  d_ = d;
  groups_ = 0;
  if (b == 0) return;
  const MixGroups gr(d, b);
  groups_ = gr.count;
  ld_ = gr.largest;
  perm_.resize(static_cast<size_t>(d));
  for (int64_t i = 0; i < d; ++i) perm_[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  for (int64_t i = d - 1; i > 0; --i)
    std::swap(perm_[static_cast<size_t>(i)], perm_[ks.below(static_cast<uint32_t>(i + 1))]);
  starts_.resize(static_cast<size_t>(groups_ + 1));
  for (int64_t g = 0; g <= groups_; ++g) starts_[static_cast<size_t>(g)] = gr.begin(d, g);
  q_.resize(static_cast<size_t>(groups_ * ld_ * ld_));
  random_orthogonals(ks, gr, d, 0, groups_, q_.data());
  if (ld_ > kWide) return;
  wide_fwd_.assign(static_cast<size_t>(groups_ * kWide * kWide), 0.0f);
  wide_back_.assign(wide_fwd_.size(), 0.0f);
  for (int64_t g = 0; g < groups_; ++g) {
    const int64_t n = starts_[static_cast<size_t>(g + 1)] - starts_[static_cast<size_t>(g)];
    const float* q = q_.data() + g * ld_ * ld_;
    float* f = wide_fwd_.data() + g * kWide * kWide;
    float* b = wide_back_.data() + g * kWide * kWide;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t u = 0; u < n; ++u) {
        f[u * kWide + t] = q[t * ld_ + u];  // input u adds Q[t][u] to output t
        b[t * kWide + u] = q[t * ld_ + u];  // input t adds Q[t][u] to output u
      }
  }
}

// Mixing: out[s + t] = Σ_u Q[t][u]·in[perm[s + u]]; back: out[perm[s + u]]
// = Σ_t Q[t][u]·in[s + t] (group g, s = start(g)).
void BlockMix::rows(const float* src, int64_t cols, float* dst, bool back) const {
  if (groups_ == 0) {
    if (dst != src) std::memcpy(dst, src, static_cast<size_t>(d_ * cols) * sizeof(float));
    return;
  }
  for (int64_t g = 0; g < groups_; ++g) {
    const int64_t s = start(g), n = start(g + 1) - s;
    const float* q = q_.data() + g * ld_ * ld_;
    for (int64_t o = 0; o < n; ++o) {
      float* out = dst + (back ? perm_[static_cast<size_t>(s + o)] : s + o) * cols;
      std::fill(out, out + cols, 0.0f);
      for (int64_t i = 0; i < n; ++i) {
        const float c = back ? q[i * ld_ + o] : q[o * ld_ + i];
        const float* in = src + (back ? s + i : perm_[static_cast<size_t>(s + i)]) * cols;
        for (int64_t j = 0; j < cols; ++j) out[j] += c * in[j];
      }
    }
  }
}

void BlockMix::cols(const float* src, int64_t n, float* dst, bool back) const {
  if (groups_ == 0) {
    if (dst != src) std::memcpy(dst, src, static_cast<size_t>(n * d_) * sizeof(float));
    return;
  }
  thread_local std::vector<float> row;  // the whole row is built before it is written: dst may be src
  if (row.size() < static_cast<size_t>(d_ + kWide)) row.resize(static_cast<size_t>(d_ + kWide));
  float* y = row.data();  // d_ floats, and slack for a group's full-width store
  const bool wide = ld_ <= kWide;
  const int64_t* starts = starts_.data();
  for (int64_t r = 0; r < n; ++r) {
    const float* x = src + r * d_;
    for (int64_t g = 0; g < groups_; ++g) {
      const int64_t s = starts[g], len = starts[g + 1] - s;
      const int32_t* pg = perm_.data() + s;
      if (wide) {
        // Two 8-wide accumulators hold the group's (up to 16) outputs.
        const float* w = (back ? wide_back_ : wide_fwd_).data() + g * kWide * kWide;
        V8 a0 = {}, a1 = {};
        for (int64_t j = 0; j < len; ++j) {
          const float v = back ? x[s + j] : x[pg[j]];
          a0 += v * load8(w + j * kWide);
          a1 += v * load8(w + j * kWide + 8);
        }
        if (back) {
          alignas(32) float out[kWide];
          *reinterpret_cast<V8*>(out) = a0;
          *reinterpret_cast<V8*>(out + 8) = a1;
          for (int64_t u = 0; u < len; ++u) y[pg[u]] = out[u];
        } else {  // the slack takes what is past the group; the next group overwrites it
          *reinterpret_cast<V8*>(y + s) = a0;
          *reinterpret_cast<V8*>(y + s + 8) = a1;
        }
        continue;
      }
      const float* q = q_.data() + g * ld_ * ld_;
      for (int64_t o = 0; o < len; ++o) {
        float acc = 0;
        for (int64_t i = 0; i < len; ++i) acc += back ? q[i * ld_ + o] * x[s + i] : q[o * ld_ + i] * x[pg[i]];
        y[back ? pg[o] : s + o] = acc;
      }
    }
    std::memcpy(dst + r * d_, y, static_cast<size_t>(d_) * sizeof(float));
  }
}

}  // namespace tempo
