// Google Benchmark of the trusted side's memory-bound kernels: key
// application (encryption/decryption), Freivalds' check, and a plain copy as
// the bandwidth reference. Sizes are those of `cnn` batch 64 (conv2).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/blas.h"
#include "common/conv.h"
#include "common/exact_low_rank.h"
#include "common/parallel.h"
#include "trusted/obfuscation/blinding.h"
#include "trusted/obfuscation/col_mix.h"
#include "trusted/obfuscation/mask.h"
#include "trusted/obfuscation/obfuscator.h"
#include "trusted/obfuscation/orthogonal.h"
#include "trusted/obfuscation/row_mix.h"
#include "trusted/offload/verifier.h"

namespace tempo {
namespace {

constexpr int64_t kRows = 12544, kCols = 288, kOut = 64;

void BM_Copy(benchmark::State& st) {
  std::vector<float> a(kRows * kCols, 1.0f), b(a.size());
  for (auto _ : st) {
    parallel_for(kRows, [&](int64_t lo, int64_t hi) {
      std::memcpy(b.data() + lo * kCols, a.data() + lo * kCols, sizeof(float) * (hi - lo) * kCols);
    }, 64);
    benchmark::DoNotOptimize(b.data());
  }
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * kRows * kCols);
}

// The keys applied to a matrix: /0 12544 × 288 (14 MiB), /1 resnet18 batch
// 32's layer 1 (32768 × 576, 75 MiB), /2 that layer's result or output
// gradient (32768 × 64: short rows), with the Freivalds check's two rows
// of dot products taken as the encryption does.
void BM_ApplyKeys(benchmark::State& st) {
  const bool big = st.range(0) >= 1;
  const int64_t m = big ? 32768 : kRows, k = st.range(0) == 2 ? 64 : big ? 576 : kCols;
  Obfuscator obf(random_secret(), 4.0);
  ScaledPerm r = obf.draw(m), c = obf.draw(k);
  std::vector<float> a(static_cast<size_t>(m * k), 1.0f), b(a.size());
  std::vector<double> rv(static_cast<size_t>(2 * k), 0.5), dots(static_cast<size_t>(2 * m));
  for (auto _ : st) {
    apply_keys_rows(a.data(), m, k, r, c, 0, m, b.data(), 1, rv.data(), dots.data(), 2);
    benchmark::DoNotOptimize(b.data());
  }
  st.SetBytesProcessed(st.iterations() * 2 * static_cast<int64_t>(sizeof(float)) * m * k);
}

void BM_Freivalds(benchmark::State& st) {
  Obfuscator obf(random_secret(), 4.0);
  std::vector<float> a(kRows * kCols, 0.5f), w(kOut * kCols, 0.25f), c(kRows * kOut, 36.0f);
  Verifier v(VerifyConfig{});
  for (auto _ : st) {
    KeyStream ks = obf.stream();
    auto bad = v.check(c.data(), kRows, kOut, kCols, {a.data(), false}, {w.data(), true}, ks);
    benchmark::DoNotOptimize(bad);
  }
  st.SetBytesProcessed(st.iterations() * sizeof(float) * (kRows * kCols + kOut * kCols + kRows * kOut));
}

// The weight gradient's check (Verifier::check_weight, two rounds, A's row
// sums from the forward check) on resnet18 batch 32's layer 1: dW 64 ×
// 576, dC's 32768 rows of 64 read in the keys' row order, as the step
// reads them.
void BM_WeightCheck(benchmark::State& st) {
  const int64_t m = 32768, k = 576, n = 64;
  std::vector<float> a(static_cast<size_t>(8 * k)), w(static_cast<size_t>(n * k), 0.25f);
  std::vector<float> dc(static_cast<size_t>(m * n)), dw(static_cast<size_t>(n * k), 1.0f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 7) - 3.0f;
  for (size_t i = 0; i < dc.size(); ++i) dc[i] = static_cast<float>(i % 5) - 2.0f;
  Obfuscator obf(random_secret(), 4.0);
  const ScaledPerm rows = obf.draw(m);
  Verifier v(VerifyConfig{});
  RowSums sums;
  KeyStream ks = obf.stream();
  v.begin(m, n, k, {w.data(), true}, ks, nullptr, 0, &sums);
  for (int64_t i = 0; i < m; ++i) v.project_row(i, a.data() + (i % 8) * k);
  for (auto _ : st) benchmark::DoNotOptimize(v.check_weight(dw.data(), n, k, dc.data(), sums, rows.perm.data(), m));
  st.SetBytesProcessed(st.iterations() * sizeof(float) * m * n);
}

// The forward check's side of A as the encryption takes it, row by row
// (Verifier::project_row with the weight check's row sums, two rounds), on
// resnet18 batch 32's layer 1 (32768 × 576, 64 outputs): range(0) 0, the
// rows from memory; 1, the same 64 rows again and again, in cache as the
// encryption's pass hands them; 2, the same, 8 rows a call (project_rows,
// as the blinding's pass hands them).
void BM_ForwardCheckRows(benchmark::State& st) {
  const int64_t m = 32768, k = 576, n = 64;
  std::vector<float> a(static_cast<size_t>(m * k)), w(static_cast<size_t>(n * k), 0.25f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 7) - 3.0f;
  Obfuscator obf(random_secret(), 4.0);
  Verifier v(VerifyConfig{});
  RowSums sums;
  for (auto _ : st) {
    KeyStream ks = obf.stream();
    v.begin(m, n, k, {w.data(), true}, ks, nullptr, 0, &sums);
    parallel_for(m / 8, [&](int64_t lo, int64_t hi) {
      for (int64_t g = lo; g < hi; ++g) {
        int64_t index[8];
        const float* rows[8];
        for (int64_t t = 0; t < 8; ++t) {
          index[t] = 8 * g + t;
          rows[t] = a.data() + (st.range(0) ? index[t] % 64 : index[t]) * k;
        }
        if (st.range(0) == 2) v.project_rows(index, rows, 8);
        else
          for (int64_t t = 0; t < 8; ++t) v.project_row(index[t], rows[t]);
      }
    }, 8);
    benchmark::DoNotOptimize(sums.ar.data());
  }
  st.SetBytesProcessed(st.iterations() * sizeof(float) * m * k);
}

// A fresh draw of a blinding of A per iteration, as the forward pass makes
// one: row mixing (groups of 8: the grouping, the orthogonal matrices and
// M·A) or the rank-64 mask (U, V and A + U·Vᵀ).
template <typename Blinding>
void draw_and_apply(benchmark::State& st, Blinding& blinding) {
  std::vector<float> a(kRows * kCols, 1.0f);
  Obfuscator obf(random_secret(), 4.0);
  for (auto _ : st) {
    KeyStream ks = obf.stream();
    benchmark::DoNotOptimize(blinding.apply(Product{0, "a", a.data(), nullptr, kRows, kCols, kOut}, ks).a);
  }
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * kRows * kCols);
}

