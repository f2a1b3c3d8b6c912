// Mixing of one small block: the hardening of attention's batched products
// (P10; docs/SECURITY.md, "Attention"). A block there is one image's and
// head's Q, K, P or V (tens of rows), far too small for the additive mask's
// rank to be cheap, and P's rows are positive and sum to 1, which the keys'
// scaled permutations leave in plain view (|P'| row-normalised is P). The
// block's d indices (its rows, or its inner dimension) are grouped by a
// secret permutation into groups of b to 2b − 1 and each group is replaced
// by Q·(its entries), Q a fresh Haar-random orthogonal matrix per group
// (orthogonal.h, as RowMix and ColMix draw them):
//     M = blockdiag(Q₁, Q₂, …)·Π,   MᵀM = I.
// A mixed row of P is a signed combination of b of P's rows: neither
// positive nor summing to 1, and after the column mixing its entries are
// signed combinations of b columns too. b = 0 is the identity (keys only).
#pragma once

#include <cstdint>
#include <vector>

#include "trusted/obfuscation/keys.h"

namespace tempo {

class BlockMix {
 public:
  // Draws a fresh mixing of d indices in groups of b (2 ≤ b ≤ 32), or the
  // identity for b = 0. Reuses its buffers: no allocation once grown.
  void draw(KeyStream& ks, int64_t d, int b);
  bool identity() const { return groups_ == 0; }
  int64_t size() const { return d_; }
  // dst (d×cols) = M·src (mix) or Mᵀ·src (back); dst must not overlap src.
  void rows(const float* src, int64_t cols, float* dst, bool back) const;
  // Every row x (d floats) of src (n×d) becomes M·x (mix) or Mᵀ·x (back)
  // in dst, i.e. dst = src·Mᵀ or src·M; dst may be src.
  void cols(const float* src, int64_t n, float* dst, bool back) const;

 private:
  int64_t d_ = 0, groups_ = 0, ld_ = 0;
  std::vector<int32_t> perm_;   // group g holds indices perm_[start(g) .. start(g + 1))
  std::vector<float> q_;        // one ld×ld matrix per group, row-major
  // Groups of at most 16 (b ≤ 8): per group, 16×16 with zeros beyond its
  // size: Qᵀ (mixing: row j = what input j adds to each output) and Q
  // (unmixing), so that a row's group is one 16-wide multiply-add per input.
  std::vector<float> wide_fwd_, wide_back_;
  std::vector<int64_t> starts_;  // group g is [starts_[g], starts_[g + 1])
  int64_t start(int64_t g) const { return starts_[static_cast<size_t>(g)]; }
};

}  // namespace tempo
