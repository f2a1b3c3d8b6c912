#include "eval/measurements/mutual_info.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "common/error.h"
#include "trusted/rng.h"
#include "trusted/obfuscation/blinding.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/obfuscation/obfuscator.h"
#include "eval/measurements/tap.h"
#include "eval/measurements/traced.h"

namespace tempo {

namespace {

double digamma(double x) {
  double r = 0;
  while (x < 6) r -= 1 / x, x += 1;
  const double f = 1 / (x * x);
  return r + std::log(x) - 0.5 / x - f * (1.0 / 12 - f * (1.0 / 120 - f * (1.0 / 252 - f * (1.0 / 240 - f / 132))));
}

// Ranks scaled to unit variance would also do; KSG is invariant to
// monotone maps of each variable only asymptotically, so values are used as
// given after standardising each.
std::vector<double> standardised(const std::vector<double>& v) {
  const double n = static_cast<double>(v.size());
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / n;
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  const double sd = std::sqrt(var / n) + 1e-300;
  std::vector<double> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = (v[i] - mean) / sd;
  return out;
}

// How many values of the sorted array lie strictly within eps of v.
int64_t count_within(const std::vector<double>& sorted, double v, double eps) {
  auto lo = std::upper_bound(sorted.begin(), sorted.end(), v - eps);
  auto hi = std::lower_bound(sorted.begin(), sorted.end(), v + eps);
  return hi > lo ? hi - lo : 0;
}

}  // namespace

double ksg_mutual_information(const std::vector<double>& x0, const std::vector<double>& y0, int k) {
  TEMPO_CHECK(x0.size() == y0.size() && x0.size() > static_cast<size_t>(k) + 1, "MI: need more paired samples");
  const std::vector<double> x = standardised(x0), y = standardised(y0);
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<double> xs = x, ys = y;
  std::sort(xs.begin(), xs.end());
  std::sort(ys.begin(), ys.end());
  // Joint k-NN by brute force over points sorted by x, pruned by the x gap.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x[a] < x[b]; });
  std::vector<double> px(static_cast<size_t>(n)), py(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) px[i] = x[order[i]], py[i] = y[order[i]];
  double sum = 0;
  std::vector<double> best;
  for (int64_t i = 0; i < n; ++i) {
    best.assign(static_cast<size_t>(k), 1e300);  // k smallest distances, ascending
    auto consider = [&](int64_t j) {
      const double d = std::max(std::fabs(px[i] - px[j]), std::fabs(py[i] - py[j]));
      if (d < best.back()) {
        best.back() = d;
        std::sort(best.begin(), best.end());
      }
    };
    for (int64_t j = i - 1; j >= 0 && px[i] - px[j] < best.back(); --j) consider(j);
    for (int64_t j = i + 1; j < n && px[j] - px[i] < best.back(); ++j) consider(j);
    const double eps = best.back();
    const int64_t nx = count_within(xs, px[i], eps) - 1, ny = count_within(ys, py[i], eps) - 1;
    sum += digamma(static_cast<double>(nx + 1)) + digamma(static_cast<double>(ny + 1));
  }
  return std::max(0.0, digamma(k) + digamma(static_cast<double>(n)) - sum / static_cast<double>(n));
}

namespace {

struct Captured {
  int64_t step;
  std::string layer, operand;
  int64_t rows, cols;
  std::vector<float> v;
};

// Passes every product to the tee-only backend; at the given steps, keeps a
// copy of each plaintext operand.
class Tap final : public TapBackend {
 public:
  explicit Tap(std::vector<int64_t> at_steps) : at_(std::move(at_steps)) {}
  std::vector<Captured> got;

