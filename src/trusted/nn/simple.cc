// Element-wise and shape layers: ReLU, Flatten, Dropout, pooling.
#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/nn/layers.h"

namespace tempo {

namespace {
constexpr int64_t kGrain = 1 << 14;  // elements per thread at least

void check_4d(const Tensor& x, const char* who) {
  TEMPO_CHECK(x.ndim() == 4, std::string(who) + " expects an N×C×H×W input, got " + shape_str(x.shape()));
}
}  // namespace

// The lambdas copy the pointers into restrict-qualified locals: through the
// captured references the compiler had to reload them after every store and
// left the loop scalar and branchy (a tenth of a tee-only `cnn` step).
const Tensor& ReLU::forward(const Tensor& x, Context&) {
  out_.resize(x.shape());
  const float* a = x.data();
  float* y = out_.data();
  parallel_for(x.numel(), [a, y](int64_t b, int64_t e) {
    const float* __restrict in = a;
    float* __restrict out = y;
    for (int64_t i = b; i < e; ++i) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
  }, kGrain);
  return out_;
}

void relu_backward(const float* y, const float* d, float* dx, int64_t n) {
  parallel_for(n, [y, d, dx](int64_t b, int64_t e) {
    const float* __restrict kept = y;
    const float* __restrict grad = d;
    float* __restrict out = dx;
    for (int64_t i = b; i < e; ++i) out[i] = kept[i] > 0.0f ? grad[i] : 0.0f;
  }, kGrain);
}

const Tensor& ReLU::backward(const Tensor& dy, Context&) {
  dx_.resize(out_.shape());
  relu_backward(out_.data(), dy.data(), dx_.data(), dy.numel());
  return dx_;
}

const Tensor& Flatten::forward(const Tensor& x, Context&) {
  TEMPO_CHECK(x.ndim() >= 1, "Flatten expects a batch");
  in_shape_ = x.shape();
  out_ = x;
  out_.reshape({x.dim(0), x.dim(0) ? x.numel() / x.dim(0) : 0});
  return out_;
}

const Tensor& Flatten::backward(const Tensor& dy, Context&) {
  dx_ = dy;
  dx_.reshape(in_shape_);
  return dx_;
}

const Tensor& Dropout::forward(const Tensor& x, Context& ctx) {
  active_ = ctx.training && p_ > 0.0;
  if (!active_) return x;
  TEMPO_CHECK(ctx.rng != nullptr, "Dropout in training needs a random stream");
  out_.resize(x.shape());
  mask_.resize(x.shape());
  const float scale = p_ >= 1.0 ? 0.0f : static_cast<float>(1.0 / (1.0 - p_));
  float* m = mask_.data();
  for (int64_t i = 0; i < x.numel(); ++i) m[i] = ctx.rng->uniform() < p_ ? 0.0f : scale;
  const float* a = x.data();
  float* y = out_.data();
  for (int64_t i = 0; i < x.numel(); ++i) y[i] = a[i] * m[i];
  return out_;
}

const Tensor& Dropout::backward(const Tensor& dy, Context&) {
  if (!active_) return dy;
  dx_.resize(dy.shape());
  for (int64_t i = 0; i < dy.numel(); ++i) dx_[i] = dy[i] * mask_[i];
  return dx_;
}

MaxPool2d::MaxPool2d(int64_t k, int64_t s, int64_t p) : k_(k), s_(s ? s : k), p_(p) {
  TEMPO_CHECK(k > 0 && s_ > 0 && p >= 0 && 2 * p <= k, "invalid MaxPool2d configuration");
}

const Tensor& MaxPool2d::forward(const Tensor& x, Context&) {
  check_4d(x, "MaxPool2d");
  in_shape_ = x.shape();
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t OH = (H + 2 * p_ - k_) / s_ + 1, OW = (W + 2 * p_ - k_) / s_ + 1;
  TEMPO_CHECK(OH > 0 && OW > 0, "MaxPool2d input " + shape_str(x.shape()) + " is smaller than its kernel");
  out_.resize({N, C, OH, OW});
  argmax_.resize(static_cast<size_t>(out_.numel()));
  const float* in = x.data();
  float* y = out_.data();
  int32_t* am = argmax_.data();
  // First maximum wins; a NaN wins and ends the window (as PyTorch does).
  auto consider = [](float v, int32_t i, float& best, int32_t& bi, bool& nan) {
    const bool take = !nan && (v > best || std::isnan(v));
    best = take ? v : best;
    bi = take ? i : bi;
    nan = nan || std::isnan(v);
  };
  const bool two = k_ == 2 && s_ == 2 && p_ == 0;  // the common case, without bounds
  parallel_for(N * C, [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const float* src = in + pl * H * W;
      float* yp = y + pl * OH * OW;
      int32_t* ap = am + pl * OH * OW;
      if (two) {
        // A tournament (a, b), (c, d), then the two winners, each taking
        // the later one only if strictly larger: the first maximum, as the
        // scan gives, without branches (on data these comparisons are a coin
        // toss, and the mispredicted branches of the scan made this layer a
        // tenth of a `cnn` step). A NaN anywhere in the plane (rare) sends
        // the plane through the general loop below instead.
        bool any_nan = false;
        for (int64_t oy = 0; oy < OH; ++oy) {
          const float* r0 = src + 2 * oy * W;
          const float* r1 = r0 + W;
          const auto base = static_cast<int32_t>(2 * oy * W);
          for (int64_t ox = 0; ox < OW; ++ox) {
            const float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox], d = r1[2 * ox + 1];
            any_nan |= (a != a) | (b != b) | (c != c) | (d != d);
            const bool rb = b > a, rd = d > c;
            const float ab = rb ? b : a, cd = rd ? d : c;
            const bool low = cd > ab;
            const auto col = static_cast<int32_t>(2 * ox);
            yp[oy * OW + ox] = low ? cd : ab;
            ap[oy * OW + ox] = base + col + (low ? static_cast<int32_t>(W) + rd : rb);
          }
        }
        if (!any_nan) continue;
      }
      for (int64_t oy = 0; oy < OH; ++oy) {
        for (int64_t ox = 0; ox < OW; ++ox) {
          const int64_t y0 = oy * s_ - p_, x0 = ox * s_ - p_;
          float best = -std::numeric_limits<float>::infinity();
          int32_t bi = static_cast<int32_t>(std::max<int64_t>(y0, 0) * W + std::max<int64_t>(x0, 0));
          bool nan = false;
          for (int64_t iy = std::max<int64_t>(y0, 0); iy < std::min(y0 + k_, H); ++iy)
            for (int64_t ix = std::max<int64_t>(x0, 0); ix < std::min(x0 + k_, W); ++ix)
              consider(src[iy * W + ix], static_cast<int32_t>(iy * W + ix), best, bi, nan);
          yp[oy * OW + ox] = best;
          ap[oy * OW + ox] = bi;
        }
      }
    }
  }, 4);
  return out_;
}

