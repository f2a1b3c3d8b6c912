#include "trusted/offload/verifier.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// dot4 for R rounds at once (round r's vectors at u + r·n, w + r·n, …):
// each element converted once, and 4R independent sums, which keeps both
// multiply-add units busy (a round's four sums alone wait on their
// latency). out: round 0's a, b, c, d, then round 1's. Every sum is taken
// the same way whatever R (in 8 lanes, j mod 8, reduced in a fixed tree,
// then the tail), so one round equals that round of two, bit for bit. On
// N rows at once (x[0 .. N); out[t·4R ..]: row t's): each vector entry is
// loaded once for the N rows, and each row's sums are taken the same way
// whatever N, so the same bits.
template <int R, int N>
inline void dot4r_rows(const float* const* x, const double* u, const double* w, const double* p, const double* q,
                       int64_t n, double* out) {
  int64_t j = 0;
#if defined(__AVX512F__)
  __m512d s[N][4 * R];
  for (auto& row : s)
    for (auto& v : row) v = _mm512_setzero_pd();
  for (; j + 8 <= n; j += 8) {
    __m512d v[N], vv[N];
    for (int t = 0; t < N; ++t) {
      v[t] = _mm512_cvtps_pd(_mm256_loadu_ps(x[t] + j));
      vv[t] = _mm512_mul_pd(v[t], v[t]);
    }
    for (int r = 0; r < R; ++r) {
      __m512d ur = _mm512_loadu_pd(u + r * n + j), wr = _mm512_loadu_pd(w + r * n + j);
      __m512d pr = _mm512_loadu_pd(p + r * n + j), qr = _mm512_loadu_pd(q + r * n + j);
      // In registers: GCC would otherwise fold each load into every row's
      // multiply-add, loading it N times.
      asm("" : "+v"(ur), "+v"(wr), "+v"(pr), "+v"(qr));
      for (int t = 0; t < N; ++t) {
        s[t][4 * r] = _mm512_fmadd_pd(v[t], ur, s[t][4 * r]);
        s[t][4 * r + 1] = _mm512_fmadd_pd(vv[t], wr, s[t][4 * r + 1]);
        s[t][4 * r + 2] = _mm512_fmadd_pd(v[t], pr, s[t][4 * r + 2]);
        s[t][4 * r + 3] = _mm512_fmadd_pd(vv[t], qr, s[t][4 * r + 3]);
      }
    }
  }
  for (int t = 0; t < N; ++t)
    for (int c = 0; c < 4 * R; ++c) out[t * 4 * R + c] = _mm512_reduce_add_pd(s[t][c]);
#else
  for (int c = 0; c < N * 4 * R; ++c) out[c] = 0;
#endif
  for (int t = 0; t < N; ++t) {
    double* o = out + t * 4 * R;
    for (int64_t i = j; i < n; ++i) {
      const double v = x[t][i], vv = v * v;
      for (int r = 0; r < R; ++r) {
        o[4 * r] += v * u[r * n + i];
        o[4 * r + 1] += vv * w[r * n + i];
        o[4 * r + 2] += v * p[r * n + i];
        o[4 * r + 3] += vv * q[r * n + i];
      }
    }
  }
}

inline double dot(const float* x, const double* u, int64_t n) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += x[j] * u[j];
  return s;
}

// An entry of a check vector: a random sign times 1 + u, u uniform in [0, 1).
inline double random_entry(KeyStream& ks) {
  const uint32_t x = ks.u32();
  const double mag = 1.0 + static_cast<double>(x >> 1) * 0x1.0p-31;
  return (x & 1) ? mag : -mag;
}

}  // namespace

std::vector<int64_t> Verifier::check(const float* c, int64_t m, int64_t n, int64_t k, Operand a,
                                     Operand b, KeyStream& ks, const int32_t* rows_k,
                                     int64_t k_full, RowSums* sums, const std::vector<double>* r_pre,
                                     const double* cr_pre) {
  if (sums && (a.stored_t || rows_k)) sums = nullptr;
  begin(m, n, k, b, ks, rows_k, k_full, sums, r_pre);
  project_a(a);
  return end(c, cr_pre);
}

