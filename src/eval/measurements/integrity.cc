#include "eval/measurements/integrity.h"

#include <cmath>

#include "trusted/rng.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/offload/offload_backend.h"
#include "worker/local_worker.h"

namespace tempo {

namespace {

struct Shape {
  int64_t m, k, n;
};

// Products of the sizes training sends (small batches, so that 10⁵ of them
// take about a minute): cnn's second convolution (im2col) and first linear
// layer, resnet-like 3×3 convolutions, a wide one.
const Shape kShapes[] = {{392, 288, 64}, {64, 3136, 128}, {256, 576, 32}, {128, 1152, 64}, {32, 512, 10}};

// Activations after ReLU (half zeros), weights ~ N(0, 1/k), gradients small:
// the value ranges a step sends.
struct Operands {
  std::vector<float> a, w, dc, out, da, dw;
  void fill(const Shape& s, Rng& rng) {
    a.resize(static_cast<size_t>(s.m * s.k));
    w.resize(static_cast<size_t>(s.n * s.k));
    dc.resize(static_cast<size_t>(s.m * s.n));
    out.resize(static_cast<size_t>(s.m * s.n));
    da.resize(static_cast<size_t>(s.m * s.k));
    dw.resize(static_cast<size_t>(s.n * s.k));
    for (auto& v : a) v = std::max(0.0f, static_cast<float>(rng.normal()));
    const float ws = 1.0f / std::sqrt(static_cast<float>(s.k));
    for (auto& v : w) v = ws * static_cast<float>(rng.normal());
    for (auto& v : dc) v = 1e-3f * static_cast<float>(rng.normal());
  }
  Product product(const Shape& s) const {
    Product p;
    p.id = 0;
    p.name = "measure";
    p.a = a.data();
    p.w = w.data();
    p.m = s.m;
    p.k = s.k;
    p.n = s.n;
    return p;
  }
};

std::vector<std::unique_ptr<WorkerApi>> one_worker(std::unique_ptr<WorkerApi> w) {
  std::vector<std::unique_ptr<WorkerApi>> v;
  v.push_back(std::move(w));
  return v;
}

}  // namespace

std::string tamper_name(Tamper t) {
  switch (t) {
    case Tamper::kEntry: return "one entry";
    case Tamper::kPair: return "two entries, opposite signs";
    case Tamper::kRow: return "whole row, alternating signs";
    case Tamper::kZeros: return "zeros";
    case Tamper::kNaN: return "NaN";
    case Tamper::kInf: return "Inf";
    case Tamper::kShape: return "wrong shape";
    default: return "none";
  }
}

double max_row_relative_error(const float* out, const float* a, const float* w, int64_t m, int64_t k, int64_t n) {
  double worst = 0;
  std::vector<double> ref(static_cast<size_t>(n));
  for (int64_t i = 0; i < m; ++i) {
    double big = 0, err = 0;
    for (int64_t j = 0; j < n; ++j) {
      double v = 0;
      for (int64_t t = 0; t < k; ++t) v += static_cast<double>(a[i * k + t]) * w[j * k + t];
      ref[static_cast<size_t>(j)] = v;
      big = std::max(big, std::fabs(v));
    }
    for (int64_t j = 0; j < n; ++j) err = std::max(err, std::fabs(out[i * n + j] - ref[static_cast<size_t>(j)]));
    if (big > 0) worst = std::max(worst, err / big);
  }
  return worst;
}

HonestReport measure_false_alarms(int64_t products, double tau, uint64_t seed,
                                  const std::function<void(int64_t)>& progress) {
  OffloadConfig oc;
  oc.verify.tolerance = tau;
  oc.quarantine_after = 1 << 30;
  oc.log = false;
  OffloadBackend be(oc, one_worker(std::make_unique<LocalWorker>("honest", make_cpu_backend())),
                    secret_from_seed(seed));
  Rng rng = Rng::derive(seed, 1);
  Operands ops;
  HonestReport r;
  r.tau = tau;
  int64_t i = 0;
  while (be.stats().verified < products) {
    const Shape& s = kShapes[static_cast<size_t>(i++) % (sizeof kShapes / sizeof kShapes[0])];
    ops.fill(s, rng);
    const Product p = ops.product(s);
    be.forward(p, ops.out.data());
    be.backward_input(p, ops.dc.data(), ops.da.data());
    be.backward_weight(p, ops.dc.data(), ops.dw.data());
    be.end_step();
    if (progress) progress(be.stats().verified);
  }
  r.products = be.stats().verified;
  r.false_alarms = be.stats().rejected;
  r.worst_tau = be.verifier().worst_ratio();
  return r;
}

std::vector<DetectionRow> measure_detection(const std::vector<Tamper>& kinds, const std::vector<double>& sizes,
                                            const std::vector<int>& rounds, int64_t trials, double tau,
                                            uint64_t seed) {
  std::vector<DetectionRow> out;
  Rng rng = Rng::derive(seed, 2);
  Operands ops;
  for (Tamper kind : kinds)
    for (double size : sizes)
      for (int t : rounds) {
        OffloadConfig oc;
        oc.verify.tolerance = tau;
        oc.verify.rounds = t;
        oc.log = false;
        oc.quarantine_after = 1;  // one lie per trial: a caught liar is dropped, the product recomputed locally
        int64_t lies = 0, caught = 0;
        double passed = 0;
        for (int64_t i = 0; i < trials; ++i) {
          const uint64_t trial_seed = seed + 1000003 * out.size() + static_cast<uint64_t>(i);
          auto liar = std::make_unique<TamperingWorker>(std::make_unique<LocalWorker>("liar", make_cpu_backend()),
                                                        kind, 1.0, trial_seed, 0, static_cast<float>(size));
          TamperingWorker* w = liar.get();
          OffloadBackend be(oc, one_worker(std::move(liar)), secret_from_seed(trial_seed));
          const Shape& s = kShapes[static_cast<size_t>(i) % (sizeof kShapes / sizeof kShapes[0])];
          ops.fill(s, rng);
          be.forward(ops.product(s), ops.out.data());
          lies += w->tampered();
          caught += be.stats().rejected;
          if (w->tampered() > be.stats().rejected)
            passed = std::max(passed, max_row_relative_error(ops.out.data(), ops.a.data(), ops.w.data(), s.m, s.k, s.n));
        }
        out.push_back({kind, size, t, lies, caught, passed});
      }
  return out;
}

}  // namespace tempo
