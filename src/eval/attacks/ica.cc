#include "eval/attacks/ica.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "common/error.h"
#include "eval/measurements/traced.h"
#include "trusted/obfuscation/blinding.h"

namespace tempo {

namespace {

using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// (W·Wᵀ)^(−1/2)·W: the nearest matrix with orthonormal rows, treating all
// components alike (deflation would favour the first ones found).
Mat decorrelate(const Mat& w) {
  Eigen::SelfAdjointEigenSolver<Mat> es(w * w.transpose());
  const Eigen::VectorXd d = es.eigenvalues().cwiseMax(1e-300).cwiseSqrt().cwiseInverse();
  return es.eigenvectors() * d.asDiagonal() * es.eigenvectors().transpose() * w;
}

// The mean of the finite values of v over count (how many there were).
double finite_mean(const std::vector<double>& v, int64_t* count = nullptr) {
  double s = 0;
  int64_t n = 0;
  for (double x : v)
    if (std::isfinite(x)) s += x, ++n;
  if (count) *count = n;
  return n ? s / static_cast<double>(n) : 0.0;
}

}  // namespace

IcaResult fast_ica(const double* x, int64_t n, int64_t t, const IcaOptions& o) {
  TEMPO_CHECK(n > 0 && t > n, "FastICA: needs more samples than signals");
  Mat X = Eigen::Map<const Mat>(x, n, t);
  X.colwise() -= X.rowwise().mean();
  // Whitening: Z = D^(−1/2)·Eᵀ·X over the directions the signals span.
  Eigen::SelfAdjointEigenSolver<Mat> es(X * X.transpose() / static_cast<double>(t));
  const Eigen::VectorXd& ev = es.eigenvalues();  // ascending
  IcaResult r;
  const double top = ev(n - 1);
  if (!(top > 0)) return r;  // all signals constant: nothing to separate
  int64_t keep = 0;
  for (int64_t i = 0; i < n; ++i) keep += ev(i) > 1e-10 * top;
  Mat K(keep, n);
  if (o.orthogonal) {
    keep = n;
    K = Mat::Identity(n, n) / std::sqrt(ev.mean());
  } else {
    for (int64_t c = 0; c < keep; ++c)
      K.row(c) = es.eigenvectors().col(n - 1 - c).transpose() / std::sqrt(ev(n - 1 - c));
  }
  const Mat Z = K * X;
  std::mt19937_64 rng(o.seed);
  std::normal_distribution<double> gauss;
  Mat W(keep, keep);
  for (int64_t i = 0; i < keep * keep; ++i) W.data()[i] = gauss(rng);
  W = decorrelate(W);
  const double inv_t = 1.0 / static_cast<double>(t);
  Mat G(keep, t);
  Eigen::VectorXd dg(keep);
  for (r.iterations = 1; r.iterations <= o.max_iterations; ++r.iterations) {
    const Mat Y = W * Z;
    for (int64_t i = 0; i < keep; ++i) {
      double d = 0;
      for (int64_t j = 0; j < t; ++j) {
        const double u = Y(i, j);
        if (o.contrast == IcaOptions::Contrast::kLogcosh) {
          const double th = std::tanh(u);
          G(i, j) = th, d += 1 - th * th;
        } else {
          G(i, j) = u * u * u, d += 3 * u * u;
        }
      }
      dg(i) = d * inv_t;
    }
    const Mat W1 = decorrelate(G * Z.transpose() * inv_t - dg.asDiagonal() * W);
    const double change = (1.0 - (W1 * W.transpose()).diagonal().cwiseAbs().array()).abs().maxCoeff();
    W = W1;
    if (change < o.tolerance) {
      r.converged = true;
      break;
    }
  }
  r.iterations = std::min(r.iterations, o.max_iterations);
  r.components = keep;
  const Mat S = W * Z;
  r.s.assign(S.data(), S.data() + keep * t);
  return r;
}

double pearson(const double* x, const double* y, int64_t t) {
  double mx = 0, my = 0;
  for (int64_t j = 0; j < t; ++j) mx += x[j], my += y[j];
  mx /= static_cast<double>(t), my /= static_cast<double>(t);
  double sxy = 0, sxx = 0, syy = 0;
  for (int64_t j = 0; j < t; ++j) {
    const double a = x[j] - mx, b = y[j] - my;
    sxy += a * b, sxx += a * a, syy += b * b;
  }
  if (sxx <= 0 || syy <= 0) return std::numeric_limits<double>::quiet_NaN();
  return sxy / std::sqrt(sxx * syy);
}

std::vector<double> best_correlations(const double* sources, int64_t ns, const double* est, int64_t ne, int64_t t) {
  std::vector<double> out(static_cast<size_t>(ns), std::numeric_limits<double>::quiet_NaN());
  for (int64_t i = 0; i < ns; ++i) {
    const double* x = sources + i * t;
    if (std::all_of(x, x + t, [&](double v) { return v == x[0]; })) continue;  // constant: nothing to find
    double best = 0;
    for (int64_t e = 0; e < ne; ++e) {
      const double c = pearson(x, est + e * t, t);
      if (!std::isnan(c)) best = std::max(best, std::fabs(c));
    }
    out[static_cast<size_t>(i)] = best;
  }
  return out;
}

IcaRow ica_attack(const std::string& layer, int id, const float* a, const float* w, int64_t m, int64_t k, int64_t n,
                  const IcaCase& c, uint64_t seed, double key_scale, int64_t max_groups, const IcaOptions& o) {
  TEMPO_CHECK(c.row_mix > 0, "ICA attack: needs row mixing (--row-mix > 0)");
  TEMPO_CHECK(max_groups > 0, "ICA attack: needs at least one group");
  IcaRow row;
  row.layer = layer;
  row.blinding = c;
  row.m = m, row.k = k;
  // What the master sends, before the keys (the oracle undoes them).
  std::unique_ptr<Obfuscator> obf = measurement_keys(seed, key_scale, false);
  Blinding blind(c.row_mix, c.mask_rank, 1.0f, c.col_mix);
  const Product p{id, layer, a, w, m, k, n};
  const Product& q = blind.apply(p, *obf);
  const RowMix::Grouping grouping = blind.row_mixing()->grouping(id);
  // Scoring only: A·Gᵀ, the plaintext with the secret column mixing.
  std::vector<float> a_cols;
  if (c.col_mix > 0) {
    a_cols.resize(static_cast<size_t>(m * k));
    blind.col_mixing()->mix(id, a, m, a_cols.data());
  }
  // The column key the oracle leaves on in one variant: its scales (its
  // permutation moves samples, which changes nothing here).
  const ScaledPerm col_key = obf->draw(k);
  std::mt19937_64 rng(seed ^ 0x1ca);
  std::normal_distribution<double> gauss;
  const auto groups = static_cast<int64_t>(grouping.starts.size()) - 1;
  const int64_t take = std::min(groups, max_groups);
  std::vector<double> truth, truth_cols, recv, keyed, noise;
  double sum_ica = 0, sum_rec = 0, sum_recv = 0, sum_recv_rec = 0, sum_noise = 0, sum_keyed = 0, sum_cols = 0;
  double sum_ortho = 0, sum_ortho_rec = 0, sum_cols_recv = 0;
  for (int64_t s = 0; s < take; ++s) {
    const int64_t g = s * groups / take, b0 = grouping.starts[static_cast<size_t>(g)],
                  b = grouping.starts[static_cast<size_t>(g) + 1] - b0;
    truth.resize(static_cast<size_t>(b * k));
    recv.resize(static_cast<size_t>(b * k));
    keyed.resize(static_cast<size_t>(b * k));
    noise.resize(static_cast<size_t>(b * k));
    if (c.col_mix > 0) truth_cols.resize(static_cast<size_t>(b * k));
    for (int64_t i = 0; i < b; ++i) {
      const int64_t src = grouping.perm[static_cast<size_t>(b0 + i)];
      for (int64_t j = 0; j < k; ++j) {
        const size_t e = static_cast<size_t>(i * k + j);
        truth[e] = a[src * k + j];
        if (c.col_mix > 0) truth_cols[e] = a_cols[static_cast<size_t>(src * k + j)];
        recv[e] = q.a[(b0 + i) * k + j];
        keyed[e] = recv[e] * col_key.scale[static_cast<size_t>(j)];
        noise[e] = gauss(rng);
      }
    }
    IcaOptions og = o;
    og.seed = o.seed + static_cast<uint64_t>(g);
    const IcaResult ica = fast_ica(recv.data(), b, k, og);
    const IcaResult ica_keyed = fast_ica(keyed.data(), b, k, og);
    IcaOptions oo = og;
    oo.orthogonal = true;
    const IcaResult ortho = fast_ica(recv.data(), b, k, oo);
    row.not_converged += !ica.converged;
    int64_t scored = 0;
    const std::vector<double> best = best_correlations(truth.data(), b, ica.s.data(), ica.components, k);
    const double mean_ica = finite_mean(best, &scored);
    if (scored == 0) continue;  // a group of constant rows: nothing to recover
    ++row.groups;
    row.sources += scored;
    sum_ica += mean_ica;
    const auto above = [&](const std::vector<double>& v) {
      int64_t n = 0;
      for (double x : v) n += std::isfinite(x) && x > 0.9;
      return static_cast<double>(n) / static_cast<double>(scored);
    };
    sum_rec += above(best);
    const std::vector<double> best_recv = best_correlations(truth.data(), b, recv.data(), b, k);
    sum_recv += finite_mean(best_recv);
    sum_recv_rec += above(best_recv);
    const std::vector<double> best_ortho = best_correlations(truth.data(), b, ortho.s.data(), ortho.components, k);
    sum_ortho += finite_mean(best_ortho);
    sum_ortho_rec += above(best_ortho);
    sum_noise += finite_mean(best_correlations(truth.data(), b, noise.data(), b, k));
    sum_keyed += finite_mean(best_correlations(truth.data(), b, ica_keyed.s.data(), ica_keyed.components, k));
    if (c.col_mix > 0) {
      sum_cols += finite_mean(best_correlations(truth_cols.data(), b, ica.s.data(), ica.components, k));
      sum_cols_recv += finite_mean(best_correlations(truth_cols.data(), b, recv.data(), b, k));
    }
  }
  if (row.groups > 0) {
    const double gs = static_cast<double>(row.groups);
    row.ica = sum_ica / gs, row.ica_recovered = sum_rec / gs, row.received = sum_recv / gs;
    row.received_recovered = sum_recv_rec / gs;
    row.orthogonal = sum_ortho / gs, row.orthogonal_recovered = sum_ortho_rec / gs;
    row.noise = sum_noise / gs, row.ica_column_key = sum_keyed / gs;
    if (c.col_mix > 0) row.ica_vs_col_mixed = sum_cols / gs, row.received_vs_col_mixed = sum_cols_recv / gs;
  }
  return row;
}

}  // namespace tempo