void Verifier::begin(int64_t m, int64_t n, int64_t k, Operand b, KeyStream& ks, const int32_t* rows_k,
                     int64_t k_full, RowSums* sums, const std::vector<double>* r_pre) {
  const int R = cfg_.rounds;
  if (sums && rows_k) throw std::logic_error("Verifier: row sums need every inner index");
  if (r_pre && r_pre->size() != static_cast<size_t>(R * n))
    throw std::logic_error("Verifier::check: r_pre must hold one vector per round");
  if (sums) {
    sums->rounds = R;
    sums->m = m;
    sums->k = k;
    sums->r.resize(static_cast<size_t>(R * k));
    sums->ar.resize(static_cast<size_t>(R * m));
    sums->aa.resize(static_cast<size_t>(R * m));
  }
  // k: the inner indices used; kfull: the stored extent of the inner dimension.
  d_ = Dims{m, n, k, rows_k ? k_full : k, rows_k, R};
  sums_ = sums;
  // Every round's vectors first, in the order the rounds used to draw them
  // (r, then r'), so that all rounds share each pass over the operands:
  // each row is read once for all of them. r_j = ±(1 + u), u uniform in
  // [0, 1): with ±1 entries a perturbation whose signs alternate along a
  // row cancels with probability up to 1/2; with continuous magnitudes it
  // cannot cancel exactly.
  r_.resize(static_cast<size_t>(R * n));
  r2_.resize(static_cast<size_t>(R * n));
  if (sums) rp2_.resize(static_cast<size_t>(R * k));
  for (int round = 0; round < R; ++round) {
    double* r = r_.data() + round * n;
    for (int64_t j = 0; j < n; ++j) r[j] = r_pre ? (*r_pre)[static_cast<size_t>(round * n + j)] : random_entry(ks);
    for (int64_t j = 0; j < n; ++j) r2_[static_cast<size_t>(round * n + j)] = r[j] * r[j];
    if (sums) {
      double* rp = sums->r.data() + round * k;
      for (int64_t t = 0; t < k; ++t) rp[t] = random_entry(ks);
      for (int64_t t = 0; t < k; ++t) rp2_[static_cast<size_t>(round * k + t)] = rp[t] * rp[t];
    }
  }
  br_.resize(static_cast<size_t>(R * k));
  bb_.resize(static_cast<size_t>(R * k));
  // A row never projected keeps a NaN bound, and fails.
  y_.assign(static_cast<size_t>(R * m), 0.0);
  s_.assign(static_cast<size_t>(R * m), std::numeric_limits<double>::quiet_NaN());
  project_b(b);
}

std::vector<int64_t> Verifier::end(const float* c, const double* cr_pre) {
  const int64_t m = d_.m;
  failed_.assign(static_cast<size_t>(m), 0);
  const double scale = cfg_.tolerance * std::sqrt(static_cast<double>(d_.k)) * cfg_.unit_roundoff;
  std::vector<double> worst_t(static_cast<size_t>(num_threads()), 0.0);
  compare_rows(c, cr_pre, scale, worst_t);
  for (double w : worst_t) worst_ratio_ = std::max(worst_ratio_, w * cfg_.tolerance);
  std::vector<int64_t> bad;
  for (int64_t i = 0; i < m; ++i)
    if (failed_[static_cast<size_t>(i)]) bad.push_back(i);
  return bad;
}

// Per round ρ: br_ρ = b·r_ρ and bb_ρ = (b∘b)·(r_ρ∘r_ρ), over the inner
// indices used (round-major: br_[ρ·k + t]).
void Verifier::project_b(Operand b) {
  const int64_t n = d_.n, k = d_.k, kfull = d_.kfull;
  const int R = d_.rounds;
  const int32_t* rows_k = d_.rows_k;
  auto kidx = [rows_k](int64_t t) -> int64_t { return rows_k ? rows_k[t] : t; };
  if (!b.stored_t) {
    parallel_for(k, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t)
        for (int q = 0; q < R; ++q)
          dot2(b.data + kidx(t) * n, r_.data() + q * n, r2_.data() + q * n, n, br_[static_cast<size_t>(q * k + t)],
               bb_[static_cast<size_t>(q * k + t)]);
    }, 64);
    return;
  }
  std::fill(br_.begin(), br_.end(), 0.0);
  std::fill(bb_.begin(), bb_.end(), 0.0);
  parallel_for(k, [&](int64_t lo, int64_t hi) {
    for (int64_t j = 0; j < n; ++j) {
      const float* row = b.data + j * kfull;
      for (int q = 0; q < R; ++q) {
        const double rj = r_[static_cast<size_t>(q * n + j)], qj = r2_[static_cast<size_t>(q * n + j)];
        double* br = br_.data() + q * k;
        double* bb = bb_.data() + q * k;
        for (int64_t t = lo; t < hi; ++t) {
          const double v = row[kidx(t)];
          br[t] += v * rj;
          bb[t] += v * v * qj;
        }
      }
    }
  }, 256);
}

