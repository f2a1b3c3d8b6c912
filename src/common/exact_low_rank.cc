#include "common/exact_low_rank.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__)
// GCC 12 takes the intrinsics' _mm512_undefined_* placeholders for
// uninitialised values (a false -Wmaybe-uninitialized, or -Wuninitialized).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "common/blas.h"
#include "common/error.h"

namespace tempo {

namespace {

#if defined(__x86_64__)
bool switched_off(const char* name) {
  const char* off = std::getenv(name);
  return off && *off && std::strcmp(off, "0") != 0;
}

// The state components the kernel saves (XCR0); call only with OSXSAVE.
uint64_t xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

// AVX-512 F and BW, and the kernel saves their state (XCR0: opmask, ZMM);
// `extra` more bits of XCR0 asked.
bool avx512_state(uint64_t extra) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  if (!(b & (1u << 16)) || !(b & (1u << 30))) return false;  // F, BW
  const uint64_t need = (7u << 5) | extra;
  return (xcr0() & need) == need;
}

// The tile path's instructions exist, the kernel saves their state and
// AVX-512's, and it granted this process the tile data (Linux ≥ 5.16).
bool detect_amx() {
  if (switched_off("TEMPO_NO_AMX")) return false;
  if (!avx512_state(3u << 17)) return false;  // XTILECFG, XTILEDATA
  unsigned a = 0, b = 0, c = 0, d = 0;
  __cpuid_count(7, 0, a, b, c, d);
  if (!(d & (1u << 24)) || !(d & (1u << 25))) return false;  // AMX-TILE, AMX-INT8
  constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
}

// AVX-512 VNNI (VPDPBUSD: 4 int8 products summed into each int32 lane).
bool detect_vnni() {
  if (switched_off("TEMPO_NO_VNNI")) return false;
  if (!avx512_state(0)) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  __cpuid_count(7, 0, a, b, c, d);
  return (c & (1u << 11)) != 0;
}

// AVX-VNNI: the same instruction on 256-bit registers, with AVX2 and FMA
// (CPUs without AVX-512: Intel's since Alder Lake, Xeon 6 E-cores).
bool detect_vnni256() {
  if (switched_off("TEMPO_NO_VNNI")) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)) || !(c & (1u << 12))) return false;  // OSXSAVE, FMA
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  if (!(b & (1u << 5))) return false;  // AVX2
  __cpuid_count(7, 1, a, b, c, d);
  if (!(a & (1u << 4))) return false;  // AVX-VNNI
  return (xcr0() & 6u) == 6u;            // SSE and AVX state
}

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row
  uint8_t rows[16] = {};
};

// tmm0–3: four 16-column blocks of int32 sums (nr rows); tmm4: nr rows of U,
// 64 of its r at a time; tmm5: the matching 64 × 16 block of V, packed.
// TDPBSSD adds A's rows times B: K = 64 int8 products per int32 entry.
#define TEMPO_TILE_TARGET __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw")))

