#include "eval/measurements/traced.h"

#include <cmath>

#include "common/error.h"
#include "trusted/obfuscation/keys.h"

namespace tempo {

Traced encrypt_traced(const Triple& t, const float* x, int64_t rows, int64_t cols) {
  TEMPO_CHECK(rows < (1 << 20) && cols < (1 << 20), "operand too large to trace exactly");
  const size_t n = static_cast<size_t>(rows * cols);
  Traced out;
  out.values.resize(n);
  t.encrypt_x(x, rows, cols, out.values.data());
  std::vector<float> ri(n), ci(n), ones(n, 1.0f), renc(n), cenc(n), scale(n);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      ri[static_cast<size_t>(i * cols + j)] = static_cast<float>(i);
      ci[static_cast<size_t>(i * cols + j)] = static_cast<float>(j);
    }
  t.encrypt_x(ri.data(), rows, cols, renc.data());
  t.encrypt_x(ci.data(), rows, cols, cenc.data());
  t.encrypt_x(ones.data(), rows, cols, scale.data());
  out.src_row.resize(n);
  out.src_col.resize(n);
  for (size_t p = 0; p < n; ++p) {
    const int64_t r = std::llround(renc[p] / scale[p]), c = std::llround(cenc[p] / scale[p]);
    TEMPO_CHECK(r >= 0 && r < rows && c >= 0 && c < cols, "trace: index recovery failed");
    out.src_row[p] = static_cast<int32_t>(r);
    out.src_col[p] = static_cast<int32_t>(c);
  }
  return out;
}

std::unique_ptr<Obfuscator> measurement_keys(uint64_t seed, double key_scale, bool identity) {
  return identity ? Obfuscator::insecure_identity(secret_from_seed(seed))
                  : std::make_unique<Obfuscator>(secret_from_seed(seed), key_scale);
}

}  // namespace tempo
