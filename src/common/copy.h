// A large memory copy spread over this process's threads (--threads, either side):
// one core's memcpy does not saturate the memory bus, and for copies into
// pinned staging memory (the CUDA worker) it is what limits the transfer.
// Pieces of 256 KiB; a copy of at most one piece stays on the calling thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

namespace tempo {

void parallel_copy(void* dst, const void* src, size_t bytes);

// Results of at least this many bytes are larger than a core's caches; the
// row mixing streams them (stream_floats). Measured on resnet18's layer 1
// (kernels_bench BM_BlindingApply/1/2, 2 threads): 26 ms with plain stores
// into the result, 21 ms building each group in a buffer then copying it,
// 17–18 ms streaming it. im2col streams its result too: alone it is no
// faster (BM_Im2col/0 4.2–4.8 ms either way), but in a training step its
// reader comes back to each row much later (docs/BENCHMARKS.md).
constexpr int64_t kStreamBytes = int64_t{8} << 20;

// n floats from src (in cache) to dst, with non-temporal stores where dst
// is aligned for them: the lines go to memory without first being read
// (a plain store reads each line it misses, which doubles the traffic of a
// pass that writes a matrix larger than the caches). For results that are
// not read again while still in cache; the caller fences (stream_fence())
// before another thread reads them.
inline void stream_floats(float* dst, const float* src, int64_t n) {
  int64_t j = 0;
#if defined(__AVX512F__)
  constexpr int64_t kV = 16;
#elif defined(__AVX2__)
  constexpr int64_t kV = 8;
#else
  constexpr int64_t kV = 0;
#endif
  if constexpr (kV > 0) {
    for (; j < n && (reinterpret_cast<uintptr_t>(dst + j) & (kV * sizeof(float) - 1)) != 0; ++j) dst[j] = src[j];
    for (; j + kV <= n; j += kV) {
#if defined(__AVX512F__)
      _mm512_stream_ps(dst + j, _mm512_loadu_ps(src + j));
#elif defined(__AVX2__)
      _mm256_stream_ps(dst + j, _mm256_loadu_ps(src + j));
#endif
    }
  }
  if (j < n) std::memcpy(dst + j, src + j, static_cast<size_t>(n - j) * sizeof(float));
}

// Orders this thread's non-temporal stores before its later stores (a
// thread's part of a pass ends with it, before the pass's barrier).
inline void stream_fence() {
#if defined(__AVX512F__) || defined(__AVX2__)
  _mm_sfence();
#endif
}

}  // namespace tempo