TEMPO_TILE_TARGET void add_tiles(const int8_t* const* u, float* const* rows, int64_t n, float s,
                                 const int8_t* packed, int64_t k, int64_t rp) {
  const int64_t blocks = (k + 15) / 16, chunks = rp / 64;
  thread_local std::vector<int8_t> gathered;
  if (gathered.size() < static_cast<size_t>(16 * rp)) gathered.resize(static_cast<size_t>(16 * rp));
  int8_t* a = gathered.data();
  alignas(64) int32_t c[4][16 * 16];
  const __m512 sv = _mm512_set1_ps(s);
  TileConfig cfg;
  int configured = 0;
  for (int64_t t0 = 0; t0 < n; t0 += 16) {
    const int nr = static_cast<int>(std::min<int64_t>(16, n - t0));
    if (nr != configured) {
      for (int t = 0; t < 6; ++t) cfg.colsb[t] = 64, cfg.rows[t] = static_cast<uint8_t>(nr);
      cfg.rows[5] = 16;
      _tile_loadconfig(&cfg);
      configured = nr;
    }
    for (int t = 0; t < nr; ++t) std::memcpy(a + t * rp, u[t0 + t], static_cast<size_t>(rp));
    for (int64_t b0 = 0; b0 < blocks; b0 += 4) {
      const int64_t nb = std::min<int64_t>(4, blocks - b0);
      _tile_zero(0);
      if (nb > 1) _tile_zero(1);
      if (nb > 2) _tile_zero(2);
      if (nb > 3) _tile_zero(3);
      for (int64_t ch = 0; ch < chunks; ++ch) {
        const int8_t* v = packed + (ch * blocks + b0) * 1024;
        _tile_loadd(4, a + ch * 64, rp);
        _tile_loadd(5, v, 64);
        _tile_dpbssd(0, 4, 5);
        if (nb > 1) {
          _tile_loadd(5, v + 1024, 64);
          _tile_dpbssd(1, 4, 5);
        }
        if (nb > 2) {
          _tile_loadd(5, v + 2048, 64);
          _tile_dpbssd(2, 4, 5);
        }
        if (nb > 3) {
          _tile_loadd(5, v + 3072, 64);
          _tile_dpbssd(3, 4, 5);
        }
      }
      _tile_stored(0, c[0], 64);
      if (nb > 1) _tile_stored(1, c[1], 64);
      if (nb > 2) _tile_stored(2, c[2], 64);
      if (nb > 3) _tile_stored(3, c[3], 64);
      for (int t = 0; t < nr; ++t) {
        float* row = rows[t0 + t];
        for (int64_t b = 0; b < nb; ++b) {
          const int64_t j = (b0 + b) * 16;
          const __mmask16 live = k - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (k - j)) - 1);
          const __m512 x = _mm512_cvtepi32_ps(_mm512_load_si512(c[b] + t * 16));
          _mm512_mask_storeu_ps(row + j, live, _mm512_fmadd_ps(x, sv, _mm512_maskz_loadu_ps(live, row + j)));
        }
      }
    }
  }
  _tile_release();
}

// The same sums on AVX-512 VNNI. VPDPBUSD multiplies unsigned bytes by
// signed ones: V's entries go in as v + 128 (the sign bit flipped, in
// their own copy of the tiles' packing: for 4 of r and 16 columns, 64
// bytes) and U's as they are, broadcast 4 at a time, so each row's sums
// start from −128·Σ_q U[t][q]: the partial sums stay below 2³¹ and the
// result is U·Vᵀ's integer, as on the other paths. NR rows by NB column
// blocks of 16 at a time, in registers.
//
// The multiply-adds are written as inline assembly: GCC 12 keeps an array
// of the intrinsic's accumulators on the stack (a store and a load per
// instruction, less than half the rate); an asm statement with a "+v"
// operand stays in a register.
#define TEMPO_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vnni")))

TEMPO_VNNI_TARGET inline __m512i dpbusd512(__m512i acc, __m512i unsigned_bytes, __m512i signed_bytes) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(unsigned_bytes), "v"(signed_bytes));
  return acc;
}

// −128·Σ_q U[t][q] over the row's rp entries (those past r are zero).
inline int32_t row_start(const int8_t* u, int64_t rp) {
  int32_t sum = 0;
  for (int64_t q = 0; q < rp; ++q) sum += u[q];
  return -128 * sum;
}

