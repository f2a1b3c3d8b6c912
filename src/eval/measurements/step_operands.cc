#include "eval/measurements/step_operands.h"

#include <algorithm>

#include "common/error.h"
#include "eval/measurements/tap.h"

namespace tempo {

namespace {

// Keeps A and W at the forward product and dC at the weight gradient of the
// step; after it every product returns zeros (the evaluation that ends
// train() is not part of the measurement).
class StepTap final : public TapBackend {
 public:
  explicit StepTap(int64_t at_step) : at_(at_step) {}
  void forward(const Product& p, float* c) override {
    if (steps() >= at_) {
      std::fill(c, c + p.m * p.n, 0.0f);
      return;
    }
    TapBackend::forward(p, c);
  }
  void backward_input(const Product& p, const float* dc, float* da) override {
    if (steps() >= at_) return std::fill(da, da + p.m * p.k, 0.0f);
    TapBackend::backward_input(p, dc, da);
  }
  void backward_weight(const Product& p, const float* dc, float* dw) override {
    if (steps() >= at_) return std::fill(dw, dw + p.n * p.k, 0.0f);
    TapBackend::backward_weight(p, dc, dw);
  }
  StepOperands got;

 private:
  void on_forward(const Product& p, const float*) override {
    if (steps() + 1 != at_ || got.products.count(p.id)) return;
    StepOperands::Product& q = got.products[p.id];
    q.name = p.name;
    q.m = p.m, q.k = p.k, q.n = p.n;
    q.a.assign(p.a, p.a + p.m * p.k);
    q.w.assign(p.w, p.w + p.n * p.k);
  }
  void on_backward_weight(const Product& p, const float* dc) override {
    if (steps() + 1 != at_) return;
    auto it = got.products.find(p.id);
    if (it != got.products.end() && it->second.dc.empty()) it->second.dc.assign(dc, dc + p.m * p.n);
  }
  int64_t at_;
};

}  // namespace

StepOperands capture_step(TrainConfig cfg, int64_t at_step) {
  TEMPO_CHECK(at_step >= 1, "capture: the step counts from 1");
  cfg.mode = "tee-only";
  cfg.steps = at_step;
  cfg.save.clear();
  cfg.metrics.clear();
  cfg.offload_first = cfg.offload_last = true;  // so the tap sees every product
  StepTap tap(at_step);
  train(cfg, &tap);
  TEMPO_CHECK(!tap.got.products.empty(), "capture: the step was not reached");
  return std::move(tap.got);
}

}  // namespace tempo