void BM_RowMixDrawAndMix(benchmark::State& st) {
  RowMix mix(8);
  draw_and_apply(st, mix);
}

// Haar-random orthogonal 8×8 blocks, as the mixings draw one per group of
// rows or columns (a resnet18 batch-32 step draws about 3·10⁴), on one
// thread: range(0) 0, one at a time (random_orthogonal); 1, 64 groups
// drawn together (random_orthogonals, 8 a vector lane). Items: blocks.
void BM_RandomOrthogonal(benchmark::State& st) {
  KeyStream ks = Obfuscator(random_secret(), 4.0).stream();
  const MixGroups gr(512, 8);
  std::vector<float> q(static_cast<size_t>(gr.count * 64));
  for (auto _ : st) {
    if (st.range(0) == 0)
      for (int64_t g = 0; g < gr.count; ++g) random_orthogonal(ks, 8, 8, q.data() + g * 64);
    else
      random_orthogonals(ks, gr, 512, 0, gr.count, q.data());
    benchmark::DoNotOptimize(q.data());
  }
  st.SetItemsProcessed(st.iterations() * gr.count);
}

void BM_MaskDraw(benchmark::State& st) {
  AdditiveMask mask(64);
  draw_and_apply(st, mask);
}

// The mask added a group of 8 rows at a time as the fused blinding pass
// does (AdditiveMask::add_rows), against BM_MaskDraw's one sgemm; its
// product on the path range(0) names (0 AMX tiles, 1 AVX-512 VNNI, 2
// AVX-VNNI, 3 sgemm; one this CPU lacks runs sgemm, and says so).
void BM_MaskRows(benchmark::State& st) {
  const auto path = static_cast<LowRankPath>(st.range(0));
  force_low_rank_path(path);
  st.SetLabel(low_rank_path_name(low_rank_path()));
  AdditiveMask mask(64);
  std::vector<float> a(kRows * kCols, 1.0f);
  Obfuscator obf(random_secret(), 4.0);
  const Product p{0, "a", a.data(), nullptr, kRows, kCols, kOut};
  for (auto _ : st) {
    KeyStream ks = obf.stream();
    mask.prepare(p, 1.0 * kRows * kCols, ks);
    parallel_for(kRows / 8, [&](int64_t lo, int64_t hi) {
      float* rows[8];
      int64_t index[8];
      for (int64_t g = lo; g < hi; ++g) {
        for (int t = 0; t < 8; ++t) index[t] = g * 8 + t, rows[t] = a.data() + (g * 8 + t) * kCols;
        mask.add_rows(0, rows, index, 8);
      }
    }, 16);
    benchmark::DoNotOptimize(a.data());
  }
  force_low_rank_path(std::nullopt);
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * kRows * kCols);
}