// Per round: y_ρ = a·br_ρ and s_ρ = (a∘a)·bb_ρ; with row sums, also a·rp_ρ
// into ar and (a∘a)·(rp_ρ∘rp_ρ) into aa in the same pass (RowSums).
void Verifier::project_a(Operand a) {
  const int64_t m = d_.m, k = d_.k, kfull = d_.kfull;
  const int R = d_.rounds;
  const int32_t* rows_k = d_.rows_k;
  auto kidx = [rows_k](int64_t t) -> int64_t { return rows_k ? rows_k[t] : t; };
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
        project_row(i, row);
      }
    }, 64);
    return;
  }
  if (sums_) throw std::logic_error("Verifier: row sums need the operand in rows");
  std::fill(y_.begin(), y_.end(), 0.0);
  std::fill(s_.begin(), s_.end(), 0.0);
  parallel_for(m, [&](int64_t lo, int64_t hi) {
    for (int64_t t = 0; t < k; ++t) {
      const float* row = a.data + kidx(t) * m;
      for (int q = 0; q < R; ++q) {
        double* y = y_.data() + q * m;
        double* s = s_.data() + q * m;
        const double bv = br_[static_cast<size_t>(q * k + t)], bw = bb_[static_cast<size_t>(q * k + t)];
#pragma omp simd
        for (int64_t i = lo; i < hi; ++i) {
          const double v = row[i];
          y[i] += v * bv;
          s[i] += v * v * bw;
        }
      }
    }
  }, 256);
}

void Verifier::project_row(int64_t i, const float* row) {
  const int64_t m = d_.m, k = d_.k;
  if (!sums_) {
    for (int q = 0; q < d_.rounds; ++q) {
      const size_t at = static_cast<size_t>(q * m + i);
      dot2(row, br_.data() + q * k, bb_.data() + q * k, k, y_[at], s_[at]);
    }
    return;
  }
  // Two rounds per pass over the row where there are two.
  for (int q = 0; q < d_.rounds;) {
    const int take = q + 2 <= d_.rounds ? 2 : 1;
    double o[8];
    const size_t v = static_cast<size_t>(q * k);
    const double *u = br_.data() + v, *w = bb_.data() + v, *p = sums_->r.data() + v, *q2 = rp2_.data() + v;
    if (take == 2) dot4r_rows<2, 1>(&row, u, w, p, q2, k, o);
    else dot4r_rows<1, 1>(&row, u, w, p, q2, k, o);
    for (int h = 0; h < take; ++h, ++q) {
      const size_t at = static_cast<size_t>(q * m + i);
      y_[at] = o[4 * h];
      s_[at] = o[4 * h + 1];
      sums_->ar[at] = o[4 * h + 2];
      sums_->aa[at] = o[4 * h + 3];
    }
  }
}

void Verifier::project_rows(const int64_t* index, const float* const* rows, int64_t n) {
  const int64_t m = d_.m, k = d_.k;
  int64_t t = 0;
  // Two rows at a time where the row sums are taken with two rounds (the
  // default): the check's vectors are read once for both.
  if (sums_ && d_.rounds == 2)
    for (; t + 2 <= n; t += 2) {
      double o[16];
      dot4r_rows<2, 2>(rows + t, br_.data(), bb_.data(), sums_->r.data(), rp2_.data(), k, o);
      for (int e = 0; e < 2; ++e)
        for (int q = 0; q < 2; ++q) {
          const size_t at = static_cast<size_t>(q * m + index[t + e]);
          const double* v = o + 8 * e + 4 * q;
          y_[at] = v[0];
          s_[at] = v[1];
          sums_->ar[at] = v[2];
          sums_->aa[at] = v[3];
        }
    }
  for (; t < n; ++t) project_row(index[t], rows[t]);
}

