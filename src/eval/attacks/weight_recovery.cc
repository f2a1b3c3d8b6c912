#include "eval/attacks/weight_recovery.h"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <numeric>
#include <unistd.h>

#include "common/error.h"
#include "trusted/rng.h"
#include "common/blas.h"
#include "trusted/obfuscation/blinding.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/obfuscation/obfuscator.h"
#include "eval/measurements/tap.h"
#include "eval/measurements/traced.h"

namespace tempo {

std::vector<double> double_centre_log_abs(const float* w, int64_t rows, int64_t cols, double floor,
                                          double* grand_mean) {
  TEMPO_CHECK(rows > 0 && cols > 0, "double centring: empty matrix");
  const size_t n = static_cast<size_t>(rows * cols);
  std::vector<double> d(n);
  std::vector<double> rmean(static_cast<size_t>(rows), 0.0), cmean(static_cast<size_t>(cols), 0.0);
  double g = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const size_t p = static_cast<size_t>(i * cols + j);
      d[p] = std::log(std::max(std::fabs(static_cast<double>(w[p])), floor));
      rmean[static_cast<size_t>(i)] += d[p];
      cmean[static_cast<size_t>(j)] += d[p];
      g += d[p];
    }
  for (auto& r : rmean) r /= static_cast<double>(cols);
  for (auto& c : cmean) c /= static_cast<double>(rows);
  g /= static_cast<double>(n);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const size_t p = static_cast<size_t>(i * cols + j);
      d[p] += g - rmean[static_cast<size_t>(i)] - cmean[static_cast<size_t>(j)];
    }
  if (grand_mean) *grand_mean = g;
  return d;
}

SignFactors nonnegative_sign_factors(const float* x, int64_t rows, int64_t cols) {
  SignFactors s;
  s.row.assign(static_cast<size_t>(rows), 0);
  s.col.assign(static_cast<size_t>(cols), 0);
  auto sgn = [](float v) -> int8_t { return v > 0 ? 1 : -1; };
  // Start from the row with the most non-zeros: it fixes the most columns.
  int64_t best = -1, best_nz = 0;
  for (int64_t i = 0; i < rows; ++i) {
    int64_t nz = 0;
    for (int64_t j = 0; j < cols; ++j) nz += x[i * cols + j] != 0;
    if (nz > best_nz) best = i, best_nz = nz;
  }
  if (best < 0) return s;
  s.row[static_cast<size_t>(best)] = 1;
  // Propagate over the bipartite graph of non-zero entries, a row-major pass
  // at a time, until nothing changes (a few passes: the graph is dense).
  for (bool changed = true; changed;) {
    changed = false;
    for (int64_t i = 0; i < rows; ++i) {
      const float* r = x + i * cols;
      int8_t& ri = s.row[static_cast<size_t>(i)];
      if (ri == 0)
        for (int64_t j = 0; j < cols; ++j)
          if (r[j] != 0 && s.col[static_cast<size_t>(j)] != 0) {
            ri = static_cast<int8_t>(sgn(r[j]) * s.col[static_cast<size_t>(j)]);
            changed = true;
            break;
          }
      if (ri == 0) continue;
      for (int64_t j = 0; j < cols; ++j)
        if (r[j] != 0 && s.col[static_cast<size_t>(j)] == 0) {
          s.col[static_cast<size_t>(j)] = static_cast<int8_t>(sgn(r[j]) * ri);
          changed = true;
        }
    }
  }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const float v = x[i * cols + j];
      const int8_t ri = s.row[static_cast<size_t>(i)], cj = s.col[static_cast<size_t>(j)];
      if (v != 0 && ri != 0 && cj != 0 && sgn(v) != ri * cj) ++s.inconsistent;
    }
  return s;
}

SignFactors gram_sign_factors(const float* x, int64_t rows, int64_t cols, int iterations) {
  Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> X(x, rows, cols);
  Eigen::VectorXd inv_norm(cols);
  for (int64_t j = 0; j < cols; ++j) {
    const double n = X.col(j).cast<double>().norm();
    inv_norm(j) = n > 0 ? 1.0 / n : 0.0;
  }
  // v ← D·Xᵀ·X·D·v, D = diag(1/‖column‖): the normalised Gram matrix.
  Eigen::VectorXd v = Eigen::VectorXd::Ones(cols);
  for (int it = 0; it < iterations; ++it) {
    const Eigen::VectorXf dv = inv_norm.cwiseProduct(v).cast<float>();
    const Eigen::VectorXf xv = X * dv;
    v = inv_norm.cwiseProduct((X.transpose() * xv).cast<double>());
    const double n = v.norm();
    if (!(n > 0)) break;
    v /= n;
  }
  SignFactors s;
  s.col.resize(static_cast<size_t>(cols));
  for (int64_t j = 0; j < cols; ++j) s.col[static_cast<size_t>(j)] = v(j) >= 0 ? 1 : -1;
  s.row.resize(static_cast<size_t>(rows));
  const Eigen::VectorXf w = inv_norm.cwiseProduct(v.cwiseSign()).cast<float>();
  const Eigen::VectorXf rs = X * w;
  for (int64_t i = 0; i < rows; ++i) s.row[static_cast<size_t>(i)] = rs(i) >= 0 ? 1 : -1;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const float e = x[i * cols + j];
      s.inconsistent += e != 0 && (e > 0 ? 1 : -1) != s.row[static_cast<size_t>(i)] * s.col[static_cast<size_t>(j)];
    }
  return s;
}

