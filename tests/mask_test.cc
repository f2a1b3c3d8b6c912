// The additive mask (trusted/crypto/mask.h) and the low-rank-plus-sparse
// attack on it (trusted/privacy/low_rank.h), on cases with known answers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/blas.h"
#include "common/rng.h"
#include "trusted/crypto/keys.h"
#include "trusted/crypto/mask.h"
#include "trusted/privacy/low_rank.h"
#include "test_util.h"

namespace tempo {
namespace {

using testutil::normal_vec;

TEST(RocAuc, KnownValues) {
  EXPECT_DOUBLE_EQ(roc_auc({0.1, 0.2, 0.8, 0.9}, {0, 0, 1, 1}), 1.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.9, 0.8, 0.2, 0.1}, {0, 0, 1, 1}), 0.0);
  EXPECT_DOUBLE_EQ(roc_auc({0.5, 0.5, 0.5, 0.5}, {0, 1, 0, 1}), 0.5);
  EXPECT_DOUBLE_EQ(roc_auc({0.1, 0.3, 0.2, 0.4}, {0, 0, 1, 1}), 0.75);
  EXPECT_THROW(roc_auc({0.1, 0.2}, {1, 1}), std::exception);
}

// Principal component pursuit separates an exactly low-rank matrix from a
// sparse one with random support (its textbook case), also under row and
// column scales.
TEST(LowRank, SplitsALowRankPlusSparseMatrix) {
  const int64_t m = 400, k = 100, r = 4;
  auto u = normal_vec(m * r, 1), v = normal_vec(k * r, 2);
  std::vector<float> x(static_cast<size_t>(m * k));
  sgemm(false, true, m, k, r, 1.0f, u.data(), r, v.data(), r, 0.0f, x.data(), k);
  Rng rng(3);
  std::vector<uint8_t> clean(x.size());
  for (size_t e = 0; e < x.size(); ++e) {
    clean[e] = rng.uniform() >= 0.1;
    if (!clean[e]) x[e] += static_cast<float>((rng.uniform() < 0.5 ? -1 : 1) * (2 + 6 * rng.uniform()));
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) x[i * k + j] *= static_cast<float>((1 + i % 7) * (1 + j % 5) * 0.3);
  const SparseSplit sp = split_low_rank_sparse(x.data(), m, k, 60);
  std::vector<double> score(x.size());
  int64_t guessed = 0, right = 0, cleans = 0;
  for (size_t e = 0; e < x.size(); ++e) {
    score[e] = -std::fabs(sp.s[e]);
    const bool g = std::fabs(sp.s[e]) < 1e-3;
    guessed += g, right += g && clean[e], cleans += clean[e];
  }
  const double auc = roc_auc(score, clean);
  std::printf("synthetic split: rank %lld, AUC %.4f, precision %.4f, recall %.4f\n", static_cast<long long>(sp.rank),
              auc, double(right) / double(guessed), double(right) / double(cleans));
  EXPECT_GT(auc, 0.99);
  EXPECT_GT(double(right) / double(guessed), 0.98);
  EXPECT_GT(double(right) / double(cleans), 0.9);
}

TEST(KeyStream, ForksAreDistinctStretches) {
  Secret s = secret_from_seed(7);
  KeyStream a(s, 1), b(s, 1);
  KeyStream f0 = a.fork(0), f1 = a.fork(1), g0 = b.fork(0);
  int same01 = 0, same_main = 0;
  for (int i = 0; i < 1000; ++i) {
    const uint32_t x0 = f0.u32(), x1 = f1.u32(), y0 = g0.u32(), m0 = a.u32();
    EXPECT_EQ(x0, y0);  // a fork is a function of the stream and its index
    same01 += x0 == x1;
    same_main += x0 == m0;
  }
  EXPECT_LT(same01, 3);
  EXPECT_LT(same_main, 3);
}

