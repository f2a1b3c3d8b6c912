// MM-obfuscation: the identities of DESIGN.md §2 for the generic triple
// routine, key shift reuse, and Freivalds' check on honest and lying results.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <iterator>
#include <limits>
#include <random>
#include <stdexcept>

#include "common/blas.h"
#include "common/error.h"
#include "common/conv.h"
#include "common/parallel.h"
#include "trusted/obfuscation/block_mix.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/obfuscation/obfuscator.h"
#include "trusted/offload/verifier.h"

namespace tempo {
namespace {

std::vector<float> randn(int64_t n, std::mt19937_64& g) {
  std::normal_distribution<float> d;
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

// Z = X·Y, plain, row-major, in double.
std::vector<double> matmul(const float* x, const float* y, int64_t m, int64_t k, int64_t n) {
  std::vector<double> z(static_cast<size_t>(m * n), 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t t = 0; t < k; ++t)
      for (int64_t j = 0; j < n; ++j) z[static_cast<size_t>(i * n + j)] += double(x[i * k + t]) * y[t * n + j];
  return z;
}

std::vector<float> transpose(const std::vector<float>& a, int64_t r, int64_t c) {
  std::vector<float> t(a.size());
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) t[static_cast<size_t>(j * r + i)] = a[static_cast<size_t>(i * c + j)];
  return t;
}

// Worker side, in float: Z' = X'·Y'.
std::vector<float> fmul(const std::vector<float>& x, const std::vector<float>& y, int64_t m, int64_t k, int64_t n) {
  std::vector<float> z(static_cast<size_t>(m * n));
  sgemm(false, false, m, n, k, 1.0f, x.data(), k, y.data(), n, 0.0f, z.data(), n);
  return z;
}

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double rel) {
  double mx = 1e-30;
  for (double w : want) mx = std::max(mx, std::fabs(w));
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], rel * mx) << "at " << i;
}

struct Shape3 {
  int64_t m, k, n;
};
const Shape3 kShapes[] = {{1, 1, 1}, {1, 17, 5}, {7, 1, 3}, {13, 31, 1}, {29, 37, 41}, {64, 288, 32}, {3, 2, 97}};

class TripleTest : public ::testing::TestWithParam<Shape3> {};

TEST_P(TripleTest, ForwardInputAndWeightGradientIdentities) {
  const auto [m, k, n] = GetParam();
  std::mt19937_64 g(m * 1000 + k * 10 + n);
  Obfuscator obf(random_secret(), 4.0);
  const auto A = randn(m * k, g), B = randn(k * n, g), dC = randn(m * n, g);
  const auto W = transpose(B, k, n);  // n×k, as a linear layer stores it
  Triple f = obf.draw_triple(m, k, n);

  // Forward: A' = L·A·Q⁻¹, B' = Q·B·R⁻¹; C = L⁻¹·(A'·B')·R.
  std::vector<float> Ap(A.size()), Bp(B.size()), Wp(W.size()), C(static_cast<size_t>(m * n));
  f.encrypt_x(A.data(), m, k, Ap.data());
  f.encrypt_y(B.data(), k, n, Bp.data());
  f.encrypt_yt(W.data(), n, k, Wp.data());
  EXPECT_EQ(transpose(Bp, k, n), Wp) << "encrypt_yt must be the transpose of encrypt_y";
  f.decrypt(fmul(Ap, Bp, m, k, n).data(), m, n, C.data());
  expect_close(C, matmul(A.data(), B.data(), m, k, n), 1e-5);

  // Input gradient with key shift: the worker reuses B'ᵀ (= W').
  Triple t1 = f.shift_input(obf.draw(m));
  std::vector<float> G1(dC.size()), Wp1(W.size()), dA(static_cast<size_t>(m * k));
  t1.encrypt_x(dC.data(), m, n, G1.data());
  t1.encrypt_y(W.data(), n, k, Wp1.data());
  EXPECT_EQ(Wp1, Wp) << "the input-gradient triple must reproduce the forward B'ᵀ";
  t1.decrypt(fmul(G1, Wp, m, n, k).data(), m, k, dA.data());
  expect_close(dA, matmul(dC.data(), W.data(), m, n, k), 1e-5);

  // Weight gradient with key shift: the worker reuses A'.
  Triple t2 = f.shift_weight(obf.draw(n));
  const auto At = transpose(A, m, k);
  std::vector<float> Apt(At.size()), G2(dC.size()), dB(static_cast<size_t>(k * n)), dW(static_cast<size_t>(n * k));
  t2.encrypt_xt(A.data(), m, k, Apt.data());
  EXPECT_EQ(Apt, Ap) << "the weight-gradient triple must reproduce the forward A'";
  t2.encrypt_y(dC.data(), m, n, G2.data());
  const auto Z = fmul(transpose(Ap, m, k), G2, k, m, n);  // A'ᵀ·G2
  t2.decrypt(Z.data(), k, n, dB.data());
  expect_close(dB, matmul(At.data(), dC.data(), k, m, n), 1e-5);
  t2.decrypt_t(transpose(Z, k, n).data(), n, k, dW.data());
  EXPECT_EQ(dW, transpose(dB, k, n));
}