namespace {

using MatF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The double-centred log-magnitudes for matching: centred on their mean and
// clipped at 3 standard deviations, because the logarithm of a weight near
// zero is huge and jumps when the weight drifts across zero.
MatF matching_view(const std::vector<double>& d, int64_t rows, int64_t cols) {
  double mean = 0, sq = 0;
  for (double v : d) mean += v;
  mean /= static_cast<double>(d.size());
  for (double v : d) sq += (v - mean) * (v - mean);
  const double sd = std::sqrt(sq / static_cast<double>(d.size())) + 1e-30;
  MatF m(rows, cols);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j)
      m(i, j) = static_cast<float>(std::clamp(d[static_cast<size_t>(i * cols + j)] - mean, -3 * sd, 3 * sd));
  return m;
}

// Rows centred and scaled to unit norm: their dot products are correlations.
MatF standardise_rows(MatF m) {
  for (int64_t i = 0; i < m.rows(); ++i) {
    auto r = m.row(i);
    r.array() -= r.mean();
    const float nrm = r.norm();
    if (nrm > 0) r /= nrm;
  }
  return m;
}

// A one-to-one assignment that is good for the similarity s (s(i, j): item i
// of the new step against item j of the old): mutual best pairs among the
// unassigned are accepted, round after round. Greedy, not optimal, but each
// round is one pass over s and the rounds shrink the problem quickly.
std::vector<int32_t> assign(const MatF& s) {
  const int64_t n = s.rows();
  std::vector<int32_t> out(static_cast<size_t>(n), -1);
  std::vector<char> taken(static_cast<size_t>(n), 0);
  std::vector<int64_t> free_i(static_cast<size_t>(n));
  std::iota(free_i.begin(), free_i.end(), 0);
  std::vector<int64_t> best_i(static_cast<size_t>(n)), best_j(static_cast<size_t>(n));
  while (!free_i.empty()) {
    std::vector<float> col_best(static_cast<size_t>(n), -INFINITY);
    std::fill(best_j.begin(), best_j.end(), -1);
    for (int64_t i : free_i) {
      float top = -INFINITY;
      int64_t arg = -1;
      for (int64_t j = 0; j < n; ++j) {
        if (taken[static_cast<size_t>(j)]) continue;
        const float v = s(i, j);
        if (arg < 0 || v > top) top = v, arg = j;
        if (best_j[static_cast<size_t>(j)] < 0 || v > col_best[static_cast<size_t>(j)])
          col_best[static_cast<size_t>(j)] = v, best_j[static_cast<size_t>(j)] = i;
      }
      best_i[static_cast<size_t>(i)] = arg;
    }
    std::vector<int64_t> still;
    for (int64_t i : free_i) {
      const int64_t j = best_i[static_cast<size_t>(i)];
      if (j >= 0 && best_j[static_cast<size_t>(j)] == i) {
        out[static_cast<size_t>(i)] = static_cast<int32_t>(j);
        taken[static_cast<size_t>(j)] = 1;
      } else {
        still.push_back(i);
      }
    }
    TEMPO_CHECK(still.size() < free_i.size(), "assignment made no progress");
    free_i.swap(still);
  }
  return out;
}

}  // namespace

Matching match_permutations(const std::vector<double>& a, const std::vector<double>& b, int64_t rows, int64_t cols) {
  const size_t n = static_cast<size_t>(rows * cols);
  TEMPO_CHECK(rows > 0 && cols > 0 && a.size() == n && b.size() == n, "matching: shapes differ");
  const MatF ma = matching_view(a, rows, cols), mb = matching_view(b, rows, cols);
  Matching m;
  // First guess for the rows: each row sorted, which no column permutation
  // changes; compared by correlation.
  {
    MatF sa = ma, sb = mb;
    for (int64_t i = 0; i < rows; ++i) {
      std::sort(sa.row(i).data(), sa.row(i).data() + cols);
      std::sort(sb.row(i).data(), sb.row(i).data() + cols);
    }
    // Sorted rows all rise, so correlation would see them all alike: compare
    // distances instead (as a similarity: minus the squared distance).
    const Eigen::VectorXf na = sa.rowwise().squaredNorm(), nb = sb.rowwise().squaredNorm();
    MatF s = 2 * sb * sa.transpose();
    s.colwise() -= nb;
    s.rowwise() -= na.transpose();
    m.rows = assign(s);
  }
  // Then columns on the matched rows, rows on the matched columns, until
  // neither changes (each pass compares whole vectors, far more telling than
  // sorted values).
  for (int it = 0; it < 4; ++it) {
    MatF rb(rows, cols);  // b's rows in a's row order
    for (int64_t i = 0; i < rows; ++i) rb.row(m.rows[static_cast<size_t>(i)]) = mb.row(i);
    const MatF ca = standardise_rows(ma.transpose()), cb = standardise_rows(rb.transpose());
    std::vector<int32_t> cols_new = assign(cb * ca.transpose());
    MatF cbm(rows, cols);  // b's columns in a's column order
    for (int64_t j = 0; j < cols; ++j) cbm.col(cols_new[static_cast<size_t>(j)]) = mb.col(j);
    std::vector<int32_t> rows_new = assign(standardise_rows(cbm) * standardise_rows(ma).transpose());
    const bool same = cols_new == m.cols && rows_new == m.rows;
    m.cols = std::move(cols_new);
    m.rows = std::move(rows_new);
    if (same) break;
  }
  return m;
}

