// Shared by the row and column mixings (row_mix.h, col_mix.h): the secret
// grouping of d indices into blocks, and Haar-random orthogonal blocks.
#pragma once

#include <algorithm>
#include <cstdint>

#include "trusted/obfuscation/keys.h"

namespace tempo {

// Groups of d indices: floor(d / b) of them (one if d < b), sizes as even as
// possible, so no group is smaller than b (a group of one would be an index
// merely scaled by ±1).
struct MixGroups {
  int64_t count, largest;
  MixGroups(int64_t d, int b) : count(std::max<int64_t>(1, d / b)), largest((d + count - 1) / count) {}
  int64_t begin(int64_t d, int64_t g) const { return d * g / count; }
};

// A Haar-random orthogonal n×n matrix (n ≤ 64; row-major, leading dimension
// ld): Gram–Schmidt (twice, in double) of a Gaussian matrix.
void random_orthogonal(KeyStream& ks, int64_t n, int64_t ld, float* out);

// The matrices of groups [g0, g1) of gr (over d indices), in turn from ks:
// group g's (n_g × n_g) at out + (g − g0)·largest², leading dimension
// largest. The same bits as random_orthogonal for each group in turn;
// runs of equal sizes up to 16 are drawn 8 at a time, one per vector lane
// (1.5x the rate in BM_RandomOrthogonal on the 2-core AMD EPYC VM: a
// block's Gram–Schmidt is a chain of short dependent sums, which one
// matrix alone cannot spread over the vector units).
void random_orthogonals(KeyStream& ks, const MixGroups& gr, int64_t d, int64_t g0, int64_t g1, float* out);

}  // namespace tempo
