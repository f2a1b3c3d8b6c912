// Weight recovery from the transcript alone, without keys (P5).
//
// Each step a worker receives the weight of every offloaded product as
// W' = R⁻ᵀ·W·Qᵀ (N×K, the transposed B' = Q·Wᵀ·R⁻¹), with fresh scaled
// permutations R (outputs) and Q (inputs). Entry-wise
//     log|W'[i,j]| = log|W[ρ(i), σ(j)]| + a_i + b_j
// so double-centring log|W'| (subtracting row and column means, adding the
// grand mean, which leaves a matrix of mean 0) gives the double-centred
// log|W|, permuted: the scales are gone exactly. The grand mean of log|W'|
// is that of log|W| plus the mean key log-scale, which is ~0 (log-scales are
// symmetric around 0), so exp(D + grand mean) gives the magnitudes up to one
// positive factor per row and per column: the spread of the row and column
// means of log|W| itself, which the attack cannot see.
//
// Signs: the input of the product, A' = L·A·Q⁻¹, shares Q with W'. When A is
// a ReLU output (A ≥ 0), sign(A'[i,j]) = sign(l_i)·sign(q_j) on every
// non-zero entry: a rank-one sign pattern whose column factor is the sign of
// Q's scales, up to one global flip. Multiplying W' by it leaves one unknown
// sign per row of W (per output unit, from R, which no non-negative operand
// shares) — a real unknown: flipping a ReLU unit's weights changes the
// function. The key shift gives it away when the product's output goes
// through a ReLU: the weight gradient G2 = L⁻ᵀ·dC·R2 has the rows of the
// worker's own result C' = L·C·R⁻¹, and dC is exactly zero where a unit was
// inactive, so each unit's activity over the batch can be lined up with its
// column of C' and the sign read off their correlation (unit_signs in the
// .cc; with --no-key-shift the gradient's rows are permuted afresh and this
// does not apply).
//
// Permutations: keys are fresh every step, but the weights drift only by the
// optimizer's update, so the double-centred matrices of consecutive steps are
// near-copies under unknown row and column permutations. Rows are matched
// first on sorted rows (invariant to the column permutation), then columns
// on the matched rows, then rows again on the matched columns. Chaining the
// matches aligns every step with the first one: the attacker follows one
// weight matrix through training, in an order of its own. That order stays
// unknown relative to the true one: hidden units are interchangeable (a
// network is only defined up to their permutation), but the inputs of a
// layer are not (for a convolution they are (channel, ky, kx), for the first
// linear layer (channel, y, x)); placing them needs more than this attack.
// One step alone already gives the magnitudes and most signs; the chain
// carries signs that one batch leaves open (a column or unit that batch did
// not exercise) from other steps, and follows the weights over time.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trusted/trainer.h"

