// Exact low-rank additions (common/exact_low_rank.h): the tile path (AMX),
// the dot-product paths (AVX-512 VNNI, AVX-VNNI) and the portable one give
// the same bits, and all give the definition: the integer U·Vᵀ, exact, then
// one fma per entry.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/exact_low_rank.h"
#include "common/parallel.h"
#include "trusted/rng.h"

namespace tempo {
namespace {

constexpr LowRankPath kFastPaths[] = {LowRankPath::kDots256, LowRankPath::kDots512, LowRankPath::kTiles};

struct Case {
  int64_t n, k, r;
  bool extreme = false;  // every entry ±127 (U's −127, V's +127 or −127 by column): the largest sums
};

// rows (n×k) after add() on the path asked for.
std::vector<float> run(const Case& c, LowRankPath path, uint64_t seed) {
  Rng rng(seed);
  std::vector<int8_t> v(static_cast<size_t>(c.k * c.r));
  for (auto& x : v) x = static_cast<int8_t>(static_cast<int>(rng.next() % 255) - 127);
  if (c.extreme)
    for (int64_t j = 0; j < c.k; ++j)
      for (int64_t q = 0; q < c.r; ++q) v[static_cast<size_t>(j * c.r + q)] = static_cast<int8_t>(j % 2 ? -127 : 127);
  ExactLowRank lr;
  lr.set_v(v.data(), c.k, c.r);
  const int64_t stride = lr.u_stride();
  EXPECT_EQ(stride % 64, 0);
  EXPECT_GE(stride, c.r);
  std::vector<int8_t> u(static_cast<size_t>(c.n * stride), 0);
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t q = 0; q < c.r; ++q) u[static_cast<size_t>(i * stride + q)] = c.extreme ? int8_t{-127} : static_cast<int8_t>(static_cast<int>(rng.next() % 255) - 127);
  std::vector<float> rows(static_cast<size_t>(c.n * c.k));
  for (auto& x : rows) x = static_cast<float>(rng.normal());
  // Rows in a scattered order, as a mixing pass hands them.
  std::vector<const int8_t*> up(static_cast<size_t>(c.n));
  std::vector<float*> rp(static_cast<size_t>(c.n));
  for (int64_t t = 0; t < c.n; ++t) {
    const int64_t i = (t * 11 + 3) % c.n;  // a permutation: 11 divides no n here
    up[static_cast<size_t>(t)] = u.data() + i * stride;
    rp[static_cast<size_t>(t)] = rows.data() + i * c.k;
  }
  // The definition, in double (exact: every sum is an integer below 2^24),
  // on the rows as they were.
  std::vector<float> want = rows;
  for (int64_t i = 0; i < c.n; ++i)
    for (int64_t j = 0; j < c.k; ++j) {
      double sum = 0;
      for (int64_t q = 0; q < c.r; ++q) sum += double(u[static_cast<size_t>(i * stride + q)]) * v[static_cast<size_t>(j * c.r + q)];
      float& w = want[static_cast<size_t>(i * c.k + j)];
      w = std::fma(static_cast<float>(sum), 0.37f, w);
    }
  force_low_rank_path(path);
  lr.add(up.data(), rp.data(), c.n, 0.37f);
  force_low_rank_path(std::nullopt);
  EXPECT_EQ(0, std::memcmp(rows.data(), want.data(), rows.size() * sizeof(float)))
      << low_rank_path_name(path) << ": not the definition";
  return rows;
}

// Ranks 64 (one tile chunk), 16 (padded) and 100 (two chunks, padded);
// columns a multiple of 16, not one, and fewer than 16 (the dot products'
// 1 to 4 column blocks at a time); rows fewer than a tile, a tile, and
// more (1 to 4 rows at a time); entries at ±127, the bounds the dot
// products' offset must carry.
TEST(ExactLowRank, EveryPathGivesTheDefinitionBitForBit) {
  const std::vector<Case> cases = {{37, 576, 64}, {8, 288, 64}, {16, 27, 16}, {21, 300, 100},
                                   {1, 9, 64},    {40, 150, 1}, {7, 100, 64}, {3, 48, 128},
                                   {5, 20, kExactRankMax, true}};
  for (const Case& c : cases) {
    SCOPED_TRACE(std::to_string(c.n) + " rows, " + std::to_string(c.k) + " columns, rank " + std::to_string(c.r));
    const std::vector<float> portable = run(c, LowRankPath::kPortable, 5);
    for (LowRankPath p : kFastPaths) {
      const std::vector<float> got = run(c, p, 5);
      EXPECT_EQ(0, std::memcmp(portable.data(), got.data(), got.size() * sizeof(float))) << low_rank_path_name(p);
    }
  }
  for (LowRankPath p : kFastPaths)
    if (!low_rank_path_usable(p))
      std::printf("[   NOTE   ] the %s path cannot run on this CPU: not compared here\n", low_rank_path_name(p));
}

TEST(ExactLowRank, RefusesARankWhoseSumsWouldNotBeExact) {
  ExactLowRank lr;
  std::vector<int8_t> v(static_cast<size_t>(2 * (kExactRankMax + 1)), 1);
  EXPECT_THROW(lr.set_v(v.data(), 2, kExactRankMax + 1), std::exception);
  EXPECT_NO_THROW(lr.set_v(v.data(), 2, kExactRankMax));
}

}  // namespace
}  // namespace tempo
