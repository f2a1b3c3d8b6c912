// Safetensors files (weights, user datasets): an 8-byte little-endian u64
// header length N, N bytes of JSON header
//   {"name": {"dtype": "F32"|"I64", "shape": [...], "data_offsets": [b, e]},
//    "__metadata__": {"key": "value", ...}}            (metadata optional)
// then the raw little-endian tensor data; offsets are relative to the first
// byte after the header. Only F32 and I64 are supported. Reading validates
// everything (sizes, offsets, overlaps, trailing bytes, duplicate names) and
// reports problems as tempo::Error naming the file and the tensor.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "trusted/tensor.h"

namespace tempo {

enum class DType { F32, I64 };

const char* dtype_name(DType t);  // "F32" / "I64"

struct NamedTensor {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  std::vector<float> f32;    // used when dtype == F32
  std::vector<int64_t> i64;  // used when dtype == I64
};

using TensorMap = std::map<std::string, NamedTensor>;

// Parses a whole file image. `what` names the source in error messages.
// The "__metadata__" entry is validated (string -> string) and ignored.
TensorMap parse_safetensors(const uint8_t* data, size_t size, const std::string& what);

// Reads and parses a file; a missing or unreadable file is a clear error.
TensorMap read_safetensors(const std::string& path);

// Writes to a temporary file in the same directory, fsyncs, then renames over
// `path` (so readers never see a half-written file); on any failure the
// temporary file is removed and Error is thrown. Tensors are written in the
// given order; names must be unique, non-empty and not "__metadata__", and
// each tensor's data size must match its shape. The new file has mode 0600.
void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors);

// The same file image in memory (for encrypted containers); `what` names the
// destination in errors.
std::vector<uint8_t> serialize_safetensors(const std::vector<NamedTensor>& tensors, const std::string& what);

}  // namespace tempo
