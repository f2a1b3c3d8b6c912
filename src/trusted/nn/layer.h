// Layers of the trusted model. A layer owns its parameters, their gradients
// and its output/gradient buffers (reused across steps: no allocation once
// the batch shape is known). forward() keeps a pointer to its input, which
// must stay alive and unchanged until backward() returns: in a model the
// input is the previous layer's output buffer, so this holds naturally.
// Gradients of parameters are overwritten (not accumulated) by backward().
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "trusted/rng.h"
#include "trusted/offload/linear_backend.h"
#include "trusted/tensor.h"

namespace tempo {

// One entry of a model's state_dict, named as PyTorch names it.
struct StateEntry {
  std::string name;
  Tensor* value = nullptr;    // F32 parameter or buffer
  Tensor* grad = nullptr;     // set for trainable parameters
  int64_t* counter = nullptr; // I64 scalar buffer (num_batches_tracked); value is null
};

struct Context {
  LinearBackend* offload = nullptr;  // backend for offloaded products
  LinearBackend* local = nullptr;    // backend for products kept in the master
  bool training = true;
  Rng* rng = nullptr;                // dropout masks
  LinearBackend& backend_for(const Product& p, bool offloaded) const {
    return offloaded ? *offload : *local;
  }
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual const Tensor& forward(const Tensor& x, Context& ctx) = 0;
  // dy: gradient w.r.t. this layer's last output. Returns the gradient w.r.t.
  // its input, or an empty tensor when needs_input_grad is false.
  virtual const Tensor& backward(const Tensor& dy, Context& ctx) = 0;
  // Appends state entries with names prefix + own names.
  virtual void state(std::vector<StateEntry>& out, const std::string& prefix) {}
  // Calls fn on every direct and indirect sublayer, depth first, in order.
  virtual void for_each_child(const std::function<void(Layer&)>& fn) {}
  // Products (linear layers, convolutions) register here for the scheduler.
  virtual Product* product() { return nullptr; }
  virtual std::string kind() const = 0;
  // The last forward's output (valid until the next forward).
  const Tensor& output() const { return out_; }

  bool needs_input_grad = true;  // false for the first layer of a model
  bool offloaded = true;         // for product layers: send to the offload backend

 protected:
  Tensor out_, dx_;
};

using LayerPtr = std::unique_ptr<Layer>;

// Visits `root` and every sublayer, depth first, parents before children.
void walk(Layer& root, const std::function<void(Layer&)>& fn);

}  // namespace tempo
