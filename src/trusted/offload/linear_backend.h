// The seam through which every matrix product and convolution of a model
// passes. A product has the shape of a linear layer, C = A·Wᵀ with
// A: M×K (inputs, or im2col patches), W: N×K (weights), C: M×N, and two
// backward products that reuse the forward operands:
//   dA = dC·W   (input gradient)      dW = dCᵀ·A   (weight gradient).
// TeeOnlyBackend computes them in the master. The offloading backends
// (tempo, offload) implement the same interface and may keep per-product
// state between forward and backward, keyed by Product::id, until end_step().
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/conv.h"

namespace tempo {

struct Product {
  int id = -1;                  // stable per layer; assigned at model build
  std::string name;             // layer name, for logs and metrics
  const float* a = nullptr;     // M×K row-major, valid until backward ends
  const float* w = nullptr;     // N×K row-major
  int64_t m = 0, k = 0, n = 0;
  // Σ a², where the layer took it while writing A (im2col does); < 0: not
  // taken. The blinding's orthogonal mixings keep it (up to rounding) and
  // its mask scales by it; the masked operand sent has it < 0.
  double a_sumsq = -1;
};

// A convolution offloaded in channel mode: Y = conv(X, W) without bias,
// X: N×C×H×W, W: O×C×k×k, Y: N×O×OH×OW (geometry g, with g.o = O).
struct ConvProduct {
  int id = -1;
  std::string name;
  const float* x = nullptr;
  const float* w = nullptr;
  ConvGeometry g{};
};

// `groups` independent products of one shape, C_g = A_g·W_gᵀ for g <
// groups, with A_g (m×k) at a + g·m·k, W_g (n×k) at w + g·n·k and C_g (m×n)
// at c + g·m·n: attention's per-head products, in which both operands are
// activations. They travel as one request. Backward as for Product, block
// by block: dA_g = dC_g·W_g, dW_g = dC_gᵀ·A_g.
struct BatchedProduct {
  std::string name;  // for logs: the layer and which product
  const float* a = nullptr;
  const float* w = nullptr;
  int64_t groups = 0, m = 0, k = 0, n = 0;
};

// One kind of a batched product computed in the master, blocks in parallel:
// the forward C (out: groups × m×n), the input gradient dA (groups × m×k)
// or the weight gradient dW (groups × n×k) from dc.
enum class BatchedKind { kForward = 0, kInput = 1, kWeight = 2 };
void batched_here(BatchedKind kind, const BatchedProduct& p, const float* dc, float* out);

// Seconds spent per phase since the last take (DESIGN.md §4 metrics).
struct PhaseSeconds {
  double encrypt = 0, transfer = 0, worker = 0, decrypt = 0, verify = 0;
};

class LinearBackend {
 public:
  virtual ~LinearBackend() = default;
  virtual const char* name() const = 0;
  // c (M×N) = a·wᵀ. Sets nothing in p; p.a and p.w must stay valid until the
  // product's backward calls have returned.
  virtual void forward(const Product& p, float* c) = 0;
  // da (M×K) = dc·w.
  virtual void backward_input(const Product& p, const float* dc, float* da) = 0;
  // dw (N×K) = dcᵀ·a.
  virtual void backward_weight(const Product& p, const float* dc, float* dw) = 0;
  // For a convolution in im2col form (a = im2col(x) with geometry g): dx =
  // col2im(dc·w), the input gradient as an image. By default backward_input
  // into a scratch matrix, then col2im; backends may fuse the two.
  virtual void backward_input_col2im(const Product& p, const float* dc, const ConvGeometry& g, float* dx);
  // Both backward products as a layer needs them: dw = dcᵀ·a, then the input
  // gradient into da, or with g as an image into dx (col2im); no input
  // gradient when da and g are null. By default one after the other; an
  // offloading backend overlaps them.
  virtual void backward(const Product& p, const float* dc, float* dw, float* da, const ConvGeometry* g = nullptr,
                        float* dx = nullptr);
  // Channel-mode convolutions; by default computed here (im2col + sgemm).
  virtual void conv_forward(const ConvProduct& p, float* y);
  virtual void conv_backward_input(const ConvProduct& p, const float* dy, float* dx);
  virtual void conv_backward_weight(const ConvProduct& p, const float* dy, float* dw);
  // A layer's backward: dw, then dx unless null. By default the two calls
  // above; the tee-only backend runs them together (common/conv.h).
  virtual void conv_backward(const ConvProduct& p, const float* dy, float* dw, float* dx);
  // Batched products (keyed by the address of p, which must stay the same
  // from forward to backward; a and w must stay valid until then). By
  // default computed here, blocks in parallel.
  virtual void batched_forward(const BatchedProduct& p, float* c);
  // dw (groups × n×k) and, unless null, da (groups × m×k).
  virtual void batched_backward(const BatchedProduct& p, const float* dc, float* dw, float* da);
  // True when this backend computes every product in the master: a layer
  // then hands it whole convolutions (conv_*), which run on direct kernels,
  // instead of im2col products.
  virtual bool computes_here() const { return false; }
  // Called once after each optimizer step; frees per-step state.
  virtual void end_step() {}
  // Returns and resets the per-phase times.
  virtual PhaseSeconds take_phase_seconds() { return {}; }
  // How far the backend's secret key stream has advanced, and setting it
  // back (sealed checkpoints: a resumed run draws the keys it would have).
  virtual uint64_t key_position() const { return 0; }
  virtual void set_key_position(uint64_t) {}

 protected:
  ConvWorkspace conv_ws_;

 private:
  std::vector<float> dcols_scratch_;
};

// Every product computed in the trusted master with BLAS (the secure
// baseline).
class TeeOnlyBackend final : public LinearBackend {
 public:
  const char* name() const override { return "tee-only"; }
  bool computes_here() const override { return true; }
  void conv_backward(const ConvProduct& p, const float* dy, float* dw, float* dx) override;
  void forward(const Product& p, float* c) override;
  void backward_input(const Product& p, const float* dc, float* da) override;
  void backward_weight(const Product& p, const float* dc, float* dw) override;
};

}  // namespace tempo
