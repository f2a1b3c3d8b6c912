#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/nn/layers.h"

namespace tempo {

namespace {

// Per-channel sums over a row of n floats, in float within blocks of 1024
// (vectorised: `omp simd` lets the sum reassociate), the blocks in double.
constexpr int64_t kBlock = 1024;

double row_sum(const float* __restrict p, int64_t n) {
  double s = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = b; i < e; ++i) acc += p[i];
    s += acc;
  }
  return s;
}

double row_sq_dev(const float* __restrict p, int64_t n, float mu) {
  double s = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = b; i < e; ++i) {
      const float d = p[i] - mu;
      acc += d * d;
    }
    s += acc;
  }
  return s;
}

// Σ dy and Σ dy·(x − mean) over a row.
void row_grad_sums(const float* __restrict x, const float* __restrict dy, int64_t n, float mean, double& sdy,
                   double& sdyx) {
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    float a = 0, ax = 0;
#pragma omp simd reduction(+ : a, ax)
    for (int64_t i = b; i < e; ++i) {
      a += dy[i];
      ax += dy[i] * (x[i] - mean);
    }
    sdy += a;
    sdyx += ax;
  }
}

}  // namespace

BatchNorm2d::BatchNorm2d(int64_t c, double e, double m) : channels(c), eps(e), momentum(m) {
  TEMPO_CHECK(c > 0, "invalid BatchNorm2d configuration");
  weight.resize({c});
  weight.fill(1.0f);
  bias.resize({c});
  bias.zero();
  dweight.resize({c});
  dweight.zero();
  dbias.resize({c});
  dbias.zero();
  running_mean.resize({c});
  running_mean.zero();
  running_var.resize({c});
  running_var.fill(1.0f);
  mean_.resize(static_cast<size_t>(c));
  invstd_.resize(static_cast<size_t>(c));
}

const Tensor& BatchNorm2d::forward(const Tensor& x, Context& ctx) {
  TEMPO_CHECK(x.ndim() == 4 && x.dim(1) == channels,
        "BatchNorm2d expects N×" + std::to_string(channels) + "×H×W input, got " +
            shape_str(x.shape()));
  x_ = &x;
  const int64_t N = x.dim(0), C = channels, HW = x.dim(2) * x.dim(3), count = N * HW;
  trained_ = ctx.training;
  if (trained_) {
    TEMPO_CHECK(count > 1, "BatchNorm2d in training needs more than one value per channel, got input " +
                         shape_str(x.shape()));
    ++num_batches_tracked;
  }
  out_.resize(x.shape());
  parallel_for(C, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      float mean, invstd;
      if (trained_) {
        double s = 0, ss = 0;
        for (int64_t n = 0; n < N; ++n) s += row_sum(x.data() + (n * C + c) * HW, HW);
        const double mu = s / static_cast<double>(count);
        // Deviations from the float mean, corrected to the double one:
        // Σ(x − μ)² = Σ(x − m)² − count·(μ − m)².
        const float mf = static_cast<float>(mu);
        for (int64_t n = 0; n < N; ++n) ss += row_sq_dev(x.data() + (n * C + c) * HW, HW, mf);
        ss = std::max(0.0, ss - static_cast<double>(count) * (mu - mf) * (mu - mf));
        double var = ss / static_cast<double>(count);
        mean = static_cast<float>(mu);
        invstd = static_cast<float>(1.0 / std::sqrt(var + eps));
        double unbiased = ss / static_cast<double>(count - 1);
        running_mean[c] = static_cast<float>((1.0 - momentum) * running_mean[c] + momentum * mu);
        running_var[c] = static_cast<float>((1.0 - momentum) * running_var[c] + momentum * unbiased);
      } else {
        mean = running_mean[c];
        invstd = static_cast<float>(1.0 / std::sqrt(static_cast<double>(running_var[c]) + eps));
      }
      mean_[static_cast<size_t>(c)] = mean;
      invstd_[static_cast<size_t>(c)] = invstd;
      const float scale = invstd * weight[c], shift = bias[c] - mean * scale;
      for (int64_t n = 0; n < N; ++n) {
        const float* __restrict p = x.data() + (n * C + c) * HW;
        float* __restrict y = out_.data() + (n * C + c) * HW;
        for (int64_t i = 0; i < HW; ++i) y[i] = p[i] * scale + shift;
      }
    }
  });
  return out_;
}

const Tensor& BatchNorm2d::backward(const Tensor& dy, Context&) {
  const Tensor& x = *x_;
  const int64_t N = x.dim(0), C = channels, HW = x.dim(2) * x.dim(3);
  const double count = static_cast<double>(N * HW);
  dx_.resize(x.shape());
  parallel_for(C, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) {
      const float mean = mean_[static_cast<size_t>(c)], invstd = invstd_[static_cast<size_t>(c)];
      double sdy = 0, sdyx = 0;
      for (int64_t n = 0; n < N; ++n)
        row_grad_sums(x.data() + (n * C + c) * HW, dy.data() + (n * C + c) * HW, HW, mean, sdy, sdyx);
      dbias[c] = static_cast<float>(sdy);
      dweight[c] = static_cast<float>(sdyx * invstd);
      const float g = weight[c] * invstd;
      if (trained_) {
        // dx = γ·invstd·(dy − mean(dy) − x̂·mean(dy·x̂))
        const float mdy = static_cast<float>(sdy / count);
        const float k = static_cast<float>(sdyx / count) * invstd * invstd;
        for (int64_t n = 0; n < N; ++n) {
          const float* __restrict p = x.data() + (n * C + c) * HW;
          const float* __restrict d = dy.data() + (n * C + c) * HW;
          float* __restrict o = dx_.data() + (n * C + c) * HW;
          for (int64_t i = 0; i < HW; ++i) o[i] = g * (d[i] - mdy - (p[i] - mean) * k);
        }
      } else {
        for (int64_t n = 0; n < N; ++n) {
          const float* __restrict d = dy.data() + (n * C + c) * HW;
          float* __restrict o = dx_.data() + (n * C + c) * HW;
          for (int64_t i = 0; i < HW; ++i) o[i] = g * d[i];
        }
      }
    }
  });
  return dx_;
}

void BatchNorm2d::state(std::vector<StateEntry>& out, const std::string& prefix) {
  out.push_back({prefix + "weight", &weight, &dweight, nullptr});
  out.push_back({prefix + "bias", &bias, &dbias, nullptr});
  out.push_back({prefix + "running_mean", &running_mean, nullptr, nullptr});
  out.push_back({prefix + "running_var", &running_var, nullptr, nullptr});
  out.push_back({prefix + "num_batches_tracked", nullptr, nullptr, &num_batches_tracked});
}

}  // namespace tempo
