// Thread control, on either side of the boundary. One knob (--threads) sets both our own
// OpenMP loops and OpenBLAS, so that a run's arithmetic, and with it its
// bitwise result, is a function of the thread count alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tempo {

// Sets the number of threads for OpenMP loops and for BLAS. n <= 0: all cores.
void set_num_threads(int n);
int num_threads();
int hardware_threads();

// Splits [0, n) into num_threads() contiguous static ranges and runs
// fn(begin, end) on each in parallel. The split depends only on n and the
// thread count, so per-range reductions combined in range order are
// deterministic.
template <typename Fn>
void parallel_for(int64_t n, Fn&& fn, int64_t min_per_thread = 1);

// Σ fn(begin, end) (a double) over [0, n) cut into a fixed number of
// ranges that do not depend on the thread count, run in parallel and added
// in range order: the same sum for any number of threads.
template <typename Fn>
double sum_in_pieces(int64_t n, Fn&& fn);

// The same for sums of vectors: [0, n) cut into `pieces` fixed ranges;
// fn(begin, end, part) adds its range's terms into part (len values, zero
// at the start), the ranges run in parallel; the parts are then added in
// range order into parts[0, len), which is returned. parts is the caller's
// scratch (pieces·len values; no allocation once it has grown).
template <typename T, typename Fn>
const T* sum_vectors_in_pieces(int64_t n, int64_t pieces, size_t len, std::vector<T>& parts, Fn&& fn);

}  // namespace tempo

#include <omp.h>

namespace tempo {
template <typename Fn>
void parallel_for(int64_t n, Fn&& fn, int64_t min_per_thread) {
  if (n <= 0) return;
  int t = num_threads();
  if (min_per_thread < 1) min_per_thread = 1;
  int64_t max_t = (n + min_per_thread - 1) / min_per_thread;
  if (max_t < t) t = static_cast<int>(max_t);
  if (t <= 1) {
    fn(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(t)
  {
    int id = omp_get_thread_num();
    int64_t b = n * id / t, e = n * (id + 1) / t;
    if (b < e) fn(b, e);
  }
}

template <typename Fn>
double sum_in_pieces(int64_t n, Fn&& fn) {
  constexpr int64_t kPieces = 64;
  double part[kPieces];
  parallel_for(kPieces, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t b = n * c / kPieces, e = n * (c + 1) / kPieces;
      part[c] = b < e ? fn(b, e) : 0.0;
    }
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}

template <typename T, typename Fn>
const T* sum_vectors_in_pieces(int64_t n, int64_t pieces, size_t len, std::vector<T>& parts, Fn&& fn) {
  parts.assign(static_cast<size_t>(pieces) * len, T{0});
  parallel_for(pieces, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) fn(n * c / pieces, n * (c + 1) / pieces, parts.data() + c * len);
  });
  T* sum = parts.data();
  for (int64_t c = 1; c < pieces; ++c) {
    const T* part = parts.data() + c * len;
    for (size_t i = 0; i < len; ++i) sum[i] += part[i];
  }
  return sum;
}
}  // namespace tempo
