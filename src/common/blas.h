// Row-major single-precision GEMM (OpenBLAS), shared by the trusted side and
// the CPU worker backend: C = alpha·op(A)·op(B) + beta·C.
#pragma once

#include <cstdint>

namespace tempo {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha,
           const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
           int64_t ldc);

}  // namespace tempo