INSTANTIATE_TEST_SUITE_P(Shapes, TripleTest, ::testing::ValuesIn(kShapes));

TEST(Keys, ScaledPermAlgebra) {
  Obfuscator obf(random_secret(), 4.0);
  ScaledPerm s = obf.draw(11);
  std::vector<float> x(11 * 3);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i + 1);
  std::vector<float> y(x.size()), z(x.size());
  ScaledPerm id3 = ScaledPerm::identity(3);
  apply_keys(x.data(), 11, 3, s, id3, y.data());
  apply_keys(y.data(), 11, 3, s.inverse(), id3, z.data());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(z[i], x[i], 1e-5 * x[i]);
  // Scales are log-uniform in [1/4, 4] with both signs, and fresh per draw.
  int neg = 0;
  ScaledPerm big = obf.draw(4000);
  for (float v : big.scale) {
    EXPECT_GE(std::fabs(v), 0.25f - 1e-6f);
    EXPECT_LE(std::fabs(v), 4.0f + 1e-6f);
    neg += v < 0;
  }
  EXPECT_GT(neg, 1800);
  EXPECT_LT(neg, 2200);
  EXPECT_NE(obf.draw(4000).perm, big.perm);
}

TEST(Keys, DecryptionFusedWithCol2imEqualsTheTwoPasses) {
  Obfuscator obf(random_secret(), 4.0);
  const ConvGeometry g = ConvGeometry::make(3, 4, 9, 7, 5, 3, 2, 1);
  const int64_t M = g.n * g.positions(), K = g.cols();
  std::mt19937_64 gen(3);
  auto z = randn(M * K, gen);
  ScaledPerm r = obf.draw(M), c = obf.draw(K);
  std::vector<float> rows(static_cast<size_t>(M * K)), dx1(static_cast<size_t>(g.n * g.c * g.h * g.w)), dx2(dx1.size());
  apply_keys(z.data(), M, K, r, c, rows.data());
  col2im(g, rows.data(), dx1.data());
  std::vector<double> rv(static_cast<size_t>(K), 0.5), d1(static_cast<size_t>(M)), d2(static_cast<size_t>(M));
  apply_keys_rows(z.data(), M, K, r, c, 0, M, rows.data(), 1, rv.data(), d1.data());
  apply_keys_col2im(z.data(), r, c, g, dx2.data(), rv.data(), d2.data());
  EXPECT_EQ(dx1, dx2);
  EXPECT_EQ(d1, d2);
}

// A block's mixing (attention's batched products): M is orthogonal, so
// mixing then unmixing is the identity, on rows and on columns, in place
// for columns; every output mixes a whole group; b = 0 is the identity.
TEST(BlockMix, OrthogonalRoundTripsOnRowsAndColumns) {
  std::mt19937 gen(5);
  std::normal_distribution<float> nd;
  for (const int64_t d : {1, 5, 8, 17, 50, 64}) {
    for (const int b : {0, 2, 8, 16}) {  // 16: groups past 16 wide (the scalar path)
      SCOPED_TRACE("d " + std::to_string(d) + ", b " + std::to_string(b));
      const int64_t c = 7;
      std::vector<float> x(d * c), y(d * c), z(d * c);
      for (float& v : x) v = nd(gen);
      KeyStream ks(secret_from_seed(3), 9);
      BlockMix mx;
      mx.draw(ks, d, b);
      EXPECT_EQ(mx.identity(), b == 0);
      mx.rows(x.data(), c, y.data(), false);
      mx.rows(y.data(), c, z.data(), true);
      double nx = 0, ny = 0, err = 0;
      for (int64_t i = 0; i < d * c; ++i) {
        nx += double(x[i]) * x[i];
        ny += double(y[i]) * y[i];
        err = std::max(err, std::fabs(double(z[i]) - x[i]));
      }
      EXPECT_NEAR(ny, nx, 1e-4 * nx);
      EXPECT_LT(err, 1e-5);
      if (b > 0 && d >= 2) EXPECT_FALSE(std::equal(x.begin(), x.end(), y.begin()));
      // Columns: c rows of d entries, in place.
      std::vector<float> cx(c * d);
      for (float& v : cx) v = nd(gen);
      std::vector<float> cy = cx;
      mx.cols(cy.data(), c, cy.data(), false);
      double n0 = 0, n1 = 0;
      for (int64_t i = 0; i < c * d; ++i) {
        n0 += double(cx[i]) * cx[i];
        n1 += double(cy[i]) * cy[i];
      }
      EXPECT_NEAR(n1, n0, 1e-4 * n0);
      mx.cols(cy.data(), c, cy.data(), true);
      for (int64_t i = 0; i < c * d; ++i) EXPECT_NEAR(cy[i], cx[i], 1e-5);
    }
  }
  // A positive row-stochastic block: mixed rows are neither positive nor sum to 1.
  const int64_t t = 16;
  std::vector<float> p(t * t), q(t * t);
  for (int64_t i = 0; i < t * t; ++i) p[i] = 1.0f / t;
  KeyStream ks(secret_from_seed(4), 1);
  BlockMix mx;
  mx.draw(ks, t, 8);
  mx.rows(p.data(), t, q.data(), false);
  int64_t negative = 0;
  for (const float v : q) negative += v < 0;
  EXPECT_GT(negative, t);
  KeyStream bad(secret_from_seed(4), 2);
  EXPECT_THROW(mx.draw(bad, t, 1), Error);
  EXPECT_THROW(mx.draw(bad, 0, 8), Error);
}

