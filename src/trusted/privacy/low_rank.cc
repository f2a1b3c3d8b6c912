#include "trusted/privacy/low_rank.h"

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

}  // namespace tempo