 private:
  void on_forward(const Product& p, const float*) override {
    keep(p.name, "input", p.a, p.m, p.k);
    keep(p.name, "weight", p.w, p.n, p.k);
  }
  void on_backward_input(const Product& p, const float* dc) override { keep(p.name, "gradient", dc, p.m, p.n); }
  void keep(const std::string& layer, const char* what, const float* d, int64_t r, int64_t c) {
    const int64_t step = steps() + 1;
    if (std::find(at_.begin(), at_.end(), step) == at_.end()) return;
    for (const auto& g : got)
      if (g.step == step && g.layer == layer && g.operand == what) return;
    got.push_back({step, layer, what, r, c, std::vector<float>(d, d + r * c)});
  }
  std::vector<int64_t> at_;
};

}  // namespace

std::vector<MiRow> measure_mutual_information(TrainConfig cfg, int64_t at_step, int64_t samples, uint64_t seed,
                                              bool identity) {
  return measure_mutual_information(std::move(cfg), std::vector<int64_t>{at_step}, samples, seed, identity);
}

std::vector<MiRow> measure_mutual_information(TrainConfig cfg, const std::vector<int64_t>& at_steps,
                                              int64_t samples, uint64_t seed, bool identity) {
  TEMPO_CHECK(!at_steps.empty() && std::is_sorted(at_steps.begin(), at_steps.end()) && at_steps.front() >= 1,
              "mutual information: steps must be ascending and from 1");
  cfg.mode = "tee-only";
  cfg.steps = at_steps.back();
  cfg.save.clear();
  cfg.metrics.clear();
  Tap tap(at_steps);
  train(cfg, &tap);
  std::unique_ptr<Obfuscator> obf = measurement_keys(seed, cfg.offload.key_scale, identity);
  // The data operand and the output gradient of each layer and step as the
  // run's blinding sends them: one mixing per product, as in the pipeline.
  std::vector<std::vector<float>> blinded(tap.got.size());
  if (!identity) {
    // Its own keys, so that the measurement keys above do not depend on
    // how many operands were blinded (a step's rows are the same measured
    // alone or along a run).
    std::unique_ptr<Obfuscator> bobf = measurement_keys(seed ^ 0x626c696e64ULL, cfg.offload.key_scale, false);
    Blinding blind(cfg.offload.row_mix, cfg.offload.mask_rank, cfg.offload.mask_magnitude, cfg.offload.col_mix,
                   cfg.offload.mask_kind);
    auto find = [&](const Captured& like, const char* what) -> int {
      for (size_t j = 0; j < tap.got.size(); ++j)
        if (tap.got[j].step == like.step && tap.got[j].layer == like.layer && tap.got[j].operand == what)
          return static_cast<int>(j);
      return -1;
    };
    for (size_t i = 0; i < tap.got.size(); ++i) {
      const Captured& in = tap.got[i];
      if (in.operand != "input") continue;
      const int wi = find(in, "weight"), gi = find(in, "gradient");
      Product p;
      p.id = 0;
      p.m = in.rows, p.k = in.cols, p.n = wi >= 0 ? tap.got[static_cast<size_t>(wi)].rows : 1;
      p.a = in.v.data();
      p.w = wi >= 0 ? tap.got[static_cast<size_t>(wi)].v.data() : nullptr;
      const Product& q = blind.apply(p, *bobf);
      blinded[i].assign(q.a, q.a + p.m * p.k);
      if (wi >= 0 && blind.mixes_cols()) blinded[static_cast<size_t>(wi)].assign(q.w, q.w + p.n * p.k);
      if (gi >= 0 && tap.got[static_cast<size_t>(gi)].rows == p.m) {
        const Captured& g = tap.got[static_cast<size_t>(gi)];
        Product pg = q;
        pg.n = g.cols;
        const float* dc = blind.gradient(pg, g.v.data());
        blinded[static_cast<size_t>(gi)].assign(dc, dc + g.rows * g.cols);
      }
    }
  }
  Rng rng = Rng::derive(seed, 3);
  std::vector<MiRow> out;
  for (size_t gi = 0; gi < tap.got.size(); ++gi) {
    const Captured& g = tap.got[gi];
    const int64_t r = g.rows, c = g.cols, n = r * c;
    // X' = L·X·Q⁻¹ with a fresh triple, as encrypt_x does for inputs and
    // gradients (weights go in transposed, the same gather).
    const Traced enc = encrypt_traced(obf->draw_triple(r, c, 1), g.v.data(), r, c);
    const bool blind = !blinded[gi].empty();
    const Traced benc = blind ? encrypt_traced(obf->draw_triple(r, c, 1), blinded[gi].data(), r, c) : Traced{};
    // Ties (ReLU and max-pool zeros) are broken by a jitter far below the
    // values' spread, drawn independently for plaintext and ciphertext.
    auto spread = [](const float* v, int64_t count) {
      double s2 = 0;
      for (int64_t i = 0; i < count; ++i) s2 += double(v[i]) * v[i];
      return std::sqrt(s2 / static_cast<double>(std::max<int64_t>(count, 1))) + 1e-30;
    };
    const double jp = 1e-6 * spread(g.v.data(), n), jc = 1e-6 * spread(enc.values.data(), n);
    // Distinct positions: a repeated pair would be a zero-distance neighbour
    // and inflate the estimate.
    std::vector<int64_t> picks;
    {
      std::unordered_set<int64_t> seen;
      const int64_t want = std::min(samples, n);
      while (static_cast<int64_t>(picks.size()) < want) {
        const int64_t p = static_cast<int64_t>(rng.below(static_cast<uint64_t>(n)));
        if (seen.insert(p).second) picks.push_back(p);
      }
    }
    std::vector<double> px, cx, kx, bkx, bcx;
    const double jb = blind ? 1e-6 * spread(benc.values.data(), n) : 0;
    for (const int64_t p : picks) {
      const auto at = static_cast<size_t>(p);
      const int64_t src = int64_t{enc.src_row[at]} * c + enc.src_col[at];
      px.push_back(g.v[at] + jp * rng.normal());
      kx.push_back(g.v[static_cast<size_t>(src)] + jp * rng.normal());
      cx.push_back(enc.values[at] + jc * rng.normal());
      if (blind) {
        const int64_t bsrc = int64_t{benc.src_row[at]} * c + benc.src_col[at];
        bkx.push_back(g.v[static_cast<size_t>(bsrc)] + jp * rng.normal());
        bcx.push_back(benc.values[at] + jb * rng.normal());
      }
    }
    MiRow row{g.step, g.layer, g.operand, r, c, ksg_mutual_information(px, cx), ksg_mutual_information(kx, cx)};
    // Weights without column mixing are sent unblinded: the same measurement as above.
    row.blinded_position = blind ? ksg_mutual_information(px, bcx) : row.position_aligned;
    row.blinded_key = blind ? ksg_mutual_information(bkx, bcx) : row.key_aligned;
    out.push_back(row);
  }
  return out;
}

}  // namespace tempo
