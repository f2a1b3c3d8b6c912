// The privacy measurements' view of a training run: a backend that computes
// every product in the master exactly as tee-only does, and lets a
// measurement see the plaintext operands on the way (after the forward
// product, before each backward one) and count the steps completed.
#pragma once

#include <cstdint>

#include "trusted/offload/linear_backend.h"

namespace tempo {

class TapBackend : public LinearBackend {
 public:
  const char* name() const override { return "tap"; }
  void forward(const Product& p, float* c) override {
    inner_.forward(p, c);
    on_forward(p, c);
  }
  void backward_input(const Product& p, const float* dc, float* da) override {
    on_backward_input(p, dc);
    inner_.backward_input(p, dc, da);
  }
  void backward_weight(const Product& p, const float* dc, float* dw) override {
    on_backward_weight(p, dc);
    inner_.backward_weight(p, dc, dw);
  }
  void end_step() override { ++steps_; }

 protected:
  virtual void on_forward(const Product&, const float* /*c*/) {}
  virtual void on_backward_input(const Product&, const float* /*dc*/) {}
  virtual void on_backward_weight(const Product&, const float* /*dc*/) {}
  // Training steps completed so far.
  int64_t steps() const { return steps_; }
  TeeOnlyBackend inner_;

 private:
  int64_t steps_ = 0;
};

}  // namespace tempo
