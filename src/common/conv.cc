#include "common/conv.h"
#include "common/conv_dnnl.h"

#include "common/blas.h"
#include "common/parallel.h"

namespace tempo {

// cols[(img·OH·OW + oy·OW + ox), (c·k + ky)·k + kx] = x[img, c, oy·s−p+ky, ox·s−p+kx]
// (zero outside). One (image, output row) per task: its OW rows of cols stay
// in L1 while they are written.
namespace {
// One (image, output row) of im2col: its OW rows of cols; returns their Σ v²
// when Sq (summed from the source rows while they are in L1).
template <bool Sq>
double im2col_row(const ConvGeometry& g, const float* x, float* cols, int64_t t) {
  const int64_t K = g.cols();
  const int64_t img = t / g.oh, oy = t % g.oh;
  float* dst_base = cols + t * g.ow * K;
  double ss = 0;
  for (int64_t c = 0; c < g.c; ++c) {
    const float* plane = x + (img * g.c + c) * g.h * g.w;
    for (int64_t ky = 0; ky < g.k; ++ky) {
      const int64_t iy = oy * g.s - g.p + ky;
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
        if constexpr (Sq) {
          // The values just copied, again from L1, in vector lanes (one
          // accumulator would make a chain of dependent adds).
          double s = 0;
#pragma omp simd reduction(+ : s)
          for (int64_t ox = lo; ox < hi; ++ox) s += static_cast<double>(src[ox * g.s]) * src[ox * g.s];
          ss += s;
        }
        for (int64_t ox = hi; ox < g.ow; ++ox) dst[ox * K] = 0.0f;
      }
    }
  }
  return ss;
}
}  // namespace

// cols[(img·OH·OW + oy·OW + ox), (c·k + ky)·k + kx] = x[img, c, oy·s−p+ky, ox·s−p+kx]
// (zero outside). One (image, output row) per task: its OW rows of cols stay
// in L1 while they are written.
void im2col(const ConvGeometry& g, const float* x, float* cols) {
  parallel_for(g.n * g.oh, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) im2col_row<false>(g, x, cols, t);
  });
}

double im2col_sumsq(const ConvGeometry& g, const float* x, float* cols) {
  // Tasks in a fixed number of pieces, each summed by one thread.
  constexpr int64_t kPieces = 64;
  const int64_t tasks = g.n * g.oh;
  double part[kPieces];
  parallel_for(kPieces, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      double s = 0;
      for (int64_t t = tasks * c / kPieces; t < tasks * (c + 1) / kPieces; ++t) s += im2col_row<true>(g, x, cols, t);
      part[c] = s;
    }
  });
  double ss = 0;
  for (double s : part) ss += s;
  return ss;
}

// The adjoint of im2col: dx[img, c, iy, ix] += dcols[...]. One image per task,
// so no two threads write the same element and the sum order is fixed.
void col2im(const ConvGeometry& g, const float* dcols, float* dx) {
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


namespace {
float* grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}
}  // namespace

#if !TEMPO_DNNL
struct ConvWorkspace::Dnnl {};
ConvWorkspace::ConvWorkspace(ConvKernels) {}
ConvWorkspace::~ConvWorkspace() = default;
std::string conv_kernels_name() { return "im2col+sgemm"; }
#endif

void conv2d_forward(const ConvGeometry& g, const float* x, const float* w, float* y, ConvWorkspace& ws) {
#if TEMPO_DNNL
  if (ws.uses_onednn()) return dnnl_conv_forward(*ws.dnnl(), g, x, w, y);
#endif
  const int64_t M = g.n * g.positions(), K = g.cols();
  float* buf = grow(ws.scratch, static_cast<size_t>(M * K + M * g.o));
  float* cols = buf;
  float* rows = buf + M * K;
  im2col(g, x, cols);
  sgemm(false, true, M, g.o, K, 1.0f, cols, K, w, K, 0.0f, rows, g.o);
  rows_to_nchw(rows, nullptr, g.n, g.positions(), g.o, y);
}

void conv2d_backward_input(const ConvGeometry& g, const float* dy, const float* w, float* dx,
                           ConvWorkspace& ws) {
#if TEMPO_DNNL
  if (ws.uses_onednn()) return dnnl_conv_backward_input(*ws.dnnl(), g, dy, w, dx);
#endif
  const int64_t M = g.n * g.positions(), K = g.cols();
  float* buf = grow(ws.scratch, static_cast<size_t>(M * K + M * g.o));
  float* dcols = buf;
  float* drows = buf + M * K;
  nchw_to_rows(dy, g.n, g.positions(), g.o, drows);
  sgemm(false, false, M, K, g.o, 1.0f, drows, g.o, w, K, 0.0f, dcols, K);
  col2im(g, dcols, dx);
}

void conv2d_backward_weight(const ConvGeometry& g, const float* x, const float* dy, float* dw,
                            ConvWorkspace& ws) {
#if TEMPO_DNNL
  if (ws.uses_onednn()) return dnnl_conv_backward_weight(*ws.dnnl(), g, x, dy, dw);
#endif
  const int64_t M = g.n * g.positions(), K = g.cols();
  float* buf = grow(ws.scratch, static_cast<size_t>(M * K + M * g.o));
  float* cols = buf;
  float* drows = buf + M * K;
  im2col(g, x, cols);
  nchw_to_rows(dy, g.n, g.positions(), g.o, drows);
  sgemm(true, false, g.o, K, M, 1.0f, drows, g.o, cols, K, 0.0f, dw, K);
}

void conv2d_backward(const ConvGeometry& g, const float* x, const float* dy, const float* w, float* dw, float* dx,
                     ConvWorkspace& ws) {
#if TEMPO_DNNL
  if (ws.uses_onednn()) return dnnl_conv_backward(*ws.dnnl(), g, x, dy, w, dw, dx);
#endif
  conv2d_backward_weight(g, x, dy, dw, ws);
  if (dx) conv2d_backward_input(g, dy, w, dx, ws);
}

}  // namespace tempo
