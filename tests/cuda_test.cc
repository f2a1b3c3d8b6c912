// The CUDA backend as this machine can test it: it is built when the toolkit
// is present, and without a usable GPU every way in (`tempo worker --backend
// cuda`, `--local-backend cuda`) fails at once with one clear message. With
// a GPU the backend must instead compute correctly. (The full GPU tests are
// tests/gpu/, run by scripts/gpu-check.sh.)
#include <gtest/gtest.h>

#include <random>

#include "process_util.h"
#include "test_util.h"
#include "worker/backends.h"
#include "worker/cuda/cuda_backend.h"

namespace tempo {
namespace {

// Without a GPU: the library call, `tempo worker --backend cuda` and
// `tempo train --local-backend cuda` each fail with one clear message.
void expect_clean_failures(const std::string& msg) {
  std::printf("no CUDA backend here: %s\n", msg.c_str());
  EXPECT_TRUE(msg.find(cuda_built() ? "no CUDA GPU" : "no CUDA backend") != std::string::npos) << msg;
  EXPECT_NE(msg.find("--backend cpu"), std::string::npos) << msg;
  testutil::TempDir d("cuda_cli");
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{TEMPO_BINARY, "worker", "--backend", "cuda", "--listen", "127.0.0.1:0"},
        std::vector<std::string>{TEMPO_BINARY, "train", "--local-backend", "cuda", "--steps", "1", "--data",
                                 "synthetic:64"}}) {
    const std::string log = d / "out.log";
    std::remove(log.c_str());
    const int rc = wait_exit(spawn(args, log), 60);
    const std::string out = read_text(log);
    EXPECT_EQ(rc, 1) << out;
    // One line, the library's own reason after the CLI's prefix, in builds
    // with and without the toolkit alike.
    EXPECT_NE(out.find("tempo: error: " + msg), std::string::npos) << out;
    EXPECT_EQ(out.find("internal error"), std::string::npos) << out;
  }
}

TEST(CudaBackend, ComputesOrFailsCleanly) {
  std::unique_ptr<ComputeBackend> b;
  try {
    b = make_cuda_backend();
  } catch (const WorkerError& e) {
    expect_clean_failures(e.what());
    return;
  }
  // A GPU is present: a product must match the CPU backend.
  std::mt19937 rng(1);
  Matrix x(33, 17), y(9, 17);
  for (Matrix* m : {&x, &y})
    for (int64_t i = 0; i < m->size(); ++i) m->data()[i] = static_cast<float>(rng() % 200) / 100.0f - 1.0f;
  Matrix z = b->product(ProductOp::kNT, x, y), ref = make_cpu_backend()->product(ProductOp::kNT, x, y);
  for (int64_t i = 0; i < z.size(); ++i) EXPECT_NEAR(z.data()[i], ref.data()[i], 1e-4);
}

}  // namespace
}  // namespace tempo
