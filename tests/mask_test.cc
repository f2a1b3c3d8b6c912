// The additive mask (trusted/obfuscation/mask.h) and the low-rank-plus-sparse
// attack on it (eval/attacks/low_rank.h), on cases with known answers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/blas.h"
#include "common/conv.h"
#include "common/parallel.h"
#include "common/error.h"
#include "trusted/rng.h"
#include "trusted/obfuscation/blinding.h"
#include "trusted/obfuscation/col_mix.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/obfuscation/mask.h"
#include "trusted/obfuscation/orthogonal.h"
#include "trusted/obfuscation/row_mix.h"
#include "eval/attacks/low_rank.h"
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

TEST(KeyStream, FillGivesTheSameWordsAsOneAtATime) {
  // Lengths that start and end inside the buffered blocks, span whole
  // blocks, and cross from the buffer into direct generation.
  for (size_t head : {0, 1, 7, 255, 256, 300}) {
    KeyStream a(secret_from_seed(3), 5), b(secret_from_seed(3), 5);
    for (size_t i = 0; i < head; ++i) ASSERT_EQ(a.u32(), b.u32());
    for (size_t n : {0, 1, 15, 16, 17, 1000, 4096, 5003}) {
      std::vector<uint32_t> got(n + 1, 0xdeadbeef);
      a.fill(got.data(), n);
      for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], b.u32()) << "head " << head << " n " << n << " i " << i;
      EXPECT_EQ(got[n], 0xdeadbeefu);  // nothing written past n
      ASSERT_EQ(a.u32(), b.u32());     // and the stream goes on in step
    }
  }
}

// A ReLU-like operand A (m×k), weights W (n×k), an output gradient dC and
// the products the mask must leave: C = A·Wᵀ and dW = dCᵀ·A.
struct MaskCase {
  std::vector<float> a, w, dc, c0, dw0;
  Product p;
  MaskCase(int64_t m, int64_t k, int64_t n, uint64_t seed, int id)
      : a(normal_vec(m * k, seed)), w(normal_vec(n * k, seed + 1)), dc(normal_vec(m * n, seed + 2)), c0(m * n),
        dw0(n * k) {
    for (auto& x : a) x = std::max(x, 0.0f);
    p = Product{id, "p", a.data(), w.data(), m, k, n};
    sgemm(false, true, m, n, k, 1.0f, a.data(), k, w.data(), k, 0.0f, c0.data(), n);
    sgemm(true, false, n, k, m, 1.0f, dc.data(), n, a.data(), k, 0.0f, dw0.data(), k);
  }
};

// max |x − y| / max |y|
double max_rel(const std::vector<float>& x, const std::vector<float>& y) {
  double e = 0, mx = 0;
  for (size_t i = 0; i < x.size(); ++i) e = std::max(e, std::fabs(double(x[i]) - y[i])), mx = std::max(mx, std::fabs(double(y[i])));
  return e / mx;
}

// The weight gradient's correction sums dCᵀ·U over row ranges fixed in
// advance, on every thread: it still removes the mask, and gives the same
// bits on 1 and 2 threads.
TEST(AdditiveMask, WeightCorrectionInPiecesIsExactAndThreadIndependent) {
  const int64_t m = 5000, k = 40, n = 12;  // m/256 > 16: the full 16 pieces, of unequal sizes
  MaskCase mc(m, k, n, 6, 2);
  const int before = num_threads();
  std::vector<std::vector<float>> got;
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    AdditiveMask mask(8);
    KeyStream ks(secret_from_seed(13), 0);
    const Product& q = mask.apply(mc.p, ks);
    std::vector<float> dw(n * k), correction(n * k, 0.0f);
    sgemm(true, false, n, k, m, 1.0f, mc.dc.data(), n, q.a, k, 0.0f, dw.data(), k);
    mask.unmask_weight(q, mc.dc.data(), dw.data());
    EXPECT_LT(max_rel(dw, mc.dw0), 1e-5) << threads << " threads";
    mask.unmask_weight(q, mc.dc.data(), correction.data());  // −(dCᵀ·U)·Vᵀ alone
    got.push_back(correction);
  }
  set_num_threads(before);
  EXPECT_EQ(0, std::memcmp(got[0].data(), got[1].data(), got[0].size() * sizeof(float)));
}

// The blinding's part timings (what `tempo bench` prints): each part that
// ran is counted, the mask's draw and product within the forward blinding,
// and taking them resets them.
TEST(Blinding, TimesItsPartsAndResetsWhenTaken) {
  const int64_t m = 4096, k = 72, n = 16;
  MaskCase mc(m, k, n, 8, 0);
  Blinding b(8, 16, 1.0f, 8);
  Obfuscator obf(secret_from_seed(4), 4.0);
  const Product& q = b.apply(mc.p, obf);
  std::vector<float> c(m * n), c_sent(m * n), da(m * k), da_sent(m * k, 1.0f), dw(n * k, 1.0f);
  sgemm(false, true, m, n, k, 1.0f, q.a, k, q.w, k, 0.0f, c_sent.data(), n);
  const float* g = b.gradient(q, mc.dc.data());
  b.finish_forward(q, c_sent.data(), c.data());
  b.finish_input(q, da_sent.data(), da.data());
  b.finish_weight(q, g, dw.data());
  const BlindingSeconds t = b.take_seconds();
  for (double part : {t.forward, t.mask_draw, t.mask_product, t.result, t.weight, t.gradient, t.input})
    EXPECT_GT(part, 0.0);
  EXPECT_GE(t.forward, t.mask_draw + t.mask_product);
  EXPECT_LT(max_rel(c, mc.c0), 1e-4) << "the timed path still undoes the blinding";
  const BlindingSeconds z = b.take_seconds();
  for (double part : {z.forward, z.mask_draw, z.mask_product, z.result, z.weight, z.gradient, z.input})
    EXPECT_EQ(part, 0.0);
}

