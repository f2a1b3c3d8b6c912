// Ciphertexts made as the pipeline makes them, traced: for measurements and
// for scoring attacks, each ciphertext entry is paired with the plaintext
// entry it came from. An attacker never sees the trace.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "trusted/obfuscation/obfuscator.h"

namespace tempo {

struct Traced {
  std::vector<float> values;               // X' = L·X·Q⁻¹, rows × cols
  std::vector<int32_t> src_row, src_col;   // where each entry of X' came from
};

// Encrypts x (rows × cols) under t with encrypt_x, and traces it by
// encrypting the row and column indices and the all-ones matrix under the
// same keys (their ratios are the source indices, exact below 2^20).
Traced encrypt_traced(const Triple& t, const float* x, int64_t rows, int64_t cols);

// Keys for a measurement: real ones from `seed`, or none (identity: the
// insecure offload mode, for comparison).
std::unique_ptr<Obfuscator> measurement_keys(uint64_t seed, double key_scale, bool identity);

}  // namespace tempo
