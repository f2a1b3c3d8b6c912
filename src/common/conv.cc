#include "common/conv.h"
#include "common/conv_dnnl.h"

#include "common/blas.h"
#include "common/copy.h"
#include "common/error.h"
#include "common/parallel.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <atomic>
#include <vector>

namespace tempo {

namespace {

// dst[c·ldd + r] = src[r·lds + c] (+ add[c] when add is given), for r < rows
// and c < cols: 16 × 16 tiles transposed in registers (AVX-512), the edges
// element by element. A copy (and the one addition), so the bits are those
// of the element-by-element form.
void transpose(const float* src, int64_t rows, int64_t cols, int64_t lds, float* dst, int64_t ldd,
               const float* add) {
  constexpr int64_t T = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += T)
    for (int64_t c0 = 0; c0 < cols; c0 += T) {
#if defined(__AVX512F__)
      if (r0 + T <= rows && c0 + T <= cols) {
        const float* s = src + r0 * lds + c0;
        __m512 t[16], u[16];
        for (int i = 0; i < 16; i += 2) {
          const __m512 a = _mm512_loadu_ps(s + i * lds), b = _mm512_loadu_ps(s + (i + 1) * lds);
          t[i] = _mm512_unpacklo_ps(a, b);
          t[i + 1] = _mm512_unpackhi_ps(a, b);
        }
        // u[4b + j], lane L: column 4L + j of rows 4b .. 4b + 3.
        for (int b = 0; b < 4; ++b) {
          const __m512d lo = _mm512_castps_pd(t[4 * b]), hi = _mm512_castps_pd(t[4 * b + 1]);
          const __m512d lo2 = _mm512_castps_pd(t[4 * b + 2]), hi2 = _mm512_castps_pd(t[4 * b + 3]);
          u[4 * b] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, lo2));
          u[4 * b + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, lo2));
          u[4 * b + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi, hi2));
          u[4 * b + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi, hi2));
        }
        float* d = dst + c0 * ldd + r0;
        for (int j = 0; j < 4; ++j) {
          const __m512 a01 = _mm512_shuffle_f32x4(u[j], u[4 + j], _MM_SHUFFLE(1, 0, 1, 0));
          const __m512 b01 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], _MM_SHUFFLE(1, 0, 1, 0));
          const __m512 a23 = _mm512_shuffle_f32x4(u[j], u[4 + j], _MM_SHUFFLE(3, 2, 3, 2));
          const __m512 b23 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], _MM_SHUFFLE(3, 2, 3, 2));
          __m512 out[4] = {_mm512_shuffle_f32x4(a01, b01, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(a01, b01, _MM_SHUFFLE(3, 1, 3, 1)),
                           _mm512_shuffle_f32x4(a23, b23, _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(a23, b23, _MM_SHUFFLE(3, 1, 3, 1))};
          for (int q = 0; q < 4; ++q) {
            const int64_t c = 4 * q + j;  // out[q]: column c of the tile
            if (add) out[q] = _mm512_add_ps(out[q], _mm512_set1_ps(add[c0 + c]));
            _mm512_storeu_ps(d + c * ldd, out[q]);
          }
        }
        continue;
      }
#endif
      const int64_t r1 = std::min(rows, r0 + T), c1 = std::min(cols, c0 + T);
      for (int64_t c = c0; c < c1; ++c) {
        const float a = add ? add[c] : 0.0f;
        for (int64_t r = r0; r < r1; ++r) dst[c * ldd + r] = add ? src[r * lds + c] + a : src[r * lds + c];
      }
    }
}

// One (image, output row) of im2col: its OW rows of cols, each written
// whole, in order (one sequential stream of stores; the k input rows of
// every channel that it reads, C·k·W floats, stay in L1 across the OW
// rows). Returns their Σ v² when Sq, taken from each row just written.
template <bool Sq>
double im2col_row(const ConvGeometry& g, const float* x, float* cols, int64_t t) {
  const int64_t K = g.cols(), kk = g.k;
  const int64_t img = t / g.oh, oy = t % g.oh;
  const float* image = x + img * g.c * g.h * g.w;
  double ss = 0;
  for (int64_t ox = 0; ox < g.ow; ++ox) {
    float* row = cols + (t * g.ow + ox) * K;
    const int64_t ix0 = ox * g.s - g.p;
    const bool inside = ix0 >= 0 && ix0 + kk <= g.w;
    for (int64_t c = 0; c < g.c; ++c) {
      const float* plane = image + c * g.h * g.w;
      for (int64_t ky = 0; ky < kk; ++ky) {
        float* o = row + (c * kk + ky) * kk;
        const int64_t iy = oy * g.s - g.p + ky;
        if (iy < 0 || iy >= g.h) {
          for (int64_t kx = 0; kx < kk; ++kx) o[kx] = 0.0f;
          continue;
        }
        const float* src = plane + iy * g.w + ix0;
        if (inside) {
          for (int64_t kx = 0; kx < kk; ++kx) o[kx] = src[kx];
        } else {
          for (int64_t kx = 0; kx < kk; ++kx) o[kx] = ix0 + kx >= 0 && ix0 + kx < g.w ? src[kx] : 0.0f;
        }
      }
    }
    if constexpr (Sq) {
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < K; ++j) s += static_cast<double>(row[j]) * row[j];
      ss += s;
    }
  }
  return ss;
}

