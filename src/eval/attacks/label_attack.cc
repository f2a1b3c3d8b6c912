#include "eval/attacks/label_attack.h"

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/obfuscation/obfuscator.h"
#include "eval/measurements/tap.h"
#include "eval/measurements/traced.h"

namespace tempo {

std::vector<int64_t> recover_label_columns(const float* g, int64_t rows, int64_t classes) {
  Eigen::MatrixXd m(rows, classes);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < classes; ++j) m(i, j) = g[i * classes + j];
  // The null direction of m: the eigenvector of mᵀm with the smallest eigenvalue.
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(m.transpose() * m);
  const Eigen::VectorXd v = eig.eigenvectors().col(0);
  std::vector<int64_t> out(static_cast<size_t>(rows), -1);
  for (int64_t i = 0; i < rows; ++i) {
    int pos = 0, neg = 0;
    int64_t last_pos = -1, last_neg = -1;
    for (int64_t j = 0; j < classes; ++j) {
      const double x = m(i, j) * v(j);
      if (x > 0) ++pos, last_pos = j;
      if (x < 0) ++neg, last_neg = j;
    }
    if (neg == 1 && pos > 1) out[static_cast<size_t>(i)] = last_neg;
    else if (pos == 1 && neg > 1) out[static_cast<size_t>(i)] = last_pos;
  }
  return out;
}

namespace {

// Keeps every gradient of the logits: the dC of the product with one output
// column per class.
class LogitGradTap final : public TapBackend {
 public:
  explicit LogitGradTap(int64_t classes) : classes_(classes) {}
  struct Grad {
    int64_t rows, cols;
    std::vector<float> v;
  };
  std::vector<Grad> got;

 private:
  void on_backward_input(const Product& p, const float* dc) override {
    if (p.n == classes_) got.push_back({p.m, p.n, std::vector<float>(dc, dc + p.m * p.n)});
  }
  int64_t classes_;
};

}  // namespace

LabelAttackResult label_attack(TrainConfig cfg, int64_t steps, uint64_t seed, bool identity) {
  cfg.mode = "tee-only";
  cfg.steps = steps;
  cfg.save.clear();
  cfg.metrics.clear();
  cfg.offload_last = true;  // the layer whose gradient is attacked goes through the tap
  LogitGradTap tap(10);
  train(cfg, &tap);
  TEMPO_CHECK(!tap.got.empty(), "label attack: no gradient of the logits was captured");
  std::unique_ptr<Obfuscator> obf = measurement_keys(seed, cfg.offload.key_scale, identity);
  LabelAttackResult r;
  for (const auto& g : tap.got) {
    if (g.v.empty() || g.rows * g.cols == 0 || g.cols < 3) continue;
    r.chance = 1.0 / static_cast<double>(g.cols);
    const int64_t m = g.rows, c = g.cols;
    const Traced enc = encrypt_traced(obf->draw_triple(m, c, 1), g.v.data(), m, c);
    const std::vector<int64_t> cols = recover_label_columns(enc.values.data(), m, c);  // the attack
    for (int64_t i = 0; i < m; ++i) {  // the score
      const size_t at = static_cast<size_t>(i * c);
      const float* truth = g.v.data() + int64_t{enc.src_row[at]} * c;
      const int64_t label = std::min_element(truth, truth + c) - truth;  // the only negative entry
      ++r.rows;
      const int64_t j = cols[static_cast<size_t>(i)];
      if (j < 0) continue;
      const size_t e = at + static_cast<size_t>(j);
      if (enc.src_col[e] == label) ++r.correct;
    }
  }
  return r;
}

}  // namespace tempo
