#include "trusted/tensor.h"

#include <gtest/gtest.h>

#include "common/error.h"

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
