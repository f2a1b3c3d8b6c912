// What a worker learns from attention's batched products (P10): the
// plaintext Q (scaled by 1/√E), K, P and Vᵀ of every head and image at one
// step of a real `vit` run, each block encrypted under a fresh triple as the
// pipeline does it, twice: with keys only, and mixed first as the default
// pipeline mixes them (block_mix.h: Q and P by M over rows and G over the
// inner dimension, K and Vᵀ by G; no mask on these products), and
//   - the mutual information between plaintext and ciphertext values,
//     position-aligned (what a worker can line up) and key-aligned (an upper
//     bound: a worker that had recovered the permutations), as the mi suite
//     measures the other operands;
//   - an attack on P' = L·P·I⁻¹: P is positive with rows summing to 1, so
//     |P'| is P with its rows and columns scaled. The attacker balances |P'|
//     (Sinkhorn: rows and columns alternately normalised to sum 1) or only
//     normalises its rows; each estimate, put back in P's order (which the
//     attacker does not know: an upper bound), is scored by its Pearson
//     correlation with P and by its mean absolute error relative to that of
//     the uninformed guess 1/T.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trusted/obfuscation/obfuscator.h"
#include "trusted/trainer.h"

namespace tempo {

struct AttentionMiRow {
  std::string layer, operand;  // operand: Q, K, P, V
  bool mixed = false;          // mixed before the keys (the default) or keys only
  int64_t blocks = 0, rows = 0, cols = 0;
  double position_aligned = 0, key_aligned = 0;  // nats
};

struct AttentionRecoveryRow {
  std::string layer;
  bool mixed = false;
  int64_t blocks = 0, tokens = 0;
  double corr_balanced = 0, corr_rows = 0;  // mean over blocks
  double err_balanced = 0, err_rows = 0;    // mean |estimate − P| / mean |1/T − P|
};

struct AttentionReport {
  int64_t step = 0;
  int row_mix = 0, col_mix = 0;  // the mixed rows' group sizes
  std::vector<AttentionMiRow> mi;
  std::vector<AttentionRecoveryRow> recovery;
};

// Trains cfg (a vit) in tee-only mode to step at_step and measures that
// step's attention operands, keys only and then mixed with
// cfg.offload.row_mix and col_mix (skipped when both are 0); `samples` value
// pairs per MI estimate.
AttentionReport measure_attention(TrainConfig cfg, int64_t at_step, int64_t samples, uint64_t seed);

// The attacker's two estimates of P from |P'| (t×t): balanced (Sinkhorn,
// `iterations` rounds) and rows normalised. Exposed for tests.
void estimate_probabilities(const float* p_enc, int64_t t, int iterations, std::vector<double>& balanced,
                            std::vector<double>& rows);

// The attack on `groups` blocks of P (t×t each, at p), sent mixed with
// these group sizes (both 0: keys only) under fresh keys; at most 64
// blocks attacked. Exposed for tests.
AttentionRecoveryRow attack_probabilities(const std::string& layer, const float* p, int64_t groups, int64_t t,
                                          int row_mix, int col_mix, Obfuscator& obf);

}  // namespace tempo
