// Low-rank-plus-sparse separation: the attack on an additively masked
// operand (trusted/obfuscation/mask.h). A worker holding X' = D₁·Π₁·(A + U·Vᵀ)·Π₂·D₂
// knows that the mask's part is of rank r (row and column scales keep the
// rank) and that A is sparse (post-ReLU zeros). Robust PCA by principal
// component pursuit (min ‖L‖* + λ‖S‖₁ subject to X = L + S; inexact
// augmented Lagrangian, singular value thresholding through the k×k Gram
// matrix) splits X into a low-rank L and a sparse S; where S is zero the
// worker guesses a zero of A. Rows and columns are first normalised by their
// median magnitude (diagonal scalings keep the rank). Used by the privacy
// suite only.
#pragma once

#include <cstdint>
#include <vector>

namespace tempo {

struct SparseSplit {
  std::vector<double> s;  // rows × cols, the sparse part (normalised units)
  int iterations = 0;
  int64_t rank = 0;       // rank of the low-rank part at the end
};
// lambda_factor scales the standard λ = 1/√max(rows, cols).
SparseSplit split_low_rank_sparse(const float* x, int64_t rows, int64_t cols, int iterations = 30,
                                  double lambda_factor = 1.0);

// The attack on the mask through repeated rows. Rows of A that repeat (an
// image's background patches) arrive as s·(c + V·u)' : all in one subspace of
// dimension r plus the number of distinct repeated rows, which contains the
// mask's row space. Trimmed PCA finds it: take the `dim` leading principal
// directions of the unit-normalised rows, keep the keep_fraction of rows
// closest to them, recompute the directions from those rows alone, and
// repeat. The basis returned has the numerical rank of the kept rows (at
// most dim); residual[i] is the distance of unit row i from it.
struct CommonSubspace {
  int64_t dim = 0;
  std::vector<double> basis;     // dim × cols, orthonormal rows
  std::vector<double> residual;  // per row
};
CommonSubspace find_common_subspace(const float* x, int64_t rows, int64_t cols, int64_t dim,
                                    double keep_fraction = 0.08, int iterations = 30);

// With such a subspace S (holding the mask's row space), a row y of the
// ciphertext minus its part in S is s·P⊥·D·a with the mask gone. Given the
// sign of every entry of D·a where it is not zero (an oracle: the worker
// would have to estimate them), the sparsest such a is the point of
// {y + S} on that orthant; alternating projections onto the two sets
// (iterations of them) approach it, and a least-squares polish on the
// entries nearest zero lands on it where those were zeros. Returns the
// estimate (cols values).
std::vector<double> decode_with_signs(const double* row, const CommonSubspace& s, const float* sign,
                                      int iterations = 300);

// Area under the ROC curve of score (higher: more likely positive) against
// labels: 0.5 is chance, 1 a perfect detector. Ties count half.
double roc_auc(const std::vector<double>& score, const std::vector<uint8_t>& label);

}  // namespace tempo