// e_ρ = c·r_ρ − y_ρ, row by row (each row of c read once for every round):
// marks the rows over their bound in any round in failed_ and keeps each
// thread's largest e / bound of the others in worst_t.
void Verifier::compare_rows(const float* c, const double* cr_pre, double scale, std::vector<double>& worst_t) {
  const int64_t n = d_.n, m = d_.m;
  const int R = d_.rounds;
  const int nt = static_cast<int>(worst_t.size());
  parallel_for(m, [&](int64_t lo, int64_t hi) {
    double wl = 0;
    for (int64_t i = lo; i < hi; ++i)
      for (int q = 0; q < R; ++q) {
        const size_t at = static_cast<size_t>(q * m + i);
        const double cr = cr_pre ? cr_pre[at] : dot(c + i * n, r_.data() + q * n, n);
        const double e = std::fabs(cr - y_[at]);
        const double bound = scale * std::sqrt(s_[at]);
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

void Verifier::draw_vector(KeyStream& ks, int64_t n, std::vector<double>& out) {
  out.resize(static_cast<size_t>(n));
  for (auto& v : out) v = random_entry(ks);
}

void Verifier::draw_vectors(KeyStream& ks, int64_t n, std::vector<double>& out) {
  draw_vector(ks, n * cfg_.rounds, out);
}

bool Verifier::check_weight(const float* dw, int64_t n, int64_t k, const float* dc, const RowSums& sums,
                            const int32_t* rows, int64_t count) {
  if (sums.k != k) return false;
  const int R = sums.rounds;
  // All rounds in one pass over dw and one over dc (round-major vectors).
  cv_lhs_.resize(static_cast<size_t>(R * n));
  cv_rhs_.resize(static_cast<size_t>(R * n));
  cv_s_.resize(static_cast<size_t>(R * n));
  parallel_for(n, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int q = 0; q < R; ++q)
        cv_lhs_[static_cast<size_t>(q * n + i)] = dot(dw + i * k, sums.r.data() + q * k, k);
  }, 16);
  // Σ over the rows of dc, in a fixed number of pieces (each summed by
  // one thread into its own partial sums, added in piece order): the
  // result depends on the rows only, not on the threads.
  const size_t rn = static_cast<size_t>(R * n);
  const double* ys = sum_vectors_in_pieces(count, 16, 2 * rn, cv_parts_, [&](int64_t lo, int64_t hi, double* y0) {
    // dC's rows come in the keys' random order: each is asked for 8 rows
    // ahead (1.1-1.3 -> 0.73-0.88 ms in BM_WeightCheck on the 2-core AMD
    // EPYC VM; 4 and 16 ahead did less).
    constexpr int64_t kAhead = 8;
    for (int64_t j = lo; j < hi; ++j) {  // y then s, round-major
      const int64_t row = rows[j];
      const float* d = dc + row * n;
      if (j + kAhead < hi)
        for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(dc + rows[j + kAhead] * n + i);
      for (int q = 0; q < R; ++q) {
        const double a1 = sums.ar[static_cast<size_t>(q * sums.m + row)], a2 = sums.aa[static_cast<size_t>(q * sums.m + row)];
        double* y = y0 + q * n;
        double* sq = y0 + (R + q) * n;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          const double v = d[i];
          y[i] += v * a1;
          sq[i] += v * v * a2;
        }
      }
    }
  });
  std::copy(ys, ys + rn, cv_rhs_.begin());
  std::copy(ys + rn, ys + 2 * rn, cv_s_.begin());
  return compare(R * n, count);
}

void Verifier::draw(KeyStream& ks, int64_t n) {
  draw_vector(ks, n, r_);
  r2_.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) r2_[static_cast<size_t>(j)] = r_[static_cast<size_t>(j)] * r_[static_cast<size_t>(j)];
}

// |lhs − rhs| ≤ τ·√k·u·√s for every row, NaN failing.
bool Verifier::compare(int64_t rows, int64_t k_eff) {
  const double scale = cfg_.tolerance * std::sqrt(static_cast<double>(k_eff)) * cfg_.unit_roundoff;
  bool ok = true;
  for (int64_t i = 0; i < rows; ++i) {
    const double e = std::fabs(cv_lhs_[static_cast<size_t>(i)] - cv_rhs_[static_cast<size_t>(i)]);
    const double bound = scale * std::sqrt(cv_s_[static_cast<size_t>(i)]);
    if (!(e <= bound)) {
      ok = false;
    } else if (bound > 0) {
      worst_ratio_ = std::max(worst_ratio_, e / bound * cfg_.tolerance);
    }
  }
  return ok;
}

