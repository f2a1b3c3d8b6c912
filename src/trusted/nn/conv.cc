#include <algorithm>

#include "common/conv.h"
#include "common/error.h"
#include "common/parallel.h"
#include "trusted/nn/layers.h"

namespace tempo {

Conv2d::Conv2d(int64_t in_c, int64_t out_c, int64_t k, int64_t s, int64_t p, bool b)
    : in_channels(in_c), out_channels(out_c), kernel(k), stride(s), padding(p), has_bias(b) {
  TEMPO_CHECK(in_c > 0 && out_c > 0 && k > 0 && s > 0 && p >= 0, "invalid Conv2d configuration");
  weight.resize({out_c, in_c, k, k});
  weight.zero();
  dweight.resize(weight.shape());
  dweight.zero();
  if (b) {
    bias.resize({out_c});
    bias.zero();
    dbias.resize({out_c});
    dbias.zero();
  }
}

const Tensor& Conv2d::forward(const Tensor& x, Context& ctx) {
  TEMPO_CHECK(x.ndim() == 4 && x.dim(1) == in_channels,
        "Conv2d expects N×" + std::to_string(in_channels) + "×H×W input, got " +
            shape_str(x.shape()));
  ConvGeometry g{x.dim(0), in_channels, x.dim(2), x.dim(3), 0, 0, kernel, stride, padding};
  g.oh = (g.h + 2 * padding - kernel) / stride + 1;
  g.ow = (g.w + 2 * padding - kernel) / stride + 1;
  TEMPO_CHECK(g.oh > 0 && g.ow > 0, "Conv2d input " + shape_str(x.shape()) + " is smaller than its kernel");
  x_ = &x;
  // Whole convolutions: offloaded in channel mode, or computed here by a
  // backend that runs them on direct kernels (oneDNN) instead of im2col.
  LinearBackend& be = ctx.backend_for(prod_, offloaded);
  whole_ = (channel_mode && offloaded) || be.computes_here();
  if (whole_) {
    g.o = out_channels;
    cprod_.id = prod_.id;
    cprod_.name = prod_.name;
    cprod_.x = x.data();
    cprod_.w = weight.data();
    cprod_.g = g;
    out_.resize({g.n, out_channels, g.oh, g.ow});
    be.conv_forward(cprod_, out_.data());
    if (has_bias) {
      const int64_t P = g.positions();
      parallel_for(g.n * out_channels, [&](int64_t lo, int64_t hi) {
        for (int64_t pl = lo; pl < hi; ++pl) {
          float* y = out_.data() + pl * P;
          const float b = bias[pl % out_channels];
          for (int64_t q = 0; q < P; ++q) y[q] += b;
        }
      }, 16);
    }
    return out_;
  }
  const int64_t M = g.n * g.positions(), K = g.cols();
  cols_.resize({M, K});
  prod_.a_sumsq = im2col_sumsq(g, x.data(), cols_.data());  // the mask's scale, without a pass over A
  rows_.resize({M, out_channels});
  prod_.a = cols_.data();
  prod_.w = weight.data();
  prod_.m = M;
  prod_.k = K;
  prod_.n = out_channels;
  be.forward(prod_, rows_.data());
  out_.resize({g.n, out_channels, g.oh, g.ow});
  rows_to_nchw(rows_.data(), has_bias ? bias.data() : nullptr, g.n, g.positions(), out_channels,
               out_.data());
  return out_;
}

const Tensor& Conv2d::backward(const Tensor& dy, Context& ctx) {
  const Tensor& x = *x_;
  ConvGeometry g{x.dim(0), in_channels, x.dim(2), x.dim(3), out_.dim(2), out_.dim(3), kernel, stride, padding};
  const int64_t P = g.positions(), O = out_channels;
  if (has_bias) {
    parallel_for(O, [&](int64_t b, int64_t e) {
      for (int64_t o = b; o < e; ++o) {
        double s = 0;
        for (int64_t img = 0; img < g.n; ++img) {
          const float* d = dy.data() + (img * O + o) * P;
          float acc = 0;
          for (int64_t p = 0; p < P; ++p) acc += d[p];
          s += acc;
        }
        dbias[o] = static_cast<float>(s);
      }
    });
  }
  LinearBackend& be = ctx.backend_for(prod_, offloaded);
  if (whole_) {
    if (needs_input_grad) dx_.resize(x.shape());
    else dx_.resize({0});
    be.conv_backward(cprod_, dy.data(), dweight.data(), needs_input_grad ? dx_.data() : nullptr);
    return dx_;
  }
  drows_.resize({g.n * P, O});
  nchw_to_rows(dy.data(), g.n, P, O, drows_.data());
  if (needs_input_grad) dx_.resize(x.shape());
  else dx_.resize({0});
  be.backward(prod_, drows_.data(), dweight.data(), nullptr, needs_input_grad ? &g : nullptr,
              needs_input_grad ? dx_.data() : nullptr);
  return dx_;
}

void Conv2d::state(std::vector<StateEntry>& out, const std::string& prefix) {
  out.push_back({prefix + "weight", &weight, &dweight, nullptr});
  if (has_bias) out.push_back({prefix + "bias", &bias, &dbias, nullptr});
}

}  // namespace tempo