template <int NR, int NB>
TEMPO_VNNI_TARGET inline void dots_block(const int8_t* const* u, const int32_t* start, float* const* rows, __m512 sv,
                                         const uint8_t* packed, int64_t k, int64_t blocks, int64_t chunks,
                                         int64_t b0) {
  __m512i acc[NR][NB];
  for (int t = 0; t < NR; ++t)
    for (int b = 0; b < NB; ++b) acc[t][b] = _mm512_set1_epi32(start[t]);
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const uint8_t* v = packed + (ch * blocks + b0) * 1024;
    for (int qq = 0; qq < 16; ++qq) {
      __m512i vb[NB];
      for (int b = 0; b < NB; ++b) vb[b] = _mm512_loadu_si512(v + b * 1024 + qq * 64);
      for (int t = 0; t < NR; ++t) {
        int32_t four;
        std::memcpy(&four, u[t] + ch * 64 + qq * 4, 4);
        const __m512i ub = _mm512_set1_epi32(four);
        for (int b = 0; b < NB; ++b) acc[t][b] = dpbusd512(acc[t][b], vb[b], ub);
      }
    }
  }
  for (int t = 0; t < NR; ++t)
    for (int b = 0; b < NB; ++b) {
      const int64_t j = (b0 + b) * 16;
      const __mmask16 live = k - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (k - j)) - 1);
      const __m512 x = _mm512_cvtepi32_ps(acc[t][b]);
      _mm512_mask_storeu_ps(rows[t] + j, live, _mm512_fmadd_ps(x, sv, _mm512_maskz_loadu_ps(live, rows[t] + j)));
    }
}

// NR rows across all column blocks, three at a time (8 × 3 sums, 3 of V
// and U's broadcast: 28 of the 32 registers).
template <int NR>
TEMPO_VNNI_TARGET void dots_rows(const int8_t* const* u, float* const* rows, __m512 sv, const uint8_t* packed,
                                 int64_t k, int64_t rp, int64_t blocks, int64_t chunks) {
  int32_t start[NR];
  for (int t = 0; t < NR; ++t) start[t] = row_start(u[t], rp);
  int64_t b0 = 0;
  for (; b0 + 3 <= blocks; b0 += 3) dots_block<NR, 3>(u, start, rows, sv, packed, k, blocks, chunks, b0);
  switch (blocks - b0) {
    case 2: dots_block<NR, 2>(u, start, rows, sv, packed, k, blocks, chunks, b0); break;
    case 1: dots_block<NR, 1>(u, start, rows, sv, packed, k, blocks, chunks, b0); break;
    default: break;
  }
}

TEMPO_VNNI_TARGET void add_dots(const int8_t* const* u, float* const* rows, int64_t n, float s,
                                const uint8_t* packed, int64_t k, int64_t rp) {
  const int64_t blocks = (k + 15) / 16, chunks = rp / 64;
  const __m512 sv = _mm512_set1_ps(s);
  int64_t t0 = 0;
  for (; t0 + 8 <= n; t0 += 8) dots_rows<8>(u + t0, rows + t0, sv, packed, k, rp, blocks, chunks);
  if (n - t0 >= 4) dots_rows<4>(u + t0, rows + t0, sv, packed, k, rp, blocks, chunks), t0 += 4;
  if (n - t0 >= 2) dots_rows<2>(u + t0, rows + t0, sv, packed, k, rp, blocks, chunks), t0 += 2;
  if (n - t0 >= 1) dots_rows<1>(u + t0, rows + t0, sv, packed, k, rp, blocks, chunks);
}

// The same on AVX-VNNI's 256-bit registers: each 16-column block of the
// packing as two halves of 8 columns; NR rows by one block at a time
// (2·NR sums, 2 of V and U's broadcast: 15 of the 16 registers at NR 6).
#define TEMPO_VNNI256_TARGET __attribute__((target("avx2,fma,avxvnni")))

TEMPO_VNNI256_TARGET inline __m256i dpbusd256(__m256i acc, __m256i unsigned_bytes, __m256i signed_bytes) {
  __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(unsigned_bytes), "x"(signed_bytes));
  return acc;
}

