// Blind source separation against the row mixing (eval/attacks/ica.h) and
// the per-row norms the key shift frees of the row scales
// (eval/attacks/key_shift.h), on cases with known answers.
#include <gtest/gtest.h>

#include <Eigen/Dense>
#include <cmath>
#include <random>
#include <vector>

#include "eval/attacks/ica.h"
#include "eval/attacks/key_shift.h"

namespace tempo {
namespace {

// n rows of t samples: ReLU(z − 1), z standard normal (sparse, about 16%
// non-zero, like a post-ReLU feature), or z itself.
std::vector<double> sources(int64_t n, int64_t t, bool sparse, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  std::vector<double> s(static_cast<size_t>(n * t));
  for (double& v : s) v = sparse ? std::max(0.0, g(rng) - 1.0) : g(rng);
  return s;
}

// Q·s for a Haar orthogonal Q (QR of a Gaussian matrix, signs fixed).
std::vector<double> mix(const std::vector<double>& s, int64_t n, int64_t t, uint64_t seed) {
  using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g;
  Mat z(n, n);
  for (int64_t i = 0; i < n * n; ++i) z.data()[i] = g(rng);
  Eigen::HouseholderQR<Mat> qr(z);
  Mat q = qr.householderQ();
  for (int64_t j = 0; j < n; ++j) q.col(j) *= qr.matrixQR()(j, j) < 0 ? -1.0 : 1.0;
  const Mat x = q * Eigen::Map<const Mat>(s.data(), n, t);
  return std::vector<double>(x.data(), x.data() + n * t);
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

TEST(FastIca, SeparatesSparseSourcesButNotGaussianOnes) {
  const int64_t n = 8, t = 2000;
  for (IcaOptions::Contrast contrast : {IcaOptions::Contrast::kLogcosh, IcaOptions::Contrast::kKurtosis}) {
    IcaOptions o;
    o.contrast = contrast;
    const std::vector<double> s = sources(n, t, true, 1), x = mix(s, n, t, 2);
    const IcaResult r = fast_ica(x.data(), n, t, o);
    EXPECT_TRUE(r.converged);
    ASSERT_EQ(r.components, n);
    const std::vector<double> best = best_correlations(s.data(), n, r.s.data(), n, t);
    const double received = mean(best_correlations(s.data(), n, x.data(), n, t));
    EXPECT_GT(mean(best), 0.95);
    for (double b : best) EXPECT_GT(b, 0.9);
    EXPECT_LT(received, 0.85);  // the mixing itself hides the sources
  }
  // Gaussian sources: any rotation of them is as likely, and ICA does no
  // better than the mixed rows as received.
  const std::vector<double> s = sources(n, t, false, 3), x = mix(s, n, t, 4);
  const IcaResult r = fast_ica(x.data(), n, t);
  const double ica = mean(best_correlations(s.data(), n, r.s.data(), r.components, t));
  const double received = mean(best_correlations(s.data(), n, x.data(), n, t));
  EXPECT_LT(ica, 0.85);
  EXPECT_LT(std::fabs(ica - received), 0.15);
}

TEST(FastIca, ConstantSourcesAreNotScored) {
  const std::vector<double> s = {1, 1, 1, 1, 0, 1, 0, 2};
  const std::vector<double> b = best_correlations(s.data(), 2, s.data(), 2, 4);
  EXPECT_TRUE(std::isnan(b[0]));
  EXPECT_DOUBLE_EQ(b[1], 1.0);
}

// A sparse operand (post-ReLU-like rows) and a weight.
struct Operand {
  int64_t m, k, n;
  std::vector<float> a, w;
};
Operand sparse_operand(int64_t m, int64_t k, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> g;
  Operand o{m, k, n, std::vector<float>(static_cast<size_t>(m * k)), std::vector<float>(static_cast<size_t>(n * k))};
  for (float& v : o.a) v = std::max(0.0f, g(rng) - 0.5f);
  for (float& v : o.w) v = g(rng);
  return o;
}

TEST(IcaAttack, BreaksRowMixingAlone) {
  const Operand o = sparse_operand(256, 512, 16, 5);
  const IcaRow r = ica_attack("test", 0, o.a.data(), o.w.data(), o.m, o.k, o.n, IcaCase{8, 0, 0}, 7, 4.0, 1000);
  EXPECT_EQ(r.groups, 32);
  EXPECT_GT(r.ica, 0.9);
  EXPECT_GT(r.ica_recovered, 0.8);
  EXPECT_LT(r.received, 0.8);
  EXPECT_LT(r.noise, 0.2);
  EXPECT_EQ(r.ica_vs_col_mixed, -1);
}

TEST(KeyShift, SharedRowKeyGivesRowNormsWithoutScales) {
  // Rows whose norms vary (as per-sample gradients do), no blinding but keys.
  const int64_t m = 512, k = 288, n = 64;  // as many columns as cnn's second convolution
  Operand o = sparse_operand(m, k, n, 9);
  std::mt19937_64 rng(10);
  std::normal_distribution<float> g;
  std::vector<float> dc(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    const float f = std::exp(0.7f * g(rng));
    for (int64_t j = 0; j < n; ++j) dc[static_cast<size_t>(i * n + j)] = f * g(rng);
  }
  KeyShiftCase c{true, 0, 0, 0};
  const KeyShiftRow on = key_shift_attack("test", 0, o.a.data(), o.w.data(), dc.data(), m, k, n, nullptr, c, 11, 4.0);
  c.shift = false;
  const KeyShiftRow off = key_shift_attack("test", 0, o.a.data(), o.w.data(), dc.data(), m, k, n, nullptr, c, 11, 4.0);
  EXPECT_GT(on.sent, 0.9);
  EXPECT_GT(on.sample, 0.9);
  EXPECT_GT(on.gradient, 0.8);
  EXPECT_LT(std::fabs(off.sample), 0.2);  // the pairing is lost
  EXPECT_LT(on.a_alone, 0.5);             // A' alone: the row scale is in the way
  EXPECT_EQ(on.error, -2);
}

TEST(KeyShift, Spearman) {
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3, 4}, {10, 20, 30, 40}), 1.0);
  EXPECT_DOUBLE_EQ(spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1.0);
  EXPECT_DOUBLE_EQ(spearman({1, 1, 1}, {1, 2, 3}), 0.0);
}

}  // namespace
}  // namespace tempo