const Tensor& MaxPool2d::backward(const Tensor& dy, Context&) {
  dx_.resize(in_shape_);
  const int64_t NC = in_shape_[0] * in_shape_[1], HW = in_shape_[2] * in_shape_[3];
  const int64_t OHW = dy.dim(2) * dy.dim(3);
  const float* d = dy.data();
  const int32_t* am = argmax_.data();
  float* dx = dx_.data();
  parallel_for(NC, [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      float* dst = dx + pl * HW;
      std::fill(dst, dst + HW, 0.0f);
      for (int64_t o = 0; o < OHW; ++o) dst[am[pl * OHW + o]] += d[pl * OHW + o];
    }
  }, 4);
  return dx_;
}

AvgPool2d::AvgPool2d(int64_t k, int64_t s, int64_t p) : k_(k), s_(s ? s : k), p_(p) {
  TEMPO_CHECK(k > 0 && s_ > 0 && p >= 0 && 2 * p <= k, "invalid AvgPool2d configuration");
}

namespace {
// PyTorch's window and divisor for AvgPool2d with count_include_pad.
struct AvgWindow {
  int64_t y0, y1, x0, x1;
  float inv;
};
AvgWindow avg_window(int64_t oy, int64_t ox, int64_t k, int64_t s, int64_t p, int64_t H, int64_t W) {
  int64_t y0 = oy * s - p, x0 = ox * s - p;
  int64_t y1 = std::min(y0 + k, H + p), x1 = std::min(x0 + k, W + p);
  int64_t pool = (y1 - y0) * (x1 - x0);
  return {std::max<int64_t>(y0, 0), std::min(y1, H), std::max<int64_t>(x0, 0), std::min(x1, W),
          1.0f / static_cast<float>(pool)};
}
}  // namespace

