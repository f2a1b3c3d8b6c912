// Secret row mixing: the hardening against repeated rows (docs/SECURITY.md).
// The additive mask (mask.h) adds R = U·Vᵀ, whose rows all lie in the
// r-dimensional row space of Vᵀ. Rows of A that repeat (the background
// patches of an image: thousands of identical rows in cnn's second
// convolution) therefore arrive in a subspace of dimension r plus the
// number of distinct repeated rows, which a worker finds by trimmed PCA; with
// it the worker projects the mask away from every row. Mixing removes the
// repeats before the mask is added: the master groups the m rows of A by a
// secret permutation into groups of b to 2b − 1 rows and replaces each group by Q·(its
// rows), with Q a fresh random orthogonal b×b matrix per group, product and
// step (Haar: Gram–Schmidt of a Gaussian matrix from the key stream):
//     A_mix = M·A,  M = blockdiag(Q₁, Q₂, …)·Π,  M⁻¹ = Mᵀ.
// A row of A_mix is a random combination of b rows of A, so it keeps a zero
// only where all b rows have one, and lies in the subspace of repeated rows
// only if all b of its rows do. The products sent are M·A·Wᵀ (undone by Mᵀ,
// b multiply-adds per output), and, backward, (M·dC)ᵀ·(M·A) = dCᵀ·A (nothing
// to undo) and (M·dC)·W (undone by Mᵀ): the output gradient's zeros (ReLU,
// max-pool) are mixed too. Orthogonal Q keep norms: no growth of round-off.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "trusted/obfuscation/keys.h"
#include "trusted/offload/linear_backend.h"

namespace tempo {

class RowMix {
 public:
  // Called on each group's output rows as soon as the pass has written
  // them (still in cache), on the thread that wrote them; index[t]: which
  // row of the output rows[t] is.
  using After = std::function<void(float* const* rows, const int64_t* index, int64_t n)>;
  explicit RowMix(int block);
  // Draws a fresh mixing M for p (p.m rows) and returns p with `a` replaced
  // by M·A (a buffer kept per p.id, writable through mixed_a()); valid until
  // the next apply() for the same id.
  const Product& apply(const Product& p, KeyStream& ks, const After& after = nullptr);
  // apply() in two halves: draw() draws M and returns p as it will be sent
  // (its buffer not yet written); mix(p.id, p.a, p.k, mixed_a(p.id), after)
  // then writes it. apply() is exactly the two.
  const Product& draw(const Product& p, KeyStream& ks);
  float* mixed_a(int id);
  // The mixed product last applied for p.id with p's shape, or nullptr.
  const Product* sent(const Product& p) const;
  // dst (m×cols) = M·src and dst = Mᵀ·src for the mixing of product `id`.
  // Every thread of the pass fences its stores before the pass returns, so
  // `after` may stream (non-temporal stores) where it likes. dst nullptr:
  // the rows are made (in a buffer of the thread's) for `after` only.
  void mix(int id, const float* src, int64_t cols, float* dst, const After& after = nullptr) const;
  void unmix(int id, const float* src, int64_t cols, float* dst, const After& after = nullptr) const;
  // unmix() from a source that makes its rows on demand: for each group
  // (mixed rows [r0, r1)), fill(r0, r1, buf) writes those rows into buf
  // ((r1 − r0)×cols, on the calling thread), which are then unmixed into
  // dst, and `after` runs on them. A pass that decrypts the rows this way
  // never forms the mixed matrix.
  using Fill = std::function<void(int64_t r0, int64_t r1, float* buf)>;
  void unmix_from(int id, int64_t cols, const Fill& fill, float* dst, const After& after = nullptr) const;
  // The secret grouping of product `id` (for measurements): group g is
  // mixed rows [starts[g], starts[g + 1]), and combines the rows
  // perm[starts[g] .. starts[g + 1]) of A.
  struct Grouping {
    const std::vector<int32_t>& perm;
    std::vector<int64_t> starts;  // one more than the groups
  };
  Grouping grouping(int id) const;

 private:
  struct Entry {
    bool valid = false;
    Product q;
    std::vector<int32_t> perm;  // group g holds rows perm[s_g .. s_g+1) (sizes b to 2b − 1)
    std::vector<float> q_mats;  // one n_g×n_g matrix per group, row-major, at stride (largest size)²
    std::vector<float> a;       // M·A
  };
  const Entry& entry(int id) const;
  void transform(int id, const float* src, int64_t cols, float* dst, bool back, const After& after,
                 const Fill* fill = nullptr) const;
  int block_;
  std::vector<Entry> entries_;
};

}  // namespace tempo
