// Model stealing through the prediction API (P5) on cases whose answer is
// known: the soft-target loss is cross-entropy when the targets are one-hot;
// a substitute trained on enough of a victim's answers predicts what the
// victim predicts, and one trained on ten answers cannot (it has seen at
// most ten of the classes, and usually fewer).
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/rng.h"
#include "trusted/nn/layers.h"
#include "eval/attacks/model_stealing.h"

namespace tempo {
namespace {

TEST(ModelStealing, SoftCrossEntropyWithOneHotTargetsIsCrossEntropy) {
  const int64_t n = 5, c = 4;
  Tensor z({n, c});
  Rng rng(2);
  for (int64_t i = 0; i < z.numel(); ++i) z[i] = static_cast<float>(3 * rng.normal());
  const std::vector<int64_t> labels = {0, 3, 1, 1, 2};
  std::vector<float> t(static_cast<size_t>(n * c), 0.0f);
  for (int64_t i = 0; i < n; ++i) t[static_cast<size_t>(i * c + labels[static_cast<size_t>(i)])] = 1;
  Tensor g_hard, g_soft;
  const double hard = cross_entropy(z, labels, &g_hard);
  const double soft = soft_cross_entropy(z, t.data(), &g_soft);
  EXPECT_NEAR(soft, hard, 1e-9 * std::fabs(hard));
  for (int64_t i = 0; i < z.numel(); ++i) EXPECT_FLOAT_EQ(g_soft[i], g_hard[i]) << "entry " << i;
  // Targets equal to the model's own softmax: zero gradient, loss = entropy.
  std::vector<float> p(static_cast<size_t>(n * c));
  softmax_rows(z.data(), n, c, p.data());
  double entropy = 0;
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(std::accumulate(p.begin() + i * c, p.begin() + (i + 1) * c, 0.0), 1.0, 1e-6);
    for (int64_t k = 0; k < c; ++k) {
      const double q = p[static_cast<size_t>(i * c + k)];
      entropy -= q * std::log(q);
    }
  }
  EXPECT_NEAR(soft_cross_entropy(z, p.data(), &g_soft), entropy / n, 1e-5);
  for (int64_t i = 0; i < z.numel(); ++i) EXPECT_NEAR(g_soft[i], 0.0f, 1e-7f);
}

TEST(ModelStealing, EnoughQueriesCopyTheVictimAndTenDoNot) {
  set_num_threads(2);
  StealingConfig c;
  c.model = "mlp";
  c.data = "synthetic:2000";  // 1000 images for the victim, 1000 for the attacker
  c.seed = 4;
  c.budgets = {10, 1000};
  c.min_steps = 100;
  c.max_steps = 200;
  const StealingReport r = measure_model_stealing(c, [](const std::string& s) { std::printf("%s\n", s.c_str()); });
  ASSERT_EQ(r.rows.size(), 4u);
  EXPECT_EQ(r.victim_train, 1000);
  EXPECT_EQ(r.pool, 1000);
  EXPECT_GT(r.victim_accuracy, 0.9) << "the victim must be worth stealing for the test to say anything";
  for (const auto& row : r.rows) {
    const std::string what = std::to_string(row.budget) + (row.soft ? " soft" : " hard");
    if (row.budget == 1000) {
      EXPECT_GE(row.agreement, 0.9) << what;
      EXPECT_GE(row.accuracy, r.victim_accuracy - 0.1) << what;
    } else {
      EXPECT_LE(row.agreement, 0.8) << what;
    }
  }
  // More queries, more agreement, for either answer kind.
  EXPECT_GT(r.rows[2].agreement, r.rows[0].agreement + 0.2);
  EXPECT_GT(r.rows[3].agreement, r.rows[1].agreement + 0.2);
}

TEST(ModelStealing, BadBudgetsAreClearErrors) {
  StealingConfig c;
  c.model = "mlp";
  c.data = "synthetic:100";
  c.budgets = {};
  EXPECT_THROW(measure_model_stealing(c), Error);
  c.budgets = {0};
  EXPECT_THROW(measure_model_stealing(c), Error);
  c.budgets = {60};  // leaves the victim 40 of 100
  try {
    measure_model_stealing(c);
    FAIL() << "a budget over half the training set must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--budgets"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace tempo
