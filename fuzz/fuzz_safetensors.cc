// Fuzzes parse_safetensors: any outcome other than a TensorMap whose tensors
// are consistent with their shapes, or a tempo::Error, is a finding.
#include <cstdint>
#include <cstdlib>

#include "common/error.h"
#include "trusted/io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    tempo::TensorMap m = tempo::parse_safetensors(data, size, "fuzz.safetensors");
    for (const auto& [name, t] : m) {
      if (name != t.name || name.empty() || name == "__metadata__") std::abort();
      const int64_t n = tempo::numel_of(t.shape);
      if (n < 0) std::abort();
      const size_t have = t.dtype == tempo::DType::F32 ? t.f32.size() : t.i64.size();
      const size_t other = t.dtype == tempo::DType::F32 ? t.i64.size() : t.f32.size();
      if (have != static_cast<size_t>(n) || other != 0) std::abort();
    }
  } catch (const tempo::Error&) {
  }
  return 0;
}