namespace {

// One offloaded product at one step, as the worker received it, with what
// scoring needs (the attacker uses only w_enc, the signs of A' and unit_sign,
// which it derives from ciphertexts too).
struct Record {
  int id = -1;
  std::string name;
  int64_t n = 0, k = 0;
  std::vector<float> w;                   // plaintext W (scoring)
  std::vector<float> w_enc;               // W' as encrypt_yt makes it
  std::vector<int32_t> src_row, src_col;  // W' row i came from W row src_row[i] (scoring)
  SignFactors a_signs;                    // of A' = L·A·Q⁻¹
  std::vector<int8_t> unit_sign;          // per row of W': see unit_signs()
};

// The sign of each output unit (row of W', column of C'), when the product's
// output goes through a ReLU. With the key shift the weight gradient is sent
// as G2 = L⁻ᵀ·dC·R2: its rows are in the order of C' = L·C·R⁻¹ (the same
// permutation L), and dC is exactly zero where the unit was inactive
// (C + bias ≤ 0; for a convolution followed by max-pooling, also where the
// position was not its window's maximum). So every column of G2's zero
// pattern is one unit's activity over the batch, in C''s row order. A unit
// is active where its pre-activation exceeds minus its bias, so the sign of
// its column of C' — with L's row signs removed (the row factor of A''s sign
// pattern; signs only, so L's magnitudes do not matter) — correlates with
// its activity: positively when the unit's sign in W' (that of r_j) agrees
// with the global sign the column signs left, negatively otherwise. Units
// and activity columns are paired one to one on |correlation|, and a pair
// that does not stand out from what m rows give by chance leaves the unit
// without a sign (so does a unit active on all rows of the batch or on none:
// its activity column is constant).
std::vector<int8_t> unit_signs(const float* c_enc, const std::vector<int8_t>& row_sign, const float* g2, int64_t m,
                               int64_t n) {
  MatF x(m, n), z(m, n);
  for (int64_t b = 0; b < m; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const float v = c_enc[b * n + j] * row_sign[static_cast<size_t>(b)];
      x(b, j) = v > 0 ? 1.0f : v < 0 ? -1.0f : 0.0f;
      z(b, j) = g2[b * n + j] != 0 ? 1.0f : 0.0f;
    }
  const MatF corr = standardise_rows(x.transpose()) * standardise_rows(z.transpose()).transpose();
  const std::vector<int32_t> pair = assign(corr.cwiseAbs());
  const float threshold = std::max(0.25f, 4.0f / std::sqrt(static_cast<float>(m)));
  std::vector<int8_t> out(static_cast<size_t>(n), 0);
  for (int64_t j = 0; j < n; ++j) {
    const float c = corr(j, pair[static_cast<size_t>(j)]);
    if (std::fabs(c) >= threshold) out[static_cast<size_t>(j)] = c > 0 ? 1 : -1;
  }
  return out;
}

// Computes every product in the master; over the recorded steps, encrypts
// each offloaded product's operands under a fresh forward triple for every
// key set, as OffloadBackend does (with the key shift for the weight
// gradient; with the row mixing and the mask of the run's configuration on
// the data operand and the output gradient, except for the keyless set),
// and keeps what the worker would have received.
class Recorder final : public TapBackend {
 public:
  // Records the training steps [first_step, end_step): once per product and
  // step (the evaluation after training goes through here too).
  // shift[s]: key set s encrypts the weight gradient with the key shift (the
  // default) or, as --no-key-shift does, under fresh keys on both sides.
  // blind[s]: key set s mixes rows (row_mix > 0) and masks (mask_rank > 0);
  // col[s]: it mixes the inner dimension in groups of col[s] (0: not).
  Recorder(std::vector<Obfuscator*> keys, std::vector<bool> shift, std::vector<bool> blind, std::vector<int> col,
           int row_mix, int mask_rank, int64_t first_step, int64_t end_step)
      : keys_(std::move(keys)), got(keys_.size()), pending_(keys_.size()), shift_(std::move(shift)),
        first_(first_step), end_(end_step) {
    for (size_t s = 0; s < keys_.size(); ++s)
      blinds_.push_back(
          std::make_unique<Blinding>(blind[s] ? row_mix : 0, blind[s] ? mask_rank : 0, 1.0f, col[s]));
  }
  const char* name() const override { return "weight-recorder"; }
  std::vector<Obfuscator*> keys_;
  std::vector<std::map<int, std::vector<Record>>> got;  // per key set, by product id, in step order