template <int NR>
TEMPO_VNNI256_TARGET inline void dots256_block(const int8_t* const* u, const int32_t* start, float* const* rows,
                                               float s, const uint8_t* packed, int64_t k, int64_t blocks,
                                               int64_t chunks, int64_t b0) {
  __m256i acc[NR][2];
  for (int t = 0; t < NR; ++t) acc[t][0] = acc[t][1] = _mm256_set1_epi32(start[t]);
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const uint8_t* v = packed + (ch * blocks + b0) * 1024;
    for (int qq = 0; qq < 16; ++qq) {
      const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + qq * 64));
      const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + qq * 64 + 32));
      for (int t = 0; t < NR; ++t) {
        int32_t four;
        std::memcpy(&four, u[t] + ch * 64 + qq * 4, 4);
        const __m256i ub = _mm256_set1_epi32(four);
        acc[t][0] = dpbusd256(acc[t][0], v0, ub);
        acc[t][1] = dpbusd256(acc[t][1], v1, ub);
      }
    }
  }
  const __m256 sv = _mm256_set1_ps(s);
  for (int t = 0; t < NR; ++t)
    for (int h = 0; h < 2; ++h) {
      const int64_t j = b0 * 16 + h * 8;
      float* row = rows[t] + j;
      if (k - j >= 8) {
        _mm256_storeu_ps(row, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t][h]), sv, _mm256_loadu_ps(row)));
      } else if (k > j) {
        alignas(32) int32_t sums[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(sums), acc[t][h]);
        for (int64_t l = 0; l < k - j; ++l) row[l] = std::fma(static_cast<float>(sums[l]), s, row[l]);
      }
    }
}

template <int NR>
TEMPO_VNNI256_TARGET void dots256_rows(const int8_t* const* u, float* const* rows, float s, const uint8_t* packed,
                                       int64_t k, int64_t rp, int64_t blocks, int64_t chunks) {
  int32_t start[NR];
  for (int t = 0; t < NR; ++t) start[t] = row_start(u[t], rp);
  for (int64_t b0 = 0; b0 < blocks; ++b0) dots256_block<NR>(u, start, rows, s, packed, k, blocks, chunks, b0);
}

TEMPO_VNNI256_TARGET void add_dots256(const int8_t* const* u, float* const* rows, int64_t n, float s,
                                      const uint8_t* packed, int64_t k, int64_t rp) {
  const int64_t blocks = (k + 15) / 16, chunks = rp / 64;
  int64_t t0 = 0;
  for (; t0 + 6 <= n; t0 += 6) dots256_rows<6>(u + t0, rows + t0, s, packed, k, rp, blocks, chunks);
  if (n - t0 >= 4) dots256_rows<4>(u + t0, rows + t0, s, packed, k, rp, blocks, chunks), t0 += 4;
  if (n - t0 >= 2) dots256_rows<2>(u + t0, rows + t0, s, packed, k, rp, blocks, chunks), t0 += 2;
  if (n - t0 >= 1) dots256_rows<1>(u + t0, rows + t0, s, packed, k, rp, blocks, chunks);
}
#else
bool detect_amx() { return false; }
bool detect_vnni() { return false; }
bool detect_vnni256() { return false; }
void add_tiles(const int8_t* const*, float* const*, int64_t, float, const int8_t*, int64_t, int64_t) {}
void add_dots(const int8_t* const*, float* const*, int64_t, float, const uint8_t*, int64_t, int64_t) {}
void add_dots256(const int8_t* const*, float* const*, int64_t, float, const uint8_t*, int64_t, int64_t) {}
#endif

std::atomic<int> g_forced{-1};  // a LowRankPath, or −1: the fastest usable

}  // namespace

const char* low_rank_path_name(LowRankPath p) {
  switch (p) {
    case LowRankPath::kTiles: return "AMX tiles";
    case LowRankPath::kDots512: return "AVX-512 VNNI";
    case LowRankPath::kDots256: return "AVX-VNNI";
    case LowRankPath::kPortable: break;
  }
  return "sgemm";
}

bool low_rank_path_usable(LowRankPath p) {
  static const bool tiles = detect_amx(), dots512 = detect_vnni(), dots256 = detect_vnni256();
  switch (p) {
    case LowRankPath::kTiles: return tiles;
    case LowRankPath::kDots512: return dots512;
    case LowRankPath::kDots256: return dots256;
    case LowRankPath::kPortable: break;
  }
  return true;
}

