#include <algorithm>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/nn/layers.h"

namespace tempo {

namespace {

struct Geometry {
  int64_t n, c, h, w, oh, ow, k, s, p;
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
};

// cols[(img·OH·OW + oy·OW + ox), (c·k + ky)·k + kx] = x[img, c, oy·s−p+ky, ox·s−p+kx]
// (zero outside). One (image, output row) per task: its OW rows of cols stay
// in L1 while they are written.
void im2col(const Geometry& g, const float* x, float* cols) {
  const int64_t K = g.cols();
  parallel_for(g.n * g.oh, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      int64_t img = t / g.oh, oy = t % g.oh;
      float* dst_base = cols + t * g.ow * K;
      for (int64_t c = 0; c < g.c; ++c) {
        const float* plane = x + (img * g.c + c) * g.h * g.w;
        for (int64_t ky = 0; ky < g.k; ++ky) {
          int64_t iy = oy * g.s - g.p + ky;
          for (int64_t kx = 0; kx < g.k; ++kx) {
            float* dst = dst_base + (c * g.k + ky) * g.k + kx;
            if (iy < 0 || iy >= g.h) {
              for (int64_t ox = 0; ox < g.ow; ++ox) dst[ox * K] = 0.0f;
              continue;
            }
            int64_t lo, hi;
            g.valid_ox(kx, lo, hi);
            const float* src = plane + iy * g.w - g.p + kx;
            for (int64_t ox = 0; ox < lo; ++ox) dst[ox * K] = 0.0f;
            for (int64_t ox = lo; ox < hi; ++ox) dst[ox * K] = src[ox * g.s];
            for (int64_t ox = hi; ox < g.ow; ++ox) dst[ox * K] = 0.0f;
          }
        }
      }
    }
  });
}

// The adjoint of im2col: dx[img, c, iy, ix] += dcols[...]. One image per task,
// so no two threads write the same element and the sum order is fixed.
void col2im(const Geometry& g, const float* dcols, float* dx) {
  const int64_t K = g.cols();
  parallel_for(g.n, [&](int64_t b, int64_t e) {
    for (int64_t img = b; img < e; ++img) {
      std::fill(dx + img * g.c * g.h * g.w, dx + (img + 1) * g.c * g.h * g.w, 0.0f);
      for (int64_t oy = 0; oy < g.oh; ++oy) {
        const float* src_base = dcols + (img * g.oh + oy) * g.ow * K;
        for (int64_t c = 0; c < g.c; ++c) {
          float* plane = dx + (img * g.c + c) * g.h * g.w;
          for (int64_t ky = 0; ky < g.k; ++ky) {
            int64_t iy = oy * g.s - g.p + ky;
            if (iy < 0 || iy >= g.h) continue;
            for (int64_t kx = 0; kx < g.k; ++kx) {
              const float* src = src_base + (c * g.k + ky) * g.k + kx;
              int64_t lo, hi;
              g.valid_ox(kx, lo, hi);
              float* d = plane + iy * g.w - g.p + kx;
              for (int64_t ox = lo; ox < hi; ++ox) d[ox * g.s] += src[ox * K];
            }
          }
        }
      }
    }
  });
}

// out[img, o, p] = rows[img·P + p, o] + bias[o]   (rows: (N·P)×O)
void rows_to_nchw(const float* rows, const float* bias, int64_t n, int64_t P, int64_t O,
                  float* out) {
  constexpr int64_t T = 32;
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t img = b; img < e; ++img) {
      const float* r = rows + img * P * O;
      float* y = out + img * O * P;
      for (int64_t o0 = 0; o0 < O; o0 += T) {
        int64_t o1 = std::min(O, o0 + T);
        for (int64_t p0 = 0; p0 < P; p0 += T) {
          int64_t p1 = std::min(P, p0 + T);
          for (int64_t o = o0; o < o1; ++o) {
            float bo = bias ? bias[o] : 0.0f;
            for (int64_t p = p0; p < p1; ++p) y[o * P + p] = r[p * O + o] + bo;
          }
        }
      }
    }
  });
}

// rows[img·P + p, o] = dy[img, o, p]
void nchw_to_rows(const float* dy, int64_t n, int64_t P, int64_t O, float* rows) {
  constexpr int64_t T = 32;
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t img = b; img < e; ++img) {
      const float* y = dy + img * O * P;
      float* r = rows + img * P * O;
      for (int64_t p0 = 0; p0 < P; p0 += T) {
        int64_t p1 = std::min(P, p0 + T);
        for (int64_t o0 = 0; o0 < O; o0 += T) {
          int64_t o1 = std::min(O, o0 + T);
          for (int64_t p = p0; p < p1; ++p)
            for (int64_t o = o0; o < o1; ++o) r[p * O + o] = y[o * P + p];
        }
      }
    }
  });
}

}  // namespace

Conv2d::Conv2d(int64_t in_c, int64_t out_c, int64_t k, int64_t s, int64_t p, bool b)
    : in_channels(in_c), out_channels(out_c), kernel(k), stride(s), padding(p), has_bias(b) {
  check(in_c > 0 && out_c > 0 && k > 0 && s > 0 && p >= 0, "invalid Conv2d configuration");
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
  check(x.ndim() == 4 && x.dim(1) == in_channels,
        "Conv2d expects N×" + std::to_string(in_channels) + "×H×W input, got " +
            shape_str(x.shape()));
  Geometry g{x.dim(0), in_channels, x.dim(2), x.dim(3), 0, 0, kernel, stride, padding};
  g.oh = (g.h + 2 * padding - kernel) / stride + 1;
  g.ow = (g.w + 2 * padding - kernel) / stride + 1;
  check(g.oh > 0 && g.ow > 0, "Conv2d input " + shape_str(x.shape()) + " is smaller than its kernel");
  x_ = &x;
  const int64_t M = g.n * g.positions(), K = g.cols();
  cols_.resize({M, K});
  im2col(g, x.data(), cols_.data());
  rows_.resize({M, out_channels});
  prod_.a = cols_.data();
  prod_.w = weight.data();
  prod_.m = M;
  prod_.k = K;
  prod_.n = out_channels;
  ctx.backend_for(prod_, offloaded).forward(prod_, rows_.data());
  out_.resize({g.n, out_channels, g.oh, g.ow});
  rows_to_nchw(rows_.data(), has_bias ? bias.data() : nullptr, g.n, g.positions(), out_channels,
               out_.data());
  return out_;
}

const Tensor& Conv2d::backward(const Tensor& dy, Context& ctx) {
  const Tensor& x = *x_;
  Geometry g{x.dim(0), in_channels, x.dim(2), x.dim(3), out_.dim(2), out_.dim(3), kernel, stride, padding};
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
  drows_.resize({g.n * P, O});
  nchw_to_rows(dy.data(), g.n, P, O, drows_.data());
  LinearBackend& be = ctx.backend_for(prod_, offloaded);
  be.backward_weight(prod_, drows_.data(), dweight.data());
  if (!needs_input_grad) {
    dx_.resize({0});
    return dx_;
  }
  dcols_.resize({g.n * P, g.cols()});
  be.backward_input(prod_, drows_.data(), dcols_.data());
  dx_.resize(x.shape());
  col2im(g, dcols_.data(), dx_.data());
  return dx_;
}

void Conv2d::state(std::vector<StateEntry>& out, const std::string& prefix) {
  out.push_back({prefix + "weight", &weight, &dweight, nullptr});
  if (has_bias) out.push_back({prefix + "bias", &bias, &dbias, nullptr});
}

}  // namespace tempo