// The forward encryption fused into the blinding's pass (prepare, then
// encrypt_x_from on pass with A not written) gives the ciphertexts of
// apply() then encrypt_x, bit for bit, share by share, and shows the check
// the same rows; materialise() then writes A as apply() did. Small and
// large operands (the pass streams from 8 MiB), with and without the mask
// and the column mixing.
TEST(Blinding, FusedEncryptionEqualsApplyThenEncrypt) {
  struct Shape {
    int64_t m, k;
  };
  for (const Shape sh : {Shape{301, 40}, Shape{4096, 576}})
    for (const bool full : {true, false}) {
      const int64_t m = sh.m, k = sh.k, n = 16;
      SCOPED_TRACE("m " + std::to_string(m) + ", k " + std::to_string(k) + (full ? ", mask and column mixing" : ""));
      MaskCase mc(m, k, n, 17, 3);
      Blinding b1(8, full ? 16 : 0, 1.0f, full ? 8 : 0), b2(8, full ? 16 : 0, 1.0f, full ? 8 : 0);
      Obfuscator o1(secret_from_seed(21), 4.0), o2(secret_from_seed(21), 4.0);
      const std::vector<std::pair<int64_t, int64_t>> shares{{0, m / 3}, {m / 3, m / 3}, {m / 3, m}};
      // What the check sees of each row: its sum and sum of squares, in double.
      std::vector<double> seen1(static_cast<size_t>(2 * m)), seen2(static_cast<size_t>(2 * m));
      auto visit_into = [k](std::vector<double>& seen) {
        return RowVisit([&seen, k](int64_t j, const float* row) {
          double s = 0, q = 0;
          for (int64_t t = 0; t < k; ++t) s += row[t], q += double{row[t]} * row[t];
          seen[static_cast<size_t>(2 * j)] += s;
          seen[static_cast<size_t>(2 * j + 1)] += q;
        });
      };
      const RowVisit v1 = visit_into(seen1), v2 = visit_into(seen2);
      const RowsVisit v2_rows = [&v2](const int64_t* index, const float* const* rows, int64_t n) {
        for (int64_t t = 0; t < n; ++t) v2(index[t], rows[t]);
      };
      const Product& q1 = b1.apply(mc.p, o1);
      const Triple t1 = o1.draw_triple(m, k, n);
      std::vector<CipherMatrix> c1;
      for (const auto& [r0, r1] : shares) c1.push_back(o1.encrypt_x(t1, q1.a, m, k, r0, r1, 1, &v1));
      const Product& q2 = b2.prepare(mc.p, o2);
      ASSERT_TRUE(b2.pending());
      const Triple t2 = o2.draw_triple(m, k, n);
      const std::vector<CipherMatrix> c2 =
          o2.encrypt_x_from(t2, m, k, shares, [&](const RowsVisit& sink) { b2.pass(&sink, false); }, &v2_rows);
      ASSERT_FALSE(b2.pending());
      ASSERT_EQ(c1.size(), c2.size());
      for (size_t i = 0; i < c1.size(); ++i) {
        ASSERT_EQ(c1[i].rows(), c2[i].rows());
        ASSERT_EQ(c1[i].cols(), c2[i].cols());
        EXPECT_EQ(0, std::memcmp(c1[i].matrix().data(), c2[i].matrix().data(),
                                 static_cast<size_t>(c1[i].rows() * c1[i].cols()) * sizeof(float)))
            << "share " << i;
      }
      EXPECT_EQ(seen1, seen2) << "the check saw other rows";
      const std::vector<float> a1(q1.a, q1.a + m * k);
      b2.materialise(q2);
      EXPECT_EQ(0, std::memcmp(a1.data(), q2.a, a1.size() * sizeof(float)));
    }
}

// A pass prepare() left and nobody ran (its attempt threw) is not lost:
// the next prepare() marks that product's A unwritten, and materialise()
// makes it, the same bits as apply().
TEST(Blinding, APassLeftBehindIsMadeWhenRead) {
  const int64_t m = 300, k = 40, n = 16;
  MaskCase first(m, k, n, 5, 1), second(m, k, n, 6, 2);
  Blinding b1(8, 16, 1.0f, 8), b2(8, 16, 1.0f, 8);
  Obfuscator o1(secret_from_seed(9), 4.0), o2(secret_from_seed(9), 4.0);
  const Product& want = b1.apply(first.p, o1);
  const Product& q = b2.prepare(first.p, o2);  // its pass never runs
  b2.prepare(second.p, o2);
  b2.pass();
  b2.materialise(q);
  EXPECT_EQ(0, std::memcmp(want.a, q.a, static_cast<size_t>(m * k) * sizeof(float)));
}

