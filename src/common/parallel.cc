#include "common/parallel.h"

#include <cblas.h>
#include <omp.h>

#include <thread>

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

}  // namespace tempo
