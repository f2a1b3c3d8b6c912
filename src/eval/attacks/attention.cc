#include "eval/attacks/attention.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "common/error.h"
#include "eval/attacks/ica.h"
#include "eval/measurements/mutual_info.h"
#include "eval/measurements/tap.h"
#include "eval/measurements/traced.h"
#include "trusted/obfuscation/block_mix.h"
#include "trusted/rng.h"

namespace tempo {

namespace {

struct Captured {
  std::string name;  // the batched product's name
  int64_t groups = 0, m = 0, k = 0, n = 0;
  std::vector<float> a, w;
};

// Keeps both operands of every batched product of one step.
class AttentionTap final : public TapBackend {
 public:
  explicit AttentionTap(int64_t at) : at_(at) {}
  void batched_forward(const BatchedProduct& p, float* c) override {
    inner_.batched_forward(p, c);
    if (steps() + 1 != at_) return;
    for (const auto& g : got)
      if (g.name == p.name) return;
    got.push_back({p.name, p.groups, p.m, p.k, p.n, std::vector<float>(p.a, p.a + p.groups * p.m * p.k),
                   std::vector<float>(p.w, p.w + p.groups * p.n * p.k)});
  }
  std::vector<Captured> got;

 private:
  int64_t at_;
};

// Block g of v (rows×cols) as the pipeline sends it: M_g·v_g (rows) and/or
// v_g·G_gᵀ (cols); v itself when neither.
std::vector<float> mixed_blocks(const float* v, int64_t blocks, int64_t rows, int64_t cols,
                                const std::vector<BlockMix>* by_rows, const std::vector<BlockMix>* by_cols) {
  const int64_t size = rows * cols;
  std::vector<float> out(v, v + blocks * size);
  for (int64_t g = 0; g < blocks; ++g) {
    float* o = out.data() + g * size;
    if (by_rows) (*by_rows)[static_cast<size_t>(g)].rows(v + g * size, cols, o, false);
    if (by_cols) (*by_cols)[static_cast<size_t>(g)].cols(o, rows, o, false);
  }
  return out;
}

// MI of `blocks` stacked blocks (rows×cols each) of v, sent as `sent` (v
// mixed, or v), every block under a fresh triple: pairs of a plaintext
// value and the ciphertext value at the same cell (position-aligned) or
// at the cell the keys moved it to (key-aligned).
AttentionMiRow block_mi(const std::string& layer, const std::string& operand, const float* v, const float* sent,
                        int64_t blocks, int64_t rows, int64_t cols, int64_t samples, Obfuscator& obf, Rng& rng) {
  const int64_t size = rows * cols, total = blocks * size;
  std::vector<Traced> enc;
  enc.reserve(static_cast<size_t>(blocks));
  for (int64_t g = 0; g < blocks; ++g)
    enc.push_back(encrypt_traced(obf.draw_triple(rows, cols, 1), sent + g * size, rows, cols));
  auto spread = [](const float* x, int64_t count) {
    double s2 = 0;
    for (int64_t i = 0; i < count; ++i) s2 += double(x[i]) * x[i];
    return std::sqrt(s2 / static_cast<double>(std::max<int64_t>(count, 1))) + 1e-30;
  };
  const double jp = 1e-6 * spread(v, total);
  double jc = 0;
  for (const Traced& t : enc) jc = std::max(jc, 1e-6 * spread(t.values.data(), size));
  std::unordered_set<int64_t> seen;
  std::vector<double> px, kx, cx;
  const int64_t want = std::min(samples, total);
  while (static_cast<int64_t>(px.size()) < want) {
    const int64_t p = static_cast<int64_t>(rng.below(static_cast<uint64_t>(total)));
    if (!seen.insert(p).second) continue;
    const int64_t g = p / size, at = p % size;
    const Traced& t = enc[static_cast<size_t>(g)];
    const int64_t src = int64_t{t.src_row[static_cast<size_t>(at)]} * cols + t.src_col[static_cast<size_t>(at)];
    px.push_back(v[p] + jp * rng.normal());
    kx.push_back(v[g * size + src] + jp * rng.normal());
    cx.push_back(t.values[static_cast<size_t>(at)] + jc * rng.normal());
  }
  return {layer, operand, v != sent, blocks, rows, cols, ksg_mutual_information(px, cx), ksg_mutual_information(kx, cx)};
}

}  // namespace

void estimate_probabilities(const float* p_enc, int64_t t, int iterations, std::vector<double>& balanced,
                            std::vector<double>& rows) {
  const size_t n = static_cast<size_t>(t * t);
  rows.resize(n);
  for (size_t i = 0; i < n; ++i) rows[i] = std::fabs(static_cast<double>(p_enc[i]));
  balanced = rows;
  auto normalise_rows = [t](std::vector<double>& m) {
    for (int64_t i = 0; i < t; ++i) {
      double s = 0;
      for (int64_t j = 0; j < t; ++j) s += m[static_cast<size_t>(i * t + j)];
      if (s > 0)
        for (int64_t j = 0; j < t; ++j) m[static_cast<size_t>(i * t + j)] /= s;
    }
  };
  for (int it = 0; it < iterations; ++it) {
    for (int64_t j = 0; j < t; ++j) {
      double s = 0;
      for (int64_t i = 0; i < t; ++i) s += balanced[static_cast<size_t>(i * t + j)];
      if (s > 0)
        for (int64_t i = 0; i < t; ++i) balanced[static_cast<size_t>(i * t + j)] /= s;
    }
    normalise_rows(balanced);
  }
  normalise_rows(rows);
}

// The attack on every block of P (t×t) sent as `sent` (P, or M·P·Gᵀ): the
// attacker's two estimates from the ciphertext, put back in P's order
// through the keys' permutations (granted), scored against P.
static AttentionRecoveryRow recover_probabilities(const std::string& layer, const float* pl, const float* sent,
                                                  int64_t groups, int64_t t, Obfuscator& obf) {
  const int64_t size = t * t, blocks = std::min<int64_t>(groups, 64);
  AttentionRecoveryRow row{layer, sent != pl, blocks, t};
  std::vector<double> balanced, by_rows, truth(static_cast<size_t>(size)), back_b(truth.size()), back_r(truth.size());
  for (int64_t g = 0; g < blocks; ++g) {
    const float* p = pl + g * size;
    const Traced enc = encrypt_traced(obf.draw_triple(t, t, 1), sent + g * size, t, t);
    estimate_probabilities(enc.values.data(), t, 50, balanced, by_rows);
    for (int64_t i = 0; i < size; ++i) {
      const size_t src = static_cast<size_t>(int64_t{enc.src_row[static_cast<size_t>(i)]} * t +
                                             enc.src_col[static_cast<size_t>(i)]);
      back_b[src] = balanced[static_cast<size_t>(i)];
      back_r[src] = by_rows[static_cast<size_t>(i)];
    }
    double eb = 0, er = 0, eu = 0;
    for (int64_t i = 0; i < size; ++i) {
      truth[static_cast<size_t>(i)] = p[i];
      eb += std::fabs(back_b[static_cast<size_t>(i)] - p[i]);
      er += std::fabs(back_r[static_cast<size_t>(i)] - p[i]);
      eu += std::fabs(1.0 / static_cast<double>(t) - p[i]);
    }
    auto corr = [&](const std::vector<double>& est) {
      const double r = pearson(est.data(), truth.data(), size);
      return std::isnan(r) ? 0.0 : r;  // a constant estimate or block: no correlation
    };
    row.corr_balanced += corr(back_b) / static_cast<double>(blocks);
    row.corr_rows += corr(back_r) / static_cast<double>(blocks);
    row.err_balanced += (eu > 0 ? eb / eu : 0) / static_cast<double>(blocks);
    row.err_rows += (eu > 0 ? er / eu : 0) / static_cast<double>(blocks);
  }
  return row;
}

AttentionRecoveryRow attack_probabilities(const std::string& layer, const float* p, int64_t groups, int64_t t,
                                          int row_mix, int col_mix, Obfuscator& obf) {
  if (row_mix == 0 && col_mix == 0) return recover_probabilities(layer, p, p, groups, t, obf);
  std::vector<BlockMix> mr(static_cast<size_t>(groups)), mc(static_cast<size_t>(groups));
  KeyStream ks = obf.stream();
  for (int64_t g = 0; g < groups; ++g) {
    mr[static_cast<size_t>(g)].draw(ks, t, row_mix);
    mc[static_cast<size_t>(g)].draw(ks, t, col_mix);
  }
  const std::vector<float> sent = mixed_blocks(p, groups, t, t, &mr, &mc);
  return recover_probabilities(layer, p, sent.data(), groups, t, obf);
}

AttentionReport measure_attention(TrainConfig cfg, int64_t at_step, int64_t samples, uint64_t seed) {
  TEMPO_CHECK(cfg.model == "vit" || cfg.model.rfind("vit:", 0) == 0,
              "the attention suite measures a vit (got --model " + cfg.model + ")");
  TEMPO_CHECK(at_step >= 1, "attention: the step counts from 1");
  cfg.mode = "tee-only";
  cfg.steps = at_step;
  cfg.save.clear();
  cfg.metrics.clear();
  AttentionTap tap(at_step);
  train(cfg, &tap);
  TEMPO_CHECK(!tap.got.empty(), "attention: the step was not reached");
  std::unique_ptr<Obfuscator> obf = measurement_keys(seed, cfg.offload.key_scale, false);
  Rng rng = Rng::derive(seed, 11);
  AttentionReport rep;
  rep.step = at_step;
  rep.row_mix = cfg.offload.row_mix;
  rep.col_mix = cfg.offload.col_mix;
  const bool can_mix = rep.row_mix > 0 || rep.col_mix > 0;
  for (const bool mix : {false, true}) {
    if (mix && !can_mix) break;
    for (const Captured& c : tap.got) {
      const bool scores = c.name.size() >= 6 && c.name.compare(c.name.size() - 6, 6, "scores") == 0;
      const std::string layer = c.name.substr(0, c.name.rfind('.'));
      // scores: a = Q/√E (T×E), w = K (T×E); values: a = P (T×T), w = Vᵀ (E×T).
      // Mixed: a by M (its m rows) and G (its k columns), w by G.
      std::vector<BlockMix> mr, mc;
      if (mix) {
        KeyStream ks = obf->stream();
        mr.resize(static_cast<size_t>(c.groups));
        mc.resize(static_cast<size_t>(c.groups));
        for (int64_t g = 0; g < c.groups; ++g) {
          mr[static_cast<size_t>(g)].draw(ks, c.m, rep.row_mix);
          mc[static_cast<size_t>(g)].draw(ks, c.k, rep.col_mix);
        }
      }
      const std::vector<float> a = mix ? mixed_blocks(c.a.data(), c.groups, c.m, c.k, &mr, &mc) : c.a;
      const std::vector<float> w = mix ? mixed_blocks(c.w.data(), c.groups, c.n, c.k, nullptr, &mc) : c.w;
      const float* a_sent = mix ? a.data() : c.a.data();
      const float* w_sent = mix ? w.data() : c.w.data();
      rep.mi.push_back(
          block_mi(layer, scores ? "Q" : "P", c.a.data(), a_sent, c.groups, c.m, c.k, samples, *obf, rng));
      rep.mi.push_back(
          block_mi(layer, scores ? "K" : "V", c.w.data(), w_sent, c.groups, c.n, c.k, samples, *obf, rng));
      if (scores) continue;
      rep.recovery.push_back(attack_probabilities(layer, c.a.data(), c.groups, c.m, mix ? rep.row_mix : 0,
                                                  mix ? rep.col_mix : 0, *obf));
    }
  }
  return rep;
}

}  // namespace tempo