 private:
  void on_forward(const Product& p, const float* c) override {
    const int64_t step = steps();
    if (step >= first_ && step < end_ && static_cast<int64_t>(got[0][p.id].size()) == step - first_)
      for (size_t s = 0; s < keys_.size(); ++s) record(s, p, c);
  }
  void on_backward_weight(const Product& p, const float* dc) override {
    for (size_t s = 0; s < keys_.size(); ++s) {
      auto it = pending_[s].find(p.id);
      if (it == pending_[s].end()) continue;
      Obfuscator& obf = *keys_[s];
      // Key shift: L⁻ᵀ·dC·R2, its rows lined up with C'. Without: dC under
      // a fresh inner (rows) and right (columns) key.
      const Triple t2 = shift_[s] ? it->second.t.shift_weight(obf.draw(p.n)) : obf.draw_triple(p.k, p.m, p.n);
      const float* g = blinds_[s]->gradient(blinds_[s]->sent(p), dc);  // as sent
      const CipherMatrix g2 = obf.encrypt_y(t2, g, p.m, p.n);
      Record& r = got[s][p.id].back();
      r.unit_sign = unit_signs(it->second.c_enc.data(), it->second.a_rows, g2.matrix().data(), p.m, p.n);
      pending_[s].erase(it);
    }
  }
  struct Pending {
    Triple t;
    std::vector<float> c_enc;   // C' = L·C·R⁻¹, what the worker computed
    std::vector<int8_t> a_rows; // row signs of A'
  };
  void record(size_t s, const Product& p, const float* c) {
    Obfuscator& obf = *keys_[s];
    // The operands as sent (the data operand mixed, then masked; with column
    // mixing both operands' inner dimension mixed); the worker's product is
    // their product. The truth scored below stays the plain W.
    const Product* q = &blinds_[s]->apply(p, obf);
    if (q != &p) {
      sent_c_.resize(static_cast<size_t>(p.m * p.n));
      sgemm(false, true, p.m, p.n, p.k, 1.0f, q->a, p.k, q->w, p.k, 0.0f, sent_c_.data(), p.n);
      c = sent_c_.data();
    }
    const Triple t = obf.draw_triple(p.m, p.k, p.n);
    const CipherMatrix wc = obf.encrypt_yt(t, q->w, p.n, p.k);  // B'ᵀ = R⁻ᵀ·W·Qᵀ (W·Gᵀ when column-mixed)
    const CipherMatrix ac = obf.encrypt_x(t, q->a, p.m, p.k);  // A' = L·A·Q⁻¹
    Record r;
    r.id = p.id;
    r.name = p.name;
    r.n = p.n;
    r.k = p.k;
    r.w.assign(p.w, p.w + p.n * p.k);
    const float* we = wc.matrix().data();
    r.w_enc.assign(we, we + p.n * p.k);
    r.a_signs = nonnegative_sign_factors(ac.matrix().data(), p.m, p.k);
    // An operand that is visibly not L·A·Q⁻¹ with A ≥ 0 (the mask, the row
    // mixing): the attacker falls back to the Gram matrix's signs.
    if (r.a_signs.inconsistent > p.m * p.k / 100) r.a_signs = gram_sign_factors(ac.matrix().data(), p.m, p.k);
    // The worker's product A'·B' is L·C·R⁻¹; encrypting C with those keys
    // gives it without an m×k×n product here.
    Pending pend{t, std::vector<float>(static_cast<size_t>(p.m * p.n)), r.a_signs.row};
    Triple{t.left, t.right, ScaledPerm::identity(1)}.encrypt_x(c, p.m, p.n, pend.c_enc.data());
    pending_[s][p.id] = std::move(pend);
    // The trace: the same keys as encrypt_yt, in encrypt_x's convention
    // (left R⁻ᵀ, inner⁻¹ = Qᵀ).
    const Triple tw{t.right.inv_t(), t.inner.inv_t(), ScaledPerm::identity(1)};
    const Traced tr = encrypt_traced(tw, q->w, p.n, p.k);
    for (size_t q = 0; q < tr.values.size(); ++q)
      TEMPO_CHECK(std::fabs(tr.values[q] - r.w_enc[q]) <= 1e-5f * (std::fabs(r.w_enc[q]) + 1e-30f),
                  "weight recovery: the trace does not match the weight ciphertext");
    for (int64_t i = 0; i < p.n; ++i) r.src_row.push_back(tr.src_row[static_cast<size_t>(i * p.k)]);
    for (int64_t j = 0; j < p.k; ++j) r.src_col.push_back(tr.src_col[static_cast<size_t>(j)]);
    got[s][p.id].push_back(std::move(r));
  }
  std::vector<std::map<int, Pending>> pending_;
  std::vector<bool> shift_;
  std::vector<std::unique_ptr<Blinding>> blinds_;
  std::vector<float> sent_c_;
  int64_t first_, end_;
};

double correlation(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += x[i], my += y[i];
  mx /= n, my /= n;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  return sxy / std::sqrt(sxx * syy + 1e-300);
}

// ‖Ŵ − W‖/‖W‖ after the best scalar per row (sign and positive scale; with
// `positive`, the scale only), with Ŵ in ciphertext order and W indexed
// through the placement.
double rel_error_best_rows(const std::vector<float>& est, const Record& r, bool positive = false) {
  double err = 0, tot = 0;
  for (int64_t i = 0; i < r.n; ++i) {
    const float* truth = r.w.data() + int64_t{r.src_row[static_cast<size_t>(i)]} * r.k;
    const float* e = est.data() + i * r.k;
    double ew = 0, ee = 0, ww = 0;
    for (int64_t j = 0; j < r.k; ++j) {
      const double t = truth[r.src_col[static_cast<size_t>(j)]];
      ew += e[j] * t, ee += double(e[j]) * e[j], ww += t * t;
    }
    if (positive) ew = std::max(ew, 0.0);
    err += ww - (ee > 0 ? ew * ew / ee : 0);  // residual of the least-squares fit
    tot += ww;
  }
  return std::sqrt(std::max(err, 0.0) / tot);
}

// A column of `last` whose input was zero over the whole batch gets no sign
// from its operand; it may get one through the chain from the first step,
// where that column's sign may be known: the columns signed at both steps
// give each row's sign relative to the first step, and those rows then give
// the missing column's sign. (A column that is zero in every batch gets no
// gradient and stays put, which makes this reliable.) `col`: the last step's
// column signs, filled where possible.
void fill_signs_from(const Record& first, const Record& last, const std::vector<int32_t>& chain_r,
                     const std::vector<int32_t>& chain_c, std::vector<int8_t>& col) {
  const int64_t n = last.n, k = last.k;
  const std::vector<int8_t>& ref_col = first.a_signs.col;
  auto ref = [&](int64_t i, int64_t j) {  // the first step's signed value at last's (i, j)
    const int32_t c = chain_c[static_cast<size_t>(j)];
    return static_cast<double>(first.w_enc[static_cast<size_t>(int64_t{chain_r[static_cast<size_t>(i)]} * k + c)]) *
           ref_col[static_cast<size_t>(c)];
  };
  std::vector<double> row_flip(static_cast<size_t>(n), 0);
  for (int64_t i = 0; i < n; ++i) {
    double dot = 0;
    for (int64_t j = 0; j < k; ++j)
      if (col[static_cast<size_t>(j)] != 0)
        dot += static_cast<double>(last.w_enc[static_cast<size_t>(i * k + j)]) * col[static_cast<size_t>(j)] * ref(i, j);
    row_flip[static_cast<size_t>(i)] = dot < 0 ? -1 : dot > 0 ? 1 : 0;
  }
  for (int64_t j = 0; j < k; ++j) {
    if (col[static_cast<size_t>(j)] != 0 || ref_col[static_cast<size_t>(chain_c[static_cast<size_t>(j)])] == 0) continue;
    double dot = 0;
    for (int64_t i = 0; i < n; ++i)
      dot += static_cast<double>(last.w_enc[static_cast<size_t>(i * k + j)]) * row_flip[static_cast<size_t>(i)] * ref(i, j);
    col[static_cast<size_t>(j)] = static_cast<int8_t>(dot < 0 ? -1 : dot > 0 ? 1 : 0);
  }
}

// A unit whose sign the last step's batch did not reveal (active on all
// rows or on none) may have revealed it at an earlier step. There, the row
// with its column and unit signs applied is the true row up to positive
// factors; the last step's row with only its column signs applied is that
// row times the unit sign sought, so the sign of their dot product (over
// columns signed at both steps, aligned through the chains) is the answer.
void fill_unit_signs(const std::vector<Record>& steps, const std::vector<std::vector<int32_t>>& chains_r,
                     const std::vector<std::vector<int32_t>>& chains_c, std::vector<int8_t>& units) {
  const Record& last = steps.back();
  const int64_t n = last.n, k = last.k;
  const size_t T = steps.size() - 1;
  auto inverse = [](const std::vector<int32_t>& p) {
    std::vector<int32_t> inv(p.size());
    for (size_t i = 0; i < p.size(); ++i) inv[static_cast<size_t>(p[i])] = static_cast<int32_t>(i);
    return inv;
  };
  for (size_t t = T; t-- > 0;) {
    const Record& r = steps[t];
    if (r.unit_sign.empty()) continue;
    const std::vector<int32_t> inv_r = inverse(chains_r[t]), inv_c = inverse(chains_c[t]);
    for (int64_t i = 0; i < n; ++i) {
      if (units[static_cast<size_t>(i)] != 0) continue;
      const int32_t it = inv_r[static_cast<size_t>(chains_r[T][static_cast<size_t>(i)])];
      const int8_t ut = r.unit_sign[static_cast<size_t>(it)];
      if (ut == 0) continue;
      double dot = 0;
      for (int64_t j = 0; j < k; ++j) {
        const int32_t jt = inv_c[static_cast<size_t>(chains_c[T][static_cast<size_t>(j)])];
        const int8_t bl = last.a_signs.col[static_cast<size_t>(j)], bt = r.a_signs.col[static_cast<size_t>(jt)];
        if (bl == 0 || bt == 0) continue;
        dot += static_cast<double>(last.w_enc[static_cast<size_t>(i * k + j)]) * bl *
               r.w_enc[static_cast<size_t>(int64_t{it} * k + jt)] * bt * ut;
      }
      if (dot != 0) units[static_cast<size_t>(i)] = dot > 0 ? 1 : -1;
    }
  }
}

// The permutations chained step to step through the window, as the attacker matches them.
struct Chains {
  std::vector<int32_t> r, c;  // r[i]: the index at the first step of row i of the last step (c: of column i)
  std::vector<std::vector<int32_t>> per_step_r, per_step_c;  // r and c at every step of the window
};

// Chains the permutations step to step by matching consecutive weight ciphertexts, and scores the chaining with
// the trace (L's matched and chained fractions).
Chains chain_permutations(const std::vector<Record>& steps, LayerRecovery& L) {
  const Record& first = steps.front();
  const Record& last = steps.back();
  const int64_t n = last.n, k = last.k;
  // Chain the permutations step to step; chain_r[i]: the index at the
  // first step of row i of the current step.
  std::vector<double> prev = double_centre_log_abs(first.w_enc.data(), n, k);
  std::vector<int32_t> chain_r(static_cast<size_t>(n)), chain_c(static_cast<size_t>(k));
  std::iota(chain_r.begin(), chain_r.end(), 0);
  std::iota(chain_c.begin(), chain_c.end(), 0);
  std::vector<std::vector<int32_t>> chains_r{chain_r}, chains_c{chain_c};  // per step
  for (size_t t = 1; t < steps.size(); ++t) {
    std::vector<double> cur = double_centre_log_abs(steps[t].w_enc.data(), n, k);
    const Matching m = match_permutations(prev, cur, n, k);
    int64_t ok_r = 0, ok_c = 0;
    std::vector<int32_t> nr(static_cast<size_t>(n)), nc(static_cast<size_t>(k));
    for (int64_t i = 0; i < n; ++i) {
      const int32_t j = m.rows[static_cast<size_t>(i)];
      ok_r += steps[t - 1].src_row[static_cast<size_t>(j)] == steps[t].src_row[static_cast<size_t>(i)];
      nr[static_cast<size_t>(i)] = chain_r[static_cast<size_t>(j)];
    }
    for (int64_t i = 0; i < k; ++i) {
      const int32_t j = m.cols[static_cast<size_t>(i)];
      ok_c += steps[t - 1].src_col[static_cast<size_t>(j)] == steps[t].src_col[static_cast<size_t>(i)];
      nc[static_cast<size_t>(i)] = chain_c[static_cast<size_t>(j)];
    }
    L.rows_matched_step += static_cast<double>(ok_r) / static_cast<double>(n);
    L.cols_matched_step += static_cast<double>(ok_c) / static_cast<double>(k);
    chain_r.swap(nr);
    chain_c.swap(nc);
    chains_r.push_back(chain_r);
    chains_c.push_back(chain_c);
    prev.swap(cur);
  }
  L.rows_matched_step /= static_cast<double>(steps.size() - 1);
  L.cols_matched_step /= static_cast<double>(steps.size() - 1);
  int64_t ok_r = 0, ok_c = 0;
  for (int64_t i = 0; i < n; ++i)
    ok_r += first.src_row[static_cast<size_t>(chain_r[static_cast<size_t>(i)])] == last.src_row[static_cast<size_t>(i)];
  for (int64_t j = 0; j < k; ++j)
    ok_c += first.src_col[static_cast<size_t>(chain_c[static_cast<size_t>(j)])] == last.src_col[static_cast<size_t>(j)];
  L.rows_chained = static_cast<double>(ok_r) / static_cast<double>(n);
  L.cols_chained = static_cast<double>(ok_c) / static_cast<double>(k);
  return {std::move(chain_r), std::move(chain_c), std::move(chains_r), std::move(chains_c)};
}

// Scores the last step's estimate (est: with the column signs; est_u: with none) against the plaintext weight
// placed with the trace: entry signs, |w| correlation, the centring residual of d, and the relative errors.
void score_estimate(const Record& last, const std::vector<double>& d, const std::vector<int8_t>& col_signs,
                    const std::vector<float>& est, const std::vector<float>& est_u, LayerRecovery& L) {
  const int64_t n = last.n, k = last.k;
  // Scores, placed with the trace.
  const std::vector<double> dt = double_centre_log_abs(last.w.data(), n, k);
  std::vector<double> ae, at;
  int64_t agree = 0, counted = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t ti = last.src_row[static_cast<size_t>(i)];
    // The best sign of this row: the one most entries agree with.
    double dot = 0;
    for (int64_t j = 0; j < k; ++j) dot += est[static_cast<size_t>(i * k + j)] * last.w[static_cast<size_t>(ti * k + last.src_col[static_cast<size_t>(j)])];
    const float rs = dot < 0 ? -1.0f : 1.0f;
    for (int64_t j = 0; j < k; ++j) {
      const size_t p = static_cast<size_t>(i * k + j);
      const size_t q = static_cast<size_t>(ti * k + last.src_col[static_cast<size_t>(j)]);
      ae.push_back(std::fabs(est[p]));
      at.push_back(std::fabs(last.w[q]));
      L.centring_residual = std::max(L.centring_residual, std::fabs(d[p] - dt[q]));
      if (col_signs[static_cast<size_t>(j)] != 0 && last.w[q] != 0) {
        ++counted;
        agree += (rs * est[p] > 0) == (last.w[q] > 0);
      }
    }
  }
  L.sign_agreement = counted ? static_cast<double>(agree) / static_cast<double>(counted) : 0;
  L.abs_correlation = correlation(ae, at);
  L.rel_error = rel_error_best_rows(est, last);
  L.rel_error_no_signs = rel_error_best_rows(est_u, last);
}

