// Convolution as matrix products, shared by the trusted side (tee-only and
// im2col mode) and the CPU worker (channel mode): im2col with rows
// (image, out-y, out-x) and columns (channel, ky, kx), its adjoint col2im,
// and the transposes between (N·P)×O rows and N×O×P planes.
#pragma once

#include <algorithm>
#include <cstdint>
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
void col2im(const ConvGeometry& g, const float* dcols, float* dx);
// out[img, o, p] = rows[img·P + p, o] + bias[o]  (bias may be null)
void rows_to_nchw(const float* rows, const float* bias, int64_t n, int64_t P, int64_t O, float* out);
// rows[img·P + p, o] = dy[img, o, p]
void nchw_to_rows(const float* dy, int64_t n, int64_t P, int64_t O, float* rows);

// Whole convolutions (no bias) with g.o output channels, through sgemm.
// `scratch` grows to the largest size needed and is reused across calls.
void conv2d_forward(const ConvGeometry& g, const float* x, const float* w, float* y,
                    std::vector<float>& scratch);
void conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx,
                           std::vector<float>& scratch);
void conv2d_backward_weight(const ConvGeometry& g, const float* x, const float* dy, float* dw,
                            std::vector<float>& scratch);

}  // namespace tempo
