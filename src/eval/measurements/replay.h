// Rollback and retry, measured (P8): a host that replays an old checkpoint
// makes the master encrypt the same plaintexts again, under fresh keys,
// masks and mixings each time (no key stream is used by two executions);
// the retry path re-encrypts one blinded operand under fresh keys. Does
// averaging the re-encryptions give an attacker the plaintext?
//
// The attacker is granted the keys of every execution (it sees the blinded
// operand before the keys: the mixed, masked data operand) and averages N of
// them. Its score is the Pearson correlation, entry by entry, of that
// average with the plaintext operand. "mask only" grants it the mixings as
// well (the same as switching them off): the masks then average away as
// 1/√N, which shows what the mixings' freshness is worth.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tempo {

struct ReplayRow {
  std::string blinding;  // "defaults" or "mask only"
  int executions = 0;    // N
  double correlation = 0;
};

// A post-ReLU operand of m×k (half zeros) and a weight of n×k, from `seed`;
// one row per blinding × N in `counts`.
std::vector<ReplayRow> measure_replay_averaging(int64_t m, int64_t k, int64_t n, const std::vector<int>& counts,
                                                uint64_t seed);

}  // namespace tempo
