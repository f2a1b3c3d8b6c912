// The layer zoo, with PyTorch 1.13's semantics and state_dict names.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "trusted/nn/layer.h"

namespace tempo {

// Convolution as a product: X_col (rows (image, out-y, out-x), columns
// (channel, ky, kx)) times Wᵀ, W viewed as O×(C·kh·kw) — PyTorch's layout.
class Conv2d final : public Layer {
 public:
  Conv2d(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t stride = 1,
         int64_t padding = 0, bool bias = true);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  Product* product() override { return &prod_; }
  std::string kind() const override { return "Conv2d"; }

  int64_t in_channels, out_channels, kernel, stride, padding;
  bool has_bias;
  // Channel mode: when offloaded, the whole convolution goes to the backend
  // (workers run it on permuted and scaled images and channels) instead of
  // an im2col product.
  bool channel_mode = false;
  Tensor weight, bias, dweight, dbias;

 private:
  Product prod_;
  ConvProduct cprod_;
  const Tensor* x_ = nullptr;
  bool whole_ = false;  // last forward ran as a whole convolution (channel mode, or computed here)
  Tensor cols_, rows_, drows_;
};

// y = x·Wᵀ + b over the last dimension of x (PyTorch's nn.Linear): every
// leading dimension is a row of the product.
class Linear final : public Layer {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  Product* product() override { return &prod_; }
  std::string kind() const override { return "Linear"; }

  int64_t in_features, out_features;
  bool has_bias;
  Tensor weight, bias, dweight, dbias;

 private:
  Product prod_;
  const Tensor* x_ = nullptr;
  Shape out_shape_;
};

// dx = dy where the ReLU's output y is positive, else 0, over n elements,
// multithreaded and vectorised (ReLU's backward, and a residual block's
// final one).
void relu_backward(const float* y, const float* dy, float* dx, int64_t n);

class ReLU final : public Layer {
 public:
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  std::string kind() const override { return "ReLU"; }
};

class MaxPool2d final : public Layer {
 public:
  explicit MaxPool2d(int64_t kernel, int64_t stride = 0, int64_t padding = 0);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  std::string kind() const override { return "MaxPool2d"; }
  int64_t kernel() const { return k_; }
  int64_t stride() const { return s_; }
  int64_t padding() const { return p_; }

 private:
  int64_t k_, s_, p_;
  Shape in_shape_;
  std::vector<int32_t> argmax_;  // index within the input plane
};

// count_include_pad = true, ceil_mode = false (PyTorch's defaults).
class AvgPool2d final : public Layer {
 public:
  explicit AvgPool2d(int64_t kernel, int64_t stride = 0, int64_t padding = 0);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  std::string kind() const override { return "AvgPool2d"; }
  int64_t kernel() const { return k_; }
  int64_t stride() const { return s_; }
  int64_t padding() const { return p_; }

 private:
  int64_t k_, s_, p_;
  Shape in_shape_;
};

class AdaptiveAvgPool2d final : public Layer {
 public:
  AdaptiveAvgPool2d(int64_t out_h, int64_t out_w) : oh_(out_h), ow_(out_w) {}
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  std::string kind() const override { return "AdaptiveAvgPool2d"; }
  bool global() const { return oh_ == 1 && ow_ == 1; }

 private:
  int64_t oh_, ow_;
  Shape in_shape_;
};

// Momentum 0.1, eps 1e-5, affine, running statistics.
class BatchNorm2d final : public Layer {
 public:
  explicit BatchNorm2d(int64_t channels, double eps = 1e-5, double momentum = 0.1);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  std::string kind() const override { return "BatchNorm2d"; }

  int64_t channels;
  double eps, momentum;
  Tensor weight, bias, dweight, dbias, running_mean, running_var;
  int64_t num_batches_tracked = 0;

 private:
  const Tensor* x_ = nullptr;
  bool trained_ = false;            // last forward used batch statistics
  std::vector<float> mean_, invstd_;
};

class Flatten final : public Layer {
 public:
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  std::string kind() const override { return "Flatten"; }

 private:
  Shape in_shape_;
};

class Dropout final : public Layer {
 public:
  explicit Dropout(double p = 0.5) : p_(p) {}
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  std::string kind() const override { return "Dropout"; }

 private:
  double p_;
  bool active_ = false;
  Tensor mask_;
};

// A chain of named children (PyTorch's nn.Sequential, or a module whose
// forward is a chain, such as ResNet's top level).
class Sequential final : public Layer {
 public:
  Sequential() = default;
  Layer& add(std::string name, LayerPtr layer);
  Layer& add(LayerPtr layer) { return add(std::to_string(children_.size()), std::move(layer)); }
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  void for_each_child(const std::function<void(Layer&)>& fn) override;
  std::string kind() const override { return "Sequential"; }
  size_t size() const { return children_.size(); }
  Layer& at(size_t i) { return *children_[i].second; }
  const std::string& name_at(size_t i) const { return children_[i].first; }

 private:
  std::vector<std::pair<std::string, LayerPtr>> children_;
};

// torchvision's BasicBlock (expansion 1) and Bottleneck (expansion 4, stride
// on the 3×3 convolution), with the residual add and final ReLU fused.
class ResidualBlock final : public Layer {
 public:
  enum class Type { kBasic, kBottleneck };
  ResidualBlock(Type type, int64_t inplanes, int64_t planes, int64_t stride);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  void for_each_child(const std::function<void(Layer&)>& fn) override;
  std::string kind() const override { return type_ == Type::kBasic ? "BasicBlock" : "Bottleneck"; }
  static int64_t expansion(Type t) { return t == Type::kBasic ? 1 : 4; }