TEST(AdditiveMask, RemovesItselfExactlyAndHidesZeros) {
  const int64_t m = 300, k = 90, n = 17;
  auto a = normal_vec(m * k, 4), w = normal_vec(n * k, 5), dc = normal_vec(m * n, 6);
  for (auto& x : a) x = std::max(x, 0.0f);
  Product p{3, "p", a.data(), w.data(), m, k, n};
  std::vector<float> c0(m * n), dw0(n * k);
  sgemm(false, true, m, n, k, 1.0f, a.data(), k, w.data(), k, 0.0f, c0.data(), n);
  sgemm(true, false, n, k, m, 1.0f, dc.data(), n, a.data(), k, 0.0f, dw0.data(), k);
  AdditiveMask mask(8);
  KeyStream ks(secret_from_seed(9), 0);
  const Product& q = mask.apply(p, ks);
  EXPECT_EQ(&mask.masked(p), &q);
  EXPECT_NE(q.a, p.a);
  double ss_a = 0, ss_r = 0;
  int64_t zeros = 0;
  for (int64_t e = 0; e < m * k; ++e) {
    zeros += q.a[e] == 0.0f;
    ss_a += double(a[e]) * a[e];
    ss_r += (double(q.a[e]) - a[e]) * (double(q.a[e]) - a[e]);
  }
  EXPECT_EQ(zeros, 0);
  EXPECT_NEAR(std::sqrt(ss_r / ss_a), 1.0, 0.2) << "the mask has A's rms";
  std::vector<float> c(m * n), dw(n * k);
  sgemm(false, true, m, n, k, 1.0f, q.a, k, w.data(), k, 0.0f, c.data(), n);
  sgemm(true, false, n, k, m, 1.0f, dc.data(), n, q.a, k, 0.0f, dw.data(), k);
  mask.unmask_forward(q, c.data());
  mask.unmask_weight(q, dc.data(), dw.data());
  auto rel = [](const std::vector<float>& x, const std::vector<float>& y) {
    double e = 0, mx = 0;
    for (size_t i = 0; i < x.size(); ++i) e = std::max(e, std::fabs(double(x[i]) - y[i])), mx = std::max(mx, std::fabs(double(y[i])));
    return e / mx;
  };
  EXPECT_LT(rel(c, c0), 1e-5);
  EXPECT_LT(rel(dw, dw0), 1e-5);
  // The same stream gives the same mask; another gives another.
  AdditiveMask again(8);
  KeyStream ks2(secret_from_seed(9), 0), ks3(secret_from_seed(9), 1);
  const float* same = again.apply(p, ks2).a;
  std::vector<float> first(same, same + m * k);
  EXPECT_EQ(0, std::memcmp(first.data(), q.a, first.size() * sizeof(float)));
  EXPECT_NE(0, std::memcmp(again.apply(p, ks3).a, first.data(), first.size() * sizeof(float)));
  // A product with a small side (a batch of rows) is masked in full rank.
  Product small{4, "small", a.data(), w.data(), 12, k, n};
  const Product& sq = mask.apply(small, ks);
  std::vector<double> r(12 * k);
  for (int64_t e = 0; e < 12 * k; ++e) r[e] = double(sq.a[e]) - a[e];
  // Rank of R (12 × 90): Gaussian elimination with partial pivoting.
  int rank = 0;
  for (int64_t col = 0; col < k && rank < 12; ++col) {
    int64_t piv = rank;
    for (int64_t i = rank; i < 12; ++i) if (std::fabs(r[i * k + col]) > std::fabs(r[piv * k + col])) piv = i;
    if (std::fabs(r[piv * k + col]) < 1e-6) continue;
    for (int64_t j = 0; j < k; ++j) std::swap(r[rank * k + j], r[piv * k + j]);
    for (int64_t i = rank + 1; i < 12; ++i) {
      const double f = r[i * k + col] / r[rank * k + col];
      for (int64_t j = 0; j < k; ++j) r[i * k + j] -= f * r[rank * k + j];
    }
    ++rank;
  }
  EXPECT_EQ(rank, 12);
  EXPECT_THROW(AdditiveMask(0), std::exception);
}

}  // namespace
}  // namespace tempo
