// Exact low-rank additions: rows += s·(U·Vᵀ) where U and V hold small
// integers (int8). Every product is below 2¹⁴ and every partial sum of at
// most kExactRankMax of them below 2²⁴, so the integer U·Vᵀ is exact in
// float whatever the order of summation: the tile path (Intel AMX, int8 dot
// products into int32), the dot-product path (AVX-512 VNNI, the same int8
// products 4 to an int32 lane) and the portable one (sgemm on the same
// integers as floats) give the same integers, and each entry then takes one
// rounding, fma(n, s, row). The paths agree bit for bit, so a result does
// not depend on which one a machine has.
//
// On AMX a rank-64 product is one tile instruction per 16×16 entries, about
// six times the rate of fp32 arithmetic on the same core
// (docs/BENCHMARKS.md); it needs Linux's permission for the tile state
// (arch_prctl, asked once). Under SGX the enclave must be built with AMX
// in its allowed features (XFRM; Gramine: `sgx.cpu_features.amx`), else the
// request fails and another path runs. Without AMX, AVX-512 VNNI does
// the product at 64 int8 multiply-adds an instruction, four times fp32's
// (Ice Lake and later Xeons, AMD Zen 4), and AVX-VNNI at 32 on CPUs
// without AVX-512 (Intel's since Alder Lake, Xeon 6 E-cores).
// TEMPO_NO_AMX=1 in the environment turns the tiles off, TEMPO_NO_VNNI=1
// both dot-product paths; with both, the portable path runs.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace tempo {

constexpr int64_t kExactRankMax = 1024;  // 1024·127² < 2²⁴

// The paths of add(), fastest first: AMX tiles, AVX-512 VNNI, AVX-VNNI
// (the same dot products on 256-bit registers), sgemm.
enum class LowRankPath { kTiles, kDots512, kDots256, kPortable };
// "AMX tiles", "AVX-512 VNNI", "AVX-VNNI", "sgemm".
const char* low_rank_path_name(LowRankPath p);
// Whether p can run here (CPU, kernel permission, TEMPO_NO_AMX and
// TEMPO_NO_VNNI); decided once. The portable path always can.
bool low_rank_path_usable(LowRankPath p);
// The path add() takes: the fastest usable one, unless another was forced
// (tests and benchmarks compare the paths in one process; a forced path
// that cannot run here gives the portable one).
LowRankPath low_rank_path();
void force_low_rank_path(std::optional<LowRankPath> p);  // std::nullopt: the fastest again

class ExactLowRank {
 public:
  // V: k×r int8, row j is V's row j (r ≤ kExactRankMax). Kept as floats
  // (Vᵀ, r×k, for the portable path and for callers' own products) and
  // packed for the tiles and the dot products.
  void set_v(const int8_t* v, int64_t k, int64_t r);
  int64_t rank() const { return r_; }
  int64_t cols() const { return k_; }
  // The stride a row of U must have for add(): r rounded up to 64, the
  // entries past r zero.
  int64_t u_stride() const { return rp_; }
  const float* vt() const { return vt_.data(); }
  // rows[t][j] = fma(Σ_q u[t][q]·V[j][q], s, rows[t][j]) for t < n, j < k;
  // u[t] points to u_stride() int8. Any thread, any n.
  void add(const int8_t* const* u, float* const* rows, int64_t n, float s) const;

 private:
  int64_t k_ = 0, r_ = 0, rp_ = 0;
  std::vector<float> vt_;
  std::vector<int8_t> packed_;     // [64-chunk of r][16-column block][r/4 row][16 columns × 4]
  std::vector<uint8_t> packed_u_;  // the same plus 128 (the dot products' unsigned operand)
};

}  // namespace tempo