const Tensor& AvgPool2d::forward(const Tensor& x, Context&) {
  check_4d(x, "AvgPool2d");
  in_shape_ = x.shape();
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  const int64_t OH = (H + 2 * p_ - k_) / s_ + 1, OW = (W + 2 * p_ - k_) / s_ + 1;
  TEMPO_CHECK(OH > 0 && OW > 0, "AvgPool2d input " + shape_str(x.shape()) + " is smaller than its kernel");
  out_.resize({N, C, OH, OW});
  parallel_for(N * C, [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const float* src = x.data() + pl * H * W;
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          AvgWindow w = avg_window(oy, ox, k_, s_, p_, H, W);
          float s = 0;
          for (int64_t iy = w.y0; iy < w.y1; ++iy)
            for (int64_t ix = w.x0; ix < w.x1; ++ix) s += src[iy * W + ix];
          out_[(pl * OH + oy) * OW + ox] = s * w.inv;
        }
    }
  }, 4);
  return out_;
}

const Tensor& AvgPool2d::backward(const Tensor& dy, Context&) {
  dx_.resize(in_shape_);
  const int64_t H = in_shape_[2], W = in_shape_[3], OH = dy.dim(2), OW = dy.dim(3);
  parallel_for(in_shape_[0] * in_shape_[1], [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      float* dst = dx_.data() + pl * H * W;
      std::fill(dst, dst + H * W, 0.0f);
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          AvgWindow w = avg_window(oy, ox, k_, s_, p_, H, W);
          float g = dy[(pl * OH + oy) * OW + ox] * w.inv;
          for (int64_t iy = w.y0; iy < w.y1; ++iy)
            for (int64_t ix = w.x0; ix < w.x1; ++ix) dst[iy * W + ix] += g;
        }
    }
  }, 4);
  return dx_;
}

namespace {
int64_t adaptive_start(int64_t i, int64_t in, int64_t out) { return (i * in) / out; }
int64_t adaptive_end(int64_t i, int64_t in, int64_t out) { return ((i + 1) * in + out - 1) / out; }
}  // namespace

const Tensor& AdaptiveAvgPool2d::forward(const Tensor& x, Context&) {
  check_4d(x, "AdaptiveAvgPool2d");
  in_shape_ = x.shape();
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3);
  out_.resize({N, C, oh_, ow_});
  parallel_for(N * C, [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      const float* src = x.data() + pl * H * W;
      for (int64_t oy = 0; oy < oh_; ++oy)
        for (int64_t ox = 0; ox < ow_; ++ox) {
          int64_t y0 = adaptive_start(oy, H, oh_), y1 = adaptive_end(oy, H, oh_);
          int64_t x0 = adaptive_start(ox, W, ow_), x1 = adaptive_end(ox, W, ow_);
          float s = 0;
          for (int64_t iy = y0; iy < y1; ++iy)
            for (int64_t ix = x0; ix < x1; ++ix) s += src[iy * W + ix];
          out_[(pl * oh_ + oy) * ow_ + ox] = s / static_cast<float>((y1 - y0) * (x1 - x0));
        }
    }
  }, 4);
  return out_;
}

const Tensor& AdaptiveAvgPool2d::backward(const Tensor& dy, Context&) {
  dx_.resize(in_shape_);
  const int64_t H = in_shape_[2], W = in_shape_[3];
  parallel_for(in_shape_[0] * in_shape_[1], [&](int64_t b, int64_t e) {
    for (int64_t pl = b; pl < e; ++pl) {
      float* dst = dx_.data() + pl * H * W;
      std::fill(dst, dst + H * W, 0.0f);
      for (int64_t oy = 0; oy < oh_; ++oy)
        for (int64_t ox = 0; ox < ow_; ++ox) {
          int64_t y0 = adaptive_start(oy, H, oh_), y1 = adaptive_end(oy, H, oh_);
          int64_t x0 = adaptive_start(ox, W, ow_), x1 = adaptive_end(ox, W, ow_);
          float g = dy[(pl * oh_ + oy) * ow_ + ox] / static_cast<float>((y1 - y0) * (x1 - x0));
          for (int64_t iy = y0; iy < y1; ++iy)
            for (int64_t ix = x0; ix < x1; ++ix) dst[iy * W + ix] += g;
        }
    }
  }, 4);
  return dx_;
}

}  // namespace tempo