// Applies the units' signs as the attacker finds them to est (into out; rows without one keep +), from the last
// step or, through the chains, from an earlier one; scores them (L's units signed and right, attacker's error).
void apply_unit_signs(const std::vector<Record>& steps, const Chains& ch, const std::vector<float>& est,
                      std::vector<float>& out, LayerRecovery& L) {
  const Record& last = steps.back();
  const int64_t n = last.n, k = last.k;
  std::vector<int8_t> units = last.unit_sign;
  units.resize(static_cast<size_t>(n), 0);
  fill_unit_signs(steps, ch.per_step_r, ch.per_step_c, units);
  out = est;
  int64_t found = 0, right = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int8_t u = units[static_cast<size_t>(i)];
    if (u == 0) continue;
    ++found;
    const int64_t ti = last.src_row[static_cast<size_t>(i)];
    double dot = 0;
    for (int64_t j = 0; j < k; ++j) {
      float& e = out[static_cast<size_t>(i * k + j)];
      e *= u;
      dot += e * last.w[static_cast<size_t>(ti * k + last.src_col[static_cast<size_t>(j)])];
    }
    right += dot > 0;
  }
  L.units_signed = static_cast<double>(found) / static_cast<double>(n);
  L.units_right = found ? static_cast<double>(right) / static_cast<double>(found) : 0;
  L.rel_error_attacker = rel_error_best_rows(out, last, true);
}