bool Verifier::check_conv_forward(const float* y, const float* x, const float* w, const ConvGeometry& g,
                                  KeyStream& ks) {
  const int64_t P = g.oh * g.ow, kk = g.k * g.k, HW = g.h * g.w;
  for (int round = 0; round < cfg_.rounds; ++round) {
    draw(ks, g.o);
    cv_a_.assign(static_cast<size_t>(g.c * kk), 0.0);  // Σ_o r_o·W[o]
    cv_b_.assign(static_cast<size_t>(g.c * kk), 0.0);  // Σ_o r_o²·W[o]²
    for (int64_t o = 0; o < g.o; ++o)
      for (int64_t t = 0; t < g.c * kk; ++t) {
        const double v = w[o * g.c * kk + t];
        cv_a_[static_cast<size_t>(t)] += r_[static_cast<size_t>(o)] * v;
        cv_b_[static_cast<size_t>(t)] += r2_[static_cast<size_t>(o)] * v * v;
      }
    cv_lhs_.assign(static_cast<size_t>(g.n * P), 0.0);
    cv_rhs_.assign(static_cast<size_t>(g.n * P), 0.0);
    cv_s_.assign(static_cast<size_t>(g.n * P), 0.0);
    parallel_for(g.n, [&](int64_t lo, int64_t hi) {
      for (int64_t n = lo; n < hi; ++n) {
        double* lhs = cv_lhs_.data() + n * P;
        double* rhs = cv_rhs_.data() + n * P;
        double* sq = cv_s_.data() + n * P;
        for (int64_t o = 0; o < g.o; ++o) {
          const float* yo = y + (n * g.o + o) * P;
          const double ro = r_[static_cast<size_t>(o)];
          for (int64_t p = 0; p < P; ++p) lhs[p] += ro * yo[p];
        }
        for (int64_t c = 0; c < g.c; ++c) {
          const float* plane = x + (n * g.c + c) * HW;
          for (int64_t ky = 0; ky < g.k; ++ky)
            for (int64_t kx = 0; kx < g.k; ++kx) {
              const double a = cv_a_[static_cast<size_t>(c * kk + ky * g.k + kx)];
              const double b = cv_b_[static_cast<size_t>(c * kk + ky * g.k + kx)];
              int64_t lo_x, hi_x;
              g.valid_ox(kx, lo_x, hi_x);
              for (int64_t oy = 0; oy < g.oh; ++oy) {
                const int64_t iy = oy * g.s - g.p + ky;
                if (iy < 0 || iy >= g.h) continue;
                const float* src = plane + iy * g.w - g.p + kx;
                double* r = rhs + oy * g.ow;
                double* q = sq + oy * g.ow;
                for (int64_t ox = lo_x; ox < hi_x; ++ox) {
                  const double v = src[ox * g.s];
                  r[ox] += v * a;
                  q[ox] += v * v * b;
                }
              }
            }
        }
      }
    });
    if (!compare(g.n * P, g.c * kk)) return false;
  }
  return true;
}

bool Verifier::check_conv_input(const float* dx, const float* dy, const float* w, const ConvGeometry& g,
                                KeyStream& ks) {
  const int64_t P = g.oh * g.ow, kk = g.k * g.k, HW = g.h * g.w;
  for (int round = 0; round < cfg_.rounds; ++round) {
    draw(ks, g.c);
    cv_a_.assign(static_cast<size_t>(g.o * kk), 0.0);  // Σ_c r_c·W[:, c]
    cv_b_.assign(static_cast<size_t>(g.o * kk), 0.0);
    for (int64_t o = 0; o < g.o; ++o)
      for (int64_t c = 0; c < g.c; ++c)
        for (int64_t t = 0; t < kk; ++t) {
          const double v = w[(o * g.c + c) * kk + t];
          cv_a_[static_cast<size_t>(o * kk + t)] += r_[static_cast<size_t>(c)] * v;
          cv_b_[static_cast<size_t>(o * kk + t)] += r2_[static_cast<size_t>(c)] * v * v;
        }
    cv_lhs_.assign(static_cast<size_t>(g.n * HW), 0.0);
    cv_rhs_.assign(static_cast<size_t>(g.n * HW), 0.0);
    cv_s_.assign(static_cast<size_t>(g.n * HW), 0.0);
    parallel_for(g.n, [&](int64_t lo, int64_t hi) {
      for (int64_t n = lo; n < hi; ++n) {
        double* lhs = cv_lhs_.data() + n * HW;
        double* rhs = cv_rhs_.data() + n * HW;
        double* sq = cv_s_.data() + n * HW;
        for (int64_t c = 0; c < g.c; ++c) {
          const float* d = dx + (n * g.c + c) * HW;
          const double rc = r_[static_cast<size_t>(c)];
          for (int64_t i = 0; i < HW; ++i) lhs[i] += rc * d[i];
        }
        for (int64_t o = 0; o < g.o; ++o) {
          const float* plane = dy + (n * g.o + o) * P;
          for (int64_t ky = 0; ky < g.k; ++ky)
            for (int64_t kx = 0; kx < g.k; ++kx) {
              const double a = cv_a_[static_cast<size_t>(o * kk + ky * g.k + kx)];
              const double b = cv_b_[static_cast<size_t>(o * kk + ky * g.k + kx)];
              int64_t lo_x, hi_x;
              g.valid_ox(kx, lo_x, hi_x);
              for (int64_t oy = 0; oy < g.oh; ++oy) {
                const int64_t iy = oy * g.s - g.p + ky;
                if (iy < 0 || iy >= g.h) continue;
                double* r = rhs + iy * g.w - g.p + kx;
                double* q = sq + iy * g.w - g.p + kx;
                const float* src = plane + oy * g.ow;
                for (int64_t ox = lo_x; ox < hi_x; ++ox) {
                  const double v = src[ox];
                  r[ox * g.s] += v * a;
                  q[ox * g.s] += v * v * b;
                }
              }
            }
        }
      }
    });
    if (!compare(g.n * HW, g.o * kk)) return false;
  }
  return true;
}