// Before col2im the input gradient's columns stay where the column
// unmixing leaves them (input_order), and col2im reads them there: the
// image is the same, bit for bit, as from dA unmixed into place, for the
// unmixing alone and for the one fused with the decryption, with and
// without the row mixing.
TEST(Blinding, InputGradientLeftInGroupOrderGivesTheSameImage) {
  const ConvGeometry g = ConvGeometry::make(2, 20, 6, 5, 8, 3, 1, 1);
  const int64_t m = g.n * g.positions(), k = g.cols(), n = g.o;
  MaskCase mc(m, k, n, 8, 0);
  for (int row_mix : {8, 0}) {
    SCOPED_TRACE("row mixing " + std::to_string(row_mix));
    Blinding b(row_mix, 0, 1.0f, 8);
    Obfuscator obf(secret_from_seed(5), 4.0);
    const Product& q = b.apply(mc.p, obf);
    const int32_t* order = b.input_order(q);
    ASSERT_NE(order, nullptr);
    Rng rng(8);
    std::vector<float> z(static_cast<size_t>(m * k));
    for (auto& v : z) v = static_cast<float>(rng.normal());
    const ScaledPerm r = obf.draw(m), c = obf.draw(k);
    std::vector<float> da(z.size()), da_grouped(z.size()), dx(static_cast<size_t>(g.n * g.c * g.h * g.w)),
        dx2(dx.size());
    for (bool fused : {false, true}) {
      if (fused && !b.fuses_input()) continue;
      SCOPED_TRACE(fused ? "fused with the decryption" : "unmixing alone");
      if (fused) {
        b.decrypt_input(q, z.data(), r, c, nullptr, nullptr, 0, da.data());
        b.decrypt_input(q, z.data(), r, c, nullptr, nullptr, 0, da_grouped.data(), false);
      } else {
        b.finish_input(q, z.data(), da.data());
        b.finish_input(q, z.data(), da_grouped.data(), false);
      }
      EXPECT_NE(0, std::memcmp(da.data(), da_grouped.data(), da.size() * sizeof(float))) << "the columns moved";
      col2im(g, da.data(), dx.data());
      col2im(g, da_grouped.data(), dx2.data(), order);
      ASSERT_EQ(0, std::memcmp(dx.data(), dx2.data(), dx.size() * sizeof(float)));
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < k; ++j)
          ASSERT_EQ(da[static_cast<size_t>(i * k + j)], da_grouped[static_cast<size_t>(i * k + order[j])]);
    }
  }
}

