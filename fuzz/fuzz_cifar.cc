// Fuzzes parse_cifar, then runs the parsed records through an augmenting,
// normalising BatchLoader.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/error.h"
#include "trusted/data/dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<float> x;
  std::vector<int64_t> y;
  try {
    tempo::parse_cifar(data, size, "fuzz.bin", x, y);
  } catch (const tempo::Error&) {
    if (!x.empty() || !y.empty()) std::abort();  // failed parses append nothing
    return 0;
  }
  if (y.empty() || x.size() != y.size() * 3072) std::abort();
  for (int64_t l : y)
    if (l < 0 || l >= 10) std::abort();
  for (float v : x)
    if (!(v >= 0.0f && v <= 1.0f)) std::abort();

  tempo::Dataset d;
  d.sample_shape = {3, 32, 32};
  const int64_t n = static_cast<int64_t>(y.size());
  d.train_x.resize({n, 3, 32, 32});
  std::memcpy(d.train_x.data(), x.data(), x.size() * sizeof(float));
  d.train_y = y;
  d.cifar_augment = true;
  d.norm_mean = {0.4914f, 0.4822f, 0.4465f};
  d.norm_std = {0.2470f, 0.2435f, 0.2616f};
  const int64_t batch = 1 + data[size - 1] % 4;
  tempo::BatchLoader loader(d, true, batch, true, data[0]);
  tempo::Tensor bx;
  std::vector<int64_t> by;
  int64_t seen = 0;
  while (loader.next(bx, by)) {
    if (bx.dim(0) != static_cast<int64_t>(by.size()) || bx.dim(0) > batch) std::abort();
    for (int64_t i = 0; i < bx.numel(); ++i)
      if (!std::isfinite(bx[i]) || std::fabs(bx[i]) > 5.0f) std::abort();
    seen += bx.dim(0);
  }
  if (seen != n || loader.num_batches() != (n + batch - 1) / batch) std::abort();
  return 0;
}
