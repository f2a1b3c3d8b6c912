#include <algorithm>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/nn/layers.h"

namespace tempo {

Linear::Linear(int64_t in, int64_t out, bool b) : in_features(in), out_features(out), has_bias(b) {
  TEMPO_CHECK(in > 0 && out > 0, "invalid Linear configuration");
  weight.resize({out, in});
  weight.zero();
  dweight.resize(weight.shape());
  dweight.zero();
  if (b) {
    bias.resize({out});
    bias.zero();
    dbias.resize({out});
    dbias.zero();
  }
}

const Tensor& Linear::forward(const Tensor& x, Context& ctx) {
  TEMPO_CHECK(x.ndim() >= 2 && x.numel() > 0 && x.dim(-1) == in_features,
        "Linear expects …×" + std::to_string(in_features) + " input, got " + shape_str(x.shape()));
  x_ = &x;
  const int64_t n = x.numel() / in_features;
  prod_.a = x.data();
  prod_.w = weight.data();
  prod_.m = n;
  prod_.k = in_features;
  prod_.n = out_features;
  out_shape_ = x.shape();  // no allocation once the rank is known
  out_shape_.back() = out_features;
  out_.resize(out_shape_);
  ctx.backend_for(prod_, offloaded).forward(prod_, out_.data());
  if (has_bias) {
    float* y = out_.data();
    const float* bb = bias.data();
    parallel_for(n, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        for (int64_t o = 0; o < out_features; ++o) y[i * out_features + o] += bb[o];
    }, 64);
  }
  return out_;
}

const Tensor& Linear::backward(const Tensor& dy, Context& ctx) {
  const int64_t n = x_->numel() / in_features;
  if (has_bias) {
    // Column sums in row order: the same order for every thread count. Each
    // thread sums a block of columns, reading the rows' pieces contiguously.
    const float* d = dy.data();
    const int64_t outs = out_features;
    float* db = dbias.data();
    parallel_for(outs, [d, db, n, outs](int64_t b, int64_t e) {
      constexpr int64_t kCols = 64;
      for (int64_t c0 = b; c0 < e; c0 += kCols) {
        const int64_t w = std::min(kCols, e - c0);
        float acc[kCols] = {};
        for (int64_t i = 0; i < n; ++i) {
          const float* __restrict row = d + i * outs + c0;
          for (int64_t o = 0; o < w; ++o) acc[o] += row[o];
        }
        std::copy_n(acc, w, db + c0);
      }
    }, 16);
  }
  LinearBackend& be = ctx.backend_for(prod_, offloaded);
  if (needs_input_grad) dx_.resize(x_->shape());
  else dx_.resize({0});
  be.backward(prod_, dy.data(), dweight.data(), needs_input_grad ? dx_.data() : nullptr);
  return dx_;
}

void Linear::state(std::vector<StateEntry>& out, const std::string& prefix) {
  out.push_back({prefix + "weight", &weight, &dweight, nullptr});
  if (has_bias) out.push_back({prefix + "bias", &bias, &dbias, nullptr});
}

}  // namespace tempo