bool Verifier::check_conv_weight(const float* dw, const float* x, const float* dy, const ConvGeometry& g,
                                 KeyStream& ks) {
  const int64_t P = g.oh * g.ow, kk = g.k * g.k, HW = g.h * g.w;
  for (int round = 0; round < cfg_.rounds; ++round) {
    draw(ks, g.o);
    cv_a_.assign(static_cast<size_t>(g.n * P), 0.0);  // Σ_o r_o·dY[:, o]
    cv_b_.assign(static_cast<size_t>(g.n * P), 0.0);
    for (int64_t n = 0; n < g.n; ++n)
      for (int64_t o = 0; o < g.o; ++o) {
        const float* d = dy + (n * g.o + o) * P;
        const double ro = r_[static_cast<size_t>(o)], qo = r2_[static_cast<size_t>(o)];
        double* a = cv_a_.data() + n * P;
        double* b = cv_b_.data() + n * P;
        for (int64_t p = 0; p < P; ++p) {
          a[p] += ro * d[p];
          b[p] += qo * double(d[p]) * d[p];
        }
      }
    const int64_t rows = g.c * kk;
    cv_lhs_.assign(static_cast<size_t>(rows), 0.0);
    cv_rhs_.assign(static_cast<size_t>(rows), 0.0);
    cv_s_.assign(static_cast<size_t>(rows), 0.0);
    for (int64_t o = 0; o < g.o; ++o)
      for (int64_t t = 0; t < rows; ++t) cv_lhs_[static_cast<size_t>(t)] += r_[static_cast<size_t>(o)] * dw[o * rows + t];
    parallel_for(g.c, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c)
        for (int64_t ky = 0; ky < g.k; ++ky)
          for (int64_t kx = 0; kx < g.k; ++kx) {
            int64_t lo_x, hi_x;
            g.valid_ox(kx, lo_x, hi_x);
            double acc = 0, sq = 0;
            for (int64_t n = 0; n < g.n; ++n) {
              const float* plane = x + (n * g.c + c) * HW;
              const double* a = cv_a_.data() + n * P;
              const double* b = cv_b_.data() + n * P;
              for (int64_t oy = 0; oy < g.oh; ++oy) {
                const int64_t iy = oy * g.s - g.p + ky;
                if (iy < 0 || iy >= g.h) continue;
                const float* src = plane + iy * g.w - g.p + kx;
                for (int64_t ox = lo_x; ox < hi_x; ++ox) {
                  const double v = src[ox * g.s];
                  acc += v * a[oy * g.ow + ox];
                  sq += v * v * b[oy * g.ow + ox];
                }
              }
            }
            const size_t t = static_cast<size_t>(c * kk + ky * g.k + kx);
            cv_rhs_[t] = acc;
            cv_s_[t] = sq;
          }
    });
    if (!compare(rows, g.n * P)) return false;
  }
  return true;
}

}  // namespace tempo