// ExactLowRank::add alone on 8 rows in cache (k = 576, rank 64: resnet18's
// layer 1), one thread, on the path range(0) names (as BM_MaskRows's):
// items are entries of U·Vᵀ added; the dot-product paths' peak is one
// instruction per entry (BM_FmaPeak's rate on most cores).
void BM_LowRankAdd(benchmark::State& st) {
  const auto path = static_cast<LowRankPath>(st.range(0));
  force_low_rank_path(path);
  st.SetLabel(low_rank_path_name(low_rank_path()));
  constexpr int64_t k = 576, r = 64, n = 8;
  ExactLowRank lr;
  std::vector<int8_t> v(static_cast<size_t>(k * r)), u(static_cast<size_t>(n * r));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int8_t>(static_cast<int>(i * 37 % 255) - 127);
  for (size_t i = 0; i < u.size(); ++i) u[i] = static_cast<int8_t>(static_cast<int>(i * 53 % 255) - 127);
  lr.set_v(v.data(), k, r);
  std::vector<float> a(static_cast<size_t>(n * k), 0.0f);
  const int8_t* ur[n];
  float* rows[n];
  for (int64_t t = 0; t < n; ++t) ur[t] = u.data() + t * r, rows[t] = a.data() + t * k;
  for (auto _ : st) {
    lr.add(ur, rows, n, 1e-30f);
    benchmark::DoNotOptimize(a.data());
  }
  force_low_rank_path(std::nullopt);
  st.SetItemsProcessed(st.iterations() * n * k);
}

// Mᵀ·X alone (the input gradient's unmixing).
void BM_RowUnmix(benchmark::State& st) {
  std::vector<float> a(kRows * kCols, 1.0f), b(a.size());
  RowMix mix(8);
  Obfuscator obf(random_secret(), 4.0);
  KeyStream ks = obf.stream();
  mix.apply(Product{0, "a", a.data(), nullptr, kRows, kCols, kOut}, ks);
  for (auto _ : st) {
    mix.unmix(0, a.data(), kCols, b.data());
    benchmark::DoNotOptimize(b.data());
  }
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * kRows * kCols);
}

// Column mixing (groups of 8): A·Gᵀ in place, as Blinding does on the
// row-mixed operand (with a fresh draw), and the input gradient's ·G.
void BM_ColMixDrawAndMix(benchmark::State& st) {
  std::vector<float> a(kRows * kCols, 1.0f);
  ColMix mix(8);
  Obfuscator obf(random_secret(), 4.0);
  for (auto _ : st) {
    KeyStream ks = obf.stream();
    mix.draw(0, kCols, ks);
    mix.mix(0, a.data(), kRows, a.data());
    benchmark::DoNotOptimize(a.data());
  }
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * kRows * kCols);
}