#if defined(__AVX512F__)
// Column j of cols, as offsets into the image from its patch's corner
// (c·plane + ky·W + kx) and as (ky, kx), padded to a multiple of 16 (the
// padding lanes are never stored or added).
struct PatchTable {
  std::vector<int32_t> off, ky, kx;
  int64_t c = -1, h = -1, w = -1, k = -1, plane = -1;
  // plane_stride: floats from one channel's plane to the next (H·W in an image).
  void build(const ConvGeometry& g, int64_t plane_stride) {
    const int64_t K = g.cols(), padded = (K + 15) / 16 * 16;
    off.assign(static_cast<size_t>(padded), 0);
    ky.assign(static_cast<size_t>(padded), 0);
    kx.assign(static_cast<size_t>(padded), 0);
    for (int64_t j = 0; j < K; ++j) {
      const int64_t ch = j / (g.k * g.k), y = j / g.k % g.k, x = j % g.k;
      off[static_cast<size_t>(j)] = static_cast<int32_t>(ch * plane_stride + y * g.w + x);
      ky[static_cast<size_t>(j)] = static_cast<int32_t>(y);
      kx[static_cast<size_t>(j)] = static_cast<int32_t>(x);
    }
    c = g.c, h = g.h, w = g.w, k = g.k, plane = plane_stride;
  }
};

// This thread's table for g's shape, rebuilt (in place: no allocation once
// it has grown) when the shape changes.
const PatchTable& patch_table(const ConvGeometry& g, int64_t plane_stride) {
  thread_local PatchTable t;
  if (t.c != g.c || t.h != g.h || t.w != g.w || t.k != g.k || t.plane != plane_stride) t.build(g, plane_stride);
  return t;
}

// Whether an image's offsets (planes of `plane` floats) fit the gathers'
// 32-bit indices.
bool gathers(const ConvGeometry& g, int64_t plane) { return g.c * plane < (int64_t{1} << 31); }

// The lanes [j, j + 16) of a patch with corner (iy0, ix0): those before K
// (tail) and, of them, those inside the image.
struct PatchLanes {
  __m512i ylo, yhi, xlo, xhi, corner;
  bool inside;
  PatchLanes(const ConvGeometry& g, int64_t iy0, int64_t ix0)
      : ylo(_mm512_set1_epi32(static_cast<int32_t>(std::max<int64_t>(0, -iy0)))),
        yhi(_mm512_set1_epi32(static_cast<int32_t>(std::min<int64_t>(g.k, g.h - iy0)))),
        xlo(_mm512_set1_epi32(static_cast<int32_t>(std::max<int64_t>(0, -ix0)))),
        xhi(_mm512_set1_epi32(static_cast<int32_t>(std::min<int64_t>(g.k, g.w - ix0)))),
        corner(_mm512_set1_epi32(static_cast<int32_t>(iy0 * g.w + ix0))),
        inside(iy0 >= 0 && iy0 + g.k <= g.h && ix0 >= 0 && ix0 + g.k <= g.w) {}
  static __mmask16 tail(int64_t K, int64_t j) {
    return K - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (K - j)) - 1);
  }
  __mmask16 live(const PatchTable& tab, __mmask16 tail_mask, int64_t j) const {
    if (inside) return tail_mask;
    const __m512i y = _mm512_loadu_si512(tab.ky.data() + j), x = _mm512_loadu_si512(tab.kx.data() + j);
    return tail_mask & _mm512_cmpge_epi32_mask(y, ylo) & _mm512_cmplt_epi32_mask(y, yhi) &
           _mm512_cmpge_epi32_mask(x, xlo) & _mm512_cmplt_epi32_mask(x, xhi);
  }
  __m512i index(const PatchTable& tab, int64_t j) const {
    return _mm512_add_epi32(corner, _mm512_loadu_si512(tab.off.data() + j));
  }
};

