#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "trusted/nn/layers.h"

namespace tempo {

double cross_entropy(const Tensor& logits, const std::vector<int64_t>& labels, Tensor* dlogits,
                     int64_t* correct) {
  TEMPO_CHECK(logits.ndim() == 2 && logits.dim(0) == static_cast<int64_t>(labels.size()),
        "cross_entropy: logits " + shape_str(logits.shape()) + " do not match " +
            std::to_string(labels.size()) + " labels");
  const int64_t N = logits.dim(0), C = logits.dim(1);
  if (dlogits) dlogits->resize(logits.shape());
  double total = 0;
  int64_t hits = 0;
  const float inv_n = 1.0f / static_cast<float>(N);
  for (int64_t i = 0; i < N; ++i) {
    const float* z = logits.data() + i * C;
    const int64_t y = labels[static_cast<size_t>(i)];
    TEMPO_CHECK(y >= 0 && y < C, "label " + std::to_string(y) + " is outside [0, " + std::to_string(C) + ")");
    int64_t arg = 0;
    float mx = z[0];
    for (int64_t c = 1; c < C; ++c)
      if (z[c] > mx) {
        mx = z[c];
        arg = c;
      }
    hits += arg == y;
    double se = 0;
    for (int64_t c = 0; c < C; ++c) se += std::exp(static_cast<double>(z[c] - mx));
    const double lse = std::log(se) + mx;
    total += lse - z[y];
    if (dlogits) {
      float* g = dlogits->data() + i * C;
      for (int64_t c = 0; c < C; ++c) {
        float p = static_cast<float>(std::exp(static_cast<double>(z[c]) - lse));
        g[c] = (p - (c == y ? 1.0f : 0.0f)) * inv_n;
      }
    }
  }
  if (correct) *correct = hits;
  return total / static_cast<double>(N);
}

double soft_cross_entropy(const Tensor& logits, const float* targets, Tensor* dlogits) {
  TEMPO_CHECK(logits.ndim() == 2, "soft_cross_entropy: logits " + shape_str(logits.shape()) + " are not N×C");
  const int64_t N = logits.dim(0), C = logits.dim(1);
  if (dlogits) dlogits->resize(logits.shape());
  double total = 0;
  const float inv_n = 1.0f / static_cast<float>(N);
  for (int64_t i = 0; i < N; ++i) {
    const float* z = logits.data() + i * C;
    const float* t = targets + i * C;
    float mx = z[0];
    for (int64_t c = 1; c < C; ++c) mx = std::max(mx, z[c]);
    double se = 0;
    for (int64_t c = 0; c < C; ++c) se += std::exp(static_cast<double>(z[c] - mx));
    const double lse = std::log(se) + mx;
    for (int64_t c = 0; c < C; ++c) total += static_cast<double>(t[c]) * (lse - z[c]);
    if (dlogits) {
      float* g = dlogits->data() + i * C;
      for (int64_t c = 0; c < C; ++c)
        g[c] = (static_cast<float>(std::exp(static_cast<double>(z[c]) - lse)) - t[c]) * inv_n;
    }
  }
  return total / static_cast<double>(N);
}

void softmax_rows(const float* logits, int64_t rows, int64_t classes, float* out) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* z = logits + i * classes;
    float* p = out + i * classes;
    const float mx = *std::max_element(z, z + classes);
    double sum = 0;
    for (int64_t c = 0; c < classes; ++c) sum += std::exp(double(z[c]) - mx);
    for (int64_t c = 0; c < classes; ++c) p[c] = static_cast<float>(std::exp(double(z[c]) - mx) / sum);
  }
}

}  // namespace tempo
