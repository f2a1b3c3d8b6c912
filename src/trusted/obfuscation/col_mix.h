// Secret column mixing: a hardening for the offloaded weights (and, on the
// data operand, for its zeros and column signs); docs/SECURITY.md. A key
// scales and permutes, so a worker holding W' = R⁻ᵀ·W·Qᵀ holds |W| up to a
// factor per row and per column (double-centring log|W'| removes them) and
// follows it across steps. Mixing the inner dimension first removes that
// structure: the master groups the k columns by a secret permutation into
// groups of b to 2b − 1 and mixes each group by a fresh random orthogonal
// matrix (per product and step, Haar, as row_mix.h draws them):
//     G = blockdiag(Q₁, Q₂, …)·Π,   GᵀG = I,
//     sent: A·Gᵀ and W·Gᵀ,  whose product A·Gᵀ·G·Wᵀ = A·Wᵀ needs no correction.
// Backward the worker returns dC·(W·Gᵀ) = dA·Gᵀ and dCᵀ·(A·Gᵀ) = dW·Gᵀ,
// undone by ·G (b multiply-adds per entry). An entry of W·Gᵀ mixes b
// weights of one unit, so log|W·Gᵀ| has no row-plus-column structure, and
// each step's columns are fresh mixtures.
#pragma once

#include <cstdint>
#include <vector>

#include "trusted/obfuscation/keys.h"

namespace tempo {

class ColMix {
 public:
  explicit ColMix(int block);
  // Draws a fresh mixing G of k columns for product `id`.
  void draw(int id, int64_t k, KeyStream& ks);
  // dst (rows×k) = src·Gᵀ (mix: every row x becomes G·x) or src·G (unmix:
  // Gᵀ·x), for the mixing last drawn for `id`; dst may be src.
  // A result of kStreamBytes or more (and not in place) is streamed to dst.
  void mix(int id, const float* src, int64_t rows, float* dst) const;
  // place false: as unmix_here's.
  void unmix(int id, const float* src, int64_t rows, float* dst, bool place = true) const;
  int64_t cols(int id) const;
  // The same on n rows (each k floats, anywhere) in place, on the calling
  // thread: for a pass that already holds them in cache (RowMix's groups).
  void mix_here(int id, float* const* rows, int64_t n) const;
  // place false: each unmixed row left in the mixing's group order, column
  // j at position order(id)[j], for a consumer that gathers anyway.
  void unmix_here(int id, float* const* rows, int64_t n, bool place = true) const;
  const int32_t* order(int id) const { return entry(id).inv.data(); }

 private:
  struct Entry {
    bool valid = false;
    int64_t k = 0;
    std::vector<int32_t> perm;  // group g mixes columns perm[s_g .. s_g+1)
    std::vector<int32_t> inv;   // inv[perm[i]] = i: where unmixing finds column j's value
    std::vector<int64_t> starts;  // s_g, one more than the groups
    std::vector<float> q, qt;   // per group: Q and Qᵀ, row-major, at stride ld²
    int64_t ld = 0;             // the largest group's size
  };
  const Entry& entry(int id) const;
  void transform(int id, const float* src, int64_t rows, float* dst, bool back, bool place) const;
  // n rows (k floats each) into out[t] (which may be in[t]); transform()
  // hands them kBlockRows at a time.
  void transform_rows(const Entry& e, const float* const* in, float* const* out, int64_t n, bool back,
                      bool place = true, bool stream = false) const;
  static void place_row(const Entry& e, const float* y, float* dst, bool gather, bool stream);
  static constexpr int64_t kBlockRows = 16;
  int block_;
  std::vector<Entry> entries_;
};

}  // namespace tempo
