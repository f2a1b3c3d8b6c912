// Mutual information between plaintext and ciphertext values (P5).
//
// Estimator: Kraskov–Stögbauer–Grassberger (KSG, algorithm 1) with k nearest
// neighbours in the max-norm, in nats; checked against the known value
// −½·ln(1 − ρ²) of correlated Gaussian pairs.
//
// Measurement: plaintext operands captured from a real training step, each
// encrypted under a fresh triple exactly as the pipeline does it; pairs
//   - position-aligned: plaintext and ciphertext at the same index (what a
//     worker can line up without the keys);
//   - key-aligned: each ciphertext value with the plaintext value it was
//     made from (an upper bound: a worker that had recovered the
//     permutations); the scales still hide magnitude and sign.
// Both again for the operands as the default configuration sends them:
// the data operand and the output gradient mixed and masked (blinding.h)
// before the keys; key-aligned there pairs each ciphertext value with the
// plaintext at the position it was encrypted from (a worker that knew the
// permutations but not the mixing or the mask). Weights are blinded only
// by the column mixing (--col-mix, off by default).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trusted/trainer.h"

namespace tempo {

double ksg_mutual_information(const std::vector<double>& x, const std::vector<double>& y, int k = 3);

struct MiRow {
  int64_t step = 0;            // the training step the operand came from
  std::string layer, operand;  // operand: input, weight, gradient
  int64_t rows = 0, cols = 0;
  double position_aligned = 0, key_aligned = 0;  // nats
  double blinded_position = 0, blinded_key = 0;  // the same with the run's blinding (blinding.h)
};

// Captures the operands of step `at_step` of `cfg` (run in tee-only mode) and
// measures each; `samples` pairs per estimate.
// identity: no obfuscation (the insecure offload mode), for comparison.
std::vector<MiRow> measure_mutual_information(TrainConfig cfg, int64_t at_step, int64_t samples, uint64_t seed,
                                              bool identity = false);
// The same at several steps of one training run (ascending), rows in step
// order: how the leak changes as training goes on.
std::vector<MiRow> measure_mutual_information(TrainConfig cfg, const std::vector<int64_t>& at_steps,
                                              int64_t samples, uint64_t seed, bool identity = false);

}  // namespace tempo