// Attacks one layer's records of the window (one key set) and scores the
// result. est: the recovered weight of the last step, in its ciphertext
// order, with the attacker's own signs.
LayerRecovery attack_layer(const std::vector<Record>& steps, std::vector<float>& out) {
  const Record& first = steps.front();
  const Record& last = steps.back();
  const int64_t n = last.n, k = last.k;
  LayerRecovery L;
  L.layer = last.name;
  L.rows = n;
  L.cols = k;
  const Chains ch = chain_permutations(steps, L);

  // The last step's weight: magnitudes and column signs.
  double grand = 0;
  const std::vector<double> d = double_centre_log_abs(last.w_enc.data(), n, k, 1e-30, &grand);
  SignFactors sf = last.a_signs;
  fill_signs_from(first, last, ch.r, ch.c, sf.col);
  for (const Record& s : steps) L.sign_inconsistent += s.a_signs.inconsistent;
  int64_t signed_cols = 0;
  for (int8_t c : sf.col) signed_cols += c != 0;
  L.cols_signed = static_cast<double>(signed_cols) / static_cast<double>(k);
  std::vector<float> est(static_cast<size_t>(n * k)), est_u(est.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) {
      const size_t p = static_cast<size_t>(i * k + j);
      const float mag = static_cast<float>(std::exp(d[p] + grand));
      const float s = last.w_enc[p] < 0 ? -1.0f : 1.0f;
      est_u[p] = s * mag;
      // A column of unknown sign is left at 0: a guessed sign is wrong
      // half the time, and an error of 2|w| costs more than one of |w|.
      est[p] = static_cast<float>(sf.col[static_cast<size_t>(j)]) * s * mag;
    }
  score_estimate(last, d, sf.col, est, est_u, L);
  // The units' signs as the attacker finds them (rows without one keep +),
  // from the last step or, through the chain, from an earlier one.
  apply_unit_signs(steps, ch, est, out, L);
  return L;
}

