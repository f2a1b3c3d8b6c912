#include "eval/attacks/low_rank.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"

namespace tempo {

namespace {

using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

double median_abs(std::vector<double>& v) {
  for (double& x : v) x = std::fabs(x);
  auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
  std::nth_element(v.begin(), mid, v.end());
  return *mid;
}

}  // namespace

SparseSplit split_low_rank_sparse(const float* x, int64_t rows, int64_t cols, int iterations,
                                  double lambda_factor) {
  TEMPO_CHECK(rows > 0 && cols > 0 && iterations > 0, "low-rank split: empty input");
  Mat X(rows, cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) X(i, j) = x[i * cols + j];
  // Normalise rows, then columns, by their median magnitude.
  std::vector<double> buf;
  for (int64_t i = 0; i < rows; ++i) {
    buf.assign(X.row(i).data(), X.row(i).data() + cols);
    const double med = median_abs(buf);
    if (med > 0) X.row(i) /= med;
  }
  for (int64_t j = 0; j < cols; ++j) {
    buf.resize(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) buf[static_cast<size_t>(i)] = X(i, j);
    const double med = median_abs(buf);
    if (med > 0) X.col(j) /= med;
  }
  const double lambda = lambda_factor / std::sqrt(static_cast<double>(std::max(rows, cols)));
  // Largest singular value, from the Gram matrix.
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig;
  Eigen::MatrixXd G = X.transpose() * X;
  eig.compute(G);
  const double norm2 = std::sqrt(std::max(0.0, eig.eigenvalues().maxCoeff()));
  TEMPO_CHECK(norm2 > 0, "low-rank split: zero input");
  const double norm_inf = X.cwiseAbs().maxCoeff() / lambda;
  Mat Y = X / std::max(norm2, norm_inf);
  double mu = 1.25 / norm2;
  const double rho = 1.5, mu_max = mu * 1e7;
  Mat S = Mat::Zero(rows, cols), L = Mat::Zero(rows, cols), M(rows, cols);
  SparseSplit out;
  for (int it = 0; it < iterations; ++it) {
    // S: soft threshold of X − L + Y/μ at λ/μ.
    const double ts = lambda / mu;
    M = X - L + Y / mu;
    S = M.unaryExpr([ts](double v) { return v > ts ? v - ts : (v < -ts ? v + ts : 0.0); });
    // L: singular value threshold of X − S + Y/μ at 1/μ, through MᵀM = V·Σ²·Vᵀ:
    // L = M·V·diag(max(σ − τ, 0)/σ)·Vᵀ.
    M = X - S + Y / mu;
    G.noalias() = M.transpose() * M;
    eig.compute(G);
    const double tl = 1.0 / mu;
    Eigen::VectorXd f(cols);
    out.rank = 0;
    for (int64_t j = 0; j < cols; ++j) {
      const double sigma = std::sqrt(std::max(0.0, eig.eigenvalues()(j)));
      f(j) = sigma > tl ? (sigma - tl) / sigma : 0.0;
      out.rank += sigma > tl;
    }
    const Eigen::MatrixXd P = eig.eigenvectors() * f.asDiagonal() * eig.eigenvectors().transpose();
    L.noalias() = M * P;
    Y += mu * (X - L - S);
    mu = std::min(mu * rho, mu_max);
    out.iterations = it + 1;
  }
  out.s.assign(S.data(), S.data() + rows * cols);
  return out;
}

double roc_auc(const std::vector<double>& score, const std::vector<uint8_t>& label) {
  TEMPO_CHECK(score.size() == label.size(), "roc_auc: sizes differ");
  std::vector<size_t> order(score.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] < score[b]; });
  // Mann–Whitney: the sum of the positives' (mid-)ranks.
  double pos = 0, rank_sum = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && score[order[j]] == score[order[i]]) ++j;
    const double mid = (static_cast<double>(i) + static_cast<double>(j) + 1.0) / 2.0;
    for (size_t t = i; t < j; ++t)
      if (label[order[t]]) pos += 1, rank_sum += mid;
    i = j;
  }
  const double neg = static_cast<double>(score.size()) - pos;
  TEMPO_CHECK(pos > 0 && neg > 0, "roc_auc: needs both labels");
  return (rank_sum - pos * (pos + 1) / 2) / (pos * neg);
}