 private:
  Type type_;
  Sequential main_;                  // conv1, bn1, relu, conv2, bn2[, relu, conv3, bn3]
  std::unique_ptr<Sequential> downsample_;
  Tensor dsum_;
};

// nn.LayerNorm(features) over the last dimension: eps 1e-5, biased variance,
// elementwise affine (weight 1, bias 0 at construction).
class LayerNorm final : public Layer {
 public:
  explicit LayerNorm(int64_t features, double eps = 1e-5);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  std::string kind() const override { return "LayerNorm"; }

  int64_t features;
  double eps;
  Tensor weight, bias, dweight, dbias;

 private:
  const Tensor* x_ = nullptr;
  std::vector<float> mean_, rstd_;
  std::vector<double> partial_;  // per block of rows: Σ dy·x̂ and Σ dy
};

// Exact GELU: x·Φ(x) = x/2·(1 + erf(x/√2)) (F.gelu, approximate='none').
class GELU final : public Layer {
 public:
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  std::string kind() const override { return "GELU"; }

 private:
  const Tensor* x_ = nullptr;
};

// Multi-head self-attention on B×T×D tokens, as nn.TransformerEncoderLayer
// calls nn.MultiheadAttention(D, heads, batch_first=True): one input
// projection to Q, K, V (in_proj_weight 3D×D, in_proj_bias), per head
// softmax(Q·Kᵀ/√E)·V with E = D/heads, the heads side by side, then
// out_proj. The two projections are products like any Linear. The per-head
// products of two activations, S = (Q/√E)·Kᵀ and O = P·V, go to the
// backend as two batched products (B·heads blocks each) when the layer is
// offloaded; softmax stays here.
class MultiheadAttention final : public Layer {
 public:
  MultiheadAttention(int64_t dim, int64_t heads);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  // in_proj_weight, in_proj_bias, out_proj.weight, out_proj.bias. Also
  // names the two batched products after the prefix.
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  void for_each_child(const std::function<void(Layer&)>& fn) override;
  std::string kind() const override { return "MultiheadAttention"; }

  int64_t dim, heads;
  Linear in_proj, out_proj;

 private:
  int64_t batch_ = 0, tokens_ = 0;
  BatchedProduct scores_, mix_;  // (Q/√E)·Kᵀ and P·(Vᵀ)ᵀ, one block per (image, head)
  // Per block (image-major, then head): Q/√E, K (T×E), Vᵀ (E×T), the
  // probabilities P (T×T), the heads' outputs O (T×E), and their gradients.
  Tensor qs_, k_, vt_, probs_, o_;
  Tensor do_, dprobs_, dvt_, dqs_, dk_;
  Tensor attn_, dqkv_;  // B×T×D heads side by side; B×T×3D
};

// nn.TransformerEncoderLayer(dim, heads, ff, dropout=0, activation="gelu",
// batch_first=True, norm_first=True):
//   x = x + self_attn(norm1(x));  x = x + linear2(gelu(linear1(norm2(x)))).
class TransformerEncoderLayer final : public Layer {
 public:
  TransformerEncoderLayer(int64_t dim, int64_t heads, int64_t ff);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  void for_each_child(const std::function<void(Layer&)>& fn) override;
  std::string kind() const override { return "TransformerEncoderLayer"; }

  MultiheadAttention self_attn;
  Linear linear1, linear2;
  LayerNorm norm1, norm2;
  GELU gelu;

 private:
  Tensor x1_, dx1_;
};

// The `vit` model (tests/py/tempo_models.py's ViT): a patch embedding
// Conv2d(C, dim, patch, stride=patch), a class token and learned position
// embeddings, `depth` pre-norm encoder layers, a final LayerNorm and a
// Linear head on the class token. Names: cls_token, pos_embed,
// patch_embed.*, encoder.layers.I.*, norm.*, head.*. Its input needs no
// gradient.
class VisionTransformer final : public Layer {
 public:
  struct Config {
    int64_t channels = 1, height = 28, width = 28, patch = 4, dim = 192, depth = 6, heads = 3, mlp = 384,
            classes = 10;
  };
  explicit VisionTransformer(const Config& c);
  const Tensor& forward(const Tensor& x, Context& ctx) override;
  const Tensor& backward(const Tensor& dy, Context& ctx) override;
  void state(std::vector<StateEntry>& out, const std::string& prefix) override;
  void for_each_child(const std::function<void(Layer&)>& fn) override;
  std::string kind() const override { return "VisionTransformer"; }
  int64_t tokens() const { return tokens_; }

  Config config;
  Tensor cls_token, pos_embed, dcls_token, dpos_embed;
  Conv2d patch_embed;
  std::vector<std::unique_ptr<TransformerEncoderLayer>> layers;
  LayerNorm norm;
  Linear head;

 private:
  int64_t tokens_;
  Tensor x0_, cls_rows_, dx_tokens_, dpatches_;
};

// Mean cross-entropy over a batch of logits (N×C) and class labels.
// Returns the loss; writes dlogits = (softmax − onehot)/N when dlogits != null.
double cross_entropy(const Tensor& logits, const std::vector<int64_t>& labels, Tensor* dlogits,
                     int64_t* correct = nullptr);

// Mean cross-entropy against target distributions (N×C rows of
// probabilities, e.g. another model's answers): −Σ_c t_c·log softmax(z)_c.
// Writes dlogits = (softmax − t)/N when dlogits != null; with one-hot
// targets, loss and gradient are those of cross_entropy.
double soft_cross_entropy(const Tensor& logits, const float* targets, Tensor* dlogits);

// Row-wise softmax of N×C logits into out (N×C), in double precision, with
// the row maximum subtracted first: the class probabilities `tempo predict`
// reports.
void softmax_rows(const float* logits, int64_t rows, int64_t classes, float* out);

}  // namespace tempo