TEST(AdditiveMask, RemovesItselfExactlyAndHidesZeros) {
  const int64_t m = 300, k = 90, n = 17;
  MaskCase mc(m, k, n, 4, 3);
  const auto &a = mc.a, &w = mc.w, &dc = mc.dc, &c0 = mc.c0, &dw0 = mc.dw0;
  const Product& p = mc.p;
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
  EXPECT_LT(max_rel(c, c0), 1e-5);
  EXPECT_LT(max_rel(dw, dw0), 1e-5);
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


// Both kinds: the mask has A's rms, hides every zero, has exactly the rank
// asked, removes itself from both products, and the fused form (prepare,
// then add_rows a group of rows at a time, as Blinding's pass does) adds
// the same mask as apply(). The Kronecker kind's columns all get the same
// share of it.
TEST(AdditiveMask, BothKindsHaveTheirRankRemoveThemselvesAndAddByRows) {
  const int64_t m = 400, k = 300, n = 17;
  const int rank = 16;
  MaskCase mc(m, k, n, 14, 2);
  const auto &a = mc.a, &w = mc.w, &dc = mc.dc, &c0 = mc.c0, &dw0 = mc.dw0;
  const Product& p = mc.p;
  const auto rel = max_rel;
  for (MaskKind kind : {MaskKind::kDense, MaskKind::kKron}) {
    SCOPED_TRACE(mask_kind_name(kind));
    AdditiveMask mask(rank, 1.0f, kind);
    KeyStream ks(secret_from_seed(21), 0);
    const Product& q = mask.apply(p, ks);
    std::vector<double> r(m * k);
    double ss_a = 0, ss_r = 0;
    int64_t zeros = 0;
    for (int64_t e = 0; e < m * k; ++e) {
      zeros += q.a[e] == 0.0f;
      r[e] = double(q.a[e]) - a[e];
      ss_a += double(a[e]) * a[e];
      ss_r += r[e] * r[e];
    }
    EXPECT_EQ(zeros, 0);
    EXPECT_NEAR(std::sqrt(ss_r / ss_a), 1.0, 0.2) << "the mask has A's rms";
    if (kind == MaskKind::kKron) {
      double lo = 1e300, hi = 0;
      for (int64_t j = 0; j < k; ++j) {
        double s = 0;
        for (int64_t i = 0; i < m; ++i) s += r[i * k + j] * r[i * k + j];
        lo = std::min(lo, s), hi = std::max(hi, s);
      }
      EXPECT_LT(hi / lo, 2.0) << "every column gets the same share of the mask";
    }
    // Rank of R: Gaussian elimination with partial pivoting, relative threshold.
    double mx = 0;
    for (double v : r) mx = std::max(mx, std::fabs(v));
    int got = 0;
    for (int64_t col = 0; col < k && got < m; ++col) {
      int64_t piv = got;
      for (int64_t i = got; i < m; ++i) if (std::fabs(r[i * k + col]) > std::fabs(r[piv * k + col])) piv = i;
      if (std::fabs(r[piv * k + col]) < 1e-4 * mx) continue;
      for (int64_t j = 0; j < k; ++j) std::swap(r[got * k + j], r[piv * k + j]);
      for (int64_t i = got + 1; i < m; ++i) {
        const double f = r[i * k + col] / r[got * k + col];
        for (int64_t j = col; j < k; ++j) r[i * k + j] -= f * r[got * k + j];
      }
      ++got;
    }
    EXPECT_EQ(got, rank);
    std::vector<float> c(m * n), dw(n * k);
    sgemm(false, true, m, n, k, 1.0f, q.a, k, w.data(), k, 0.0f, c.data(), n);
    sgemm(true, false, n, k, m, 1.0f, dc.data(), n, q.a, k, 0.0f, dw.data(), k);
    mask.unmask_forward(q, c.data());
    mask.unmask_weight(q, dc.data(), dw.data());
    EXPECT_LT(rel(c, c0), 1e-5);
    EXPECT_LT(rel(dw, dw0), 1e-5);
    // The fused form from the same stream, rows in groups of 8 in a shuffled order.
    std::vector<float> applied(q.a, q.a + m * k), fused(a);
    AdditiveMask again(rank, 1.0f, kind);
    KeyStream ks2(secret_from_seed(21), 0);
    again.prepare(p, ss_a, ks2);
    std::vector<int64_t> order(m);
    for (int64_t i = 0; i < m; ++i) order[i] = (i * 7) % m;
    for (int64_t g = 0; g < m; g += 8) {
      float* rows[8];
      for (int t = 0; t < 8; ++t) rows[t] = fused.data() + order[g + t] * k;
      again.add_rows(p.id, rows, order.data() + g, 8);
    }
    if (kind == MaskKind::kDense) EXPECT_EQ(0, std::memcmp(fused.data(), applied.data(), fused.size() * sizeof(float)));
    else EXPECT_LT(rel(fused, applied), 1e-5);
  }
  EXPECT_EQ(parse_mask_kind("kron"), MaskKind::kKron);
  EXPECT_THROW(parse_mask_kind("sparse"), std::exception);
}

// The dense mask's U·Vᵀ is an integer matrix with every entry odd: a zero
// of A never reaches a worker, even where the mask's integers could have
// cancelled (a sum of 64 odd products is zero about once in 10⁵ entries;
// here 1.2 million of them, for even and odd ranks). The tile path, the
// two dot-product paths and the portable one add the same bits.
TEST(AdditiveMask, DenseMaskNeverLeavesAZeroOnEitherPath) {
  const int64_t m = 6000, k = 200;
  std::vector<float> zero(static_cast<size_t>(m * k), 0.0f), w(static_cast<size_t>(k), 1.0f);
  Product p{1, "zeros", zero.data(), w.data(), m, k, 1};
  p.a_sumsq = double(m * k);  // as if A had rms 1
  const LowRankPath paths[] = {LowRankPath::kTiles, LowRankPath::kDots512, LowRankPath::kDots256,
                               LowRankPath::kPortable};  // where this CPU has them
  for (int rank : {64, 63}) {
    std::vector<std::vector<float>> got;
    for (LowRankPath path : paths) {
      force_low_rank_path(path);
      AdditiveMask mask(rank);
      KeyStream ks(secret_from_seed(17), 0);
      const Product& q = mask.apply(p, ks);
      int64_t zeros = 0;
      for (int64_t e = 0; e < m * k; ++e) zeros += q.a[e] == 0.0f;
      EXPECT_EQ(zeros, 0) << "rank " << rank;
      got.emplace_back(q.a, q.a + m * k);
    }
    for (size_t i = 1; i < got.size(); ++i)
      EXPECT_EQ(0, std::memcmp(got[0].data(), got[i].data(), got[0].size() * sizeof(float)))
          << "rank " << rank << ", " << low_rank_path_name(paths[i]);
  }
  force_low_rank_path(std::nullopt);
  EXPECT_THROW(AdditiveMask(AdditiveMask::kMaxRank + 1), std::exception);
}

// x (d×d, row-major) is orthogonal and each row mixes one secret group of
// b to 2b − 1 indices (all d when d < b).
void expect_grouped_orthogonal(const float* x, int64_t d, int b) {
  for (int64_t i = 0; i < d; ++i) {
    int nz = 0;
    for (int64_t j = 0; j < d; ++j) nz += std::fabs(x[i * d + j]) > 1e-7f;
    if (d >= b) {
      EXPECT_GE(nz, b);
      EXPECT_LE(nz, 2 * b - 1);
    } else {
      EXPECT_EQ(nz, d);
    }
    for (int64_t j = 0; j < d; ++j) {
      double dot = 0;
      for (int64_t c = 0; c < d; ++c) dot += double(x[i * d + c]) * x[j * d + c];
      EXPECT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-5) << "rows " << i << " and " << j;
    }
  }
}

