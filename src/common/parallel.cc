#include "common/parallel.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include "common/copy.h"

namespace tempo {

namespace {
int g_threads = 0;
}

int hardware_threads() {
  unsigned h = std::thread::hardware_concurrency();
  return h ? static_cast<int>(h) : 1;
}

void set_num_threads(int n) {
  if (n <= 0) n = hardware_threads();
  g_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return g_threads > 0 ? g_threads : hardware_threads(); }

void parallel_copy(void* dst, const void* src, size_t bytes) {
  constexpr size_t kPiece = size_t{256} << 10;
  const auto pieces = static_cast<int64_t>((bytes + kPiece - 1) / kPiece);
  auto* d = static_cast<char*>(dst);
  const auto* s = static_cast<const char*>(src);
  parallel_for(pieces, [&](int64_t lo, int64_t hi) {
    const size_t b = static_cast<size_t>(lo) * kPiece, e = std::min(bytes, static_cast<size_t>(hi) * kPiece);
    std::memcpy(d + b, s + b, e - b);
  });
}

}  // namespace tempo
