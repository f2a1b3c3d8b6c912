// Google Benchmark of the trusted side's memory-bound kernels: key
// application (encryption/decryption), Freivalds' check, and a plain copy as
// the bandwidth reference. Sizes are those of `cnn` batch 64 (conv2).
#include <benchmark/benchmark.h>

#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "trusted/obfuscation/col_mix.h"
#include "trusted/obfuscation/mask.h"
#include "trusted/obfuscation/obfuscator.h"
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

void BM_ApplyKeys(benchmark::State& st) {
  Obfuscator obf(random_secret(), 4.0);
  ScaledPerm r = obf.draw(kRows), c = obf.draw(kCols);
  std::vector<float> a(kRows * kCols, 1.0f), b(a.size());
  for (auto _ : st) {
    apply_keys(a.data(), kRows, kCols, r, c, b.data());
    benchmark::DoNotOptimize(b.data());
  }
  st.SetBytesProcessed(st.iterations() * 2 * sizeof(float) * kRows * kCols);
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

void BM_MaskDraw(benchmark::State& st) {
  AdditiveMask mask(64);
  draw_and_apply(st, mask);
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

BENCHMARK(BM_Copy)->UseRealTime();
BENCHMARK(BM_ColMixDrawAndMix)->UseRealTime();
BENCHMARK(BM_ColUnmix)->UseRealTime();
BENCHMARK(BM_RowMixDrawAndMix)->UseRealTime();
BENCHMARK(BM_RowUnmix)->UseRealTime();
BENCHMARK(BM_MaskDraw)->UseRealTime();
BENCHMARK(BM_ApplyKeys)->UseRealTime();
BENCHMARK(BM_Freivalds)->UseRealTime();

}  // namespace
}  // namespace tempo

BENCHMARK_MAIN();