// Row mixing: M is orthogonal (unmix undoes mix), block diagonal after a
// secret grouping (every row of M·A combines one group of b to 2b − 1 rows
// of A, every row of A is in one group), fresh per stream, and the same for
// the same stream; the in-place mask on top of it removes itself as before.
// The mixings draw their blocks several at a time (one a vector lane):
// the same bits as one at a time, whatever the run of equal sizes (full
// and partial lanes, sizes past the lanes' limit, one group alone), and
// the stream left where one at a time leaves it.
TEST(RandomOrthogonal, DrawnTogetherEqualsOneAtATimeBitForBit) {
  struct Case {
    int64_t d;
    int b;
  } cases[] = {{64, 8}, {100, 8}, {1000, 8}, {71, 8}, {3, 8}, {17 * 9, 17}, {40, 5}, {300, 16}, {62, 2}};
  for (const Case& c : cases) {
    const MixGroups gr(c.d, c.b);
    const int64_t sq = gr.largest * gr.largest;
    for (int64_t g0 : {int64_t{0}, gr.count / 3}) {
      const int64_t g1 = gr.count;
      KeyStream one(secret_from_seed(11), 3), together = one;
      std::vector<float> a(static_cast<size_t>((g1 - g0) * sq), -7.0f), b(a);
      for (int64_t g = g0; g < g1; ++g)
        random_orthogonal(one, gr.begin(c.d, g + 1) - gr.begin(c.d, g), gr.largest, a.data() + (g - g0) * sq);
      random_orthogonals(together, gr, c.d, g0, g1, b.data());
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << "d " << c.d << " b " << c.b;
      EXPECT_EQ(one.u32(), together.u32()) << "d " << c.d << " b " << c.b;
      // And each block is orthogonal.
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t n = gr.begin(c.d, g + 1) - gr.begin(c.d, g);
        const float* q = b.data() + (g - g0) * sq;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < n; ++j) {
            double dot = 0;
            for (int64_t t = 0; t < n; ++t) dot += double{q[i * gr.largest + t]} * q[j * gr.largest + t];
            ASSERT_NEAR(dot, i == j ? 1.0 : 0.0, 1e-5);
          }
      }
    }
  }
}

TEST(RowMix, IsASecretOrthogonalGroupingAndUndoesItself) {
  for (int64_t m : {int64_t{5}, int64_t{8}, int64_t{203}}) {
    const int b = 8;
    SCOPED_TRACE("m = " + std::to_string(m));
    std::vector<float> eye(m * m, 0.0f);
    for (int64_t i = 0; i < m; ++i) eye[i * m + i] = 1.0f;
    Product p{2, "p", eye.data(), nullptr, m, m, 1};
    RowMix mix(b);
    KeyStream ks(secret_from_seed(11), 0);
    const Product& q = mix.apply(p, ks);  // q.a = M
    ASSERT_EQ(mix.sent(p), &q);
    expect_grouped_orthogonal(q.a, m, b);
    // Unmixing M gives the identity back; mixing is linear in its input.
    std::vector<float> back(m * m);
    mix.unmix(p.id, q.a, m, back.data());
    for (int64_t e = 0; e < m * m; ++e) EXPECT_NEAR(back[e], eye[e], 1e-5);
    // The same stream draws the same M, another stream another.
    RowMix again(b);
    KeyStream ks2(secret_from_seed(11), 0), ks3(secret_from_seed(11), 1);
    std::vector<float> first(q.a, q.a + m * m);
    EXPECT_EQ(0, std::memcmp(again.apply(p, ks2).a, first.data(), first.size() * sizeof(float)));
    EXPECT_NE(0, std::memcmp(again.apply(p, ks3).a, first.data(), first.size() * sizeof(float)));
  }
  // Repeated rows do not survive: half the rows are one and the same (as
  // an image's background patches are). A row of M·A is parallel to it only
  // where its whole group is made of it: 1 in 2⁸ rows.
  const int64_t m = 400, k = 40;
  std::vector<float> a(m * k);
  auto row = normal_vec(k, 12), other = normal_vec(m * k, 13);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) a[i * k + j] = i % 2 ? row[j] : other[i * k + j];
  RowMix mix(8);
  KeyStream ks(secret_from_seed(14), 0);
  const Product& q = mix.apply(Product{0, "a", a.data(), nullptr, m, k, 1}, ks);
  auto parallel_rows = [&](const float* x) {
    int64_t n = 0;
    for (int64_t i = 0; i < m; ++i) {
      double d = 0, n1 = 0, n2 = 0;
      for (int64_t j = 0; j < k; ++j)
        d += double(x[i * k + j]) * row[j], n1 += double(x[i * k + j]) * x[i * k + j], n2 += double(row[j]) * row[j];
      n += std::fabs(d) > (1 - 1e-5) * std::sqrt(n1 * n2);
    }
    return n;
  };
  EXPECT_EQ(parallel_rows(a.data()), m / 2);
  EXPECT_LE(parallel_rows(q.a), m / 40);
  // The mask, added in place to the mixed rows, still removes itself.
  auto w = normal_vec(5 * k, 15);
  Product pw{0, "a", a.data(), w.data(), m, k, 5};
  const Product& qm = mix.apply(pw, ks);
  AdditiveMask mask(4);
  const Product& qq = mask.apply_in_place(qm, mix.mixed_a(0), ks);
  EXPECT_EQ(qq.a, mix.mixed_a(0));
  std::vector<float> c(m * 5), c0(m * 5), cu(m * 5);
  sgemm(false, true, m, 5, k, 1.0f, qq.a, k, w.data(), k, 0.0f, c.data(), 5);
  mask.unmask_forward(qq, c.data());
  mix.unmix(0, c.data(), 5, cu.data());
  sgemm(false, true, m, 5, k, 1.0f, a.data(), k, w.data(), k, 0.0f, c0.data(), 5);
  for (int64_t e = 0; e < m * 5; ++e) EXPECT_NEAR(cu[e], c0[e], 1e-4 * (1 + std::fabs(c0[e])));
  EXPECT_THROW(RowMix(1), std::exception);
}

