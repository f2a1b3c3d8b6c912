// The model zoo of DESIGN.md §4: structure, PyTorch state_dict names and
// PyTorch's own initialisation. A Model owns its layers and exposes its state
// (for safetensors I/O and the optimizer) and its products (for the
// scheduler of the offloading modes).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "trusted/io/safetensors.h"
#include "trusted/nn/layers.h"

namespace tempo {

class Model {
 public:
  std::string name;
  Shape input_shape;  // C×H×W
  int64_t num_classes = 10;
  std::unique_ptr<Layer> root;
  std::vector<StateEntry> state;    // in state_dict order
  std::vector<Product*> products;   // in forward order
  std::vector<Layer*> product_layers;

  const Tensor& forward(const Tensor& x, Context& ctx) { return root->forward(x, ctx); }
  void backward(const Tensor& dlogits, Context& ctx) { root->backward(dlogits, ctx); }

  // Trainable parameters (entries with a gradient).
  std::vector<StateEntry> parameters() const;
  int64_t parameter_count() const;

  // Chooses which products go to the offload backend: the first and the
  // last only when asked, and of the others every one but the convolutions
  // with fewer than `local_below` output channels or with at most
  // `local_inner` inputs per output (in_channels·kernel², its product's k)
  // (0: none kept for that; TrainConfig's local_below says why).
  void set_offload(bool offload_first, bool offload_last, int64_t local_below = 0, int64_t local_inner = 0);
  // "im2col" (every convolution as a product) or "channel" (offloaded
  // convolutions from the `channel_from`-th on, 1-based, run as whole
  // convolutions on permuted images and channels; never the first layer).
  // Call after set_offload. Returns how many convolutions use channel mode.
  int set_conv_mode(const std::string& mode, int channel_from);

  // safetensors with PyTorch names; strict: a missing, extra, mis-typed or
  // mis-shaped tensor is an error naming it. save() is atomic.
  void load(const std::string& path);
  void save(const std::string& path) const;
  // The same from and to memory (encrypted files, checkpoints); `what` names
  // the source in errors.
  void load_map(TensorMap tensors, const std::string& what);
  std::vector<NamedTensor> state_tensors() const;
};

// "mlp", "cnn", "resnet18", "resnet50", "vgg16", "vit" (or "vit:CxHxW").
// Unknown names are an error that lists the valid ones. Initialised from
// `seed` as PyTorch's modules do. A name ending in ".onnx" is a file: the
// model is built from its graph (trusted/nn/graph.h) and starts from its
// initializers.
bool is_onnx_model(const std::string& name);
std::unique_ptr<Model> build_model(const std::string& name, uint64_t seed);
const std::vector<std::string>& model_names();

}  // namespace tempo
