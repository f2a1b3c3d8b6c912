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

TEST(AttentionAttack, MeasuresEveryLayerOfARealStep) {
  TrainConfig cfg;
  cfg.model = "vit";
  cfg.data = "synthetic:256";
  cfg.progress = false;
  const AttentionReport r = measure_attention(cfg, 1, 800, 5);
  ASSERT_EQ(r.mi.size(), 6u * 4u);
  ASSERT_EQ(r.recovery.size(), 6u);
  for (const AttentionMiRow& m : r.mi) {
    SCOPED_TRACE(m.layer + " " + m.operand);
    EXPECT_EQ(m.blocks, 64 * 3);
    EXPECT_LT(m.position_aligned, 0.1);  // the permutations scatter the values
    if (m.operand != "P") EXPECT_GT(m.key_aligned, m.position_aligned);
  }
  for (const AttentionRecoveryRow& a : r.recovery) {
    EXPECT_EQ(a.tokens, 50);
    EXPECT_GE(a.corr_balanced, -1.0);
    EXPECT_LE(a.corr_balanced, 1.0);
    EXPECT_GT(a.err_balanced, 0.0);
  }
  TrainConfig cnn = cfg;
  cnn.model = "cnn";
  EXPECT_THROW(measure_attention(cnn, 1, 800, 5), Error);
}

}  // namespace
}  // namespace tempo
