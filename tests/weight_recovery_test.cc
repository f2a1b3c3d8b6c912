// The weight-recovery attack (P5) on cases whose answer is known: double
// centring removes a row and column scaling exactly, the sign pattern of a
// non-negative operand gives its column key's signs, two drifted copies of a
// weight under independent keys are matched back to each other, and the
// whole measurement scores an unkeyed transcript as fully recovered.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "trusted/rng.h"
#include "test_util.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/obfuscation/mask.h"
#include "trusted/obfuscation/row_mix.h"
#include "eval/measurements/traced.h"
#include "eval/attacks/weight_recovery.h"

namespace tempo {
namespace {

std::vector<float> uniform_matrix(Rng& rng, int64_t rows, int64_t cols, double bound) {
  std::vector<float> w(static_cast<size_t>(rows * cols));
  for (auto& v : w) v = static_cast<float>(rng.uniform(-bound, bound));
  return w;
}

TEST(WeightRecovery, DoubleCentringRemovesAKnownScalingExactly) {
  Rng rng(11);
  const int64_t n = 24, k = 40;
  const std::vector<float> w = uniform_matrix(rng, n, k, 0.2);
  // By hand: row i times r_i, column j times c_j, signs included.
  std::vector<float> scaled(w.size());
  std::vector<double> r(n), c(k);
  for (auto& v : r) v = (rng.uniform() < 0.5 ? -1 : 1) * std::exp(rng.uniform(-1.4, 1.4));
  for (auto& v : c) v = (rng.uniform() < 0.5 ? -1 : 1) * std::exp(rng.uniform(-1.4, 1.4));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) scaled[i * k + j] = static_cast<float>(w[i * k + j] * r[i] * c[j]);
  const std::vector<double> d0 = double_centre_log_abs(w.data(), n, k);
  const std::vector<double> d1 = double_centre_log_abs(scaled.data(), n, k);
  double worst = 0, spread = 0;
  for (size_t p = 0; p < d0.size(); ++p) {
    worst = std::max(worst, std::fabs(d1[p] - d0[p]));
    spread = std::max(spread, std::fabs(d0[p]));
  }
  EXPECT_LT(worst, 1e-5) << "the scaling must vanish up to float rounding";
  EXPECT_GT(spread, 1.0) << "the centred matrix must still carry the weights' structure";
  // The same through real keys: each entry of DC(log|W'|) equals the entry
  // of DC(log|W|) it came from.
  auto obf = measurement_keys(5, 4.0, false);
  const Traced enc = encrypt_traced(obf->draw_triple(n, k, 1), w.data(), n, k);
  const std::vector<double> de = double_centre_log_abs(enc.values.data(), n, k);
  worst = 0;
  for (size_t p = 0; p < de.size(); ++p) {
    const size_t src = static_cast<size_t>(int64_t{enc.src_row[p]} * k + enc.src_col[p]);
    worst = std::max(worst, std::fabs(de[p] - d0[src]));
  }
  EXPECT_LT(worst, 1e-5);
}

TEST(WeightRecovery, NonnegativeOperandGivesItsColumnKeySigns) {
  Rng rng(12);
  const int64_t m = 200, k = 30;
  std::vector<float> a(static_cast<size_t>(m * k)), ones(a.size(), 1.0f);
  for (auto& v : a) v = rng.uniform() < 0.5 ? 0.0f : static_cast<float>(rng.uniform());  // ReLU-like
  auto obf = measurement_keys(6, 4.0, false);
  const Triple t = obf->draw_triple(m, k, 1);
  std::vector<float> enc(a.size()), key(a.size());
  t.encrypt_x(a.data(), m, k, enc.data());
  t.encrypt_x(ones.data(), m, k, key.data());  // entry (i, j): l_i / q_j, the keys' signs
  const SignFactors s = nonnegative_sign_factors(enc.data(), m, k);
  EXPECT_EQ(s.inconsistent, 0);
  for (int64_t j = 0; j < k; ++j) {
    ASSERT_NE(s.col[j], 0) << "column " << j;
    EXPECT_EQ(s.col[j] * s.col[0], (key[j] > 0) == (key[0] > 0) ? 1 : -1) << "column " << j;
  }
  for (int64_t i = 0; i < m; ++i) {
    ASSERT_NE(s.row[i], 0) << "row " << i;
    EXPECT_EQ(s.row[i] * s.col[0], key[i * k] > 0 ? 1 : -1) << "row " << i;
  }
  // An operand with negative values breaks the pattern, and the count says so.
  for (auto& v : a) v = static_cast<float>(rng.uniform(-1, 1));
  t.encrypt_x(a.data(), m, k, enc.data());
  EXPECT_GT(nonnegative_sign_factors(enc.data(), m, k).inconsistent, m * k / 10);
}

// The column Gram matrix's signs: a sparse non-negative A under signed row
// and column scales, its rows mixed by orthogonal groups of 8 and a rank-4
// mask added: the sign propagation breaks down, the Gram matrix does not.
TEST(WeightRecovery, GramMatrixGivesColumnSignsThroughMixingAndMask) {
  const int64_t m = 800, k = 60;
  Rng rng(31);
  std::vector<float> a(m * k);
  for (auto& v : a) v = rng.uniform() < 0.5 ? 0.0f : static_cast<float>(rng.uniform());
  RowMix mix(8);
  KeyStream ks(secret_from_seed(32), 0);
  const Product& q = mix.apply(Product{0, "a", a.data(), nullptr, m, k, 1}, ks);
  AdditiveMask mask(4);
  const Product& qm = mask.apply_in_place(q, mix.mixed_a(0), ks);
  std::vector<float> cs(k), x(m * k);
  for (auto& c : cs) c = static_cast<float>((rng.uniform() < 0.5 ? -1 : 1) * std::exp(rng.uniform() * 2 - 1));
  for (int64_t i = 0; i < m; ++i) {
    const float r = static_cast<float>((rng.uniform() < 0.5 ? -1 : 1) * std::exp(rng.uniform() * 2 - 1));
    for (int64_t j = 0; j < k; ++j) x[i * k + j] = r * qm.a[i * k + j] * cs[j];
  }
  EXPECT_GT(nonnegative_sign_factors(x.data(), m, k).inconsistent, m * k / 100);
  const SignFactors g = gram_sign_factors(x.data(), m, k);
  int right = 0;
  for (int64_t j = 0; j < k; ++j) right += g.col[j] == (cs[j] > 0 ? 1 : -1);
  std::printf("column signs right: %d of %lld (up to one global sign)\n", std::max<int>(right, k - right),
              static_cast<long long>(k));
  EXPECT_GE(std::max<int>(right, k - right), k * 9 / 10);
}

TEST(WeightRecovery, MatchingRecoversTheKeysOfADriftedCopy) {
  Rng rng(13);
  const int64_t n = 64, k = 288;  // the shape of cnn's second convolution
  const std::vector<float> w0 = uniform_matrix(rng, n, k, 1 / std::sqrt(288.0));
  std::vector<float> w1 = w0;  // one small optimizer step later
  for (auto& v : w1) v += static_cast<float>(2e-4 * rng.normal());
  auto obf = measurement_keys(7, 4.0, false);
  const Traced e0 = encrypt_traced(obf->draw_triple(n, k, 1), w0.data(), n, k);
  const Traced e1 = encrypt_traced(obf->draw_triple(n, k, 1), w1.data(), n, k);
  const Matching m = match_permutations(double_centre_log_abs(e0.values.data(), n, k),
                                        double_centre_log_abs(e1.values.data(), n, k), n, k);
  ASSERT_EQ(m.rows.size(), size_t(n));
  ASSERT_EQ(m.cols.size(), size_t(k));
  int rows_ok = 0, cols_ok = 0;
  for (int64_t i = 0; i < n; ++i) rows_ok += e0.src_row[m.rows[i] * k] == e1.src_row[i * k];
  for (int64_t j = 0; j < k; ++j) cols_ok += e0.src_col[m.cols[j]] == e1.src_col[j];
  EXPECT_EQ(rows_ok, n);
  EXPECT_EQ(cols_ok, k);
  // Unrelated weights under the same procedure match only by chance.
  const std::vector<float> other = uniform_matrix(rng, n, k, 1 / std::sqrt(288.0));
  const Traced e2 = encrypt_traced(obf->draw_triple(n, k, 1), other.data(), n, k);
  const Matching u = match_permutations(double_centre_log_abs(e0.values.data(), n, k),
                                        double_centre_log_abs(e2.values.data(), n, k), n, k);
  int chance_ok = 0;
  for (int64_t i = 0; i < n; ++i) chance_ok += e0.src_row[u.rows[i] * k] == e2.src_row[i * k];
  EXPECT_LT(chance_ok, n / 4);
}

TEST(WeightRecovery, UnkeyedTranscriptIsRecoveredAndKeyedOneIsScored) {
  testutil::TempDir d("weights");
  WeightRecoveryConfig c;
  c.train = testutil::small_cnn_run("", d / "init.safetensors", 6);
  c.steps = 6;
  c.window = 3;
  c.seed = 3;
  const WeightRecoveryReport r = measure_weight_recovery(c);
  ASSERT_EQ(r.layers.size(), 2u);  // cnn offloads its second convolution and first linear layer
  ASSERT_EQ(r.offload_layers.size(), 2u);
  ASSERT_EQ(r.unshifted_layers.size(), 2u);
  ASSERT_EQ(r.col_mixed_layers.size(), 2u);
  ASSERT_EQ(r.models.size(), 7u);
  for (const auto* set : {&r.offload_layers, &r.layers})
    for (const auto& L : *set) {
      const bool identity = set == &r.offload_layers;
      std::printf("%s %s %lldx%lld: chained %.3f/%.3f, per step %.3f/%.3f, signed cols %.3f, units %.3f (right "
                  "%.3f), sign agreement %.3f, corr %.3f, err attacker %.3f, best %.3f, no signs %.3f, residual "
                  "%.1e\n",
                  identity ? "offload" : "tempo", L.layer.c_str(), static_cast<long long>(L.rows),
                  static_cast<long long>(L.cols), L.rows_chained, L.cols_chained, L.rows_matched_step,
                  L.cols_matched_step, L.cols_signed, L.units_signed, L.units_right, L.sign_agreement,
                  L.abs_correlation, L.rel_error_attacker, L.rel_error, L.rel_error_no_signs, L.centring_residual);
      // Double-centring removes the keys' scales exactly, with or without
      // keys, and the magnitudes come back either way.
      EXPECT_LT(L.centring_residual, 1e-4) << L.layer;
      EXPECT_GT(L.abs_correlation, 0.9) << L.layer;
      if (identity) {
        // Plaintext: the attack finds the identity order and every sign; what
        // remains is what it cannot know, one positive factor per row and
        // column (the rows' and columns' mean log-magnitudes).
        EXPECT_EQ(L.sign_inconsistent, 0) << L.layer << ": the operand is a ReLU output";
        EXPECT_EQ(L.rows_chained, 1.0) << L.layer;
        EXPECT_EQ(L.cols_chained, 1.0) << L.layer;
        EXPECT_EQ(L.sign_agreement, 1.0) << L.layer;
        EXPECT_GT(L.units_signed, 0.2) << L.layer;
        EXPECT_GE(L.units_right, 0.9) << L.layer;
      } else {
        // Under fresh keys per step the attack still lines the steps up (the
        // weights are not blinded beyond their keys). With the default mask
        // and row mixing the data operand is no longer non-negative, but its
        // column Gram matrix still gives the column signs; the output
        // gradient has no zeros left, so no unit gets a sign.
        EXPECT_GE(L.rows_chained, 0.95) << L.layer;
        EXPECT_GE(L.cols_chained, 0.95) << L.layer;
        EXPECT_GT(L.sign_inconsistent, 0) << L.layer << ": the operand is not a plain ReLU output";
        EXPECT_GE(L.sign_agreement, 0.8) << L.layer << ": entry signs, with the best sign per unit";
        EXPECT_LT(L.units_signed * L.units_right, 0.05) << L.layer;
      }
    }
  for (const auto& m : r.models) std::printf("  %s: accuracy %.4f\n", m.name.c_str(), m.accuracy);
  // Without the key shift, likewise: lined up across steps, no unit signs.
  for (size_t i = 0; i < 2; ++i) {
    const LayerRecovery& fresh = r.unshifted_layers[i];
    std::printf("--no-key-shift %s: units signed %.3f (right %.3f), entry signs %.3f, cols chained %.3f\n",
                fresh.layer.c_str(), fresh.units_signed, fresh.units_right, fresh.sign_agreement, fresh.cols_chained);
    EXPECT_LT(fresh.units_signed * fresh.units_right, 0.05) << fresh.layer;
    EXPECT_GE(fresh.cols_chained, 0.95) << fresh.layer << ": the forward ciphertexts are the same as with the shift";
  }
  // With the column mixing the weight sent is W·Gᵀ under fresh G: its
  // magnitudes no longer follow |W|, and its columns cannot be followed
  // from step to step (each step's are fresh mixtures).
  for (const auto& L : r.col_mixed_layers) {
    std::printf("--col-mix %d %s: corr %.3f, cols chained %.3f, err best %.3f\n", r.col_mix, L.layer.c_str(),
                L.abs_correlation, L.cols_chained, L.rel_error);
    EXPECT_LT(L.abs_correlation, 0.2) << L.layer;
    EXPECT_LT(L.cols_chained, 0.2) << L.layer;
    EXPECT_GT(L.rel_error, 0.9) << L.layer;
  }
}

}  // namespace
}  // namespace tempo
