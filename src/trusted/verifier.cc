#include "trusted/verifier.h"

#include <algorithm>
#include <cmath>

#include "common/parallel.h"

namespace tempo {

std::vector<int64_t> Verifier::check(const float* c, int64_t m, int64_t n, int64_t k, Operand a,
                                     Operand b, KeyStream& ks, const int32_t* rows_k,
                                     int64_t k_full) {
  std::vector<int64_t> bad;
  // keff: the k indices used; kfull: the stored extent of the k dimension.
  const int64_t keff = k;
  const int64_t kfull = rows_k ? k_full : k;
  r_.resize(static_cast<size_t>(n));
  br_.resize(static_cast<size_t>(keff));
  bb_.resize(static_cast<size_t>(keff));
  y_.resize(static_cast<size_t>(m));
  s_.resize(static_cast<size_t>(m));
  failed_.assign(static_cast<size_t>(m), 0);
  std::vector<char>& failed = failed_;
  const double scale = cfg_.tolerance * std::sqrt(static_cast<double>(keff)) * cfg_.unit_roundoff;

  for (int round = 0; round < cfg_.rounds; ++round) {
    // r_j = ±(1 + u), u uniform in [0, 1): with ±1 entries a perturbation
    // whose signs alternate along a row cancels with probability up to 1/2;
    // with continuous magnitudes it cannot cancel exactly.
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t x = ks.u32();
      const double mag = 1.0 + static_cast<double>(x >> 1) * 0x1.0p-31;
      r_[static_cast<size_t>(j)] = (x & 1) ? mag : -mag;
    }
    auto kidx = [&](int64_t t) -> int64_t { return rows_k ? rows_k[t] : t; };
    // b·r and (b∘b)·1 over the k used. b is k×n, or stored n×kfull.
    if (!b.stored_t) {
      parallel_for(keff, [&](int64_t lo, int64_t hi) {
        for (int64_t t = lo; t < hi; ++t) {
          const float* row = b.data + kidx(t) * n;
          double v = 0, w = 0;
          for (int64_t j = 0; j < n; ++j) {
            const double rj = r_[static_cast<size_t>(j)];
            v += row[j] * rj;
            w += static_cast<double>(row[j]) * row[j] * rj * rj;
          }
          br_[static_cast<size_t>(t)] = v;
          bb_[static_cast<size_t>(t)] = w;
        }
      }, 64);
    } else {
      std::fill(br_.begin(), br_.end(), 0.0);
      std::fill(bb_.begin(), bb_.end(), 0.0);
      parallel_for(keff, [&](int64_t lo, int64_t hi) {
        for (int64_t j = 0; j < n; ++j) {
          const float* row = b.data + j * kfull;
          const double rj = r_[static_cast<size_t>(j)];
          for (int64_t t = lo; t < hi; ++t) {
            const double v = row[kidx(t)];
            br_[static_cast<size_t>(t)] += v * rj;
            bb_[static_cast<size_t>(t)] += v * v * rj * rj;
          }
        }
      }, 256);
    }
    // y = a·(b·r), s = (a∘a)·((b∘b)·1). a is m×k, or stored k×m.
    if (!a.stored_t) {
      parallel_for(m, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) {
          const float* row = a.data + i * kfull;
          double y = 0, s = 0;
          for (int64_t t = 0; t < keff; ++t) {
            const double v = row[kidx(t)];
            y += v * br_[static_cast<size_t>(t)];
            s += v * v * bb_[static_cast<size_t>(t)];
          }
          y_[static_cast<size_t>(i)] = y;
          s_[static_cast<size_t>(i)] = s;
        }
      }, 64);
    } else {
      std::fill(y_.begin(), y_.end(), 0.0);
      std::fill(s_.begin(), s_.end(), 0.0);
      parallel_for(m, [&](int64_t lo, int64_t hi) {
        for (int64_t t = 0; t < keff; ++t) {
          const float* row = a.data + kidx(t) * m;
          const double bv = br_[static_cast<size_t>(t)], bw = bb_[static_cast<size_t>(t)];
          for (int64_t i = lo; i < hi; ++i) {
            const double v = row[i];
            y_[static_cast<size_t>(i)] += v * bv;
            s_[static_cast<size_t>(i)] += v * v * bw;
          }
        }
      }, 256);
    }
    // e = c·r − y.
    double worst = 0;
    std::vector<double> worst_t(static_cast<size_t>(num_threads()), 0.0);
    parallel_for(m, [&](int64_t lo, int64_t hi) {
      double wl = 0;
      for (int64_t i = lo; i < hi; ++i) {
        const float* row = c + i * n;
        double cr = 0;
        for (int64_t j = 0; j < n; ++j) cr += row[j] * r_[static_cast<size_t>(j)];
        const double e = std::fabs(cr - y_[static_cast<size_t>(i)]);
        const double bound = scale * std::sqrt(s_[static_cast<size_t>(i)]);
        if (!(e <= bound)) {
          failed[static_cast<size_t>(i)] = 1;
        } else if (bound > 0) {
          wl = std::max(wl, e / bound);
        }
      }
      int tid = omp_get_thread_num();
      if (tid < static_cast<int>(worst_t.size())) worst_t[static_cast<size_t>(tid)] = std::max(worst_t[static_cast<size_t>(tid)], wl);
    }, 64);
    for (double w : worst_t) worst = std::max(worst, w);
    worst_ratio_ = std::max(worst_ratio_, worst * cfg_.tolerance);
  }
  for (int64_t i = 0; i < m; ++i)
    if (failed[static_cast<size_t>(i)]) bad.push_back(i);
  return bad;
}

}  // namespace tempo
