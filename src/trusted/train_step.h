// One training step: forward, loss, backward, the optimizer's update and the
// end of the step on the offload backend (workers drop its ciphertexts). The
// trainer, `tempo bench` and the evaluation suites all train through it.
#pragma once

#include <cstdint>
#include <vector>

#include "trusted/dist/data_parallel.h"
#include "trusted/model.h"
#include "trusted/optim/optimizer.h"

namespace tempo {

class TrainStep {
 public:
  // Holds references: model, optimizer and context outlive the TrainStep.
  TrainStep(Model& model, Optimizer& optim, Context& ctx) : model_(model), optim_(optim), ctx_(ctx) {}

  // Hard labels, mean cross-entropy (DESIGN.md §4). Returns the loss; throws
  // Error when it is not finite (training diverged), before any update.
  double run(const Tensor& x, const std::vector<int64_t>& y, double lr);
  // Soft targets: one row of class probabilities per sample (x.dim(0) rows
  // of model.num_classes); one-hot rows give exactly the step above.
  double run_soft(const Tensor& x, const float* targets, double lr);
  // Several masters: x is this rank's shard of the global batch (possibly
  // empty); after backward the gradients are summed over the masters
  // (DataParallel), so every rank takes the same step, and run() returns
  // the global batch's loss.
  void set_masters(DataParallel* dp);

 private:
  double finish(double loss, double lr, int64_t samples);
  DataParallel* dp_ = nullptr;
  std::vector<StateEntry> params_;  // with dp_
  Model& model_;
  Optimizer& optim_;
  Context& ctx_;
  Tensor dlogits_;
};

}  // namespace tempo
