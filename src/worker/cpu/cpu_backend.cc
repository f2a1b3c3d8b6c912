// CPU compute backend: OpenBLAS sgemm on ciphertext.
#include <mutex>
#include <vector>

#include "common/blas.h"
#include "common/conv.h"
#include "common/parallel.h"
#include "worker/worker_service.h"

namespace tempo {

namespace {

class CpuBackend final : public ComputeBackend {
 public:
  std::string name() const override { return "cpu"; }
  bool on_host_cores() const override { return true; }
  Matrix product(ProductOp op, const Matrix& x, const Matrix& y, int64_t groups) override {
    int64_t r, c;
    WorkerService::result_shape(op, x, y, groups, r, c);
    Matrix z(r, c);
    // Block g: rows [g·xb, (g+1)·xb) of x, likewise of y and z.
    const int64_t xb = x.rows() / groups, yb = y.rows() / groups, zb = r / groups;
    auto block = [&](int64_t g) {
      const float* xg = x.data() + g * xb * x.cols();
      const float* yg = y.data() + g * yb * y.cols();
      float* zg = z.data() + g * zb * c;
      switch (op) {
        case ProductOp::kNT: sgemm(false, true, zb, c, x.cols(), 1.0f, xg, x.cols(), yg, y.cols(), 0.0f, zg, c); break;
        case ProductOp::kNN: sgemm(false, false, zb, c, x.cols(), 1.0f, xg, x.cols(), yg, y.cols(), 0.0f, zg, c); break;
        case ProductOp::kTN: sgemm(true, false, zb, c, xb, 1.0f, xg, x.cols(), yg, y.cols(), 0.0f, zg, c); break;
      }
    };
    if (groups == 1) block(0);  // OpenBLAS's own threads
    else parallel_for(groups, [&](int64_t b, int64_t e) { for (int64_t g = b; g < e; ++g) block(g); });
    return z;
  }

  Matrix conv(ConvOp op, const Matrix& a, const Matrix& b, const ConvGeometry& g) override {
    std::lock_guard<std::mutex> lock(mu_);  // one workspace
    switch (op) {
      case ConvOp::kForward: {
        Matrix y(g.n, g.o * g.oh * g.ow);
        conv2d_forward(g, a.data(), b.data(), y.data(), ws_);
        return y;
      }
      case ConvOp::kBackwardInput: {
        Matrix dx(g.n, g.c * g.h * g.w);
        conv2d_backward_input(g, a.data(), b.data(), dx.data(), ws_);
        return dx;
      }
      case ConvOp::kBackwardWeight:
      default: {
        Matrix dw(g.o, g.c * g.k * g.k);
        conv2d_backward_weight(g, a.data(), b.data(), dw.data(), ws_);
        return dw;
      }
    }
  }

 private:
  std::mutex mu_;
  // Direct kernels: the master checks these results against a bound made
  // for a direct product's round-off (Winograd's is a few times larger).
  ConvWorkspace ws_{ConvKernels::kDirect};
};

}  // namespace

std::unique_ptr<ComputeBackend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace tempo
