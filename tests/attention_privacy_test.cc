// The attention suite's pieces: the attacker's estimate of P from |P'|
// recovers a doubly stochastic P exactly from any row and column scaling
// (Sinkhorn's uniqueness), and P itself when only its rows were scaled; and
// the measurement on a real vit step gives every layer's four operands and
// an estimate per layer, with the keys hiding the values' positions.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/error.h"
#include "eval/attacks/attention.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/rng.h"

namespace tempo {
namespace {

TEST(AttentionAttack, BalancingUndoesRowAndColumnScales) {
  const int64_t t = 7;
  Rng rng(3);
  // A doubly stochastic P: an average of permutation matrices.
  std::vector<double> p(t * t, 0.0);
  for (int k = 0; k < 5; ++k) {
    std::vector<int64_t> perm(t);
    for (int64_t i = 0; i < t; ++i) perm[i] = i;
    for (int64_t i = t - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(i + 1)]);
    const double w = 0.1 + rng.uniform();
    for (int64_t i = 0; i < t; ++i) p[i * t + perm[i]] += w;
  }
  for (double& v : p) v += 0.01;
  for (int it = 0; it < 500; ++it) {  // make it doubly stochastic
    for (int64_t j = 0; j < t; ++j) {
      double s = 0;
      for (int64_t i = 0; i < t; ++i) s += p[i * t + j];
      for (int64_t i = 0; i < t; ++i) p[i * t + j] /= s;
    }
    for (int64_t i = 0; i < t; ++i) {
      double s = 0;
      for (int64_t j = 0; j < t; ++j) s += p[i * t + j];
      for (int64_t j = 0; j < t; ++j) p[i * t + j] /= s;
    }
  }
  std::vector<double> l(t), r(t);
  for (auto& v : l) v = (rng.uniform() < 0.5 ? -1 : 1) * std::exp(rng.uniform(-1.4, 1.4));
  for (auto& v : r) v = (rng.uniform() < 0.5 ? -1 : 1) * std::exp(rng.uniform(-1.4, 1.4));
  std::vector<float> enc(t * t), rows_only(t * t);
  for (int64_t i = 0; i < t; ++i)
    for (int64_t j = 0; j < t; ++j) {
      enc[i * t + j] = static_cast<float>(l[i] * p[i * t + j] / r[j]);
      rows_only[i * t + j] = static_cast<float>(l[i] * p[i * t + j]);
    }
  std::vector<double> balanced, by_rows;
  estimate_probabilities(enc.data(), t, 200, balanced, by_rows);
  double worst = 0, worst_rows = 0;
  for (int64_t i = 0; i < t * t; ++i) worst = std::max(worst, std::fabs(balanced[i] - p[i]));
  EXPECT_LT(worst, 1e-5);
  estimate_probabilities(rows_only.data(), t, 0, balanced, by_rows);
  for (int64_t i = 0; i < t * t; ++i) worst_rows = std::max(worst_rows, std::fabs(by_rows[i] - p[i]));
  EXPECT_LT(worst_rows, 1e-6);
}

// Trained attention: each row of P peaks on a few tokens. With keys only,
// normalising the rows of |P'| rebuilds it; mixing the rows and the inner
// dimension (the default) leaves the attack little better than guessing.
TEST(AttentionAttack, MixingDefeatsTheRebuildOfTrainedAttention) {
  const int64_t t = 17, groups = 12;
  Rng rng(8);
  std::vector<float> p(groups * t * t);
  for (int64_t r = 0; r < groups * t; ++r) {
    double s = 0;
    std::vector<double> e(t);
    for (int64_t j = 0; j < t; ++j) s += e[j] = std::exp(3.0 * rng.normal());
    for (int64_t j = 0; j < t; ++j) p[r * t + j] = static_cast<float>(e[j] / s);
  }
  Obfuscator obf(secret_from_seed(4), 4.0);
  const AttentionRecoveryRow keys = attack_probabilities("l", p.data(), groups, t, 0, 0, obf);
  const AttentionRecoveryRow mixed = attack_probabilities("l", p.data(), groups, t, 8, 8, obf);
  EXPECT_FALSE(keys.mixed);
  EXPECT_TRUE(mixed.mixed);
  EXPECT_EQ(keys.blocks, groups);
  EXPECT_GT(keys.corr_rows, 0.7);
  EXPECT_LT(keys.err_rows, 0.6);
  EXPECT_LT(std::fabs(mixed.corr_rows), 0.35);
  EXPECT_LT(std::fabs(mixed.corr_balanced), 0.35);
  EXPECT_GT(mixed.err_rows, 0.9);
  EXPECT_GT(mixed.err_balanced, 0.9);
}

TEST(AttentionAttack, MeasuresEveryLayerOfARealStep) {
  TrainConfig cfg;
  cfg.model = "vit";
  cfg.data = "synthetic:256";
  cfg.progress = false;
  const AttentionReport r = measure_attention(cfg, 1, 800, 5);
  ASSERT_EQ(r.mi.size(), 2u * 6u * 4u);  // keys only, then mixed as by default
  ASSERT_EQ(r.recovery.size(), 2u * 6u);
  for (size_t i = 0; i < r.mi.size(); ++i) EXPECT_EQ(r.mi[i].mixed, i >= 24);
  for (size_t i = 0; i < r.recovery.size(); ++i) EXPECT_EQ(r.recovery[i].mixed, i >= 6);
  for (const AttentionMiRow& m : r.mi) {
    SCOPED_TRACE(m.layer + " " + m.operand + (m.mixed ? " mixed" : ""));
    EXPECT_EQ(m.blocks, 64 * 3);
    EXPECT_LT(m.position_aligned, 0.1);  // the permutations scatter the values
    if (m.operand != "P" && !m.mixed) EXPECT_GT(m.key_aligned, m.position_aligned);
  }
  // Mixing takes away what the keys' permutations would give back: Q, K and
  // V's key-aligned values, which the keys alone leave in plain view.
  for (size_t i = 0; i < 24; ++i) {
    SCOPED_TRACE(r.mi[i].layer + " " + r.mi[i].operand);
    EXPECT_EQ(r.mi[i + 24].operand, r.mi[i].operand);
    if (r.mi[i].operand != "P") EXPECT_LT(r.mi[i + 24].key_aligned, 0.5 * r.mi[i].key_aligned);
  }
  for (const AttentionRecoveryRow& a : r.recovery) {
    EXPECT_EQ(a.tokens, 50);
    EXPECT_GE(a.corr_balanced, -1.0);
    EXPECT_LE(a.corr_balanced, 1.0);
    EXPECT_GT(a.err_balanced, 0.0);
  }
  cfg.offload.row_mix = 0;
  cfg.offload.col_mix = 0;
  EXPECT_EQ(measure_attention(cfg, 1, 800, 5).recovery.size(), 6u);  // keys only alone
  TrainConfig cnn = cfg;
  cnn.model = "cnn";
  EXPECT_THROW(measure_attention(cnn, 1, 800, 5), Error);
}

}  // namespace
}  // namespace tempo