CommonSubspace find_common_subspace(const float* x, int64_t rows, int64_t cols, int64_t dim, double keep_fraction,
                                    int iterations) {
  TEMPO_CHECK(rows > 0 && cols > 0 && dim > 0 && dim < cols, "common subspace: bad shape");
  Mat X(rows, cols);
  for (int64_t i = 0; i < rows; ++i) {
    double n = 0;
    for (int64_t j = 0; j < cols; ++j) n += double(x[i * cols + j]) * x[i * cols + j];
    const double inv = n > 0 ? 1.0 / std::sqrt(n) : 0.0;
    for (int64_t j = 0; j < cols; ++j) X(i, j) = x[i * cols + j] * inv;
  }
  const int64_t keep = std::clamp<int64_t>(static_cast<int64_t>(keep_fraction * static_cast<double>(rows)), dim, rows);
  Eigen::MatrixXd gram = X.transpose() * X;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(gram);
  Eigen::MatrixXd basis = eig.eigenvectors().rightCols(dim);  // cols × dim
  Eigen::VectorXd values = eig.eigenvalues().tail(dim);
  std::vector<double> res(static_cast<size_t>(rows));
  std::vector<int64_t> order(static_cast<size_t>(rows));
  auto residuals = [&] {
    const Mat proj = X * basis;
    for (int64_t i = 0; i < rows; ++i)
      res[static_cast<size_t>(i)] = std::sqrt(std::max(0.0, X.row(i).squaredNorm() - proj.row(i).squaredNorm()));
  };
  for (int it = 0; it < iterations; ++it) {
    residuals();
    std::iota(order.begin(), order.end(), int64_t{0});
    std::nth_element(order.begin(), order.begin() + keep - 1, order.end(),
                     [&](int64_t a, int64_t b) { return res[static_cast<size_t>(a)] < res[static_cast<size_t>(b)]; });
    gram.setZero();
    for (int64_t t = 0; t < keep; ++t) {
      const auto r = X.row(order[static_cast<size_t>(t)]);
      gram.noalias() += r.transpose() * r;
    }
    eig.compute(gram);
    basis = eig.eigenvectors().rightCols(dim);
    values = eig.eigenvalues().tail(dim);
  }
  // The kept rows' numerical rank (single precision data).
  int64_t rank = 0;
  for (int64_t j = 0; j < dim; ++j) rank += values(j) > 1e-8 * values(dim - 1);
  basis = Eigen::MatrixXd(basis.rightCols(rank));
  residuals();
  CommonSubspace out;
  out.dim = rank;
  out.basis.resize(static_cast<size_t>(rank * cols));
  for (int64_t d = 0; d < rank; ++d)
    for (int64_t j = 0; j < cols; ++j) out.basis[static_cast<size_t>(d * cols + j)] = basis(j, d);
  out.residual = std::move(res);
  return out;
}

std::vector<double> decode_with_signs(const double* row, const CommonSubspace& s, const float* sign, int iterations) {
  const int64_t k = static_cast<int64_t>(s.basis.size()) / std::max<int64_t>(1, s.dim), d = s.dim;
  std::vector<double> y(row, row + k), coef(static_cast<size_t>(d)), z, h(static_cast<size_t>(k));
  // y ← the row minus its part in S.
  auto project = [&](const std::vector<double>& v, std::vector<double>& out) {  // out = (part of v in S)
    for (int64_t t = 0; t < d; ++t) {
      double c = 0;
      for (int64_t j = 0; j < k; ++j) c += s.basis[static_cast<size_t>(t * k + j)] * v[static_cast<size_t>(j)];
      coef[static_cast<size_t>(t)] = c;
    }
    out.assign(static_cast<size_t>(k), 0.0);
    for (int64_t t = 0; t < d; ++t)
      for (int64_t j = 0; j < k; ++j)
        out[static_cast<size_t>(j)] += coef[static_cast<size_t>(t)] * s.basis[static_cast<size_t>(t * k + j)];
  };
  std::vector<double> part;
  project(y, part);
  for (int64_t j = 0; j < k; ++j) y[static_cast<size_t>(j)] -= part[static_cast<size_t>(j)];
  z = y;
  for (int it = 0; it <= iterations; ++it) {
    for (int64_t j = 0; j < k; ++j) {  // onto the orthant
      const double v = z[static_cast<size_t>(j)] * sign[j];
      h[static_cast<size_t>(j)] = v > 0 ? z[static_cast<size_t>(j)] : 0.0;
    }
    if (it == iterations) break;
    project(h, part);  // onto y + S
    for (int64_t j = 0; j < k; ++j) z[static_cast<size_t>(j)] = y[static_cast<size_t>(j)] + part[static_cast<size_t>(j)];
  }
  // Polish: the alternating projections approach the point slowly. Take
  // the 5d/4 entries nearest zero for zeros and solve for the point of
  // y + S that has them exactly (least squares); keep it if it respects the
  // signs (then the guessed entries were zeros, and so is every other zero).
  const int64_t nz = std::min<int64_t>(k, (5 * d + 3) / 4);
  std::vector<int64_t> idx(static_cast<size_t>(k));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  std::nth_element(idx.begin(), idx.begin() + nz - 1, idx.end(), [&](int64_t a, int64_t b) {
    return std::fabs(h[static_cast<size_t>(a)]) < std::fabs(h[static_cast<size_t>(b)]);
  });
  Eigen::MatrixXd sz(nz, d);
  Eigen::VectorXd yz(nz);
  for (int64_t t = 0; t < nz; ++t) {
    const int64_t j = idx[static_cast<size_t>(t)];
    yz(t) = y[static_cast<size_t>(j)];
    for (int64_t c = 0; c < d; ++c) sz(t, c) = s.basis[static_cast<size_t>(c * k + j)];
  }
  const Eigen::VectorXd alpha = sz.colPivHouseholderQr().solve(-yz);
  std::vector<double> p(y);
  double mx = 0, worst = 0;
  for (int64_t c = 0; c < d; ++c)
    for (int64_t j = 0; j < k; ++j) p[static_cast<size_t>(j)] += alpha(c) * s.basis[static_cast<size_t>(c * k + j)];
  for (int64_t j = 0; j < k; ++j) {
    mx = std::max(mx, std::fabs(p[static_cast<size_t>(j)]));
    worst = std::min(worst, p[static_cast<size_t>(j)] * sign[j]);
  }
  return worst >= -1e-4 * mx ? p : h;
}

}  // namespace tempo
