#include "trusted/linear_backend.h"

#include <cblas.h>

namespace tempo {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(m),
              static_cast<blasint>(n), static_cast<blasint>(k), alpha, a,
              static_cast<blasint>(lda), b, static_cast<blasint>(ldb), beta, c,
              static_cast<blasint>(ldc));
}

void TeeOnlyBackend::forward(const Product& p, float* c) {
  sgemm(false, true, p.m, p.n, p.k, 1.0f, p.a, p.k, p.w, p.k, 0.0f, c, p.n);
}

void TeeOnlyBackend::backward_input(const Product& p, const float* dc, float* da) {
  sgemm(false, false, p.m, p.k, p.n, 1.0f, dc, p.n, p.w, p.k, 0.0f, da, p.k);
}

void TeeOnlyBackend::backward_weight(const Product& p, const float* dc, float* dw) {
  sgemm(true, false, p.n, p.k, p.m, 1.0f, dc, p.n, p.a, p.k, 0.0f, dw, p.k);
}

}  // namespace tempo
