// Label recovery through the zero-sum rows of the cross-entropy gradient
// (P5), the reason the last layer stays in the master by default.
//
// The gradient of mean cross-entropy with respect to the logits is
// dC = (softmax − onehot)/B: every row sums to zero, and in every row the
// label's entry is the only negative one. Encrypted, G = L·dC·R⁻¹ (scaled
// permutations). The worker solves G·v = 0 for v (the smallest right
// singular vector; v ∝ R's scales), so G·diag(v) = L·dC·Π: each row is its
// plaintext row up to one factor, and the entry whose sign differs from all
// the others is the label (in permuted class order). The logits follow up to
// one constant per row: the other entries are proportional to the softmax.
#pragma once

#include <cstdint>
#include <vector>

#include "trusted/trainer.h"

namespace tempo {

struct LabelAttackResult {
  int64_t rows = 0;        // gradient rows attacked
  int64_t correct = 0;     // rows whose label entry was found (mapped back through the keys)
  double chance = 0;       // 1 / classes
};

// Trains `steps` steps of cfg in tee-only mode with the last layer's
// products tapped (as with --offload-last), encrypts each step's gradient of
// the logits under fresh keys (identity: no keys, the offload mode), attacks
// the ciphertext alone, and scores the result against the truth.
LabelAttackResult label_attack(TrainConfig cfg, int64_t steps, uint64_t seed, bool identity = false);

// The attack itself on one ciphertext (rows × classes): for each row the
// column of its label entry, or −1 if no entry has a sign of its own.
std::vector<int64_t> recover_label_columns(const float* g, int64_t rows, int64_t classes);

}  // namespace tempo