TEST(Keys, DifferentSecretsGiveDifferentKeys) {
  Obfuscator a(random_secret(), 4.0), b(random_secret(), 4.0);
  EXPECT_NE(a.draw(64).perm, b.draw(64).perm);
}

// ---- Freivalds ---------------------------------------------------------------

struct Case {
  std::vector<float> a, w, c;  // c = a·wᵀ in float
  int64_t m, k, n;
};

Case make_case(int64_t m, int64_t k, int64_t n, std::mt19937_64& g, bool relu_input) {
  Case cs{randn(m * k, g), randn(n * k, g), {}, m, k, n};
  if (relu_input)
    for (auto& v : cs.a) v = std::max(v, 0.0f);
  cs.c.resize(static_cast<size_t>(m * n));
  sgemm(false, true, m, n, k, 1.0f, cs.a.data(), k, cs.w.data(), k, 0.0f, cs.c.data(), n);
  return cs;
}

TEST(Freivalds, NoFalseAlarmsOnHonestProducts) {
  std::mt19937_64 g(7);
  Verifier v(VerifyConfig{});
  Obfuscator obf(random_secret(), 4.0);
  int64_t products = 0;
  for (int rep = 0; rep < 300; ++rep) {
    const int64_t m = 1 + static_cast<int64_t>(g() % 130), k = 1 + static_cast<int64_t>(g() % 600),
                  n = 1 + static_cast<int64_t>(g() % 140);
    Case cs = make_case(m, k, n, g, rep % 2 == 0);
    // Through encryption and decryption, as in tempo mode.
    Triple t = obf.draw_triple(m, k, n);
    std::vector<float> ap(cs.a.size()), wp(cs.w.size()), cp(cs.c.size()), c(cs.c.size());
    t.encrypt_x(cs.a.data(), m, k, ap.data());
    t.encrypt_yt(cs.w.data(), n, k, wp.data());
    sgemm(false, true, m, n, k, 1.0f, ap.data(), k, wp.data(), k, 0.0f, cp.data(), n);
    t.decrypt(cp.data(), m, n, c.data());
    KeyStream ks = obf.stream();
    EXPECT_TRUE(v.check(c.data(), m, n, k, {cs.a.data(), false}, {cs.w.data(), true}, ks).empty())
        << m << "x" << k << "x" << n;
    ++products;
  }
  std::printf("honest products: %lld, worst |e|/bound·τ = %.3f (τ = %.1f)\n",
              static_cast<long long>(products), v.worst_ratio(), v.config().tolerance);
  EXPECT_LT(v.worst_ratio(), v.config().tolerance);
}

// A changed entry, zeros, NaN and Inf are caught with certainty (|e_i| ≥
// |δ| since |r_j| ≥ 1). A whole row perturbed with alternating signs is the
// adversarial case for a random check: e_i = δ·Σ ±r_j can nearly cancel.
// With r_j = ±(1 + u) that happens rarely (with ±1 entries it would happen
// about half of the time for an even number of columns); we require ≥ 98%.
TEST(Freivalds, CatchesEveryTamperKind) {
  std::mt19937_64 g(11);
  Verifier v(VerifyConfig{});
  Obfuscator obf(random_secret(), 4.0);
  int row_tampers = 0, row_caught = 0;
  for (int rep = 0; rep < 400; ++rep) {
    const int64_t m = 1 + static_cast<int64_t>(g() % 70), k = 1 + static_cast<int64_t>(g() % 400),
                  n = 2 + static_cast<int64_t>(g() % 70);
    Case cs = make_case(m, k, n, g, rep % 3 == 0);
    const int64_t i = static_cast<int64_t>(g() % static_cast<uint64_t>(m));
    const int64_t j = static_cast<int64_t>(g() % static_cast<uint64_t>(n));
    float mx = 0;
    for (int64_t c = 0; c < n; ++c) mx = std::max(mx, std::fabs(cs.c[static_cast<size_t>(i * n + c)]));
    if (mx == 0) continue;
    for (int kind = 0; kind < 5; ++kind) {
      auto c = cs.c;
      switch (kind) {
        case 0: c[static_cast<size_t>(i * n + j)] += 1e-2f * mx; break;
        case 1:
          for (int64_t t = 0; t < n; ++t) c[static_cast<size_t>(i * n + t)] += (t % 2 ? 1e-2f : -1e-2f) * mx;
          break;
        case 2: std::fill(c.begin(), c.end(), 0.0f); break;
        case 3: c[static_cast<size_t>(i * n + j)] = std::numeric_limits<float>::quiet_NaN(); break;
        case 4: c[static_cast<size_t>(i * n + j)] = std::numeric_limits<float>::infinity(); break;
      }
      KeyStream ks = obf.stream();
      auto bad = v.check(c.data(), m, n, k, {cs.a.data(), false}, {cs.w.data(), true}, ks);
      if (kind == 1) {
        ++row_tampers;
        row_caught += std::count(bad.begin(), bad.end(), i) == 1;
        continue;
      }
      EXPECT_FALSE(bad.empty()) << "tamper kind " << kind << " on " << m << "x" << k << "x" << n;
      if (kind != 2) {
        EXPECT_EQ(std::count(bad.begin(), bad.end(), i), 1);
      }
    }
  }
  std::printf("whole-row tamper caught in %d of %d products (one round)\n", row_caught, row_tampers);
  EXPECT_GE(row_caught, row_tampers * 98 / 100);
}