// Fails unless the model offloads at least one product by default.
void check_offloads(const TrainConfig& tc) {
  const auto probe = prepare_model(tc);
  bool any = false;
  for (const Layer* l : probe->product_layers) any = any || l->offloaded;
  TEMPO_CHECK(any, "weight recovery: model '" + tc.model +
                       "' offloads no product by default (its first and last layers stay in the master)");
}

// The weight of product `id` of the model (a convolution's or a linear layer's).
Tensor& product_weight(Model& model, int id) {
  Layer* l = model.product_layers.at(static_cast<size_t>(id));
  if (auto* c = dynamic_cast<Conv2d*>(l)) return c->weight;
  if (auto* f = dynamic_cast<Linear*>(l)) return f->weight;
  throw Error("weight recovery: product " + std::to_string(id) + " is neither a convolution nor a linear layer");
}

// How an assembled model's offloaded weights are put in place.
enum class Put { kTrue, kPlacedOwnSigns, kPlacedBestSigns, kPlacedRandomSigns, kOwnOrder };

// Writes one key set's offloaded weights into the model as `how` says: the true ones, or the recovered ones
// (recovered: by product id, in the last step's ciphertext order) placed with the trace or in the attacker's
// own order; coin draws the random unit signs.
void put_weights(Put how, const std::map<int, std::vector<Record>>& got,
                 const std::map<int, std::vector<float>>& recovered, Model& model, Rng& coin) {
  for (auto& [id, steps] : got) {
    const Record& last = steps.back();
    Tensor& w = product_weight(model, id);
    TEMPO_CHECK(w.numel() == last.n * last.k, "weight recovery: layer " + last.name + " changed shape");
    const std::vector<float>& est = recovered.at(id);
    const int64_t k = last.k;
    if (how == Put::kTrue) {
      std::copy(last.w.begin(), last.w.end(), w.data());
      continue;
    }
    if (how == Put::kOwnOrder) {  // what the attacker holds: its own order, its own signs
      std::copy(est.begin(), est.end(), w.data());
      continue;
    }
    if (how == Put::kPlacedOwnSigns) {
      for (int64_t i = 0; i < last.n; ++i)
        for (int64_t j = 0; j < k; ++j)
          w[int64_t{last.src_row[static_cast<size_t>(i)]} * k + last.src_col[static_cast<size_t>(j)]] =
              est[static_cast<size_t>(i * k + j)];
      continue;
    }
    for (int64_t i = 0; i < last.n; ++i) {
      const int64_t ti = last.src_row[static_cast<size_t>(i)];
      double dot = 0;
      for (int64_t j = 0; j < k; ++j)
        dot += est[static_cast<size_t>(i * k + j)] *
               last.w[static_cast<size_t>(ti * k + last.src_col[static_cast<size_t>(j)])];
      float rs = dot < 0 ? -1.0f : 1.0f;
      if (how == Put::kPlacedRandomSigns) rs = coin.uniform() < 0.5 ? -1.0f : 1.0f;
      for (int64_t j = 0; j < k; ++j)
        w[ti * k + last.src_col[static_cast<size_t>(j)]] = rs * est[static_cast<size_t>(i * k + j)];
    }
  }
}

}  // namespace