LowRankPath low_rank_path() {
  const int forced = g_forced.load(std::memory_order_relaxed);
  if (forced >= 0) {
    const auto p = static_cast<LowRankPath>(forced);
    return low_rank_path_usable(p) ? p : LowRankPath::kPortable;
  }
  for (LowRankPath p : {LowRankPath::kTiles, LowRankPath::kDots512, LowRankPath::kDots256})
    if (low_rank_path_usable(p)) return p;
  return LowRankPath::kPortable;
}

void force_low_rank_path(std::optional<LowRankPath> p) {
  g_forced.store(p ? static_cast<int>(*p) : -1, std::memory_order_relaxed);
}

void ExactLowRank::set_v(const int8_t* v, int64_t k, int64_t r) {
  TEMPO_CHECK(r >= 1 && r <= kExactRankMax && k >= 1, "exact low-rank product: rank out of range");
  k_ = k, r_ = r, rp_ = (r + 63) / 64 * 64;
  vt_.resize(static_cast<size_t>(r * k));
  for (int64_t j = 0; j < k; ++j)
    for (int64_t q = 0; q < r; ++q) vt_[static_cast<size_t>(q * k + j)] = v[j * r + q];
  if (!low_rank_path_usable(LowRankPath::kTiles) && !low_rank_path_usable(LowRankPath::kDots512) &&
      !low_rank_path_usable(LowRankPath::kDots256))
    return;
  // Block b of 16 columns, chunk ch of 64 of r: 16 rows of 64 bytes, row
  // q/4 holding column j's entries q (mod 4) at 4·(j mod 16) + q mod 4;
  // the dot products' copy holds them plus 128, as unsigned bytes.
  const int64_t blocks = (k + 15) / 16;
  const auto size = static_cast<size_t>((rp_ / 64) * blocks * 1024);
  packed_.assign(size, 0);
  packed_u_.assign(size, 128);
  for (int64_t j = 0; j < k; ++j)
    for (int64_t q = 0; q < r; ++q) {
      const auto at = static_cast<size_t>(((q / 64) * blocks + j / 16) * 1024 + (q % 64) / 4 * 64 + (j % 16) * 4 + q % 4);
      packed_[at] = v[j * r + q];
      packed_u_[at] = static_cast<uint8_t>(v[j * r + q] + 128);
    }
}

void ExactLowRank::add(const int8_t* const* u, float* const* rows, int64_t n, float s) const {
  if (n <= 0) return;
  switch (low_rank_path()) {
    case LowRankPath::kTiles: return add_tiles(u, rows, n, s, packed_.data(), k_, rp_);
    case LowRankPath::kDots512: return add_dots(u, rows, n, s, packed_u_.data(), k_, rp_);
    case LowRankPath::kDots256: return add_dots256(u, rows, n, s, packed_u_.data(), k_, rp_);
    case LowRankPath::kPortable: break;
  }
  // The same integers through sgemm, 16 rows at a time (exact: see the header).
  constexpr int64_t kRows = 16;
  thread_local std::vector<float> uf, sums;
  if (uf.size() < static_cast<size_t>(kRows * r_)) uf.resize(static_cast<size_t>(kRows * r_));
  if (sums.size() < static_cast<size_t>(kRows * k_)) sums.resize(static_cast<size_t>(kRows * k_));
  for (int64_t t0 = 0; t0 < n; t0 += kRows) {
    const int64_t nr = std::min(kRows, n - t0);
    for (int64_t t = 0; t < nr; ++t)
      for (int64_t q = 0; q < r_; ++q) uf[static_cast<size_t>(t * r_ + q)] = u[t0 + t][q];
    sgemm(false, false, nr, k_, r_, 1.0f, uf.data(), r_, vt_.data(), k_, 0.0f, sums.data(), k_);
    for (int64_t t = 0; t < nr; ++t) {
      float* row = rows[t0 + t];
      const float* sum = sums.data() + t * k_;
#pragma omp simd
      for (int64_t j = 0; j < k_; ++j) row[j] = std::fma(sum[j], s, row[j]);
    }
  }
}

}  // namespace tempo