void BM_ColUnmix(benchmark::State& st) {
  std::vector<float> a(kRows * kCols, 1.0f), b(a.size());
  ColMix mix(8);
  Obfuscator obf(random_secret(), 4.0);
  KeyStream ks = obf.stream();
  mix.draw(0, kCols, ks);
  for (auto _ : st) {
    mix.unmix(0, a.data(), kRows, b.data());
    benchmark::DoNotOptimize(b.data());
  }
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * kRows * kCols);
}

// The default blinding of a product's data operand, freshly drawn as each
// forward pass does (row mixing 8, column mixing 8, rank-64 mask), on
// resnet18 batch 32's layer-1 convolution (32768×576, 64 outputs) when
// range(0) is 1, else cnn's conv2; range(1): the mask's kind (0 dense, 1
// kron), or 2: mixings only, no mask.
void BM_BlindingApply(benchmark::State& st) {
  const bool big = st.range(0) == 1;
  const int64_t m = big ? 32768 : kRows, k = big ? 576 : kCols, n = 64;
  std::vector<float> a(static_cast<size_t>(m * k)), w(static_cast<size_t>(n * k), 0.5f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 7) - 3.0f;
  Obfuscator obf(random_secret(), 4.0);
  Blinding b(8, st.range(1) == 2 ? 0 : 64, 1.0f, 8, st.range(1) == 1 ? MaskKind::kKron : MaskKind::kDense);
  // Σ a², as im2col hands it to the blinding with A (no pass over A for it).
  const double sumsq = sum_of_squares(a.data(), m * k);
  for (auto _ : st)
    benchmark::DoNotOptimize(b.apply(Product{0, "a", a.data(), w.data(), m, k, n, sumsq}, obf).a);
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * m * k);
}

// The default blinding of resnet18 batch 32's layer-1 A and its encryption
// (keys only, no check): range(0) 0, apply() then encrypt_x, two passes;
// 1, encrypt_x_from on the blinding's own pass, A itself not written (as
// the offload backend's first attempt at a forward product does).
void BM_BlindingEncrypt(benchmark::State& st) {
  const int64_t m = 32768, k = 576, n = 64;
  std::vector<float> a(static_cast<size_t>(m * k)), w(static_cast<size_t>(n * k), 0.5f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 7) - 3.0f;
  Obfuscator obf(random_secret(), 4.0);
  Blinding b(8, 64, 1.0f, 8);
  const double sumsq = sum_of_squares(a.data(), m * k);
  const Product p{0, "a", a.data(), w.data(), m, k, n, sumsq};
  for (auto _ : st) {
    const Triple t = obf.draw_triple(m, k, n);
    if (st.range(0) == 0) {
      const Product& q = b.apply(p, obf);
      benchmark::DoNotOptimize(obf.encrypt_x(t, q.a, m, k).matrix().data());
    } else {
      b.prepare(p, obf);
      benchmark::DoNotOptimize(
          obf.encrypt_x_from(t, m, k, {{0, m}}, [&](const RowsVisit& sink) { b.pass(&sink, false); })[0]
              .matrix()
              .data());
    }
  }
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * m * k);
}

// The dense mask's two big products on resnet18 batch 32's layer 1
// (m = 32768, k = 576, n = 64, rank 64), in isolation: A += U·Vᵀ (range(0)
// 0, m×k×r), and the weight gradient's correction dCᵀ·U (1, n×r over m).
void BM_MaskProducts(benchmark::State& st) {
  const int64_t m = 32768, k = 576, n = 64, r = 64;
  std::vector<float> a(static_cast<size_t>(m * k), 1.0f), u(static_cast<size_t>(m * r), 0.5f);
  std::vector<float> vt(static_cast<size_t>(r * k), 0.25f), dc(static_cast<size_t>(m * n), 0.5f);
  std::vector<float> thin(static_cast<size_t>(n * r));
  for (auto _ : st) {
    if (st.range(0) == 0)
      sgemm(false, false, m, k, r, 1.0f, u.data(), r, vt.data(), k, 1.0f, a.data(), k);
    else
      sgemm(true, false, n, r, m, 1.0f, dc.data(), n, u.data(), r, 0.0f, thin.data(), r);
    benchmark::DoNotOptimize(a.data());
    benchmark::DoNotOptimize(thin.data());
  }
  st.SetItemsProcessed(st.iterations() * 2 * r * (st.range(0) == 0 ? m * k : m * n));  // flops
}