// A result larger than the caches (≥ 8 MiB) is built a group at a time and
// streamed to memory; a narrow one is written in place. Mixing acts on each
// column alone, so the columns of a wide result must equal, bit for bit,
// the same columns mixed as a narrow matrix, with `after` run on the rows
// before they land, on every path (mix, unmix, unmix from a fill), on 1 and
// 2 threads.
TEST(RowMix, StreamedResultsEqualTheInPlaceOnesBitForBit) {
  const int64_t m = 517, wide = 4160, narrow = 32;  // 517 × 4160 floats: 8.2 MiB; both multiples of 16 (the vector path)
  ASSERT_GE(m * wide * 4, int64_t{8} << 20);
  const auto a = normal_vec(m * wide, 31);
  std::vector<float> slice(m * narrow);
  for (int64_t i = 0; i < m; ++i)
    std::copy(a.begin() + i * wide, a.begin() + i * wide + narrow, slice.begin() + i * narrow);
  RowMix mix(8);
  KeyStream ks(secret_from_seed(32), 0);
  mix.apply(Product{3, "a", a.data(), nullptr, m, wide, 1}, ks);
  // after: adds the row's index to its first entry (where the row is now).
  RowMix::After mark = [](float* const* rows, const int64_t* index, int64_t n) {
    for (int64_t t = 0; t < n; ++t) rows[t][0] += static_cast<float>(index[t]);
  };
  const int threads = num_threads();
  for (int nt : {1, 2}) {
    SCOPED_TRACE("threads " + std::to_string(nt));
    set_num_threads(nt);
    for (int path = 0; path < 3; ++path) {
      SCOPED_TRACE("path " + std::to_string(path));
      std::vector<float> big(m * wide, -1.0f), small(m * narrow, -1.0f);
      auto run = [&](const float* src, int64_t cols, float* dst) {
        if (path == 0) mix.mix(3, src, cols, dst, mark);
        if (path == 1) mix.unmix(3, src, cols, dst, mark);
        if (path == 2)
          mix.unmix_from(3, cols, [&](int64_t r0, int64_t r1, float* buf) {
            std::copy(src + r0 * cols, src + r1 * cols, buf);
          }, dst, mark);
      };
      run(a.data(), wide, big.data());
      run(slice.data(), narrow, small.data());
      int64_t differ = 0;
      for (int64_t i = 0; i < m; ++i)
        differ += std::memcmp(big.data() + i * wide, small.data() + i * narrow, narrow * sizeof(float)) != 0;
      EXPECT_EQ(differ, 0);
      // Every row was written (none left at −1), and `after` marked it.
      int64_t unwritten = 0;
      for (int64_t i = 0; i < m; ++i) unwritten += big[i * wide + wide - 1] == -1.0f;
      EXPECT_EQ(unwritten, 0);
    }
  }
  set_num_threads(threads);
  // Unmixing a streamed mix gives the operand back.
  std::vector<float> mixed(m * wide), back(m * wide);
  mix.mix(3, a.data(), wide, mixed.data());
  mix.unmix(3, mixed.data(), wide, back.data());
  for (int64_t e = 0; e < m * wide; e += 97) ASSERT_NEAR(back[e], a[e], 1e-5 * (1 + std::fabs(a[e])));
}

