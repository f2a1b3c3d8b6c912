#include "eval/attacks/key_shift.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/error.h"
#include "eval/measurements/traced.h"
#include "trusted/obfuscation/blinding.h"

namespace tempo {

namespace {

std::vector<double> row_norms(const float* x, int64_t rows, int64_t cols) {
  std::vector<double> out(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) {
    double s = 0;
    for (int64_t j = 0; j < cols; ++j) s += double(x[i * cols + j]) * x[i * cols + j];
    out[static_cast<size_t>(i)] = std::sqrt(s);
  }
  return out;
}

std::vector<double> ranks(const std::vector<double>& x) {
  std::vector<size_t> o(x.size());
  std::iota(o.begin(), o.end(), size_t{0});
  std::sort(o.begin(), o.end(), [&](size_t a, size_t b) { return x[a] < x[b]; });
  std::vector<double> r(x.size());
  for (size_t i = 0; i < o.size();) {
    size_t j = i;
    while (j + 1 < o.size() && x[o[j + 1]] == x[o[i]]) ++j;
    for (size_t t = i; t <= j; ++t) r[o[t]] = 0.5 * static_cast<double>(i + j);
    i = j + 1;
  }
  return r;
}

double row_norm(const float* x, int64_t cols) {
  double s = 0;
  for (int64_t j = 0; j < cols; ++j) s += double(x[j]) * x[j];
  return std::sqrt(s);
}

}  // namespace

std::vector<double> paired_row_norms(const float* a, int64_t m, int64_t k, const float* g, int64_t n) {
  std::vector<double> na = row_norms(a, m, k);
  const std::vector<double> ng = row_norms(g, m, n);
  for (size_t i = 0; i < na.size(); ++i) na[i] *= ng[i];
  return na;
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  TEMPO_CHECK(x.size() == y.size() && !x.empty(), "spearman: two series of one length");
  const std::vector<double> rx = ranks(x), ry = ranks(y);
  const double mean = 0.5 * static_cast<double>(x.size() - 1);
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double a = rx[i] - mean, b = ry[i] - mean;
    sxy += a * b, sxx += a * a, syy += b * b;
  }
  return sxx > 0 && syy > 0 ? sxy / std::sqrt(sxx * syy) : 0.0;
}

KeyShiftRow key_shift_attack(const std::string& layer, int id, const float* a, const float* w, const float* dc,
                             int64_t m, int64_t k, int64_t n, const float* error, const KeyShiftCase& c,
                             uint64_t seed, double key_scale) {
  KeyShiftRow row;
  row.layer = layer;
  row.blinding = c;
  row.rows = m;
  // As OffloadBackend sends them: the blinded operand under the forward
  // triple, the blinded gradient under the shifted (or a fresh) triple.
  std::unique_ptr<Obfuscator> obf = measurement_keys(seed, key_scale, false);
  Blinding blind(c.row_mix, c.mask_rank, 1.0f, c.col_mix);
  const Product p{id, layer, a, w, m, k, n};
  const Product& q = blind.apply(p, *obf);
  const float* g = blind.gradient(q, dc);
  const Triple t = obf->draw_triple(m, k, n);
  const CipherMatrix a_enc = obf->encrypt_x(t, q.a, m, k);
  const Triple t2 = c.shift ? t.shift_weight(obf->draw(n)) : obf->draw_triple(k, m, n);
  const CipherMatrix g_enc = obf->encrypt_y(t2, g, m, n);
  if (c.shift)
    TEMPO_CHECK(t2.inner.perm == t.left.perm, "key shift attack: the shifted rows do not line up with A'");

  // The attack, and the baseline of A' alone.
  const std::vector<double> est = paired_row_norms(a_enc.matrix().data(), m, k, g_enc.matrix().data(), n);
  const std::vector<double> a_only = row_norms(a_enc.matrix().data(), m, k);

  // Scoring: the row of the blinded operand behind ciphertext row i, and
  // the rows of A it mixes (its group, or itself).
  std::vector<int32_t> perm(static_cast<size_t>(m));
  std::vector<int64_t> starts;
  std::iota(perm.begin(), perm.end(), 0);
  if (const RowMix* mix = blind.row_mixing()) {
    const RowMix::Grouping gr = mix->grouping(id);
    perm = gr.perm;
    starts = gr.starts;
  } else {
    for (int64_t j = 0; j <= m; ++j) starts.push_back(j);
  }
  std::vector<int64_t> group_of(static_cast<size_t>(m));
  for (size_t gi = 0; gi + 1 < starts.size(); ++gi)
    for (int64_t j = starts[gi]; j < starts[gi + 1]; ++j) group_of[static_cast<size_t>(j)] = static_cast<int64_t>(gi);
  std::vector<double> t_sent(static_cast<size_t>(m)), t_sample(static_cast<size_t>(m)),
      t_grad(static_cast<size_t>(m)), t_err(static_cast<size_t>(m)), t_a(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) {
    const int64_t j = t.left.perm[static_cast<size_t>(i)];
    t_sent[static_cast<size_t>(i)] = row_norm(q.a + j * k, k) * row_norm(g + j * n, n);
    const int64_t gi = group_of[static_cast<size_t>(j)];
    double s = 0, d = 0, e = 0, an = 0;
    const int64_t b0 = starts[static_cast<size_t>(gi)], b1 = starts[static_cast<size_t>(gi) + 1];
    for (int64_t u = b0; u < b1; ++u) {
      const int64_t src = perm[static_cast<size_t>(u)];
      const double na = row_norm(a + src * k, k), nd = row_norm(dc + src * n, n);
      s += na * nd, d += nd, an += na;
      if (error) e += error[src];
    }
    const double nb = static_cast<double>(b1 - b0);
    t_sample[static_cast<size_t>(i)] = s / nb, t_grad[static_cast<size_t>(i)] = d / nb;
    t_err[static_cast<size_t>(i)] = e / nb, t_a[static_cast<size_t>(i)] = an / nb;
  }
  row.sent = spearman(est, t_sent);
  row.sample = spearman(est, t_sample);
  row.gradient = spearman(est, t_grad);
  if (error) row.error = spearman(est, t_err);
  row.a_alone = spearman(a_only, t_sample);
  row.a_alone_norm = spearman(a_only, t_a);
  return row;
}

}  // namespace tempo
