#include "trusted/train_step.h"

#include <cmath>
#include <cstdio>

#include "common/error.h"

namespace tempo {

void TrainStep::set_masters(DataParallel* dp) {
  dp_ = dp;
  params_ = dp ? model_.parameters() : std::vector<StateEntry>{};
}

double TrainStep::run(const Tensor& x, const std::vector<int64_t>& y, double lr) {
  if (dp_ && x.dim(0) == 0) return finish(0.0, lr, 0);  // this master's shard is empty
  ctx_.training = true;
  const Tensor& logits = model_.forward(x, ctx_);
  return finish(cross_entropy(logits, y, &dlogits_), lr, x.dim(0));
}

double TrainStep::run_soft(const Tensor& x, const float* targets, double lr) {
  if (dp_ && x.dim(0) == 0) return finish(0.0, lr, 0);
  ctx_.training = true;
  const Tensor& logits = model_.forward(x, ctx_);
  return finish(soft_cross_entropy(logits, targets, &dlogits_), lr, x.dim(0));
}

double TrainStep::finish(double loss, double lr, int64_t samples) {
  if (dp_) {
    // Every rank must reach the exchange, so a non-finite value is judged
    // there, for all ranks at once.
    if (samples > 0) model_.backward(dlogits_, ctx_);
    loss = dp_->reduce_gradients(params_, loss, samples, optim_.steps() + 1);
    optim_.step(lr);
    ctx_.offload->end_step();
    return loss;
  }
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