// The whole weight-gradient correction, −(dCᵀ·U)·Vᵀ, as the mask takes it
// (dCᵀ·U in fixed row ranges on every thread), on the same layer: compare
// with BM_MaskProducts/1, BLAS's one product dCᵀ·U.
void BM_MaskWeightCorrection(benchmark::State& st) {
  const int64_t m = 32768, k = 576, n = 64;
  std::vector<float> a(static_cast<size_t>(m * k), 1.0f), w(static_cast<size_t>(n * k), 0.5f);
  std::vector<float> dc(static_cast<size_t>(m * n), 0.5f), dw(static_cast<size_t>(n * k));
  AdditiveMask mask(64);
  KeyStream ks = Obfuscator(random_secret(), 4.0).stream();
  const Product& q = mask.apply(Product{0, "a", a.data(), w.data(), m, k, n}, ks);
  for (auto _ : st) {
    mask.unmask_weight(q, dc.data(), dw.data());
    benchmark::DoNotOptimize(dw.data());
  }
}

// The input gradient's decryption as a default step takes it on resnet18
// batch 32's layer 1 (32768 × 576): the keys removed row by row, with the
// check's products of both rounds, and the row and column mixing undone
// in the same pass (Blinding::decrypt_input); range(0) 1: the columns left
// in the column mixing's group order, as a step leaves them for col2im.
void BM_DecryptInput(benchmark::State& st) {
  const int64_t m = 32768, k = 576, n = 64;
  std::vector<float> a(static_cast<size_t>(m * k), 0.5f), w(static_cast<size_t>(n * k), 0.5f);
  std::vector<float> z(a.size()), da(a.size());
  for (size_t i = 0; i < z.size(); ++i) z[i] = static_cast<float>(i % 13) - 6.0f;
  Obfuscator obf(random_secret(), 4.0);
  Blinding b(8, 64, 1.0f, 8, MaskKind::kDense);
  const Product& q = b.apply(Product{0, "a", a.data(), w.data(), m, k, n}, obf);
  const ScaledPerm r = obf.draw(m), c = obf.draw(k);
  std::vector<double> dot_r(static_cast<size_t>(2 * k), 0.5), dot_out(static_cast<size_t>(2 * m));
  for (auto _ : st) {
    b.decrypt_input(q, z.data(), r, c, dot_r.data(), dot_out.data(), 2, da.data(), st.range(0) == 0);
    benchmark::DoNotOptimize(da.data());
  }
  st.SetBytesProcessed(st.iterations() * 2 * static_cast<int64_t>(sizeof(float)) * m * k);
}

// The layout changes around an offloaded convolution on resnet18 batch
// 32's layer 1 (32 images of 1024 positions, 64 channels): the result's
// rows into NCHW (range(0) 0), and the output gradient's NCHW into rows (1).
void BM_RowsNchw(benchmark::State& st) {
  const int64_t n = 32, P = 1024, O = 64;
  std::vector<float> rows(static_cast<size_t>(n * P * O), 1.0f), nchw(rows.size(), 2.0f);
  for (auto _ : st) {
    if (st.range(0) == 0) rows_to_nchw(rows.data(), nullptr, n, P, O, nchw.data());
    else nchw_to_rows(nchw.data(), n, P, O, rows.data());
    benchmark::DoNotOptimize(rows.data());
    benchmark::DoNotOptimize(nchw.data());
  }
  st.SetBytesProcessed(st.iterations() * 2 * static_cast<int64_t>(sizeof(float)) * n * P * O);
}

// Undoing the default blinding on the forward result (C − U·(Vᵀ·Wᵀ), then
// Mᵀ) and on the weight gradient (− (dCᵀ·U)·Vᵀ, then ·G) of resnet18 batch
// 32's layer 1 (range(0) 0: result, 1: weight gradient).
void BM_BlindingFinish(benchmark::State& st) {
  const int64_t m = 32768, k = 576, n = 64;
  std::vector<float> a(static_cast<size_t>(m * k), 0.5f), w(static_cast<size_t>(n * k), 0.5f);
  std::vector<float> c_sent(static_cast<size_t>(m * n), 1.0f), c(c_sent.size()), dw(w.size(), 1.0f);
  Obfuscator obf(random_secret(), 4.0);
  Blinding b(8, 64, 1.0f, 8, MaskKind::kDense);
  const Product& q = b.apply(Product{0, "a", a.data(), w.data(), m, k, n}, obf);
  const float* g = b.gradient(q, c_sent.data());
  for (auto _ : st) {
    if (st.range(0) == 0) b.finish_forward(q, c_sent.data(), c.data());
    else b.finish_weight(q, g, dw.data());
    benchmark::DoNotOptimize(c.data());
    benchmark::DoNotOptimize(dw.data());
  }
}