TEST(Freivalds, SubsetOfInnerIndices) {
  // dW partial over rows S of dC and A: c = dC[S]ᵀ·A[S].
  std::mt19937_64 g(5);
  const int64_t M = 50, N = 7, K = 9;
  auto dC = randn(M * N, g), A = randn(M * K, g);
  std::vector<int32_t> S = {3, 17, 5, 40, 41, 0, 22};
  std::vector<float> c(static_cast<size_t>(N * K), 0.0f);
  for (int32_t r : S)
    for (int64_t o = 0; o < N; ++o)
      for (int64_t t = 0; t < K; ++t) c[static_cast<size_t>(o * K + t)] += dC[static_cast<size_t>(r * N + o)] * A[static_cast<size_t>(r * K + t)];
  Verifier v(VerifyConfig{});
  Obfuscator obf(random_secret(), 4.0);
  KeyStream ks = obf.stream();
  EXPECT_TRUE(v.check(c.data(), N, K, static_cast<int64_t>(S.size()), {dC.data(), true}, {A.data(), false}, ks, S.data(), M).empty());
  c[5] += 0.5f;
  KeyStream ks2 = obf.stream();
  EXPECT_FALSE(v.check(c.data(), N, K, static_cast<int64_t>(S.size()), {dC.data(), true}, {A.data(), false}, ks2, S.data(), M).empty());
}

// Rounds share each pass over the operands; the outcome must be what the
// same rounds give one after another: a row fails iff it fails in a round.
// Two-entry lies (+δ, −δ) near the bound make the rounds disagree.
TEST(Freivalds, FusedRoundsEqualSuccessiveRounds) {
  std::mt19937_64 g(33);
  const int64_t M = 200, K = 64, N = 48;
  Case cs = make_case(M, K, N, g, true);
  std::vector<float> c = cs.c;
  for (int64_t i = 0; i < M; ++i) {  // lies of 1e-5 .. 1e-3 of the row's max on every row
    float mx = 0;
    for (int64_t j = 0; j < N; ++j) mx = std::max(mx, std::fabs(c[static_cast<size_t>(i * N + j)]));
    const float delta = mx * static_cast<float>(std::pow(10.0, -5.0 + 2.0 * static_cast<double>(i) / M));
    c[static_cast<size_t>(i * N + i % N)] += delta;
    c[static_cast<size_t>(i * N + (i * 7 + 3) % N)] -= delta;
  }
  VerifyConfig two;
  two.rounds = 2;
  VerifyConfig one;
  one.rounds = 1;
  int disagree = 0;
  for (const bool with_sums : {false, true}) {
    Verifier fused(two), single(one);
    KeyStream ks1(secret_from_seed(4), 9), ks2(secret_from_seed(4), 9);
    RowSums s2, s1a, s1b;
    const auto both = fused.check(c.data(), M, N, K, {cs.a.data(), false}, {cs.w.data(), true}, ks1, nullptr, 0,
                                  with_sums ? &s2 : nullptr);
    const auto first = single.check(c.data(), M, N, K, {cs.a.data(), false}, {cs.w.data(), true}, ks2, nullptr, 0,
                                    with_sums ? &s1a : nullptr);
    const auto second = single.check(c.data(), M, N, K, {cs.a.data(), false}, {cs.w.data(), true}, ks2, nullptr, 0,
                                     with_sums ? &s1b : nullptr);
    std::vector<int64_t> either;
    std::set_union(first.begin(), first.end(), second.begin(), second.end(), std::back_inserter(either));
    EXPECT_EQ(both, either);
    EXPECT_GT(either.size(), 0u);
    EXPECT_LT(either.size(), static_cast<size_t>(M));
    std::vector<int64_t> common;
    std::set_intersection(first.begin(), first.end(), second.begin(), second.end(), std::back_inserter(common));
    disagree += static_cast<int>(either.size() - common.size());
    if (with_sums) {  // the forward sums of both rounds, as the rounds one after another drew them
      EXPECT_EQ(std::vector<double>(s2.r.begin(), s2.r.begin() + K), s1a.r);
      EXPECT_EQ(std::vector<double>(s2.r.begin() + K, s2.r.end()), s1b.r);
      EXPECT_EQ(std::vector<double>(s2.ar.begin(), s2.ar.begin() + M), s1a.ar);
      EXPECT_EQ(std::vector<double>(s2.ar.begin() + M, s2.ar.end()), s1b.ar);
    }
  }
  EXPECT_GT(disagree, 0) << "some rows must fail one round and pass the other, or the test shows nothing";
}

