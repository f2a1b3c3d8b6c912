// Input recovery (P5) on cases whose answer is known: the image metrics
// against closed forms; the attack on first-layer im2col patches recovers
// Fashion-MNIST images exactly without keys and, as the suite reports, with
// them; channel-mode feature maps are the plaintext maps up to one scale.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "common/conv.h"
#include "common/error.h"
#include "trusted/rng.h"
#include "test_util.h"
#include "trusted/data/dataset.h"
#include "eval/attacks/input_recovery.h"
#include "eval/measurements/traced.h"

namespace tempo {
namespace {

const char* kFashion = "/usr/share/datasets/fashion-mnist";

std::vector<float> random_image(Rng& rng, int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = static_cast<float>(rng.uniform());
  return x;
}

TEST(InputRecovery, MetricsBehaveAsKnown) {
  Rng rng(7);
  const int64_t h = 28, w = 28, n = h * w;
  const std::vector<float> x = random_image(rng, n);
  EXPECT_TRUE(std::isinf(psnr(x.data(), x.data(), n)));
  EXPECT_NEAR(ssim(x.data(), x.data(), h, w), 1.0, 1e-12);
  // Gaussian noise of σ on uniform pixels (variance v = 1/12): PSNR =
  // −20·log10 σ up to the sampling of the MSE (784 values: about 5% of the
  // MSE, 0.2 dB); SSIM ≈ (2v + C2)/(2v + σ² + C2), the means being equal.
  double last = 1;
  for (double sigma : {0.01, 0.05, 0.2}) {
    std::vector<float> y = x;
    for (auto& v : y) v += static_cast<float>(sigma * rng.normal());
    EXPECT_NEAR(psnr(x.data(), y.data(), n), -20 * std::log10(sigma), 0.5) << sigma;
    const double s = ssim(x.data(), y.data(), h, w), v = 1.0 / 12, c2 = 9e-4;
    EXPECT_NEAR(s, (2 * v + c2) / (2 * v + sigma * sigma + c2), 0.03) << sigma;
    EXPECT_LT(s, last) << sigma;
    last = s;
  }
  // Constant images a and b: SSIM = (2ab + C1)/(a² + b² + C1) exactly.
  const std::vector<float> a(static_cast<size_t>(n), 0.2f), b(static_cast<size_t>(n), 0.6f);
  const double c1 = 1e-4, fa = 0.2f, fb = 0.6f;
  EXPECT_NEAR(ssim(a.data(), b.data(), h, w), (2 * fa * fb + c1) / (fa * fa + fb * fb + c1), 1e-9);
  EXPECT_NEAR(psnr(a.data(), b.data(), n), -20 * std::log10(0.4), 1e-5);
  // The affine fit undoes brightness and contrast, and nothing else.
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = -3 * x[i] + 1;
  const std::vector<float> f = affine_fit(r.data(), x.data(), n);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(f[i], x[i], 1e-5);
  const std::vector<float> noise = random_image(rng, n), g = affine_fit(noise.data(), x.data(), n);
  EXPECT_LT(psnr(g.data(), x.data(), n), 15);
  EXPECT_THROW(ssim(x.data(), x.data(), 10, 10), Error);
}

struct FirstLayer {
  ConvGeometry g;
  std::vector<float> images, pub;
  int64_t pub_count = 0;
};

// `n` Fashion-MNIST test images (the victims) and 2000 training images (the
// attacker's public prior).
FirstLayer fashion(int64_t n) {
  const Dataset d = load_dataset("fashion-mnist", {1, 28, 28}, 0);
  FirstLayer f;
  f.g = ConvGeometry::make(n, 1, 28, 28, 32, 3, 1, 1);
  f.images.assign(d.test_x.data(), d.test_x.data() + n * 784);
  f.pub_count = 2000;
  f.pub.assign(d.train_x.data(), d.train_x.data() + f.pub_count * 784);
  return f;
}

// Encrypts the images' patches as a first-layer product and attacks them;
// returns the fraction of images rebuilt blind at ≥ 40 dB (no fit: the
// lattice gives absolute values) and checks the row-order-known images.
double attack_first_layer(const FirstLayer& f, bool identity, double* known_exact) {
  const ConvGeometry& g = f.g;
  const int64_t m = g.n * g.positions(), P = g.h * g.w;
  std::vector<float> cols(static_cast<size_t>(m * 9));
  im2col(g, f.images.data(), cols.data());
  auto obf = measurement_keys(11, 4.0, identity);
  const Traced enc = encrypt_traced(obf->draw_triple(m, 9, 32), cols.data(), m, 9);
  const PatchAttack a = attack_patches(enc.values.data(), g, f.pub.data(), f.pub_count);
  std::vector<int32_t> pos(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) pos[i] = enc.src_row[i * 9];
  const std::vector<float> known = images_with_known_order(a, g, pos.data());
  int64_t exact = 0, blind = 0;
  for (int64_t i = 0; i < g.n; ++i) exact += psnr(known.data() + i * P, f.images.data() + i * P, P) >= 40;
  *known_exact = double(exact) / double(g.n);
  // Blind: each image against the slot holding most of its rows.
  std::vector<std::vector<int64_t>> votes(static_cast<size_t>(g.n), std::vector<int64_t>(a.slots, 0));
  for (int64_t i = 0; i < m; ++i)
    if (a.slot[i] >= 0) ++votes[pos[i] / P][a.slot[i]];
  for (int64_t i = 0; i < g.n; ++i) {
    const int64_t s = std::max_element(votes[i].begin(), votes[i].end()) - votes[i].begin();
    if (votes[i][s] > 0) blind += psnr(a.images.data() + s * P, f.images.data() + i * P, P) >= 40;
  }
  return double(blind) / double(g.n);
}

TEST(InputRecovery, WithoutKeysFirstLayerPatchesGiveTheImagesExactly) {
  if (!std::filesystem::exists(kFashion)) GTEST_SKIP() << "no Fashion-MNIST at " << kFashion;
  const FirstLayer f = fashion(32);
  double known = 0;
  const double blind = attack_first_layer(f, true, &known);
  std::printf("offload mode: %.3f of images exact with the row order, %.3f blind\n", known, blind);
  EXPECT_EQ(known, 1.0);
  EXPECT_GE(blind, 0.9);
}

TEST(InputRecovery, SecretKeysDoNotStopTheFirstLayerAttack) {
  if (!std::filesystem::exists(kFashion)) GTEST_SKIP() << "no Fashion-MNIST at " << kFashion;
  const FirstLayer f = fashion(32);
  double known = 0;
  const double blind = attack_first_layer(f, false, &known);
  std::printf("tempo keys: %.3f of images exact with the row order, %.3f blind\n", known, blind);
  EXPECT_EQ(known, 1.0);
  EXPECT_GE(blind, 0.9);
}

// Writes the first `train` training and `test` test images of Fashion-MNIST
// (with labels) to dir as plain IDX files: the measurement below on a data
// set small enough to load and evaluate quickly.
void fashion_subset(const std::string& dir, int64_t train, int64_t test) {
  const Dataset d = load_dataset("fashion-mnist", {1, 28, 28}, 0);
  auto be32 = [](std::ofstream& f, uint32_t v) {
    const char b[4] = {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
    f.write(b, 4);
  };
  auto put = [&](const std::string& prefix, const Tensor& x, const std::vector<int64_t>& y, int64_t n) {
    std::ofstream im(dir + "/" + prefix + "-images-idx3-ubyte", std::ios::binary);
    be32(im, 0x803), be32(im, static_cast<uint32_t>(n)), be32(im, 28), be32(im, 28);
    for (int64_t i = 0; i < n * 784; ++i) im.put(static_cast<char>(std::lround(x[i] * 255)));
    std::ofstream lb(dir + "/" + prefix + "-labels-idx1-ubyte", std::ios::binary);
    be32(lb, 0x801), be32(lb, static_cast<uint32_t>(n));
    for (int64_t i = 0; i < n; ++i) lb.put(static_cast<char>(y[i]));
  };
  put("train", d.train_x, d.train_y, train);
  put("t10k", d.test_x, d.test_y, test);
}

// The suite's run (seed 1) on the first 2000 training images in dir.
TrainConfig suite_run(const std::string& dir) {
  fashion_subset(dir, 2000, 1000);
  TrainConfig c;
  c.model = "cnn";
  c.data = "fashion-mnist:" + dir;
  c.seed = 1;
  c.threads = 2;
  c.progress = false;
  return c;
}

// What `tempo privacy --suite inputs` measures, the same way (its defaults:
// seed 1, step 5), on 2000 training images: the table in docs/SECURITY.md
// (the full data set) has 63 of 64 images exact blind.
TEST(InputRecovery, SuiteMeasurement) {
  if (!std::filesystem::exists(kFashion)) GTEST_SKIP() << "no Fashion-MNIST at " << kFashion;
  testutil::TempDir dir("inputs");
  const TrainConfig c = suite_run(dir.path());
  const auto rows = measure_input_recovery(c, 5, 1);
  ASSERT_EQ(rows.size(), 5u);
  for (const auto& r : rows)
    std::printf("%s: PSNR %.1f SSIM %.3f (baseline %.1f, %.3f), placed %.3f, exact %.3f\n", r.setting.c_str(), r.psnr,
                r.ssim, r.base_psnr, r.base_ssim, r.rows_placed, r.images_exact);
  const auto& blind = rows[0];
  EXPECT_TRUE(blind.attempted);
  EXPECT_GE(blind.images_exact, 0.9);
  EXPECT_GT(blind.ssim, 0.95);
  EXPECT_LT(blind.base_ssim, 0.3);
  EXPECT_EQ(rows[1].images_exact, 1.0);  // the row order known
  EXPECT_FALSE(rows[2].attempted);       // the default im2col: not attempted
  // Channel mode: the maps are exact up to scale; the image from them beats
  // the baseline without being exact.
  EXPECT_GT(rows[3].ssim, rows[3].base_ssim + 0.2);
  EXPECT_GE(rows[4].psnr, 99.0);
}

// The default configuration's zeros: exact joins are never wrong on real
// images, and the counts are consistent (the table in docs/SECURITY.md has
// the full data set).
TEST(InputRecovery, ZeroPatternJoinsAreExact) {
  if (!std::filesystem::exists(kFashion)) GTEST_SKIP() << "no Fashion-MNIST at " << kFashion;
  testutil::TempDir dir("zeros");
  const TrainConfig c = suite_run(dir.path());
  const std::vector<ZeroJigsawResult> zs = measure_zero_jigsaw(c, 5, 1, {0, 64});
  const ZeroJigsawResult& z = zs[0];
  std::printf("zeros %.3f; columns: channel %.3f (by count %.3f), offset %.3f; joins right %lld/%lld of %lld, "
              "down %lld/%lld of %lld; largest fragment %.3f\n",
              z.zero_fraction, z.channel_purity, z.count_channel_purity, z.offset_purity,
              static_cast<long long>(z.right.correct), static_cast<long long>(z.right.unique),
              static_cast<long long>(z.right.adjacencies), static_cast<long long>(z.down.correct),
              static_cast<long long>(z.down.unique), static_cast<long long>(z.down.adjacencies), z.largest_fragment);
  EXPECT_EQ(z.rows, 64 * 14 * 14);
  EXPECT_EQ(z.cols, 32 * 9);
  EXPECT_EQ(z.right.adjacencies, 64 * 14 * 13);
  EXPECT_GT(z.zero_fraction, 0.2);
  EXPECT_LT(z.zero_fraction, 0.9);
  for (const auto* j : {&z.right, &z.down}) {
    EXPECT_LE(j->correct, j->unique);
    EXPECT_GE(j->correct, 0.95 * static_cast<double>(j->unique)) << "exact joins are almost never wrong";
    EXPECT_GT(j->correct, j->adjacencies / 4) << "a large part of the jigsaw is fixed by the zeros alone";
  }
  EXPECT_GT(z.count_channel_purity, 3 * z.channel_chance);
  // Maps without zeros give away the image borders exactly.
  std::printf("columns without zeros %lld; border columns %lld, exact %lld\n",
              static_cast<long long>(z.no_zero_columns), static_cast<long long>(z.border_columns),
              static_cast<long long>(z.border_columns_exact));
  EXPECT_EQ(z.border_columns_exact, z.border_columns);
  EXPECT_GT(z.largest_fragment, 0.25);
  EXPECT_LE(z.largest_fragment, 1.0);
  // Without a mask the worker's zero guess is exact, and nearest matches
  // are at least the exact ones.
  EXPECT_DOUBLE_EQ(z.zero_auc, 1.0);
  EXPECT_DOUBLE_EQ(z.pattern_precision, 1.0);
  EXPECT_GE(z.right_nearest.correct, z.right.correct * 95 / 100);
  // The default mask (rank 64): no exact zero reaches the worker, the
  // low-rank-plus-sparse split guesses them far from exactly, and neither
  // exact nor nearest matches rebuild the layout.
  const ZeroJigsawResult& mz = zs[1];
  std::printf("mask rank 64: AUC %.3f, precision %.3f, recall %.3f; nearest joins right %lld/%lld, down %lld/%lld\n",
              mz.zero_auc, mz.pattern_precision, mz.pattern_recall, static_cast<long long>(mz.right_nearest.correct),
              static_cast<long long>(mz.right_nearest.unique), static_cast<long long>(mz.down_nearest.correct),
              static_cast<long long>(mz.down_nearest.unique));
  EXPECT_EQ(mz.mask_rank, 64);
  EXPECT_DOUBLE_EQ(mz.zero_fraction, z.zero_fraction) << "the same operand";
  EXPECT_EQ(mz.no_zero_columns, 0);
  EXPECT_EQ(mz.border_columns_exact, 0);
  EXPECT_LT(mz.zero_auc, 0.8);
  for (const auto* j : {&mz.right, &mz.down, &mz.right_nearest, &mz.down_nearest})
    EXPECT_LT(j->correct, j->adjacencies / 100) << "the mask leaves under 1% of the jigsaw";
  EXPECT_LT(mz.largest_fragment, 0.05);
}

}  // namespace
// The attack on the mask through repeated rows (background patches): it
// works on the masked operand alone, which is why rows are mixed by default,
// and finds no subspace once they are.
TEST(InputRecovery, RepeatedRowsExposeTheMaskUnlessRowsAreMixed) {
  if (!std::filesystem::exists(kFashion)) GTEST_SKIP() << "no Fashion-MNIST at " << kFashion;
  testutil::TempDir dir("subspace");
  const TrainConfig c = suite_run(dir.path());
  const std::vector<MaskSubspaceResult> rs = measure_mask_subspace(c, 5, 1, {{64, 0}, {64, 8}, {0, 8}, {64, 8, 8}});
  for (const auto& r : rs)
    std::printf("rank %d, mix %d: repeated rows %lld; subspace dim %lld, rows in it %lld (repeated %lld); mask "
                "captured %.3f; zeros sent %.4f; AUC projected %.3f, with signs %.3f (precision %.3f, recall %.3f, "
                "rows exact %lld of %lld); Gram signs %.3f, AUC %.3f\n",
                r.mask_rank, r.row_mix, static_cast<long long>(r.repeated_rows), static_cast<long long>(r.subspace_dim),
                static_cast<long long>(r.rows_in), static_cast<long long>(r.rows_in_repeated), r.mask_captured,
                r.zeros_sent, r.auc_projected, r.auc_signs, r.precision_signs, r.recall_signs,
                static_cast<long long>(r.exact_rows), static_cast<long long>(r.decoded_rows), r.col_signs_right,
                r.auc_gram);
  const MaskSubspaceResult &plain = rs[0], &mixed = rs[1];
  EXPECT_GT(plain.repeated_rows, plain.rows / 20) << "the background repeats";
  EXPECT_GT(plain.rows_in, 3 * plain.subspace_dim);
  EXPECT_GE(plain.rows_in_repeated, plain.rows_in * 95 / 100) << "the rows found are the repeated ones";
  EXPECT_GT(plain.mask_captured, 0.99) << "the mask's row space is found";
  EXPECT_GT(plain.auc_signs, 0.75);
  EXPECT_GT(plain.auc_signs, plain.auc_projected);
  // No oracle needed: the column Gram matrix gives the keys' signs.
  EXPECT_GT(plain.col_signs_right, 0.85);
  EXPECT_GT(plain.auc_gram, 0.75);
  EXPECT_EQ(mixed.repeated_rows, plain.repeated_rows);
  EXPECT_LT(mixed.rows_in, mixed.subspace_dim) << "no subspace holds more rows than its dimension";
  EXPECT_GT(plain.zeros_sent, 0.3);
  // A zero survives mixing only where its whole group of 8 rows has one
  // (columns that are mostly zero: sparse channels, the padding).
  EXPECT_LT(mixed.zeros_sent, plain.zeros_sent / 2);
  EXPECT_LT(mixed.auc_signs, plain.auc_signs);
  EXPECT_LT(mixed.auc_gram, plain.auc_gram);
  // The attack on the mixing's groups: the shared zeros of a group give it
  // away more often than chance, but under the mask far too rarely to
  // assemble a group (a row's 7 nearest rows hold 0.15 of its partners).
  std::printf("mixing's groups: %.4f of %lld nearest rows in the row's own group (chance %.5f)\n",
              mixed.group_precision, static_cast<long long>(mixed.group_neighbours), mixed.group_chance);
  EXPECT_EQ(plain.group_precision, -1.0) << "no groups without mixing";
  EXPECT_EQ(mixed.group_neighbours, 7);
  EXPECT_GT(mixed.group_precision, 5 * mixed.group_chance);
  EXPECT_LT(mixed.group_precision, 0.1);
  // Given the groups, the rows of A: the mixing alone gives them up exactly
  // (the known answer: the attack works where nothing protects), the mask
  // makes the search hopeless.
  const MaskSubspaceResult& mix_only = rs[2];
  std::printf("given the groups: exact rows in %lld of %lld groups without a mask (AUC %.3f), %lld with it (AUC %.3f)\n",
              static_cast<long long>(mix_only.sparse_exact), static_cast<long long>(mix_only.sparse_groups),
              mix_only.sparse_auc, static_cast<long long>(mixed.sparse_exact), mixed.sparse_auc);
  EXPECT_GE(mix_only.sparse_exact, mix_only.sparse_groups / 10);
  EXPECT_GT(mix_only.sparse_auc, 0.85);
  EXPECT_EQ(mixed.sparse_exact, 0);
  EXPECT_LT(mixed.sparse_auc, 0.65);
  // With the columns mixed too (--col-mix 8): a zero needs a whole block of
  // 8 rows by 8 columns, and A·Gᵀ is no longer non-negative, so the column
  // Gram matrix says nothing about the keys' signs.
  const MaskSubspaceResult& cols = rs[3];
  std::printf("--col-mix 8: zeros sent %.5f, Gram signs %.3f, groups %.4f, sparsest AUC %.3f\n", cols.zeros_sent,
              cols.col_signs_right, cols.group_precision, cols.sparse_auc);
  EXPECT_LT(cols.zeros_sent, mixed.zeros_sent / 20);
  EXPECT_LT(cols.col_signs_right, 0.65);
  EXPECT_EQ(cols.sparse_exact, 0);
  EXPECT_LT(cols.sparse_auc, 0.65);
}

}  // namespace tempo
