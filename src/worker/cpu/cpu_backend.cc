// CPU compute backend: OpenBLAS sgemm on ciphertext.
#include "common/blas.h"
#include "worker/worker_service.h"

namespace tempo {

namespace {

class CpuBackend final : public ComputeBackend {
 public:
  std::string name() const override { return "cpu"; }
  Matrix product(ProductOp op, const Matrix& x, const Matrix& y) override {
    int64_t r, c;
    WorkerService::result_shape(op, x, y, r, c);
    Matrix z(r, c);
    switch (op) {
      case ProductOp::kNT:
        sgemm(false, true, r, c, x.cols(), 1.0f, x.data(), x.cols(), y.data(), y.cols(), 0.0f, z.data(), c);
        break;
      case ProductOp::kNN:
        sgemm(false, false, r, c, x.cols(), 1.0f, x.data(), x.cols(), y.data(), y.cols(), 0.0f, z.data(), c);
        break;
      case ProductOp::kTN:
        sgemm(true, false, r, c, x.rows(), 1.0f, x.data(), x.cols(), y.data(), y.cols(), 0.0f, z.data(), c);
        break;
    }
    return z;
  }
};

}  // namespace

std::unique_ptr<ComputeBackend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace tempo
