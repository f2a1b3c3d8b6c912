// What the key shift (DESIGN.md §2) lets a worker compute. For C = A·Wᵀ the
// worker holds A' = L·A_s·Q⁻¹ (A_s: the data operand as the master blinds
// it) and, for the weight gradient, G2 = L⁻ᵀ·dC_s·R2 (dC_s = M·dC, the
// output gradient as blinded): with the key shift both carry the same row
// key L, row i of A' scaled by l_i and row i of G2 by 1/l_i, on the same
// source row. The product of the two rows' norms is therefore free of the
// secret row scale:
//     ‖A'_i‖·‖G2_i‖ ≈ ‖(A_s)_π(i)‖·‖(dC_s)_π(i)‖
// up to the column keys Q and R2. Those weight the columns alike for every
// row: with hundreds of columns of log-uniform weights a weighted norm
// follows the plain one (dividing each column by its rms first, which
// removes the column scales exactly, did worse: sparse columns, rarely
// non-zero, then dominate the norms). Without mixing this is the norm of one sample's
// (one image position's) contribution to the weight gradient, ‖A_s‖·‖dC_s‖,
// whose gradient factor grows with the sample's loss. With --no-key-shift
// G2's rows arrive under a fresh permutation and scales, and the pairing is
// lost. Rows stay in a secret order either way: the worker learns these
// magnitudes for anonymous rows, not for a known sample. Used by the
// privacy suite (`tempo privacy --suite keyshift`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tempo {

// The attack: per row i of a (m×k) and g (m×n), ‖a_i‖·‖g_i‖.
std::vector<double> paired_row_norms(const float* a, int64_t m, int64_t k, const float* g, int64_t n);

// Spearman rank correlation (ties take their mean rank); 0 if either side
// is constant.
double spearman(const std::vector<double>& x, const std::vector<double>& y);

struct KeyShiftCase {
  bool shift = true;
  int row_mix = 8, mask_rank = 64, col_mix = 8;
};

struct KeyShiftRow {
  std::string layer;
  KeyShiftCase blinding;
  int64_t rows = 0;
  // Spearman correlation over the rows of the attack's estimate with: the
  // same product for the blinded rows under the keys (what the scales
  // hide: ‖(A_s)_j‖·‖(dC_s)_j‖); the per-sample weight-gradient norm
  // ‖A_s‖·‖dC_s‖ of the row's sample (row-mixed: the mean over the row's
  // group, all one mixed row can carry); ‖dC_s‖ alone likewise; and, where
  // the rows are samples (error given), ‖softmax − onehot‖ of the sample,
  // a monotone proxy of its loss (−2 where not measured).
  double sent = 0, sample = 0, gradient = 0, error = -2;
  // Baselines: A''s row norm alone against the sample's
  // ‖A_s‖·‖dC_s‖ (the row scale in the way) and against ‖A_s‖ itself.
  double a_alone = 0, a_alone_norm = 0;
};

// Blinds p's operands as the master does (Blinding(c): row mixing, column
// mixing, mask), encrypts A' under a fresh forward triple and G2 under the
// shifted triple (c.shift) or a fresh one, attacks the pair, and scores.
// error: per row of A (m values), or nullptr.
KeyShiftRow key_shift_attack(const std::string& layer, int id, const float* a, const float* w, const float* dc,
                             int64_t m, int64_t k, int64_t n, const float* error, const KeyShiftCase& c,
                             uint64_t seed, double key_scale);

}  // namespace tempo