// im2col and its adjoint on resnet18's 3×3 convolutions at batch 32
// (argument: 0 layer 1, 64 channels of 32×32; 1 layer 3, 256 of 8×8;
// 2 layer 2's strided first one, 64 channels of 32×32 to 16×16); bytes:
// the operand written (im2col) or read (col2im) once.
ConvGeometry resnet_geometry(int64_t which) {
  if (which == 0) return ConvGeometry::make(32, 64, 32, 32, 64, 3, 1, 1);
  if (which == 1) return ConvGeometry::make(32, 256, 8, 8, 256, 3, 1, 1);
  return ConvGeometry::make(32, 64, 32, 32, 128, 3, 2, 1);
}

void BM_Im2col(benchmark::State& st) {
  const ConvGeometry g = resnet_geometry(st.range(0));
  std::vector<float> x(static_cast<size_t>(g.n * g.c * g.h * g.w), 1.0f);
  std::vector<float> cols(static_cast<size_t>(g.n * g.positions() * g.cols()));
  for (auto _ : st) {
    benchmark::DoNotOptimize(im2col_sumsq(g, x.data(), cols.data()));
    benchmark::DoNotOptimize(cols.data());
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(sizeof(float) * cols.size()));
}

void BM_Col2im(benchmark::State& st) {
  const ConvGeometry g = resnet_geometry(st.range(0));
  std::vector<float> dx(static_cast<size_t>(g.n * g.c * g.h * g.w));
  std::vector<float> cols(static_cast<size_t>(g.n * g.positions() * g.cols()), 1.0f);
  for (auto _ : st) {
    col2im(g, cols.data(), dx.data());
    benchmark::DoNotOptimize(dx.data());
  }
  st.SetBytesProcessed(st.iterations() * static_cast<int64_t>(sizeof(float) * cols.size()));
}

// A whole convolution's training products as a layer runs them (forward,
// then both backward products; oneDNN's reorders from and to NCHW
// included), on the direct kernels (range(0) = 0) or the default ones
// (1: Winograd where oneDNN has it), for resnet18's 3×3 stride-1 layers at
// batch 32 (range(1): layer 1 to 4 as 0 to 3).
void BM_ConvLayer(benchmark::State& st) {
  const int64_t c = int64_t{64} << st.range(1), hw = int64_t{32} >> st.range(1);
  const ConvGeometry g = ConvGeometry::make(32, c, hw, hw, c, 3, 1, 1);
  ConvWorkspace ws(st.range(0) == 0 ? ConvKernels::kDirect : ConvKernels::kBest);
  std::vector<float> x(static_cast<size_t>(g.n * g.c * g.h * g.w), 0.5f), w(static_cast<size_t>(g.o * g.cols()), 0.01f),
      y(static_cast<size_t>(g.n * g.o * g.positions())), dx(x.size()), dw(w.size());
  st.SetLabel(ws.kernel(g));
  for (auto _ : st) {
    conv2d_forward(g, x.data(), w.data(), y.data(), ws);
    conv2d_backward(g, x.data(), y.data(), w.data(), dw.data(), dx.data(), ws);
    benchmark::DoNotOptimize(dx.data());
  }
}

// This core's rate of independent multiply-adds on 16-float vectors (12
// chains, more than latency × ports on any current core), one thread: the
// ceiling for the blinding's mixings and the check's products. Items: FMA
// instructions.
void BM_FmaPeak(benchmark::State& st) {
  typedef float V16 __attribute__((vector_size(64)));
  constexpr int kChains = 12;
  constexpr int64_t kRounds = 1 << 20;
  V16 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = V16{} + 1.0f + static_cast<float>(i) * 1e-7f;
  const V16 x = V16{} + 0.999999f, y = V16{} + 1e-7f;
  for (auto _ : st) {
    for (int64_t n = 0; n < kRounds; ++n)
      for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * x + y;
    benchmark::DoNotOptimize(acc);
  }
  st.SetItemsProcessed(st.iterations() * kRounds * kChains);
}

