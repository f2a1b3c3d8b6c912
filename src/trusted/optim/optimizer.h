// Optimizers with torch.optim 1.13's exact update rules, and the learning-rate
// schedules (stepped once per epoch, as PyTorch's schedulers are when called
// at the end of each epoch).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "trusted/nn/layer.h"

namespace tempo {

struct OptimConfig {
  std::string kind = "sgd";  // sgd | adam | adamw
  double lr = 0.01;
  double momentum = 0.9;     // sgd
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adam, adamw
  std::string schedule = "constant";  // constant | step | cosine
  int step_size = 30;        // step: epochs between decays
  double gamma = 0.1;        // step: decay factor
  int total_epochs = 1;      // cosine: T_max
};

// Learning rate used by every step of 1-based `epoch`.
double lr_for_epoch(const OptimConfig& cfg, int epoch);

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Applies one update with learning rate lr from the gradients in params.
  virtual void step(double lr) = 0;
  // Optimizer state tensors (momentum buffers, moments) for checkpoints.
  virtual std::vector<Tensor*> state_tensors() = 0;
  int64_t steps() const { return steps_; }
  // Restores the step count with state_tensors() (sealed checkpoints).
  void set_steps(int64_t s) { steps_ = s; }

 protected:
  int64_t steps_ = 0;
};

std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& cfg, std::vector<StateEntry> params);

}  // namespace tempo