// The same rows as im2col_row, each gathered 16 columns at a time from the
// image (the patch's k input rows of every channel are in L1 across the
// OW rows); a patch over the border gathers only its inside lanes (the
// others are zero). Σ v² in two 8-wide double accumulators, per task.
template <bool Sq>
double im2col_row_gather(const ConvGeometry& g, const float* x, float* cols, int64_t t, bool stream) {
  const PatchTable& tab = patch_table(g, g.h * g.w);
  const int64_t K = g.cols();
  const int64_t img = t / g.oh, oy = t % g.oh;
  const float* image = x + img * g.c * g.h * g.w;
  __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
  for (int64_t ox = 0; ox < g.ow; ++ox) {
    float* row = cols + (t * g.ow + ox) * K;
    const PatchLanes lanes(g, oy * g.s - g.p, ox * g.s - g.p);
    const bool aligned = stream && (reinterpret_cast<uintptr_t>(row) & 63) == 0;
    for (int64_t j = 0; j < K; j += 16) {
      const __mmask16 tail = PatchLanes::tail(K, j);
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), lanes.live(tab, tail, j), lanes.index(tab, j), image, 4);
      if (aligned && tail == 0xFFFF) _mm512_stream_ps(row + j, v);
      else _mm512_mask_storeu_ps(row + j, tail, v);
      if constexpr (Sq) {
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        s0 = _mm512_fmadd_pd(lo, lo, s0);
        s1 = _mm512_fmadd_pd(hi, hi, s1);
      }
    }
  }
  if constexpr (Sq) return _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
  return 0;
}
#endif

// Every (image, output row) task, in the fixed ranges of sum_in_pieces:
// Σ v² the same for any number of threads.
// A result larger than the caches (kStreamBytes) is written with
// non-temporal stores where its rows are aligned for them: its reader (the
// row mixing, in the secret order of its groups; or the keys) comes back
// to it a row at a time, long after, so a plain store's read of each line
// first is wasted.
template <bool Sq>
double im2col_pass(const ConvGeometry& g, const float* x, float* cols) {
#if defined(__AVX512F__)
  const bool gather = gathers(g, g.h * g.w);
  const bool stream = g.n * g.positions() * g.cols() * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
#endif
  return sum_in_pieces(g.n * g.oh, [&](int64_t lo, int64_t hi) {
    double s = 0;
    for (int64_t t = lo; t < hi; ++t) {
#if defined(__AVX512F__)
      if (gather) {
        s += im2col_row_gather<Sq>(g, x, cols, t, stream);
        continue;
      }
#endif
      s += im2col_row<Sq>(g, x, cols, t);
    }
    stream_fence();
    return s;
  });
}
}  // namespace

// cols[(img·OH·OW + oy·OW + ox), (c·k + ky)·k + kx] = x[img, c, oy·s−p+ky, ox·s−p+kx]
// (zero outside). One (image, output row) per task.
void im2col(const ConvGeometry& g, const float* x, float* cols) {
  im2col_pass<false>(g, x, cols);
}

double im2col_sumsq(const ConvGeometry& g, const float* x, float* cols) {
  return im2col_pass<true>(g, x, cols);
}

Col2imImage::Col2imImage(const ConvGeometry& g, const int32_t* order) : g_(g) {
  thread_local std::vector<float> buf;  // grows once per thread
  const auto need = static_cast<size_t>(g.c * g.h * g.w);
  if (buf.size() < need) buf.resize(need);
  acc_ = buf.data();
  std::fill(acc_, acc_ + need, 0.0f);
  // Where tap t's channel c is in a row: column c·k² + t, or where the
  // order puts it.
  thread_local std::vector<int32_t> at;
  const int64_t taps = g.k * g.k;
  at.resize(static_cast<size_t>(taps * g.c));
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t c = 0; c < g.c; ++c) {
      const int64_t j = c * taps + t;
      at[static_cast<size_t>(t * g.c + c)] = static_cast<int32_t>(order ? order[j] : j);
    }
  at_ = at.data();
  contiguous_ = taps == 1 && !order;
}