// The repeated-rows attack on a known case: 30% of the rows are one
// non-negative row c, the rest sparse non-negative; a rank-6 mask, row and
// column scales with signs. The subspace found holds exactly the repeated
// rows and the mask's row space (dimension 6 + 1), and with the signs the
// other rows' zeros come back.
// Column mixing: every row x becomes G·x with G orthogonal and made of
// secret groups of b to 2b − 1 columns; A·Gᵀ·(W·Gᵀ)ᵀ = A·Wᵀ, and unmixing
// (in place, as the master does) gives the operand back.
TEST(ColMix, IsASecretOrthogonalGroupingThatCancelsInTheProduct) {
  Rng rng(5);
  for (int64_t k : {int64_t{3}, int64_t{8}, int64_t{19}, int64_t{288}}) {
    SCOPED_TRACE("k = " + std::to_string(k));
    const int b = 8;
    ColMix mix(b);
    KeyStream ks(secret_from_seed(12), 0);
    mix.draw(4, k, ks);
    EXPECT_EQ(mix.cols(4), k);
    // G itself: the rows of the identity, mixed.
    std::vector<float> eye(k * k, 0.0f), g(k * k);
    for (int64_t i = 0; i < k; ++i) eye[i * k + i] = 1.0f;
    mix.mix(4, eye.data(), k, g.data());  // row i: G·e_i, i.e. row i of Gᵀ
    expect_grouped_orthogonal(g.data(), k, b);
    // Unmixing applies Gᵀ: the same matrix, transposed (the vector path
    // for pairs of 8-column groups and the scalar one for the rest agree).
    std::vector<float> gu(k * k);
    mix.unmix(4, eye.data(), k, gu.data());
    for (int64_t i = 0; i < k; ++i)
      for (int64_t j = 0; j < k; ++j) ASSERT_NEAR(gu[j * k + i], g[i * k + j], 1e-6) << i << ", " << j;
    // The product of the mixed operands is the plain product.
    const int64_t m = 37, n = 5;
    std::vector<float> a(m * k), w(n * k), am(m * k), wm(n * k), c(m * n), cm(m * n);
    for (auto& v : a) v = static_cast<float>(rng.normal());
    for (auto& v : w) v = static_cast<float>(rng.normal());
    mix.mix(4, a.data(), m, am.data());
    mix.mix(4, w.data(), n, wm.data());
    sgemm(false, true, m, n, k, 1.0f, a.data(), k, w.data(), k, 0.0f, c.data(), n);
    sgemm(false, true, m, n, k, 1.0f, am.data(), k, wm.data(), k, 0.0f, cm.data(), n);
    for (int64_t e = 0; e < m * n; ++e) EXPECT_NEAR(cm[e], c[e], 1e-4 * (1 + std::fabs(c[e])));
    // Unmixing in place restores A; the entries of a mixed row are not A's.
    int moved = 0;
    for (int64_t e = 0; e < m * k; ++e) moved += std::fabs(am[e] - a[e]) > 1e-3f;
    if (k > 1) EXPECT_GT(moved, m * k / 2);
    mix.unmix(4, am.data(), m, am.data());
    for (int64_t e = 0; e < m * k; ++e) EXPECT_NEAR(am[e], a[e], 1e-5 * (1 + std::fabs(a[e])));
  }
  ColMix mix(8);
  std::vector<float> x(8);
  EXPECT_THROW(mix.mix(0, x.data(), 1, x.data()), Error) << "a product never drawn";
}

// The column mixing works on blocks of rows (a group's matrix held while
// every row of the block goes through it): a row comes out the same, bit
// for bit, whichever block it was in, alone, in a block of 16 with a tail,
// or in place among 8 rows (as the row mixing hands them), for groups of
// 8 columns and for the larger groups k = 19 and 291 give, and when the
// whole result (8.5 MB) is streamed to memory.
TEST(ColMix, ARowsResultDoesNotDependOnItsBlock) {
  Rng rng(6);
  for (const auto& [k, m] : std::vector<std::pair<int64_t, int64_t>>{{19, 37}, {288, 37}, {291, 37}, {576, 3700}}) {
    SCOPED_TRACE("k = " + std::to_string(k) + ", " + std::to_string(m) + " rows");
    ColMix mix(8);
    KeyStream ks(secret_from_seed(13), 0);
    mix.draw(2, k, ks);
    std::vector<float> a(m * k);
    for (auto& v : a) v = static_cast<float>(rng.normal());
    for (bool back : {false, true}) {
      std::vector<float> whole(m * k), one(m * k), here(a);
      if (back) mix.unmix(2, a.data(), m, whole.data());
      else mix.mix(2, a.data(), m, whole.data());
      for (int64_t i = 0; i < m; ++i) {
        if (back) mix.unmix(2, a.data() + i * k, 1, one.data() + i * k);
        else mix.mix(2, a.data() + i * k, 1, one.data() + i * k);
      }
      for (int64_t i0 = 0; i0 < m; i0 += 8) {
        float* rows[8];
        const int64_t n = std::min<int64_t>(8, m - i0);
        for (int64_t t = 0; t < n; ++t) rows[t] = here.data() + (i0 + t) * k;
        if (back) mix.unmix_here(2, rows, n);
        else mix.mix_here(2, rows, n);
      }
      ASSERT_EQ(0, std::memcmp(whole.data(), one.data(), whole.size() * sizeof(float))) << "back " << back;
      ASSERT_EQ(0, std::memcmp(whole.data(), here.data(), whole.size() * sizeof(float))) << "back " << back;
      int moved = 0;
      for (int64_t e = 0; e < m * k; ++e) moved += whole[e] != a[e];
      EXPECT_GT(moved, m * k / 2);
    }
  }
}

