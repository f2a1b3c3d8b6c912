// Helpers shared by the files of OffloadBackend (offload_backend.cc: the
// worker pool, entry points and the step; offload_split.cc: products split
// across workers under the key shift; offload_retry.cc: fresh-key retries,
// quarantine and fallback; offload_channel.cc: channel-mode convolutions).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "common/timer.h"

namespace tempo::offload_detail {

// Adds the seconds of its lifetime to a phase counter.
using PhaseTimer = ScopeSeconds;

// Equal contiguous row shares, a function of m and the worker count only.
inline std::vector<std::pair<int64_t, int64_t>> split_rows(int64_t m, size_t parts) {
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(m, static_cast<int64_t>(parts)));
  for (int64_t i = 0; i < n; ++i) out.emplace_back(m * i / n, m * (i + 1) / n);
  return out;
}

// Column split (tensor parallel) when it sends fewer bytes: a row split
// sends m·k + P·n·k floats (W' to every worker), a column split P·m·k + n·k
// (A' to every worker). A function of the shape and worker count only.
inline bool split_by_cols(int64_t m, int64_t n, size_t parts) { return parts > 1 && n > m; }

inline const char* kind_name(int k) {
  static const char* names[] = {"forward", "input gradient", "weight gradient"};
  return names[k];
}

}  // namespace tempo::offload_detail
