// Helpers shared by the test files: the PyTorch reference directory and a
// temporary directory removed at the end of a test.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "common/error.h"
#include "trusted/rng.h"
#include "trusted/io/safetensors.h"
#include "trusted/model.h"
#include "trusted/trainer.h"

namespace tempo::testutil {

// n standard normal floats from a seeded generator.
inline std::vector<float> normal_vec(int64_t n, uint64_t seed) {
  Rng r(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(r.normal());
  return v;
}

// Where tests/ref/make_references.py wrote the references (set by CTest).
inline std::string ref_dir() {
  const char* d = std::getenv("TEMPO_REF_DIR");
  return d ? d : "";
}

class TempDir {
 public:
  explicit TempDir(const std::string& tag = "tempo") {
    std::string t = testing::TempDir() + tag + "_XXXXXX";
    if (!mkdtemp(t.data())) throw Error("mkdtemp failed");
    path_ = t;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& n) const { return path_ + "/" + n; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A short `cnn` run on synthetic data (seed 3, batch 32, 2 threads) from a
// fixed initialisation, written to `init` on first use, every product but
// the first and last offloaded.
inline TrainConfig small_cnn_run(const std::string& save, const std::string& init, int64_t steps) {
  TrainConfig c;
  c.model = "cnn";
  c.data = "synthetic:640";
  c.batch_size = 32;
  c.steps = steps;
  c.epochs = 1;
  c.threads = 2;
  c.seed = 3;
  c.progress = false;
  c.save = save;
  c.init = init;
  // cnn's convolutions are narrower than the default keeps in the master;
  // these runs are about offloaded products: every one is offloaded.
  c.local_below = 0;
  if (!std::filesystem::exists(init)) build_model("cnn", 3)->save(init);
  return c;
}

// Largest per-tensor error of a's F32 tensors relative to max|w| of b's.
inline double max_rel_error(const std::string& a, const std::string& b) {
  TensorMap x = read_safetensors(a), y = read_safetensors(b);
  double worst = 0;
  for (auto& [name, t] : y) {
    if (t.dtype != DType::F32) continue;
    const auto& u = x.at(name).f32;
    double mx = 1e-12, err = 0;
    for (size_t i = 0; i < t.f32.size(); ++i) {
      mx = std::max(mx, std::fabs(double(t.f32[i])));
      err = std::max(err, std::fabs(double(t.f32[i]) - u[i]));
    }
    worst = std::max(worst, err / mx);
  }
  return worst;
}

}  // namespace tempo::testutil

// A missing reference is a failure, never a skip: the references come from
// the make_references fixture that CTest runs first.
#define REF_FILE_OR_FAIL(var, name)                                                                     \
  const std::string var = ::tempo::testutil::ref_dir() + "/" + (name);                                  \
  if (::tempo::testutil::ref_dir().empty() || !std::filesystem::exists(var))                            \
    GTEST_FAIL() << "no reference " << (name) << ": run through ctest (fixture make_references), or set " \
                                                 "TEMPO_REF_DIR";
