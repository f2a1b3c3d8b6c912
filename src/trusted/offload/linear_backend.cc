#include "trusted/offload/linear_backend.h"

#include "common/blas.h"
#include "common/parallel.h"

namespace tempo {

void TeeOnlyBackend::forward(const Product& p, float* c) {
  sgemm(false, true, p.m, p.n, p.k, 1.0f, p.a, p.k, p.w, p.k, 0.0f, c, p.n);
}

void TeeOnlyBackend::backward_input(const Product& p, const float* dc, float* da) {
  sgemm(false, false, p.m, p.k, p.n, 1.0f, dc, p.n, p.w, p.k, 0.0f, da, p.k);
}

void TeeOnlyBackend::backward_weight(const Product& p, const float* dc, float* dw) {
  sgemm(true, false, p.n, p.k, p.m, 1.0f, dc, p.n, p.a, p.k, 0.0f, dw, p.k);
}

void LinearBackend::backward_input_col2im(const Product& p, const float* dc, const ConvGeometry& g, float* dx) {
  if (dcols_scratch_.size() < static_cast<size_t>(p.m * p.k)) dcols_scratch_.resize(static_cast<size_t>(p.m * p.k));
  backward_input(p, dc, dcols_scratch_.data());
  col2im(g, dcols_scratch_.data(), dx);
}

void LinearBackend::backward(const Product& p, const float* dc, float* dw, float* da, const ConvGeometry* g,
                             float* dx) {
  backward_weight(p, dc, dw);
  if (g) backward_input_col2im(p, dc, *g, dx);
  else if (da) backward_input(p, dc, da);
}

void LinearBackend::conv_forward(const ConvProduct& p, float* y) {
  conv2d_forward(p.g, p.x, p.w, y, conv_ws_);
}

void LinearBackend::conv_backward_input(const ConvProduct& p, const float* dy, float* dx) {
  conv2d_backward_input(p.g, dy, p.w, dx, conv_ws_);
}

void LinearBackend::conv_backward_weight(const ConvProduct& p, const float* dy, float* dw) {
  conv2d_backward_weight(p.g, p.x, dy, dw, conv_ws_);
}

void LinearBackend::conv_backward(const ConvProduct& p, const float* dy, float* dw, float* dx) {
  conv_backward_weight(p, dy, dw);
  if (dx) conv_backward_input(p, dy, dx);
}

void batched_here(BatchedKind kind, const BatchedProduct& p, const float* dc, float* out) {
  const int64_t m = p.m, k = p.k, n = p.n;
  parallel_for(p.groups, [&](int64_t b, int64_t e) {
    for (int64_t g = b; g < e; ++g) {
      const float* a = p.a + g * m * k;
      const float* w = p.w + g * n * k;
      switch (kind) {
        case BatchedKind::kForward: sgemm(false, true, m, n, k, 1.0f, a, k, w, k, 0.0f, out + g * m * n, n); break;
        case BatchedKind::kInput:
          sgemm(false, false, m, k, n, 1.0f, dc + g * m * n, n, w, k, 0.0f, out + g * m * k, k);
          break;
        case BatchedKind::kWeight:
          sgemm(true, false, n, k, m, 1.0f, dc + g * m * n, n, a, k, 0.0f, out + g * n * k, k);
          break;
      }
    }
  });
}

void LinearBackend::batched_forward(const BatchedProduct& p, float* c) {
  batched_here(BatchedKind::kForward, p, nullptr, c);
}

void LinearBackend::batched_backward(const BatchedProduct& p, const float* dc, float* dw, float* da) {
  batched_here(BatchedKind::kWeight, p, dc, dw);
  if (da) batched_here(BatchedKind::kInput, p, dc, da);
}

void TeeOnlyBackend::conv_backward(const ConvProduct& p, const float* dy, float* dw, float* dx) {
  conv2d_backward(p.g, p.x, dy, p.w, dw, dx, conv_ws_);
}

}  // namespace tempo
