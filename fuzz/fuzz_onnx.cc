// Fuzzes parse_onnx (the protobuf, the tensors, and the checks of every
// node's operator and attributes): any outcome other than a graph that keeps
// its promises, or a tempo::Error, is a finding.
#include <cstdint>
#include <cstdlib>
#include <set>

#include "common/error.h"
#include "trusted/io/onnx.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const tempo::OnnxGraph g = tempo::parse_onnx(data, size, "fuzz.onnx");
    if (g.opset < 13 || g.opset > 17 || g.input.empty() || g.input_dims.size() < 2) std::abort();
    if (g.output_dims.size() != 2 || g.output_dims[1] <= 0) std::abort();
    for (const auto& t : g.initializers) {
      const int64_t n = tempo::numel_of(t.shape);
      const size_t have = t.dtype == tempo::DType::F32 ? t.f32.size() : t.i64.size();
      if (n < 0 || have != static_cast<size_t>(n)) std::abort();
    }
    std::set<std::string> defined = {g.input};
    for (const auto& t : g.initializers) defined.insert(t.name);
    for (const auto& n : g.nodes) {
      for (const auto& i : n.inputs)
        if (!i.empty() && !defined.count(i)) std::abort();  // topological order was promised
      for (const auto& o : n.outputs) defined.insert(o);
    }
  } catch (const tempo::Error&) {
  }
  return 0;
}
