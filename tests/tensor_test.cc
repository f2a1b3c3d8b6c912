#include "trusted/tensor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "common/copy.h"
#include "common/error.h"
#include "common/parallel.h"

namespace tempo {

TEST(Tensor, ResizeReusesCapacity) {
  Tensor t({4, 8});
  EXPECT_EQ(t.numel(), 32);
  for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t[i], 0.0f);
  const float* p = t.data();
  t.resize({2, 8});
  EXPECT_EQ(t.data(), p);
  EXPECT_EQ(t.shape(), (Shape{2, 8}));
  t.resize({8, 8});
  EXPECT_EQ(t.numel(), 64);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 64, 0u);
}

TEST(Tensor, ReshapeChecksCount) {
  Tensor t({2, 3});
  t.reshape({3, 2});
  EXPECT_EQ(t.dim(0), 3);
  EXPECT_THROW(t.reshape({4, 2}), Error);
}

}  // namespace tempo

// The CUDA worker's staging copies (no GPU here, so tested on its own):
// every byte, at sizes around the 256 KiB pieces, for one and two threads.
TEST(ParallelCopy, CopiesEveryByteAtAnySize) {
  const int before = tempo::num_threads();
  for (int threads : {1, 2}) {
    tempo::set_num_threads(threads);
    for (size_t bytes : {size_t{0}, size_t{1}, size_t{4093}, size_t{256} << 10, (size_t{256} << 10) + 3,
                         (size_t{8} << 20) + 17}) {
      std::vector<unsigned char> src(bytes + 2), dst(bytes + 2, 0xee);
      for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 131 + 7);
      tempo::parallel_copy(dst.data() + 1, src.data() + 1, bytes);
      EXPECT_EQ(dst[0], 0xee) << bytes;  // nothing written outside
      EXPECT_EQ(dst[bytes + 1], 0xee) << bytes;
      EXPECT_TRUE(std::equal(src.begin() + 1, src.begin() + 1 + static_cast<std::ptrdiff_t>(bytes), dst.begin() + 1))
          << bytes << " bytes, " << threads << " thread(s)";
    }
  }
  tempo::set_num_threads(before);
}
