// Low-rank-plus-sparse separation: the attack on an additively masked
// operand (trusted/crypto/mask.h). A worker holding X' = D₁·Π₁·(A + U·Vᵀ)·Π₂·D₂
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

// Area under the ROC curve of score (higher: more likely positive) against
// labels: 0.5 is chance, 1 a perfect detector. Ties count half.
double roc_auc(const std::vector<double>& score, const std::vector<uint8_t>& label);

}  // namespace tempo