TEST(Freivalds, WeightGradientFromForwardRowSums) {
  // The forward check of C = A·Wᵀ leaves row sums of A with which
  // dW = dCᵀ·A is checked over any subset of rows without reading A.
  std::mt19937_64 g(21);
  const int64_t M = 120, K = 37, N = 9;
  Case cs = make_case(M, K, N, g, true);
  auto dC = randn(M * N, g);
  Verifier v(VerifyConfig{});
  Obfuscator obf(random_secret(), 4.0);
  RowSums sums;
  KeyStream ks = obf.stream();
  ASSERT_TRUE(v.check(cs.c.data(), M, N, K, {cs.a.data(), false}, {cs.w.data(), true}, ks, nullptr, 0, &sums).empty());
  std::vector<int32_t> S;
  for (int32_t r = 0; r < M; r += 3) S.push_back(r);
  std::vector<float> dw(static_cast<size_t>(N * K), 0.0f);
  for (int32_t r : S)
    for (int64_t o = 0; o < N; ++o)
      for (int64_t t = 0; t < K; ++t)
        dw[static_cast<size_t>(o * K + t)] += dC[static_cast<size_t>(r * N + o)] * cs.a[static_cast<size_t>(r * K + t)];
  EXPECT_TRUE(v.check_weight(dw.data(), N, K, dC.data(), sums, S.data(), static_cast<int64_t>(S.size())));
  float mx = 0;
  for (int64_t t = 0; t < K; ++t) mx = std::max(mx, std::fabs(dw[static_cast<size_t>(4 * K + t)]));
  dw[static_cast<size_t>(4 * K + 11)] += 1e-2f * mx;
  EXPECT_FALSE(v.check_weight(dw.data(), N, K, dC.data(), sums, S.data(), static_cast<int64_t>(S.size())));
}

// A ReLU-input product (make_case) with an obfuscator and a triple of
// its shape.
struct Keyed {
  Case cs;
  Obfuscator obf{random_secret(), 4.0};
  Triple t;
  Keyed(int64_t m, int64_t k, int64_t n, uint64_t seed) : cs(make(m, k, n, seed)), t(obf.draw_triple(m, k, n)) {}
  static Case make(int64_t m, int64_t k, int64_t n, uint64_t seed) {
    std::mt19937_64 g(seed);
    return make_case(m, k, n, g, true);
  }
};

TEST(Freivalds, RowsProjectedTogetherEqualOneAtATime) {
  // project_rows (A's rows a group at a time, as the blinding's pass hands
  // them; two at a time inside) gives the row sums and the verdicts of
  // project_row, bit for bit, with one to three rounds, for row lengths
  // with and without a tail, groups of 1 to 8 rows in a scattered order.
  for (const int64_t K : {45, 64})
    for (int rounds : {1, 2, 3}) {
      SCOPED_TRACE("k " + std::to_string(K) + ", rounds " + std::to_string(rounds));
      const int64_t M = 97, N = 13;
      Keyed x(M, K, N, 30);
      std::vector<float> c = x.cs.c;
      c[static_cast<size_t>(40 * N + 5)] += 0.05f;  // a lie, to be caught by both
      VerifyConfig vc;
      vc.rounds = rounds;
      Verifier one(vc), many(vc);
      RowSums s1, s2;
      KeyStream ks = x.obf.stream(), ks2 = ks;
      one.begin(M, N, K, {x.cs.w.data(), true}, ks, nullptr, 0, &s1);
      many.begin(M, N, K, {x.cs.w.data(), true}, ks2, nullptr, 0, &s2);
      for (int64_t i = 0; i < M; ++i) one.project_row(i, x.cs.a.data() + i * K);
      std::vector<int64_t> order(static_cast<size_t>(M));
      for (int64_t i = 0; i < M; ++i) order[static_cast<size_t>(i)] = (i * 37) % M;
      int64_t at = 0, size = 1;
      while (at < M) {
        const int64_t n = std::min(size, M - at);
        const float* rows[8];
        for (int64_t t = 0; t < n; ++t) rows[t] = x.cs.a.data() + order[static_cast<size_t>(at + t)] * K;
        many.project_rows(order.data() + at, rows, n);
        at += n;
        size = size % 8 + 1;
      }
      const auto want = one.end(c.data());
      EXPECT_EQ(want, std::vector<int64_t>{40});
      EXPECT_EQ(many.end(c.data()), want);
      EXPECT_EQ(s2.ar, s1.ar);
      EXPECT_EQ(s2.aa, s1.aa);
    }
}

