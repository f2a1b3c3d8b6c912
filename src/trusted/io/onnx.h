// Reading an ONNX model (the graph PyTorch's torch.onnx.export writes, opsets
// 13 to 17) into a checked, library-independent description: the one input,
// the one output, the initializers (F32 or I64 tensors) and the nodes with
// their attributes. Everything Tempo can judge without running the graph is
// judged here, before any training: the opset, every operator and attribute
// Tempo supports, tensor sizes against their data, inputs defined before
// use, names defined once. A problem is one tempo::Error naming the file,
// and the node and operator where there is one. This part links only
// protobuf and ONNX's message classes, so the fuzzer builds it alone.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "trusted/io/safetensors.h"

namespace tempo {

struct OnnxAttr {
  enum class Kind { kInt, kFloat, kString, kInts, kFloats, kTensor } kind = Kind::kInt;
  int64_t i = 0;
  float f = 0;
  std::string s;
  std::vector<int64_t> ints;
  std::vector<float> floats;
  NamedTensor t;
};

struct OnnxNode {
  std::string name;  // the node's name, or "#index" when it has none
  std::string op;
  std::vector<std::string> inputs;   // "" for an omitted optional input
  std::vector<std::string> outputs;  // "" for an omitted optional output
  std::map<std::string, OnnxAttr> attrs;

  // Attribute access with defaults; a present attribute of the wrong kind is
  // an error naming the node.
  int64_t attr_int(const std::string& key, int64_t def) const;
  float attr_float(const std::string& key, float def) const;
  std::string attr_string(const std::string& key, const std::string& def) const;
  std::vector<int64_t> attr_ints(const std::string& key, const std::vector<int64_t>& def) const;
  std::string where() const;  // "node 'NAME' (OP)"
};

struct OnnxGraph {
  std::string file;        // for messages
  int64_t opset = 0;
  std::string input;       // the data input (not an initializer)
  Shape input_dims;        // as declared; -1 for a symbolic dimension
  std::string output;      // the logits
  Shape output_dims;
  std::vector<NamedTensor> initializers;  // in file order (PyTorch's state_dict order)
  std::vector<OnnxNode> nodes;            // topologically ordered

  const NamedTensor* initializer(const std::string& name) const;
};

// The operators Tempo builds layers for, in the order --help lists them.
const std::vector<std::string>& onnx_operators();

// Parses and checks a whole file image; `what` names the source in errors.
OnnxGraph parse_onnx(const uint8_t* data, size_t size, const std::string& what);
OnnxGraph read_onnx(const std::string& path);

// Replaces the data of the initializers named in `tensors` (same dtype and
// shape, else an error) in the file image and returns the new image; a
// tensor with no initializer of its name is an error.
std::string replace_onnx_initializers(const uint8_t* data, size_t size, const std::string& what,
                                      const std::vector<NamedTensor>& tensors);

}  // namespace tempo
