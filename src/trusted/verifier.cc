#include "trusted/verifier.h"

#include <algorithm>
#include <cmath>

#include "common/parallel.h"

namespace tempo {

namespace {

// Dot products in double; `omp simd` lets the reductions vectorise.
inline void dot2(const float* x, const double* u, const double* w, int64_t n, double& a, double& b) {
  double s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t j = 0; j < n; ++j) {
    const double v = x[j];
    s1 += v * u[j];
    s2 += v * v * w[j];
  }
  a = s1;
  b = s2;
}

inline double dot(const float* x, const double* u, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += x[j] * u[j];
  return s;
}

}  // namespace

std::vector<int64_t> Verifier::check(const float* c, int64_t m, int64_t n, int64_t k, Operand a,
                                     Operand b, KeyStream& ks, const int32_t* rows_k,
                                     int64_t k_full) {
  // k: the inner indices used; kfull: the stored extent of the inner dimension.
  const int64_t kfull = rows_k ? k_full : k;
  auto kidx = [rows_k](int64_t t) -> int64_t { return rows_k ? rows_k[t] : t; };
  r_.resize(static_cast<size_t>(n));
  r2_.resize(static_cast<size_t>(n));
  br_.resize(static_cast<size_t>(k));
  bb_.resize(static_cast<size_t>(k));
  y_.resize(static_cast<size_t>(m));
  s_.resize(static_cast<size_t>(m));
  failed_.assign(static_cast<size_t>(m), 0);
  if (rows_k && !a.stored_t) gathered_.resize(static_cast<size_t>(k));
  const double scale = cfg_.tolerance * std::sqrt(static_cast<double>(k)) * cfg_.unit_roundoff;
  const int nt = num_threads();
  std::vector<double> worst_t(static_cast<size_t>(nt), 0.0);

  for (int round = 0; round < cfg_.rounds; ++round) {
    // r_j = ±(1 + u), u uniform in [0, 1): with ±1 entries a perturbation
    // whose signs alternate along a row cancels with probability up to 1/2;
    // with continuous magnitudes it cannot cancel exactly.
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t x = ks.u32();
      const double mag = 1.0 + static_cast<double>(x >> 1) * 0x1.0p-31;
      r_[static_cast<size_t>(j)] = (x & 1) ? mag : -mag;
      r2_[static_cast<size_t>(j)] = mag * mag;
    }
    // br = b·r and bb = (b∘b)·(r∘r), over the inner indices used.
    if (!b.stored_t) {
      parallel_for(k, [&](int64_t lo, int64_t hi) {
        for (int64_t t = lo; t < hi; ++t)
          dot2(b.data + kidx(t) * n, r_.data(), r2_.data(), n, br_[static_cast<size_t>(t)],
               bb_[static_cast<size_t>(t)]);
      }, 64);
    } else {
      std::fill(br_.begin(), br_.end(), 0.0);
      std::fill(bb_.begin(), bb_.end(), 0.0);
      parallel_for(k, [&](int64_t lo, int64_t hi) {
        for (int64_t j = 0; j < n; ++j) {
          const float* row = b.data + j * kfull;
          const double rj = r_[static_cast<size_t>(j)], qj = r2_[static_cast<size_t>(j)];
          for (int64_t t = lo; t < hi; ++t) {
            const double v = row[kidx(t)];
            br_[static_cast<size_t>(t)] += v * rj;
            bb_[static_cast<size_t>(t)] += v * v * qj;
          }
        }
      }, 256);
    }
    // y = a·br and s = (a∘a)·bb.
    if (!a.stored_t) {
      parallel_for(m, [&](int64_t lo, int64_t hi) {
        std::vector<float> tmp;
        for (int64_t i = lo; i < hi; ++i) {
          const float* row = a.data + i * kfull;
          if (rows_k) {
            tmp.resize(static_cast<size_t>(k));
            for (int64_t t = 0; t < k; ++t) tmp[static_cast<size_t>(t)] = row[rows_k[t]];
            row = tmp.data();
          }
          dot2(row, br_.data(), bb_.data(), k, y_[static_cast<size_t>(i)], s_[static_cast<size_t>(i)]);
        }
      }, 64);
    } else {
      std::fill(y_.begin(), y_.end(), 0.0);
      std::fill(s_.begin(), s_.end(), 0.0);
      parallel_for(m, [&](int64_t lo, int64_t hi) {
        double* y = y_.data();
        double* s = s_.data();
        for (int64_t t = 0; t < k; ++t) {
          const float* row = a.data + kidx(t) * m;
          const double bv = br_[static_cast<size_t>(t)], bw = bb_[static_cast<size_t>(t)];
#pragma omp simd
          for (int64_t i = lo; i < hi; ++i) {
            const double v = row[i];
            y[i] += v * bv;
            s[i] += v * v * bw;
          }
        }
      }, 256);
    }
    // e = c·r − y, row by row.
    parallel_for(m, [&](int64_t lo, int64_t hi) {
      double wl = 0;
      for (int64_t i = lo; i < hi; ++i) {
        const double e = std::fabs(dot(c + i * n, r_.data(), n) - y_[static_cast<size_t>(i)]);
        const double bound = scale * std::sqrt(s_[static_cast<size_t>(i)]);
        if (!(e <= bound)) {
          failed_[static_cast<size_t>(i)] = 1;
        } else if (bound > 0) {
          wl = std::max(wl, e / bound);
        }
      }
      const int tid = omp_get_thread_num();
      if (tid < nt) worst_t[static_cast<size_t>(tid)] = std::max(worst_t[static_cast<size_t>(tid)], wl);
    }, 64);
  }
  for (double w : worst_t) worst_ratio_ = std::max(worst_ratio_, w * cfg_.tolerance);
  std::vector<int64_t> bad;
  for (int64_t i = 0; i < m; ++i)
    if (failed_[static_cast<size_t>(i)]) bad.push_back(i);
  return bad;
}

}  // namespace tempo
