#include "trusted/train_step.h"

#include <cmath>
#include <cstdio>

#include "common/error.h"

namespace tempo {

double TrainStep::run(const Tensor& x, const std::vector<int64_t>& y, double lr) {
  ctx_.training = true;
  const Tensor& logits = model_.forward(x, ctx_);
  return finish(cross_entropy(logits, y, &dlogits_), lr);
}

double TrainStep::run_soft(const Tensor& x, const float* targets, double lr) {
  ctx_.training = true;
  const Tensor& logits = model_.forward(x, ctx_);
  return finish(soft_cross_entropy(logits, targets, &dlogits_), lr);
}

double TrainStep::finish(double loss, double lr) {
  if (!std::isfinite(loss)) {
    char b[64];
    std::snprintf(b, sizeof b, "%g", loss);
    throw Error(std::string("training diverged: the loss is ") + b + " at step " +
                std::to_string(optim_.steps() + 1) + "; lower --lr");
  }
  model_.backward(dlogits_, ctx_);
  optim_.step(lr);
  ctx_.offload->end_step();
  return loss;
}

}  // namespace tempo