namespace tempo {

// D = log|w| double-centred (rows × cols, row-major; mean 0). Entries |w|
// below `floor` count as `floor` (exact zeros have no logarithm).
// grand_mean, if given, receives the mean of log|w| over all entries.
std::vector<double> double_centre_log_abs(const float* w, int64_t rows, int64_t cols, double floor = 1e-30,
                                          double* grand_mean = nullptr);

// Sign factors of the rank-one sign pattern of x = L·A·Q⁻¹ with A ≥ 0:
// row[i]·col[j] = sign(x[i,j]) on non-zero entries, ±1, or 0 where a row or
// column has no non-zero entry connected to the others. `inconsistent`
// counts the non-zero entries that break the pattern (0 when A ≥ 0).
struct SignFactors {
  std::vector<int8_t> row, col;
  int64_t inconsistent = 0;
};
SignFactors nonnegative_sign_factors(const float* x, int64_t rows, int64_t cols);

// The same factors where x is no longer exactly L·A·Q⁻¹ with A ≥ 0 (the
// mask, the row mixing): the column Gram matrix AᵀA of a non-negative A is
// non-negative, and the mixing's orthogonal groups keep it (up to the row
// scales and the mask's share), so the leading eigenvector of x's
// column-normalised Gram matrix (power iteration, never formed) has the
// column keys' signs; a row's sign is that of its entries weighted by those
// column signs over the column norms. `inconsistent` as above.
SignFactors gram_sign_factors(const float* x, int64_t rows, int64_t cols, int iterations = 100);

// rows[i]: the row of `a` matched to row i of `b` (both rows × cols, the
// double-centred log-magnitudes of two near-copies); cols[j] likewise.
struct Matching {
  std::vector<int32_t> rows, cols;
};
Matching match_permutations(const std::vector<double>& a, const std::vector<double>& b, int64_t rows, int64_t cols);

struct WeightRecoveryConfig {
  TrainConfig train;            // the measured run (model, data, seed); run in tee-only mode
  int64_t steps = 938;          // training steps (one epoch of Fashion-MNIST at batch 64)
  int64_t window = 10;          // the last `window` steps are recorded and attacked
  uint64_t seed = 0;            // keys
  int col_mix = 8;              // a fourth key set: the defaults plus --col-mix (0: not measured)
};

struct LayerRecovery {
  std::string layer;            // the product's name
  int64_t rows = 0, cols = 0;   // W: rows (outputs) × cols (inputs)
  // Chaining over the window, scored against the keys' permutations: the
  // fraction of rows (columns) of the last step assigned to the index their
  // source had at the first step, and the mean over consecutive pairs.
  double rows_chained = 0, cols_chained = 0;
  double rows_matched_step = 0, cols_matched_step = 0;
  double cols_signed = 0;       // columns whose sign the ReLU operands fixed (last or first step, through the chain)
  int64_t sign_inconsistent = 0;
  // At the last step, with the true placement (an oracle: what the attack
  // does not find) and the best sign per row (a unit's sign is not found):
  double sign_agreement = 0;    // entries in signed columns with the right sign
  double abs_correlation = 0;   // Pearson correlation of |Ŵ| and |W|
  double rel_error = 0;         // ‖Ŵ − W‖/‖W‖ after the best sign and positive scale per row
  double rel_error_no_signs = 0;// the same, with the recovered column signs ignored (all +)
  // Unit signs from the ReLU's zero pattern in the weight gradient (key
  // shift): the fraction of rows given one, the fraction of those right, and
  // the error with the attacker's signs (best positive scale per row only).
  double units_signed = 0, units_right = 0, rel_error_attacker = 0;
  double centring_residual = 0; // max |DC(log|W'|) − DC(log|W|)| placed: 0 up to rounding
};

struct ModelRecovery {
  std::string name;             // which weights
  double accuracy = 0;
};

struct WeightRecoveryReport {
  std::string data;
  int64_t steps = 0, window = 0;
  std::vector<LayerRecovery> layers;          // real keys
  std::vector<LayerRecovery> offload_layers;  // the same attack without keys (offload mode)
  std::vector<LayerRecovery> unshifted_layers;  // real keys, --no-key-shift
  int col_mix = 0;                             // the column mixing measured below (WeightRecoveryConfig)
  std::vector<LayerRecovery> col_mixed_layers;  // real keys, the defaults plus --col-mix col_mix
  std::vector<ModelRecovery> models;  // test accuracy of assembled models
  double chance = 0;
};

// Trains cfg.steps steps in tee-only mode, encrypting the weight, the input
// and the weight gradient of every offloaded product of the last `window`
// steps as the pipeline does (forward triple, encrypt_yt for W, encrypt_x
// for A, the key-shifted triple for dC), with real keys and without, attacks
// those ciphertexts alone, and scores the result. Assembled models (other layers
// and all biases taken from the true model) are evaluated on the test split.
WeightRecoveryReport measure_weight_recovery(const WeightRecoveryConfig& cfg);

}  // namespace tempo
