// Convolution as matrix products, shared by the trusted side (tee-only and
// im2col mode) and the CPU worker (channel mode): im2col with rows
// (image, out-y, out-x) and columns (channel, ky, kx), its adjoint col2im,
// and the transposes between (N·P)×O rows and N×O×P planes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tempo {

struct ConvGeometry {
  int64_t n, c, h, w, oh, ow, k, s, p;
  int64_t o = 0;  // output channels (conv2d_* only)
  int64_t positions() const { return oh * ow; }
  int64_t cols() const { return c * k * k; }
  // Range of output x whose input x = ox*s - p + kx lies in [0, w).
  void valid_ox(int64_t kx, int64_t& lo, int64_t& hi) const {
    int64_t off = kx - p;
    lo = off >= 0 ? 0 : (-off + s - 1) / s;
    hi = (w - 1 - off) < 0 ? 0 : (w - 1 - off) / s + 1;
    hi = std::min(hi, ow);
    lo = std::min(lo, hi);
  }
  static ConvGeometry make(int64_t n, int64_t c, int64_t h, int64_t w, int64_t o, int64_t k,
                           int64_t s, int64_t p) {
    ConvGeometry g{n, c, h, w, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1, k, s, p, o};
    return g;
  }
};

void im2col(const ConvGeometry& g, const float* x, float* cols);
// The same, also returning Σ cols² in double, taken as the values are written
// (per (image, output row) in a fixed order: the same for any number of
// threads). The blinding's mask is scaled by it, without a pass over cols.
double im2col_sumsq(const ConvGeometry& g, const float* x, float* cols);
void col2im(const ConvGeometry& g, const float* dcols, float* dx);
// The same from rows whose columns are stored in another order: column j
// (channel, ky, kx as above) of a row at position order[j] (order: a
// permutation of the g.cols() columns).
void col2im(const ConvGeometry& g, const float* dcols, float* dx, const int32_t* order);
// col2im for one image at a time, from rows the caller makes in order (a
// decryption fused with col2im): add() each row of the image (output
// position (oy, ox), K floats) in row order, then write() the image.
// col2im is exactly this for every image, so such a caller gets the same
// sums. The sums build up in a buffer of this thread's (grown once) whose
// planes are padded: unpadded planes of 4 KiB (32×32 maps) all fall into
// the same cache sets. Construct it on the thread that adds.
class Col2imImage {
 public:
  // order: as col2im's (nullptr: the rows' columns in their own order).
  explicit Col2imImage(const ConvGeometry& g, const int32_t* order = nullptr);
  void add(const float* row, int64_t oy, int64_t ox);
  // The image (C×H×W floats) into dx_image; the buffer starts over.
  void write(float* dx_image);

 private:
  ConvGeometry g_;
  float* acc_;  // H·W × C: channels last
  const int32_t* at_ = nullptr;  // where tap t's channel c is in a row, at t·C + c
  bool contiguous_ = false;      // a 1 × 1 kernel without an order: channel c at c
};
// out[img, o, p] = rows[img·P + p, o] + bias[o]  (bias may be null)
void rows_to_nchw(const float* rows, const float* bias, int64_t n, int64_t P, int64_t O, float* out);
// rows[img·P + p, o] = dy[img, o, p]
void nchw_to_rows(const float* dy, int64_t n, int64_t P, int64_t O, float* rows);

// Which kernels whole convolutions use. kBest: oneDNN when the build has it
// (TEMPO_DNNL), with its Winograd kernels, F(4×4, 3×3), for 3×3 stride-1
// convolutions of at least kWinogradMinChannels input and output channels
// and outputs of at least kWinogradMinSide × kWinogradMinSide where it has
// them (AVX-512 cores: about twice the direct kernels' speed,
// docs/BENCHMARKS.md; a few times their round-off), its direct kernels
// elsewhere; without oneDNN, im2col + sgemm. kDirect: oneDNN's direct
// kernels only, the ones PyTorch's CPU path runs (its rounding). kIm2col:
// im2col + sgemm always (tests compare them).
enum class ConvKernels { kBest, kDirect, kIm2col };
// Narrower layers, or smaller maps (a 4×4 output is one tile, and the
// weights' transform dominates), run faster on the direct kernels.
constexpr int64_t kWinogradMinChannels = 32, kWinogradMinSide = 8;
// "winograd" (kBest) | "direct"; parse_conv_kernels throws on anything else.
const char* conv_kernels_flag(ConvKernels k);
ConvKernels parse_conv_kernels(const std::string& s);
// What a ConvWorkspace made without a choice uses (kBest unless set: the
// trusted side's `--conv-algo`); set it before any thread makes one.
void set_default_conv_kernels(ConvKernels k);
ConvKernels default_conv_kernels();

// What whole convolutions reuse across calls: the im2col scratch, and with
// oneDNN the primitives and blocked-layout buffers of each geometry seen (a
// handful per model), so that a step allocates nothing after the first.
// Not thread-safe: one per caller thread.
class ConvWorkspace {
 public:
  explicit ConvWorkspace(ConvKernels kernels = default_conv_kernels());
  ~ConvWorkspace();
  ConvWorkspace(const ConvWorkspace&) = delete;
  ConvWorkspace& operator=(const ConvWorkspace&) = delete;
  bool uses_onednn() const { return dnnl_ != nullptr; }
  // What computes g's forward: oneDNN's implementation name (e.g.
  // "jit_wino_4x3:avx512_core" for Winograd, "jit:avx512_core" for direct),
  // or "im2col+sgemm".
  std::string kernel(const ConvGeometry& g);

  std::vector<float> scratch;  // im2col path
  struct Dnnl;
  Dnnl* dnnl() const { return dnnl_.get(); }

 private:
  std::unique_ptr<Dnnl> dnnl_;
};

// The kernels a default ConvWorkspace runs, for logs and benchmarks:
// "onednn 2.6.3" (", direct" under kDirect) or "im2col+sgemm".
std::string conv_kernels_name();

// Whole convolutions (no bias) with g.o output channels. All three are
// plain NCHW / OIHW in and out; dx and dw are overwritten.
void conv2d_forward(const ConvGeometry& g, const float* x, const float* w, float* y, ConvWorkspace& ws);
void conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx,
                           ConvWorkspace& ws);
void conv2d_backward_weight(const ConvGeometry& g, const float* x, const float* dy, float* dw,
                            ConvWorkspace& ws);
// Both: dw, then dx unless it is null (a layer's backward; with oneDNN, dy
// is moved into the kernels' layout once for the two).
void conv2d_backward(const ConvGeometry& g, const float* x, const float* dy, const float* w, float* dw, float* dx,
                     ConvWorkspace& ws);

}  // namespace tempo
