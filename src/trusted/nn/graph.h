// A model read from ONNX (`--model FILE.onnx`): Tempo's own layers, with
// backward, built from a checked graph (trusted/io/onnx.h). Conv becomes
// Conv2d and Gemm (or MatMul by a transposed initializer, nn.Linear's export
// on more than two dimensions) becomes Linear, so both are products of the
// linear backend and tempo mode blinds, offloads and checks them as for zoo
// models. A MatMul of two activations goes to the backend as a batched
// product (attention's path). BatchNormalization, LayerNormalization, the
// pools and ReLU are the zoo's layers; the other operators (element-wise
// arithmetic with broadcasting, Erf, Softmax, reshapes, Transpose, Concat,
// Slice, Gather, Pad) are computed here with their backward.
//
// The state is the graph's float initializers under their own names
// (PyTorch's state_dict names), in file order, with a num_batches_tracked
// after every BatchNormalization's running_var as PyTorch's state_dict has
// it. Initializers used by the generic operators are trainable parameters.
#pragma once

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "trusted/io/onnx.h"
#include "trusted/nn/layers.h"

namespace tempo {

class GraphModel final : public Layer {
 public:
  explicit GraphModel(const OnnxGraph& g);
  ~GraphModel() override;
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  void for_each_child(const std::function<void(Layer&)>& fn) override;
  std::string kind() const override { return "OnnxGraph"; }

  Shape input_shape() const;  // C×H×W (or F) without the batch
  int64_t classes() const { return classes_; }

  struct Value {
    const Tensor* cur = nullptr;   // this step's value
    Tensor own;                    // storage when an operator computes it here
    const Tensor* grad = nullptr;  // gradient reaching it in backward (null: none)
    Tensor gown;                   // storage when several gradients are summed
    bool requires_grad = false;
    bool is_param = false;
    Tensor* param_grad = nullptr;  // for parameters of the generic operators
    const NamedTensor* ints = nullptr;  // integer values (shapes, indices): constants, or iown
    NamedTensor iown;                   // integers computed each step
    bool int_op = false;                // computed by an integer operator
    std::string name;
  };
  class Op;
  std::vector<Value> values_;  // (public for the operators' helpers; not an interface)

 private:
  void accumulate(int value, const Tensor& g);

  std::vector<std::unique_ptr<Op>> ops_;
  std::vector<Layer*> layers_;  // in node order, for for_each_child
  std::deque<Tensor> store_;    // parameters and constants of the generic operators, and their gradients
  std::vector<StateEntry> state_;
  std::deque<int64_t> counters_;
  std::deque<NamedTensor> int_constants_;
  int input_ = -1, output_ = -1;
  Shape input_shape_;
  int64_t classes_ = 0;
};

}  // namespace tempo