TEST(Freivalds, ForwardCheckTakenDuringEncryptionEqualsCheck) {
  // begin(), A's rows projected as the key application reads them (two
  // row shares, as for two workers), end(): the same vectors, products,
  // row sums and verdicts as check(), bit for bit; a lie is caught, and a
  // row that was never projected fails.
  const int64_t M = 97, K = 45, N = 13;
  Keyed x(M, K, N, 29);
  std::vector<float> ap(x.cs.a.size());
  const int before = num_threads();
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (int lie = 0; lie < 2; ++lie) {
      SCOPED_TRACE("threads " + std::to_string(threads) + ", lie " + std::to_string(lie));
      std::vector<float> c = x.cs.c;
      if (lie) c[static_cast<size_t>(40 * N + 5)] += 0.05f;
      KeyStream ks = x.obf.stream(), ks2 = ks;
      Verifier whole(VerifyConfig{}), fused(VerifyConfig{});
      RowSums s1, s2;
      std::vector<double> r1, r2;
      whole.draw_vectors(ks, N, r1);
      fused.draw_vectors(ks2, N, r2);
      const auto want = whole.check(c.data(), M, N, K, {x.cs.a.data(), false}, {x.cs.w.data(), true}, ks, nullptr, 0, &s1, &r1);
      fused.begin(M, N, K, {x.cs.w.data(), true}, ks2, nullptr, 0, &s2, &r2);
      const RowVisit visit = [&](int64_t i, const float* row) { fused.project_row(i, row); };
      x.t.encrypt_x(x.cs.a.data(), M, K, ap.data(), 0, 40, 1, &visit);
      x.t.encrypt_x(x.cs.a.data(), M, K, ap.data() + 40 * K, 40, M, 1, &visit);
      EXPECT_EQ(fused.end(c.data()), want);
      EXPECT_EQ(want.empty(), lie == 0);
      EXPECT_EQ(s2.r, s1.r);
      EXPECT_EQ(s2.ar, s1.ar);
      EXPECT_EQ(s2.aa, s1.aa);
    }
  }
  set_num_threads(before);
  Verifier v(VerifyConfig{});
  KeyStream ks = x.obf.stream();
  v.begin(M, N, K, {x.cs.w.data(), true}, ks);
  for (int64_t i = 0; i < M; ++i)
    if (i != 17) v.project_row(i, x.cs.a.data() + i * K);
  EXPECT_EQ(v.end(x.cs.c.data()), std::vector<int64_t>{17});
}

// im2col and col2im from their definitions, element by element: fn(at,
// from) for every entry of the im2col matrix (index `at`) that lies on the
// image (index `from`).
template <typename Fn>
void for_each_patch_entry(const ConvGeometry& g, Fn&& fn) {
  const int64_t K = g.cols();
  for (int64_t i = 0; i < g.n; ++i)
    for (int64_t oy = 0; oy < g.oh; ++oy)
      for (int64_t ox = 0; ox < g.ow; ++ox)
        for (int64_t c = 0; c < g.c; ++c)
          for (int64_t ky = 0; ky < g.k; ++ky)
            for (int64_t kx = 0; kx < g.k; ++kx) {
              const int64_t iy = oy * g.s - g.p + ky, ix = ox * g.s - g.p + kx;
              if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
              fn(static_cast<size_t>(((i * g.oh + oy) * g.ow + ox) * K + (c * g.k + ky) * g.k + kx),
                 static_cast<size_t>(((i * g.c + c) * g.h + iy) * g.w + ix));
            }
}

std::vector<float> naive_im2col(const ConvGeometry& g, const std::vector<float>& x) {
  std::vector<float> cols(static_cast<size_t>(g.n * g.positions() * g.cols()), 0.0f);
  for_each_patch_entry(g, [&](size_t at, size_t from) { cols[at] = x[from]; });
  return cols;
}

std::vector<double> naive_col2im(const ConvGeometry& g, const std::vector<float>& cols) {
  std::vector<double> dx(static_cast<size_t>(g.n * g.c * g.h * g.w), 0.0);
  for_each_patch_entry(g, [&](size_t at, size_t from) { dx[from] += cols[at]; });
  return dx;
}

