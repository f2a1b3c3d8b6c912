// In-process workers: where their products run (src/worker/local_worker.h).
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "trusted/obfuscation/keys.h"
#include "trusted/obfuscation/obfuscator.h"
#include "worker/local_worker.h"

namespace tempo {
namespace {

// A backend that only notes the thread each product ran on.
class WhereBackend final : public ComputeBackend {
 public:
  WhereBackend(std::string name, std::thread::id* where) : name_(std::move(name)), where_(where) {}
  std::string name() const override { return name_; }
  bool on_host_cores() const override { return name_ == "cpu"; }
  Matrix product(ProductOp, const Matrix& x, const Matrix& y, int64_t) override {
    *where_ = std::this_thread::get_id();
    return Matrix(x.rows(), y.rows());
  }
  Matrix conv(ConvOp, const Matrix&, const Matrix&, const ConvGeometry&) override {
    throw std::logic_error("no convolutions here");
  }

 private:
  std::string name_;
  std::thread::id* where_;
};

// A CPU worker's product runs when it is awaited, on the awaiting thread
// (the master's, with its OpenMP pool); a device worker's on the worker's
// own thread, so that the master works meanwhile.
TEST(LocalWorker, CpuProductsRunOnTheAwaitingThreadDeviceOnesOnTheWorkers) {
  auto obf = Obfuscator::insecure_identity(secret_from_seed(3));
  const int64_t m = 4, k = 3, n = 2;
  const std::vector<float> x(m * k, 1.0f), y(n * k, 2.0f);
  const Triple t = obf->draw_triple(m, k, n);
  for (const char* name : {"cpu", "cuda"}) {
    SCOPED_TRACE(name);
    std::thread::id where;
    LocalWorker w("local:0", std::make_unique<WhereBackend>(name, &where));
    w.put(1, obf->encrypt_x(t, x.data(), m, k));
    w.put(2, obf->encrypt_yt(t, y.data(), n, k));
    std::future<Matrix> f = w.product(ProductOp::kNT, 1, 2, 1);
    const bool cpu = std::string(name) == "cpu";
    if (cpu) {
      EXPECT_EQ(where, std::thread::id()) << "ran before it was awaited";
    }
    const Matrix z = f.get();
    EXPECT_EQ(z.rows(), m);
    EXPECT_EQ(z.cols(), n);
    if (cpu) {
      EXPECT_EQ(where, std::this_thread::get_id());
    } else {
      EXPECT_NE(where, std::this_thread::get_id());
    }
    EXPECT_NE(where, std::thread::id());
  }
}

}  // namespace
}  // namespace tempo