WeightRecoveryReport measure_weight_recovery(const WeightRecoveryConfig& cfg) {
  TEMPO_CHECK(cfg.steps > 0 && cfg.window >= 2 && cfg.window <= cfg.steps,
              "weight recovery: need at least 2 recorded steps, and no more than the training steps");
  TrainConfig tc = cfg.train;
  tc.mode = "tee-only";
  tc.steps = cfg.steps;
  tc.epochs = 1 << 20;  // the step limit ends training
  tc.metrics.clear();
  check_offloads(tc);
  // The true model at the end, for the other layers and the biases of the
  // assembled models.
  const std::string saved = (std::filesystem::temp_directory_path() /
                             ("tempo-weights-" + std::to_string(::getpid()) + ".safetensors"))
                                .string();
  tc.save = saved;
  // Three key sets over the same training: real keys, none (the insecure
  // offload mode) for comparison, and real keys without the key shift
  // (--no-key-shift, the hardening this measures).
  std::unique_ptr<Obfuscator> keyed = measurement_keys(cfg.seed, tc.offload.key_scale, false);
  std::unique_ptr<Obfuscator> none = measurement_keys(cfg.seed, tc.offload.key_scale, true);
  std::unique_ptr<Obfuscator> unshifted = measurement_keys(cfg.seed + 1, tc.offload.key_scale, false);
  // A fourth (optional): the defaults plus the column mixing.
  std::unique_ptr<Obfuscator> col_mixed = measurement_keys(cfg.seed + 2, tc.offload.key_scale, false);
  std::vector<Obfuscator*> sets{keyed.get(), none.get(), unshifted.get()};
  std::vector<bool> shifts{true, true, false}, blinds{true, false, true};
  std::vector<int> cols{0, 0, 0};
  if (cfg.col_mix > 0) {
    sets.push_back(col_mixed.get());
    shifts.push_back(true);
    blinds.push_back(true);
    cols.push_back(cfg.col_mix);
  }
  Recorder rec(sets, shifts, blinds, cols, tc.offload.row_mix, tc.offload.mask_rank, cfg.steps - cfg.window,
               cfg.steps);
  const TrainResult tr = train(tc, &rec);
  TEMPO_CHECK(tr.steps == cfg.steps, "weight recovery: training stopped after " + std::to_string(tr.steps) +
                                         " steps, " + std::to_string(cfg.steps) + " were asked for");
  TEMPO_CHECK(!rec.got[0].empty(), "weight recovery: model '" + tc.model + "' offloads no product");

  WeightRecoveryReport rep;
  rep.steps = cfg.steps;
  rep.window = cfg.window;
  rep.col_mix = cfg.col_mix;
  // What each layer's recovered weight is, in ciphertext order of the last
  // step (real keys).
  std::map<int, std::vector<float>> recovered[4];  // per key set
  for (size_t s = 0; s < rec.got.size(); ++s)
    for (auto& [id, steps] : rec.got[s]) {
      TEMPO_CHECK(static_cast<int64_t>(steps.size()) == cfg.window, "weight recovery: a step was not recorded");
      std::vector<float> est;
      (s == 0   ? rep.layers
       : s == 1 ? rep.offload_layers
       : s == 2 ? rep.unshifted_layers
                : rep.col_mixed_layers)
          .push_back(attack_layer(steps, est));
      recovered[s][id] = std::move(est);
    }

  // Assembled models, evaluated on the test split.
  auto model = build_model(tc.model, tc.seed);
  model->load(saved);
  std::filesystem::remove(saved);
  const Dataset data = load_dataset(tc.data, model->input_shape, tc.seed);
  TEMPO_CHECK(!data.test_y.empty(), "weight recovery: data set '" + tc.data + "' has no test split");
  rep.data = data.description;
  rep.chance = 1.0 / static_cast<double>(model->num_classes);
  TeeOnlyBackend local;
  Rng coin(cfg.seed ^ 0x5e1f);
  auto assemble_and_score = [&](Put how, const std::string& name, size_t set = 0) {
    put_weights(how, rec.got[set], recovered[set], *model, coin);
    const EvalResult e = evaluate(*model, data, 256, local);
    rep.models.push_back({name, e.accuracy});
  };
  assemble_and_score(Put::kTrue, "true weights");
  assemble_and_score(Put::kPlacedOwnSigns, "recovered, true placement, the attacker's unit signs");
  assemble_and_score(Put::kPlacedBestSigns, "recovered, true placement, best unit signs");
  assemble_and_score(Put::kPlacedRandomSigns, "recovered, true placement, random unit signs");
  assemble_and_score(Put::kOwnOrder, "recovered, the attacker's own order and signs");
  assemble_and_score(Put::kPlacedOwnSigns, "--no-key-shift: recovered, true placement, the attacker's unit signs", 2);
  if (cfg.col_mix > 0)
    assemble_and_score(Put::kPlacedBestSigns,
                       "--col-mix " + std::to_string(cfg.col_mix) + ": recovered, true placement, best unit signs", 3);
  return rep;
}

}  // namespace tempo