TEST(Conv, Im2colAndCol2imFollowTheirDefinitions) {
  // im2col (and im2col_sumsq, which also returns Σ cols², the mask's
  // scale, the same for any number of threads) writes exactly the
  // definition's entries, and col2im sums its adjoint, on shapes with
  // borders, strides 1 and 2, padding 0 to 3, kernels 1 to 7 and column
  // counts that are not multiples of 16 (the vector paths' tails; col2im's
  // run over channels, so 20 and 36 channels give whole vectors and tails).
  std::mt19937_64 g(31);
  const int before = num_threads();
  for (const ConvGeometry geo :
       {ConvGeometry::make(3, 5, 9, 7, 4, 3, 1, 1), ConvGeometry::make(2, 3, 8, 8, 4, 3, 2, 1),
        ConvGeometry::make(1, 2, 5, 5, 2, 1, 1, 0), ConvGeometry::make(2, 3, 12, 11, 4, 7, 2, 3),
        ConvGeometry::make(2, 16, 4, 4, 4, 3, 1, 1), ConvGeometry::make(1, 4, 6, 6, 2, 2, 2, 0),
        ConvGeometry::make(2, 20, 5, 6, 4, 3, 1, 1), ConvGeometry::make(2, 36, 4, 5, 8, 1, 2, 0)}) {
    SCOPED_TRACE(std::to_string(geo.c) + " channels of " + std::to_string(geo.h) + "x" + std::to_string(geo.w) +
                 ", k " + std::to_string(geo.k) + ", s " + std::to_string(geo.s) + ", p " + std::to_string(geo.p));
    auto x = randn(geo.n * geo.c * geo.h * geo.w, g);
    const auto want = naive_im2col(geo, x);
    std::vector<float> plain(want.size(), -1.0f), fused(want.size(), -1.0f);
    im2col(geo, x.data(), plain.data());
    EXPECT_EQ(plain, want);
    double sq = 0;
    for (float v : want) sq += static_cast<double>(v) * v;
    const auto dcols = randn(static_cast<int64_t>(want.size()), g);
    const auto dx_want = naive_col2im(geo, dcols);
    double first = 0;
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      const double got = im2col_sumsq(geo, x.data(), fused.data());
      EXPECT_EQ(fused, want);
      EXPECT_NEAR(got, sq, 1e-12 * sq);
      if (threads == 1) first = got;
      else EXPECT_EQ(got, first);
      std::vector<float> dx(dx_want.size(), 7.0f);  // col2im overwrites
      col2im(geo, dcols.data(), dx.data());
      for (size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(dx[i], dx_want[i], 1e-5 * (1 + std::fabs(dx_want[i]))) << i;
    }
  }
  set_num_threads(before);
}

// The layout changes around an offloaded convolution, element by element,
// on shapes whose sides are and are not multiples of the 16 × 16 tiles.
TEST(Conv, LayoutChangesFollowTheirDefinitions) {
  std::mt19937_64 g(32);
  for (const auto& [n, P, O] : std::vector<std::array<int64_t, 3>>{{2, 37, 20}, {3, 32, 48}, {1, 5, 3}, {2, 64, 16}}) {
    SCOPED_TRACE(std::to_string(P) + " positions, " + std::to_string(O) + " channels");
    const auto rows = randn(n * P * O, g), bias = randn(O, g), nchw = randn(n * O * P, g);
    std::vector<float> out(rows.size(), 7.0f), plain(rows.size(), 7.0f), back(rows.size(), 7.0f);
    rows_to_nchw(rows.data(), bias.data(), n, P, O, out.data());
    rows_to_nchw(rows.data(), nullptr, n, P, O, plain.data());
    nchw_to_rows(nchw.data(), n, P, O, back.data());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t o = 0; o < O; ++o)
        for (int64_t p = 0; p < P; ++p) {
          const size_t r = static_cast<size_t>((i * P + p) * O + o), c = static_cast<size_t>((i * O + o) * P + p);
          ASSERT_EQ(out[c], rows[r] + bias[static_cast<size_t>(o)]);
          ASSERT_EQ(plain[c], rows[r]);
          ASSERT_EQ(back[r], nchw[c]);
        }
  }
}