TEST(LowRank, RepeatedRowsGiveTheMaskRowSpace) {
  const int64_t m = 600, k = 40, r = 6;
  Rng rng(21);
  std::vector<float> a(m * k), c(k);
  for (auto& x : c) x = static_cast<float>(rng.uniform());
  std::vector<uint8_t> rep(m);
  for (int64_t i = 0; i < m; ++i) {
    rep[i] = rng.uniform() < 0.3;
    for (int64_t j = 0; j < k; ++j)
      a[i * k + j] = rep[i] ? c[j] : (rng.uniform() < 0.6 ? 0.0f : static_cast<float>(rng.uniform()));
  }
  auto u = normal_vec(m * r, 22), v = normal_vec(k * r, 23);
  std::vector<float> rs(m), cs(k), x(m * k);
  for (auto& s : rs) s = static_cast<float>((rng.uniform() < 0.5 ? -1 : 1) * std::exp(rng.uniform() * 2 - 1));
  for (auto& s : cs) s = static_cast<float>((rng.uniform() < 0.5 ? -1 : 1) * std::exp(rng.uniform() * 2 - 1));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j) {
      double mk = 0;
      for (int64_t t = 0; t < r; ++t) mk += double(u[i * r + t]) * v[j * r + t];
      x[i * k + j] = static_cast<float>(rs[i] * cs[j] * (a[i * k + j] + 0.3 * mk));
    }
  const CommonSubspace s = find_common_subspace(x.data(), m, k, r + 3, 0.1);
  EXPECT_EQ(s.dim, r + 1);
  int64_t in = 0, wrong = 0;
  for (int64_t i = 0; i < m; ++i) {
    const bool found = s.residual[i] < 1e-4;
    in += found;
    wrong += found != static_cast<bool>(rep[i]);
  }
  EXPECT_GT(in, m / 5);
  EXPECT_EQ(wrong, 0);
  int64_t exact = 0, rows = 0;
  for (int64_t i = 0; i < m; ++i) {
    if (rep[i]) continue;
    std::vector<float> sign(k);
    for (int64_t j = 0; j < k; ++j) sign[j] = rs[i] * cs[j] >= 0 ? 1.0f : -1.0f;
    std::vector<double> row(x.begin() + i * k, x.begin() + (i + 1) * k);
    const std::vector<double> z = decode_with_signs(row.data(), s, sign.data(), 2000);
    double mx = 0;
    for (double w : z) mx = std::max(mx, std::fabs(w));
    bool same = true;
    for (int64_t j = 0; j < k; ++j) same &= (std::fabs(z[j]) < 1e-2 * mx) == (a[i * k + j] == 0.0f);
    exact += same;
    ++rows;
  }
  std::printf("rows decoded exactly: %lld of %lld\n", static_cast<long long>(exact), static_cast<long long>(rows));
  EXPECT_GT(exact, rows / 2);
}

}  // namespace
}  // namespace tempo

namespace tempo {
namespace {

// A resumed execution's secret (trainer.cc) comes from derive_secret: the
// same inputs give the same secret, any other label, counter or base another.
TEST(KeyStream, DerivedSecretsAreRepeatableAndApart) {
  const Secret base = secret_from_seed(1);
  const Secret a = derive_secret(base, "tempo resumed execution", 14);
  EXPECT_EQ(a, derive_secret(base, "tempo resumed execution", 14));
  EXPECT_NE(a, base);
  EXPECT_NE(a, derive_secret(base, "tempo resumed execution", 15));
  EXPECT_NE(a, derive_secret(base, "another use", 14));
  EXPECT_NE(a, derive_secret(secret_from_seed(2), "tempo resumed execution", 14));
  // And the streams they key share no block.
  KeyStream x(a, 0), y(base, 0);
  EXPECT_NE(x.u32(), y.u32());
}

}  // namespace
}  // namespace tempo

namespace tempo {
namespace {

// A stream and each fork own 2^22 blocks: drawing past them fails before a
// single word of another stretch is produced.
TEST(KeyStream, RefusesToRunIntoAnotherStretch) {
  std::vector<uint32_t> buf(size_t{1} << 20);  // 2^16 blocks
  const KeyStream parent(secret_from_seed(4), 1);
  for (KeyStream s : {parent, parent.fork(0), parent.fork(1022)}) {
    KeyStream* ks = &s;
    for (int i = 0; i < 64; ++i) ks->fill(buf.data(), buf.size());  // exactly the 2^22 blocks
    EXPECT_THROW(ks->u32(), Error);
    EXPECT_THROW(ks->fill(buf.data(), 16), Error);
  }
  // 16 blocks short of the limit, one more refill (16 blocks) still fits.
  KeyStream ks(secret_from_seed(4), 2);
  for (int i = 0; i < 63; ++i) ks.fill(buf.data(), buf.size());
  ks.fill(buf.data(), buf.size() - 256);
  for (int i = 0; i < 256; ++i) EXPECT_NO_THROW(ks.u32());
  EXPECT_THROW(ks.u32(), Error);
}

}  // namespace
}  // namespace tempo
