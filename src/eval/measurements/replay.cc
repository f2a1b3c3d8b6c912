#include "eval/measurements/replay.h"

#include <algorithm>
#include <cmath>

#include "eval/attacks/ica.h"
#include "trusted/obfuscation/blinding.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/obfuscation/obfuscator.h"
#include "trusted/offload/offload_backend.h"
#include "trusted/rng.h"

namespace tempo {

std::vector<ReplayRow> measure_replay_averaging(int64_t m, int64_t k, int64_t n, const std::vector<int>& counts,
                                                uint64_t seed) {
  Rng rng = Rng::derive(seed, 0x7e91);
  std::vector<float> a(static_cast<size_t>(m * k)), w(static_cast<size_t>(n * k));
  for (auto& v : a) v = std::max(0.0f, static_cast<float>(rng.normal()));
  for (auto& v : w) v = static_cast<float>(rng.normal()) / std::sqrt(static_cast<float>(k));
  Product p;
  p.id = 0;
  p.name = "replayed";
  p.a = a.data();
  p.w = w.data();
  p.m = m;
  p.k = k;
  p.n = n;
  const int most = counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
  const std::vector<double> plain(a.begin(), a.end());
  std::vector<ReplayRow> out;
  for (const bool defaults : {true, false}) {
    const OffloadConfig dflt;
    Blinding blind(defaults ? dflt.row_mix : 0, dflt.mask_rank, dflt.mask_magnitude, defaults ? dflt.col_mix : 0,
                   dflt.mask_kind);
    std::vector<double> sum(a.size(), 0.0), avg(a.size());
    for (int e = 1; e <= most; ++e) {
      // One execution: a fresh secret, as every resumed execution draws.
      Obfuscator obf(derive_secret(secret_from_seed(seed), "replay", static_cast<uint64_t>(e)), 4.0);
      const Product& q = blind.apply(p, obf);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += q.a[i];
      if (std::find(counts.begin(), counts.end(), e) == counts.end()) continue;
      for (size_t i = 0; i < sum.size(); ++i) avg[i] = sum[i] / e;
      out.push_back({defaults ? "defaults" : "mask only", e, pearson(avg.data(), plain.data(), static_cast<int64_t>(avg.size()))});
    }
  }
  return out;
}

}  // namespace tempo
