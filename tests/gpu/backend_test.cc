// Worker tests against a compute backend other than the CPU reference: the
// CUDA backend on a machine with a GPU (scripts/gpu-check.sh runs them), or
// any backend named by TEMPO_TEST_BACKEND (cpu stands in, to test the tests
// and the scripts on machines without a GPU). Not part of CTest: CI has no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <random>

#include "eval/subprocess.h"
#include "trusted/model.h"
#include "trusted/trainer.h"
#include "worker/backends.h"
#include "worker/cuda/cuda_backend.h"
#include "../test_util.h"

namespace tempo {
namespace {

std::string backend_name() {
  const char* b = std::getenv("TEMPO_TEST_BACKEND");
  return b && *b ? b : "cuda";
}

Matrix random_matrix(int64_t r, int64_t c, std::mt19937& rng) {
  Matrix m(r, c);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = u(rng);
  return m;
}

// max |a − b| / max |b|
double rel_diff(const Matrix& a, const Matrix& b) {
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_EQ(a.cols(), b.cols());
  double mx = 1e-30, err = 0;
  for (int64_t i = 0; i < b.size(); ++i) {
    mx = std::max(mx, std::fabs(double(b.data()[i])));
    err = std::max(err, std::fabs(double(a.data()[i]) - b.data()[i]));
  }
  return err / mx;
}

TEST(Backend, ProductsMatchTheCpuBackend) {
  auto cpu = make_cpu_backend();
  auto dev = make_backend(backend_name());
  std::printf("backend under test: %s (%s)\n", dev->name().c_str(),
              backend_name() == "cuda" ? cuda_device_info().c_str() : "cpu");
  std::mt19937 rng(1);
  const int64_t shapes[][3] = {{1, 1, 1}, {37, 129, 65}, {513, 300, 257}, {2000, 3, 1000}, {64, 3136, 128}};
  for (const auto& s : shapes) {
    const int64_t m = s[0], k = s[1], n = s[2];
    Matrix a = random_matrix(m, k, rng), bt = random_matrix(n, k, rng), b = random_matrix(k, n, rng);
    Matrix at = random_matrix(k, m, rng);
    const double nt = rel_diff(dev->product(ProductOp::kNT, a, bt), cpu->product(ProductOp::kNT, a, bt));
    const double nn = rel_diff(dev->product(ProductOp::kNN, a, b), cpu->product(ProductOp::kNN, a, b));
    const double tn = rel_diff(dev->product(ProductOp::kTN, at, b), cpu->product(ProductOp::kTN, at, b));
    std::printf("%5lld x %5lld x %5lld: NT %.2e  NN %.2e  TN %.2e\n", (long long)m, (long long)k, (long long)n, nt,
                nn, tn);
    EXPECT_LT(nt, 1e-5);
    EXPECT_LT(nn, 1e-5);
    EXPECT_LT(tn, 1e-5);
  }
  // Batched products (attention's blocks): 6 blocks of 50×64 by 64×50, stacked along the rows.
  const int64_t g = 6, t = 50, e = 64;
  Matrix q = random_matrix(g * t, e, rng), kk = random_matrix(g * t, e, rng), v = random_matrix(g * t, e, rng);
  Matrix p = random_matrix(g * t, t, rng);
  const double bnt = rel_diff(dev->product(ProductOp::kNT, q, kk, g), cpu->product(ProductOp::kNT, q, kk, g));
  const double bnn = rel_diff(dev->product(ProductOp::kNN, p, v, g), cpu->product(ProductOp::kNN, p, v, g));
  const double btn = rel_diff(dev->product(ProductOp::kTN, p, q, g), cpu->product(ProductOp::kTN, p, q, g));
  std::printf("batched %lld × %lldx%lld: NT %.2e  NN %.2e  TN %.2e\n", (long long)g, (long long)t, (long long)e, bnt,
              bnn, btn);
  EXPECT_LT(bnt, 1e-5);
  EXPECT_LT(bnn, 1e-5);
  EXPECT_LT(btn, 1e-5);
}

TEST(Backend, StoredOperandsAcrossStepsGiveTheSameBits) {
  // Through the service: operands mirrored on the device as they are stored,
  // released, and the buffers reused over several steps.
  WorkerService svc(make_backend(backend_name()), size_t{1} << 30);
  std::mt19937 rng(2);
  std::shared_ptr<const Matrix> a = std::make_shared<Matrix>(random_matrix(300, 200, rng));
  std::shared_ptr<const Matrix> w = std::make_shared<Matrix>(random_matrix(100, 200, rng));
  Matrix first;
  for (int step = 0; step < 4; ++step) {
    svc.put(1, a);
    svc.put(2, w);
    Matrix z = svc.product(ProductOp::kNT, 1, 2);
    if (step == 0) first = std::move(z);
    else EXPECT_EQ(0, std::memcmp(z.data(), first.data(), sizeof(float) * size_t(z.size()))) << "step " << step;
    svc.release(2);
    EXPECT_THROW(svc.product(ProductOp::kNT, 1, 2), WorkerError);
    svc.end_step();
    EXPECT_EQ(svc.bytes_held(), 0u);
  }
  EXPECT_LT(rel_diff(first, make_cpu_backend()->product(ProductOp::kNT, *a, *w)), 1e-5);
}

TEST(Backend, ConvolutionsMatchTheCpuBackend) {
  auto cpu = make_cpu_backend();
  auto dev = make_backend(backend_name());
  std::mt19937 rng(3);
  struct G { int64_t n, c, h, w, o, k, s, p; };
  const G gs[] = {{2, 3, 7, 5, 4, 3, 1, 1}, {5, 16, 14, 14, 32, 3, 2, 1}, {3, 8, 9, 9, 6, 1, 1, 0},
                  {4, 6, 11, 8, 5, 5, 2, 2}, {64, 32, 14, 14, 64, 3, 1, 1}};
  for (const auto& q : gs) {
    const ConvGeometry g = ConvGeometry::make(q.n, q.c, q.h, q.w, q.o, q.k, q.s, q.p);
    const int64_t chw = g.c * g.h * g.w, ckk = g.c * g.k * g.k, op = g.o * g.oh * g.ow;
    Matrix x = random_matrix(g.n, chw, rng), w = random_matrix(g.o, ckk, rng), dy = random_matrix(g.n, op, rng);
    const double f = rel_diff(dev->conv(ConvOp::kForward, x, w, g), cpu->conv(ConvOp::kForward, x, w, g));
    const double bi =
        rel_diff(dev->conv(ConvOp::kBackwardInput, dy, w, g), cpu->conv(ConvOp::kBackwardInput, dy, w, g));
    const double bw =
        rel_diff(dev->conv(ConvOp::kBackwardWeight, x, dy, g), cpu->conv(ConvOp::kBackwardWeight, x, dy, g));
    std::printf("conv n%lld c%lld %lldx%lld o%lld k%lld s%lld p%lld: fwd %.2e  dx %.2e  dw %.2e\n", (long long)g.n,
                (long long)g.c, (long long)g.h, (long long)g.w, (long long)g.o, (long long)g.k, (long long)g.s,
                (long long)g.p, f, bi, bw);
    EXPECT_LT(f, 1e-5);
    EXPECT_LT(bi, 1e-5);
    EXPECT_LT(bw, 1e-5);
  }
}

// TF32 when asked stays within its precision (that FP32 is the default is
// what the 1e-5 bounds of the other tests check).
TEST(Backend, Tf32WhenAskedStaysClose) {
  auto cpu = make_cpu_backend();
  auto tf32 = make_backend(backend_name(), true);
  std::mt19937 rng(4);
  Matrix a = random_matrix(256, 1024, rng), b = random_matrix(256, 1024, rng);
  const double err = rel_diff(tf32->product(ProductOp::kNT, a, b), cpu->product(ProductOp::kNT, a, b));
  std::printf("tf32 requested: %.2e relative to fp32 on the CPU\n", err);
  EXPECT_LT(err, 1e-2);
}

TrainConfig run_config(const testutil::TempDir& d, const std::string& save, const std::string& conv_mode) {
  TrainConfig c = testutil::small_cnn_run(save, d / "init.safetensors", 20);
  c.mode = "tempo";
  c.conv_mode = conv_mode;
  c.channel_from = 1;
  c.insecure_key_seed = 5;
  return c;
}

TEST(Backend, TrainingThroughItMatchesTheCpuWorker) {
  testutil::TempDir d("gpu_train");
  for (const std::string mode : {"im2col", "channel"}) {
    TrainConfig ref = run_config(d, d / ("cpu_" + mode + ".safetensors"), mode);
    train(ref);
    TrainConfig c = run_config(d, d / ("dev_" + mode + ".safetensors"), mode);
    c.remote.local_backend = backend_name();
    train(c);
    const double err = testutil::max_rel_error(c.save, ref.save);
    std::printf("%s mode, 20 steps through a %s worker: %.3g·max|w| from the cpu worker\n", mode.c_str(),
                backend_name().c_str(), err);
    EXPECT_LT(err, 1e-3);
  }
}

TEST(Backend, WorkerProcessServesTraining) {
  testutil::TempDir d("gpu_worker");
  const char* bin = std::getenv("TEMPO_BINARY_PATH");
  WorkerProcess w(bin && *bin ? bin : TEMPO_BINARY, d.path(), "w", {"--backend", backend_name()});
  EXPECT_NE(w.log().find("listening"), std::string::npos) << w.log();
  TrainConfig c = run_config(d, d / "remote.safetensors", "im2col");
  c.workers = w.address();
  const TrainResult r = train(c);
  EXPECT_EQ(r.steps, 20);
  EXPECT_TRUE(w.alive());
}

}  // namespace
}  // namespace tempo