BENCHMARK(BM_Copy)->UseRealTime();
BENCHMARK(BM_FmaPeak)->UseRealTime();
BENCHMARK(BM_ConvLayer)->ArgsProduct({{0, 1}, {0, 1, 2, 3}})->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RowsNchw)->DenseRange(0, 1)->UseRealTime();
BENCHMARK(BM_Im2col)->DenseRange(0, 2)->UseRealTime();
BENCHMARK(BM_Col2im)->DenseRange(0, 2)->UseRealTime();
BENCHMARK(BM_BlindingApply)->ArgsProduct({{0, 1}, {0, 1, 2}})->UseRealTime();
BENCHMARK(BM_BlindingEncrypt)->DenseRange(0, 1)->UseRealTime();
BENCHMARK(BM_MaskProducts)->DenseRange(0, 1)->UseRealTime();
BENCHMARK(BM_MaskWeightCorrection)->UseRealTime();

// The default blinding's pass over resnet18 batch 32's layer-1 operand
// (m = 32768, k = 576) built up a stage at a time, each with its draws:
// range(0) 0 the row mixing alone (rows made, not written), 1 and the
// column mixing, 2 and the mask, 3 and the encryption (keys, ciphertext
// streamed out): the differences are each stage's cost.
void BM_BlindingStages(benchmark::State& st) {
  const int64_t m = 32768, k = 576, n = 64;
  std::vector<float> a(static_cast<size_t>(m * k)), w(static_cast<size_t>(n * k), 0.5f);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i % 7) - 3.0f;
  Obfuscator obf(random_secret(), 4.0);
  const int stage = static_cast<int>(st.range(0));
  Blinding b(8, stage >= 2 ? 64 : 0, 1.0f, stage >= 1 ? 8 : 0);
  const double sumsq = sum_of_squares(a.data(), m * k);
  const Product p{0, "a", a.data(), w.data(), m, k, n, sumsq};
  for (auto _ : st) {
    const Triple t = obf.draw_triple(m, k, n);
    b.prepare(p, obf);
    if (stage < 3) {
      b.pass(nullptr, false);
    } else {
      benchmark::DoNotOptimize(
          obf.encrypt_x_from(t, m, k, {{0, m}}, [&](const RowsVisit& sink) { b.pass(&sink, false); })[0]
              .matrix()
              .data());
    }
  }
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * m * k);
}
BENCHMARK(BM_BlindingStages)->DenseRange(0, 3)->UseRealTime();

BENCHMARK(BM_DecryptInput)->DenseRange(0, 1)->UseRealTime();
BENCHMARK(BM_BlindingFinish)->DenseRange(0, 1)->UseRealTime();
BENCHMARK(BM_ColMixDrawAndMix)->UseRealTime();
BENCHMARK(BM_ColUnmix)->UseRealTime();
BENCHMARK(BM_RowMixDrawAndMix)->UseRealTime();
BENCHMARK(BM_RowUnmix)->UseRealTime();
BENCHMARK(BM_RandomOrthogonal)->DenseRange(0, 1)->UseRealTime();
BENCHMARK(BM_MaskDraw)->UseRealTime();
BENCHMARK(BM_MaskRows)->DenseRange(0, 3)->UseRealTime();
BENCHMARK(BM_LowRankAdd)->DenseRange(0, 3)->UseRealTime();
BENCHMARK(BM_ApplyKeys)->DenseRange(0, 2)->UseRealTime();
BENCHMARK(BM_Freivalds)->UseRealTime();
BENCHMARK(BM_WeightCheck)->UseRealTime();
BENCHMARK(BM_ForwardCheckRows)->DenseRange(0, 2)->UseRealTime();

}  // namespace
}  // namespace tempo

// TEMPO_THREADS=N: the benchmarks on N threads (ours and BLAS's); unset, all cores.
int main(int argc, char** argv) {
  const char* t = std::getenv("TEMPO_THREADS");
  tempo::set_num_threads(t && *t ? std::atoi(t) : 0);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