TEST(Freivalds, ProductsTakenDuringDecryption) {
  // c·r of every round computed in the decryption pass (plain, and fused
  // with col2im) gives the same products and the same verdicts.
  std::mt19937_64 g(23);
  const int64_t M = 50, K = 64, N = 33;
  Case cs = make_case(M, K, N, g, false);
  Obfuscator obf(random_secret(), 4.0);
  Triple t = obf.draw_triple(M, K, N);
  std::vector<float> ap(cs.a.size()), wp(cs.w.size()), cp(cs.c.size()), c(cs.c.size());
  t.encrypt_x(cs.a.data(), M, K, ap.data());
  t.encrypt_yt(cs.w.data(), N, K, wp.data());
  sgemm(false, true, M, N, K, 1.0f, ap.data(), K, wp.data(), K, 0.0f, cp.data(), N);
  for (int rounds : {1, 2, 3}) {
    SCOPED_TRACE("rounds " + std::to_string(rounds));
    VerifyConfig vc;
    vc.rounds = rounds;
    Verifier v(vc);
    std::vector<float> lying = cp;
    for (int lie = 0; lie < 2; ++lie) {
      if (lie) lying[static_cast<size_t>(7 * N + 3)] += 0.5f;
      KeyStream ks = obf.stream();
      std::vector<double> r, cr(static_cast<size_t>(rounds * M));
      v.draw_vectors(ks, N, r);
      ASSERT_EQ(r.size(), static_cast<size_t>(rounds * N));
      t.decrypt(lying.data(), M, N, c.data(), 1, r.data(), cr.data(), rounds);
      for (int q = 0; q < rounds; ++q)
        for (int64_t i = 0; i < M; ++i) {
          double want = 0;
          for (int64_t j = 0; j < N; ++j) want += static_cast<double>(c[static_cast<size_t>(i * N + j)]) * r[static_cast<size_t>(q * N + j)];
          EXPECT_NEAR(cr[static_cast<size_t>(q * M + i)], want, 1e-9 * (1 + std::fabs(want)));
        }
      auto bad = v.check(c.data(), M, N, K, {cs.a.data(), false}, {cs.w.data(), true}, ks, nullptr, 0, nullptr, &r,
                         cr.data());
      EXPECT_EQ(bad.empty(), lie == 0);
    }
    std::vector<double> wrong(static_cast<size_t>(N));
    KeyStream ks = obf.stream();
    if (rounds > 1) {
      EXPECT_THROW(v.check(c.data(), M, N, K, {cs.a.data(), false}, {cs.w.data(), true}, ks, nullptr, 0, nullptr,
                           &wrong, nullptr),
                   std::logic_error);
    }
  }
  // Fused with col2im: the products are those of the rows before they are
  // summed into the image.
  const ConvGeometry geo = ConvGeometry::make(2, 4, 5, 5, 0, 3, 1, 1);
  const int64_t rows = geo.n * geo.positions(), cols = geo.cols();
  Triple tc = obf.draw_triple(rows, 8, cols);
  std::vector<float> z(static_cast<size_t>(rows * cols));
  for (float& f : z) f = static_cast<float>(std::normal_distribution<double>()(g));
  std::vector<float> dense(z.size()), img(static_cast<size_t>(geo.n * geo.c * geo.h * geo.w));
  tc.decrypt(z.data(), rows, cols, dense.data());
  VerifyConfig vc;
  vc.rounds = 3;
  Verifier v(vc);
  KeyStream ks = obf.stream();
  std::vector<double> r, cr(static_cast<size_t>(3 * rows));
  v.draw_vectors(ks, cols, r);
  apply_keys_col2im(z.data(), tc.left.inverse(), tc.right.transpose(), geo, img.data(), r.data(), cr.data(), 3);
  for (int q = 0; q < 3; ++q)
    for (int64_t i = 0; i < rows; ++i) {
      double want = 0;
      for (int64_t j = 0; j < cols; ++j) want += static_cast<double>(dense[static_cast<size_t>(i * cols + j)]) * r[static_cast<size_t>(q * cols + j)];
      EXPECT_NEAR(cr[static_cast<size_t>(q * rows + i)], want, 1e-9 * (1 + std::fabs(want)));
    }
}

}  // namespace
}  // namespace tempo

namespace tempo {
namespace {

// Why `--tf32` is refused while results are checked: a bound wide enough
// for TF32's rounding (u = 2⁻¹¹) lets a single entry off by half its row's
// largest value through, at cnn's fully connected shape, while fp32's bound
// catches a 1e-2 lie there every time.
TEST(Freivalds, Tf32BoundAdmitsLargeLies) {
  std::mt19937_64 g(5);
  const int64_t m = 64, k = 3136, n = 128;
  Case cs = make_case(m, k, n, g, true);
  VerifyConfig tf32;
  tf32.unit_roundoff = 0x1.0p-11;
  Verifier wide(tf32), fp32(VerifyConfig{});
  KeyStream ks(secret_from_seed(8), 0);
  int passed_wide = 0, caught_fp32 = 0;
  const int trials = 50;
  for (int t = 0; t < trials; ++t) {
    const int64_t i = static_cast<int64_t>(g() % m), j = static_cast<int64_t>(g() % n);
    float row_max = 0;
    for (int64_t c = 0; c < n; ++c) row_max = std::max(row_max, std::fabs(cs.c[static_cast<size_t>(i * n + c)]));
    std::vector<float> lie = cs.c;
    lie[static_cast<size_t>(i * n + j)] += 0.5f * row_max;
    passed_wide += wide.check(lie.data(), m, n, k, {cs.a.data(), false}, {cs.w.data(), true}, ks).empty();
    lie = cs.c;
    lie[static_cast<size_t>(i * n + j)] += 1e-2f * row_max;
    caught_fp32 += !fp32.check(lie.data(), m, n, k, {cs.a.data(), false}, {cs.w.data(), true}, ks).empty();
  }
  std::printf("TF32 bound: %d of %d lies of 0.5·max|row| pass; fp32 bound: %d of %d lies of 1e-2 caught\n",
              passed_wide, trials, caught_fp32, trials);
  EXPECT_EQ(passed_wide, trials);
  EXPECT_EQ(caught_fp32, trials);
}

}  // namespace
}  // namespace tempo