// The sums are kept channels last (pixel (iy, ix) at (iy·W + ix)·C), so a
// tap of the patch adds to C consecutive floats: the row's values for that
// tap (every k²-th entry, or where the order puts them) gathered from the
// row, which is in cache, and added with plain vector loads and stores. Each element gets the row's
// value once, and rows come in the caller's order, so every sum is taken
// in the same order as in the channels-first form.
void Col2imImage::add(const float* row, int64_t oy, int64_t ox) {
  const ConvGeometry& g = g_;
  const int64_t C = g.c, kk = g.k;
  for (int64_t ky = 0; ky < kk; ++ky) {
    const int64_t iy = oy * g.s - g.p + ky;
    if (iy < 0 || iy >= g.h) continue;
    for (int64_t kx = 0; kx < kk; ++kx) {
      const int64_t ix = ox * g.s - g.p + kx;
      if (ix < 0 || ix >= g.w) continue;
      float* d = acc_ + (iy * g.w + ix) * C;
      int64_t c = 0;
      if (contiguous_) {  // a 1 × 1 kernel's row is the channels in order
#if defined(__AVX512F__)
        for (; c + 16 <= C; c += 16) _mm512_storeu_ps(d + c, _mm512_add_ps(_mm512_loadu_ps(d + c), _mm512_loadu_ps(row + c)));
#endif
        for (; c < C; ++c) d[c] += row[c];
        continue;
      }
      const int32_t* at = at_ + (ky * kk + kx) * C;  // channel c at row[at[c]]
#if defined(__AVX512F__)
      for (; c + 16 <= C; c += 16)
        _mm512_storeu_ps(d + c, _mm512_add_ps(_mm512_loadu_ps(d + c),
                                              _mm512_i32gather_ps(_mm512_loadu_si512(at + c), row, 4)));
#endif
      for (; c < C; ++c) d[c] += row[at[c]];
    }
  }
}

// The sums (H·W × C) transposed into the image (C × H·W); the buffer
// starts over.
void Col2imImage::write(float* dx_image) {
  const int64_t hw = g_.h * g_.w, C = g_.c;
  transpose(acc_, hw, C, C, dx_image, hw, nullptr);
  std::fill(acc_, acc_ + hw * C, 0.0f);
}

// The adjoint of im2col: dx[img, c, iy, ix] = Σ dcols[...]. One image per
// task, so no two threads write the same element, and the rows are read in
// order (one sequential stream), so the sum order is fixed: by output row,
// then position.
void col2im(const ConvGeometry& g, const float* dcols, float* dx) { col2im(g, dcols, dx, nullptr); }

void col2im(const ConvGeometry& g, const float* dcols, float* dx, const int32_t* order) {
  const int64_t K = g.cols(), P = g.positions();
  parallel_for(g.n, [&](int64_t b, int64_t e) {
    Col2imImage acc(g, order);
    for (int64_t img = b; img < e; ++img) {
      for (int64_t q = 0; q < P; ++q) {
        const float* row = dcols + (img * P + q) * K;
        // Gathers do not wake the hardware's prefetcher: the row after
        // next is asked for meanwhile, a cache line per 16 floats (1.8×
        // BM_Col2im/0's rate on the 2-core AMD EPYC VM).
        if (img * P + q + 2 < g.n * P)
          for (int64_t j = 0; j < K; j += 16) __builtin_prefetch(row + 2 * K + j);
        acc.add(row, q / g.ow, q % g.ow);
      }
      acc.write(dx + img * g.c * g.h * g.w);
    }
  });
}

// out[img, o, p] = rows[img·P + p, o] + bias[o]   (rows: (N·P)×O)
void rows_to_nchw(const float* rows, const float* bias, int64_t n, int64_t P, int64_t O,
                  float* out) {
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t img = b; img < e; ++img) transpose(rows + img * P * O, P, O, O, out + img * O * P, P, bias);
  });
}

// rows[img·P + p, o] = dy[img, o, p]
void nchw_to_rows(const float* dy, int64_t n, int64_t P, int64_t O, float* rows) {
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t img = b; img < e; ++img) transpose(dy + img * O * P, O, P, P, rows + img * P * O, O, nullptr);
  });
}

namespace {
float* grow(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

std::atomic<ConvKernels> g_default_kernels{ConvKernels::kBest};
}  // namespace

const char* conv_kernels_flag(ConvKernels k) {
  switch (k) {
    case ConvKernels::kBest: return "winograd";
    case ConvKernels::kDirect: return "direct";
    case ConvKernels::kIm2col: break;
  }
  return "im2col";
}

ConvKernels parse_conv_kernels(const std::string& s) {
  if (s == "winograd") return ConvKernels::kBest;
  if (s == "direct") return ConvKernels::kDirect;
  throw Error("unknown convolution kernels '" + s + "'; choose winograd or direct");
}

void set_default_conv_kernels(ConvKernels k) { g_default_kernels.store(k); }
ConvKernels default_conv_kernels() { return g_default_kernels.load(); }

#if !TEMPO_DNNL
struct ConvWorkspace::Dnnl {};
ConvWorkspace::ConvWorkspace(ConvKernels) {}
ConvWorkspace::~ConvWorkspace() = default;
std::string conv_kernels_name() { return "im2col+sgemm"; }
#endif

std::string ConvWorkspace::kernel(const ConvGeometry& g) {
#if TEMPO_DNNL
  if (dnnl_) return dnnl_conv_kernel(*dnnl_, g);
#else
  (void)g;
#endif
  return "im2col+sgemm";
}

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
