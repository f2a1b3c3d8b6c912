#include "trusted/io/onnx.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include "common/error.h"
#include "trusted/io/file_util.h"

namespace tempo {

namespace {

// Largest tensor accepted (elements) and largest sum over a file: a hostile
// file cannot make Tempo allocate more than what its bytes justify plus this.
constexpr int64_t kMaxElements = int64_t{1} << 31;
constexpr int kMaxRank = 8;

const char* kExportHint =
    " (export with torch.onnx.export(model, example, FILE, training=torch.onnx.TrainingMode.TRAINING, "
    "do_constant_folding=False, opset_version=13))";

std::string tensor_what(const std::string& file, const std::string& name) {
  return file + ": tensor '" + name + "'";
}

// A TensorProto as F32 or I64 (BOOL, INT32 and INT64 data all become I64).
NamedTensor convert_tensor(const onnx::TensorProto& t, const std::string& file) {
  NamedTensor out;
  out.name = t.name();
  const std::string what = tensor_what(file, t.name());
  TEMPO_CHECK(t.data_location() != onnx::TensorProto::EXTERNAL,
              what + " keeps its data in an external file; export the model as one file");
  TEMPO_CHECK(t.dims_size() <= kMaxRank, what + " has " + std::to_string(t.dims_size()) + " dimensions");
  int64_t n = 1;
  for (int64_t d : t.dims()) {
    TEMPO_CHECK(d >= 0, what + " has a negative dimension");
    TEMPO_CHECK(d == 0 || n <= kMaxElements / d, what + " is too large");
    n *= d;
    out.shape.push_back(d);
  }
  const int type = t.data_type();
  const bool raw = t.has_raw_data();
  const std::string& bytes = t.raw_data();
  auto need = [&](size_t have, const char* field) {
    TEMPO_CHECK(have == static_cast<size_t>(n), what + ": " + std::to_string(have) + " values in " + field +
                                                    " for shape " + shape_str(out.shape));
  };
  if (type == onnx::TensorProto::FLOAT) {
    out.dtype = DType::F32;
    if (raw) {
      need(bytes.size() / 4, "raw_data");
      TEMPO_CHECK(bytes.size() % 4 == 0, what + ": raw_data is not a whole number of floats");
      out.f32.resize(static_cast<size_t>(n));
      if (n) std::memcpy(out.f32.data(), bytes.data(), bytes.size());
    } else {
      need(static_cast<size_t>(t.float_data_size()), "float_data");
      out.f32.assign(t.float_data().begin(), t.float_data().end());
    }
    return out;
  }
  out.dtype = DType::I64;
  if (type == onnx::TensorProto::INT64) {
    if (raw) {
      need(bytes.size() / 8, "raw_data");
      TEMPO_CHECK(bytes.size() % 8 == 0, what + ": raw_data is not a whole number of int64 values");
      out.i64.resize(static_cast<size_t>(n));
      if (n) std::memcpy(out.i64.data(), bytes.data(), bytes.size());
    } else {
      need(static_cast<size_t>(t.int64_data_size()), "int64_data");
      out.i64.assign(t.int64_data().begin(), t.int64_data().end());
    }
  } else if (type == onnx::TensorProto::INT32 || type == onnx::TensorProto::BOOL) {
    const size_t width = type == onnx::TensorProto::BOOL ? 1 : 4;
    if (raw) {
      need(bytes.size() / width, "raw_data");
      TEMPO_CHECK(bytes.size() % width == 0, what + ": raw_data does not divide into values");
      out.i64.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        int32_t v = 0;
        if (width == 1)
          v = static_cast<uint8_t>(bytes[static_cast<size_t>(i)]);
        else
          std::memcpy(&v, bytes.data() + i * 4, 4);
        out.i64[static_cast<size_t>(i)] = v;
      }
    } else {
      need(static_cast<size_t>(t.int32_data_size()), "int32_data");
      out.i64.assign(t.int32_data().begin(), t.int32_data().end());
    }
  } else {
    throw Error(what + " has data type " + std::to_string(type) +
                "; Tempo reads FLOAT, INT64, INT32 and BOOL tensors only");
  }
  return out;
}

OnnxAttr convert_attr(const onnx::AttributeProto& a, const std::string& where, const std::string& file) {
  OnnxAttr out;
  switch (a.type()) {
    case onnx::AttributeProto::INT:
      out.kind = OnnxAttr::Kind::kInt;
      out.i = a.i();
      break;
    case onnx::AttributeProto::FLOAT:
      out.kind = OnnxAttr::Kind::kFloat;
      out.f = a.f();
      break;
    case onnx::AttributeProto::STRING:
      out.kind = OnnxAttr::Kind::kString;
      out.s = a.s();
      break;
    case onnx::AttributeProto::INTS:
      out.kind = OnnxAttr::Kind::kInts;
      out.ints.assign(a.ints().begin(), a.ints().end());
      break;
    case onnx::AttributeProto::FLOATS:
      out.kind = OnnxAttr::Kind::kFloats;
      out.floats.assign(a.floats().begin(), a.floats().end());
      break;
    case onnx::AttributeProto::TENSOR:
      out.kind = OnnxAttr::Kind::kTensor;
      out.t = convert_tensor(a.t(), file + ": " + where);
      break;
    default:
      throw Error(file + ": " + where + ": attribute '" + a.name() + "' has a kind Tempo does not read (" +
                  std::to_string(a.type()) + ")");
  }
  return out;
}

// Declared dimensions of a graph input or output (-1 where symbolic).
Shape declared_dims(const onnx::ValueInfoProto& v, const std::string& file) {
  Shape dims;
  TEMPO_CHECK(v.type().has_tensor_type(), file + ": graph value '" + v.name() + "' is not a tensor");
  const auto& tt = v.type().tensor_type();
  TEMPO_CHECK(tt.elem_type() == onnx::TensorProto::FLOAT,
              file + ": graph value '" + v.name() + "' must be a float tensor");
  TEMPO_CHECK(tt.has_shape(), file + ": graph value '" + v.name() + "' has no declared shape" + kExportHint);
  TEMPO_CHECK(tt.shape().dim_size() <= kMaxRank, file + ": graph value '" + v.name() + "' has too many dimensions");
  for (const auto& d : tt.shape().dim()) {
    const int64_t n = d.has_dim_value() ? d.dim_value() : -1;
    TEMPO_CHECK(n == -1 || (n > 0 && n <= kMaxElements),
                file + ": graph value '" + v.name() + "' has dimension " + std::to_string(n));
    dims.push_back(n);
  }
  return dims;
}

}  // namespace

int64_t OnnxNode::attr_int(const std::string& key, int64_t def) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return def;
  TEMPO_CHECK(it->second.kind == OnnxAttr::Kind::kInt, where() + ": attribute '" + key + "' must be an integer");
  return it->second.i;
}

float OnnxNode::attr_float(const std::string& key, float def) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return def;
  TEMPO_CHECK(it->second.kind == OnnxAttr::Kind::kFloat, where() + ": attribute '" + key + "' must be a float");
  return it->second.f;
}

std::string OnnxNode::attr_string(const std::string& key, const std::string& def) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return def;
  TEMPO_CHECK(it->second.kind == OnnxAttr::Kind::kString, where() + ": attribute '" + key + "' must be a string");
  return it->second.s;
}

std::vector<int64_t> OnnxNode::attr_ints(const std::string& key, const std::vector<int64_t>& def) const {
  auto it = attrs.find(key);
  if (it == attrs.end()) return def;
  TEMPO_CHECK(it->second.kind == OnnxAttr::Kind::kInts, where() + ": attribute '" + key + "' must be integers");
  return it->second.ints;
}

std::string OnnxNode::where() const { return "node '" + name + "' (" + op + ")"; }

const NamedTensor* OnnxGraph::initializer(const std::string& name) const {
  for (const auto& t : initializers)
    if (t.name == name) return &t;
  return nullptr;
}

const std::vector<std::string>& onnx_operators() {
  static const std::vector<std::string> ops = {
      "Conv", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization", "Relu", "Erf", "Softmax",
      "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Sub", "Mul", "Div", "Flatten", "Reshape",
      "Transpose", "Concat", "Slice", "Gather", "Pad", "Dropout", "Identity", "Constant", "ReduceMean", "Pow",
      "Sqrt", "Expand", "Unsqueeze", "Shape", "Cast", "ConstantOfShape", "Equal", "Where"};
  return ops;
}

namespace {

// Checks one node's attributes and constant inputs against what Tempo's
// layers implement. `constant` finds I64 constants (initializers or
// Constant nodes); `weight` finds F32 initializers.
class NodeChecker {
 public:
  NodeChecker(const OnnxGraph& g, const std::map<std::string, const NamedTensor*>& constants,
              const std::set<std::string>& ints)
      : g_(g), constants_(constants), ints_(ints) {}

  void check(const OnnxNode& n) {
    n_ = &n;
    const std::string& op = n.op;
    if (op == "Conv") {
      inputs(2, 3);
      const NamedTensor& w = weight(1, 4);
      if (has(2)) require(weight(2, 1).shape[0] == w.shape[0], "the bias must have one value per output channel");
      require(w.shape[2] == w.shape[3], "the kernel must be square");
      window(w.shape[2], true);
      require(n.attr_int("group", 1) == 1, "attribute group must be 1");
    } else if (op == "Gemm") {
      inputs(2, 3);
      const NamedTensor& w = weight(1, 2);
      require(n.attr_int("transA", 0) == 0, "attribute transA must be 0");
      const int64_t tb = n.attr_int("transB", 0);
      require(tb == 0 || tb == 1, "attribute transB must be 0 or 1");
      require(n.attr_float("alpha", 1) == 1 && n.attr_float("beta", 1) == 1, "attributes alpha and beta must be 1");
      if (has(2)) require(weight(2, 1).shape[0] == w.shape[tb == 1 ? 0 : 1], "the bias must have one value per output");
    } else if (op == "MatMul") {
      inputs(2, 2);
    } else if (op == "BatchNormalization") {
      inputs(5, 5);
      const int64_t c = weight(1, 1).shape[0];
      for (int i = 2; i < 5; ++i) require(weight(i, 1).shape[0] == c, "scale, bias, mean and var must match");
      const float m = n.attr_float("momentum", 0.9f);
      require(m >= 0 && m <= 1, "attribute momentum must be in [0, 1]");
      require(n.attr_float("epsilon", 1e-5f) > 0, "attribute epsilon must be positive");
    } else if (op == "LayerNormalization") {
      inputs(2, 3);
      const int64_t d = weight(1, 1).shape[0];
      if (has(2)) require(weight(2, 1).shape[0] == d, "scale and bias must match");
      require(n.attr_int("axis", -1) == -1, "attribute axis must be -1 (the last dimension)");
      require(n.attr_float("epsilon", 1e-5f) > 0, "attribute epsilon must be positive");
    } else if (op == "MaxPool" || op == "AveragePool") {
      inputs(1, 1);
      const std::vector<int64_t> k = n.attr_ints("kernel_shape", {});
      require(k.size() == 2 && k[0] == k[1] && k[0] > 0, "attribute kernel_shape must be a square [k, k]");
      const int64_t pad = window(k[0], false);
      require(n.attr_int("ceil_mode", 0) == 0, "attribute ceil_mode must be 0");
      require(n.attr_int("storage_order", 0) == 0, "attribute storage_order must be 0");
      if (op == "AveragePool" && pad > 0)
        require(n.attr_int("count_include_pad", 0) == 1, "padding needs count_include_pad = 1");
    } else if (op == "Relu" || op == "Erf" || op == "GlobalAveragePool" || op == "Identity") {
      inputs(1, 1);
    } else if (op == "Softmax") {
      inputs(1, 1);
    } else if (op == "Add" || op == "Sub" || op == "Mul" || op == "Div") {
      inputs(2, 2);
    } else if (op == "Flatten") {
      inputs(1, 1);
    } else if (op == "Transpose") {
      inputs(1, 1);
      const auto perm = n.attr_ints("perm", {});
      require(!perm.empty() && perm.size() <= kMaxRank, "attribute perm must be given");
      std::vector<int64_t> sorted = perm;
      std::sort(sorted.begin(), sorted.end());
      for (size_t i = 0; i < sorted.size(); ++i) require(sorted[i] == static_cast<int64_t>(i), "perm is not a permutation");
    } else if (op == "Concat") {
      inputs(1, 64);
      require(n.attrs.count("axis"), "attribute axis must be given");
      n.attr_int("axis", 0);
    } else if (op == "Reshape") {
      inputs(2, 2);
      integer(1);
      if (constants_.count(n.inputs[1])) {
        const NamedTensor& s = constant(1);
        require(s.shape.size() == 1 && !s.i64.empty() && s.i64.size() <= kMaxRank, "the shape must be a 1-D constant");
        int minus = 0;
        for (int64_t v : s.i64) {
          require(v >= -1, "the shape has a value below -1");
          minus += v == -1;
        }
        require(minus <= 1, "the shape has more than one -1");
      }
      require(n.attr_int("allowzero", 0) == 0, "attribute allowzero must be 0");
    } else if (op == "Unsqueeze") {
      inputs(2, 2);
      integer(1);
    } else if (op == "Expand") {
      inputs(2, 2);
      integer(1);
    } else if (op == "ReduceMean") {
      inputs(1, 1);
      require(n.attr_ints("axes", {}) == std::vector<int64_t>{-1}, "only the mean over the last axis (axes [-1]) is supported");
      require(n.attr_int("keepdims", 1) == 1, "attribute keepdims must be 1");
    } else if (op == "Pow") {
      inputs(2, 2);
      const NamedTensor* e = float_constant(n.inputs[1]);
      require(e && e->f32.size() == 1, "the exponent must be a float constant scalar");
    } else if (op == "Sqrt" || op == "Shape") {
      inputs(1, 1);
      if (op == "Shape") require(!n.attrs.count("start") && !n.attrs.count("end"), "attributes start and end are not supported");
    } else if (op == "Cast") {
      inputs(1, 1);
      const int64_t to = n.attr_int("to", 0);
      require(to == 1 || to == 6 || to == 7 || to == 9, "only casts to FLOAT, INT32, INT64 and BOOL are supported");
    } else if (op == "ConstantOfShape") {
      inputs(1, 1);
      integer(0);
      if (n.attrs.count("value")) require(n.attrs.at("value").kind == OnnxAttr::Kind::kTensor && numel_of(n.attrs.at("value").t.shape) == 1,
                                          "attribute value must be a one-element tensor");
    } else if (op == "Equal") {
      inputs(2, 2);
      integer(0);
      integer(1);
    } else if (op == "Where") {
      inputs(3, 3);
      integer(0);
      require(ints_.count(n.inputs[1]) && ints_.count(n.inputs[2]), "only Where on integers (shapes) is supported");
    } else if (op == "Pad") {
      inputs(2, 3);
      require(n.attr_string("mode", "constant") == "constant", "only constant padding is supported");
      const NamedTensor& p = constant(1);
      require(p.shape.size() == 1 && p.i64.size() % 2 == 0 && p.i64.size() <= 2 * kMaxRank,
              "pads must be a 1-D constant of even length");
      for (int64_t v : p.i64) require(v >= 0 && v <= 1 << 16, "pads must be non-negative");
      if (has(2)) {
        auto it = g_.initializer(n.inputs[2]);
        require(constant_float_zero(n.inputs[2], it), "the padding value must be 0");
      }
    } else if (op == "Slice") {
      inputs(3, 5);
      for (size_t i = 1; i < n.inputs.size(); ++i)
        if (has(i)) integer(i);
      if (has(4)) {
        require(constants_.count(n.inputs[4]), "steps must be a constant");
        for (int64_t s : constant(4).i64) require(s == 1, "steps must be 1");
      }
    } else if (op == "Gather") {
      inputs(2, 2);
      integer(1);
    } else if (op == "Dropout") {
      inputs(1, 3);
      if (has(1)) {
        const NamedTensor* r = float_constant(n.inputs[1]);
        require(r && r->f32.size() == 1 && r->f32[0] >= 0 && r->f32[0] < 1, "the ratio must be a constant in [0, 1)");
      }
      if (has(2)) require(constant(2).i64.size() == 1, "training_mode must be a constant");
    } else if (op == "Constant") {
      inputs(0, 0);
      require(n.attrs.size() == 1, "must have exactly one value attribute");
      const auto& [key, a] = *n.attrs.begin();
      require(key == "value" || key == "value_float" || key == "value_floats" || key == "value_int" ||
                  key == "value_ints",
              "attribute '" + key + "' is not supported");
    } else {
      std::string list;
      for (const auto& o : onnx_operators()) list += (list.empty() ? "" : ", ") + o;
      throw Error(g_.file + ": " + n.where() + ": operator not supported; Tempo builds layers for " + list);
    }
  }

 private:
  void require(bool ok, const std::string& problem) const {
    TEMPO_CHECK(ok, g_.file + ": " + n_->where() + ": " + problem);
  }
  bool has(size_t i) const { return i < n_->inputs.size() && !n_->inputs[i].empty(); }
  void inputs(size_t lo, size_t hi) const {
    require(n_->inputs.size() >= lo && n_->inputs.size() <= hi && (lo == 0 || has(0)),
            "expects " + (lo == hi ? std::to_string(lo) : std::to_string(lo) + " to " + std::to_string(hi)) +
                " inputs, has " + std::to_string(n_->inputs.size()));
  }
  // An F32 initializer of the given rank (the layers' parameters).
  const NamedTensor& weight(size_t i, size_t rank) const {
    require(has(i), "input " + std::to_string(i) + " must be given");
    const NamedTensor* t = g_.initializer(n_->inputs[i]);
    require(t && t->dtype == DType::F32,
            "input " + std::to_string(i) + " ('" + n_->inputs[i] + "') must be a float initializer (a parameter)");
    require(t->shape.size() == rank, "parameter '" + t->name + "' must have " + std::to_string(rank) +
                                         " dimensions, has shape " + shape_str(t->shape));
    for (int64_t d : t->shape) require(d > 0, "parameter '" + t->name + "' has an empty dimension");
    return *t;
  }
  const NamedTensor& constant(size_t i) const {
    require(has(i), "input " + std::to_string(i) + " must be given");
    auto it = constants_.find(n_->inputs[i]);
    require(it != constants_.end(), "input " + std::to_string(i) + " ('" + n_->inputs[i] +
                                        "') must be an integer constant (an initializer or a Constant node)");
    return *it->second;
  }
  // An integer input: a constant, or computed from shapes (Shape, Gather, ...).
  void integer(size_t i) const {
    require(has(i), "input " + std::to_string(i) + " must be given");
    require(ints_.count(n_->inputs[i]), "input " + std::to_string(i) + " ('" + n_->inputs[i] +
                                            "') must be an integer tensor (a constant or computed from shapes)");
  }
  const NamedTensor* float_constant(const std::string& name) const {
    for (const auto& node : g_.nodes)
      if (node.op == "Constant" && !node.outputs.empty() && node.outputs[0] == name && node.attrs.size() == 1 &&
          node.attrs.begin()->second.t.dtype == DType::F32)
        return &node.attrs.begin()->second.t;  // (value_float and value_floats are normalised to a tensor)
    const NamedTensor* t = g_.initializer(name);
    return t && t->dtype == DType::F32 ? t : nullptr;
  }
  bool constant_float_zero(const std::string& name, const NamedTensor*) const {
    const NamedTensor* t = float_constant(name);
    if (t) return t->f32.size() == 1 && t->f32[0] == 0;
    auto it = constants_.find(name);
    return it != constants_.end() && it->second->i64.size() == 1 && it->second->i64[0] == 0;
  }
  // Strides, pads and dilations of a square window of size k; returns the pad.
  int64_t window(int64_t k, bool conv) const {
    const auto s = n_->attr_ints("strides", {1, 1});
    require(s.size() == 2 && s[0] == s[1] && s[0] > 0, "attribute strides must be equal and positive");
    const auto p = n_->attr_ints("pads", {0, 0, 0, 0});
    require(p.size() == 4 && p[0] == p[1] && p[0] == p[2] && p[0] == p[3] && p[0] >= 0,
            "attribute pads must be the same on every side");
    require(conv || p[0] <= k / 2, "pads must be at most half the kernel");
    const auto d = n_->attr_ints("dilations", {1, 1});
    require(d.size() == 2 && d[0] == 1 && d[1] == 1, "attribute dilations must be 1");
    require(n_->attr_string("auto_pad", "NOTSET") == "NOTSET", "attribute auto_pad must be NOTSET");
    const auto ks = n_->attr_ints("kernel_shape", {k, k});
    require(ks.size() == 2 && ks[0] == k && ks[1] == k, "attribute kernel_shape does not match the weight");
    return p[0];
  }

  const OnnxGraph& g_;
  const std::map<std::string, const NamedTensor*>& constants_;
  const std::set<std::string>& ints_;
  const OnnxNode* n_ = nullptr;
};

}  // namespace

OnnxGraph parse_onnx(const uint8_t* data, size_t size, const std::string& what) {
  TEMPO_CHECK(size <= static_cast<size_t>(std::numeric_limits<int>::max()), what + ": file too large (over 2 GiB)");
  onnx::ModelProto m;
  TEMPO_CHECK(m.ParseFromArray(data, static_cast<int>(size)),
              what + ": not an ONNX model (the protobuf does not parse)" + kExportHint);
  OnnxGraph g;
  g.file = what;
  for (const auto& o : m.opset_import()) {
    if (o.domain().empty() || o.domain() == "ai.onnx") {
      g.opset = o.version();
    } else {
      throw Error(what + ": operator set '" + o.domain() + "' is not supported; Tempo reads the default one");
    }
  }
  TEMPO_CHECK(g.opset >= 13 && g.opset <= 17,
              what + ": opset " + std::to_string(g.opset) + " is not supported; Tempo reads opsets 13 to 17" +
                  kExportHint);
  TEMPO_CHECK(m.has_graph(), what + ": the model has no graph");
  const onnx::GraphProto& gp = m.graph();

  std::set<std::string> defined;
  int64_t total = 0;
  for (const auto& t : gp.initializer()) {
    NamedTensor nt = convert_tensor(t, what);
    TEMPO_CHECK(!nt.name.empty(), what + ": an initializer has no name");
    TEMPO_CHECK(defined.insert(nt.name).second, what + ": initializer '" + nt.name + "' is defined twice");
    total += numel_of(nt.shape);
    TEMPO_CHECK(total <= kMaxElements, what + ": the initializers are too large");
    g.initializers.push_back(std::move(nt));
  }
  TEMPO_CHECK(gp.sparse_initializer_size() == 0, what + ": sparse initializers are not supported");

  std::vector<const onnx::ValueInfoProto*> data_inputs;
  for (const auto& in : gp.input())
    if (!g.initializer(in.name())) data_inputs.push_back(&in);
  TEMPO_CHECK(data_inputs.size() == 1, what + ": the graph must have exactly one data input (the images), has " +
                                           std::to_string(data_inputs.size()));
  g.input = data_inputs[0]->name();
  g.input_dims = declared_dims(*data_inputs[0], what);
  TEMPO_CHECK(g.input_dims.size() >= 2, what + ": the input '" + g.input + "' must be a batch (N×C×H×W or N×F)");
  for (size_t i = 1; i < g.input_dims.size(); ++i)
    TEMPO_CHECK(g.input_dims[i] > 0, what + ": the input's dimension " + std::to_string(i) +
                                         " must be fixed (only the batch may be symbolic)");
  TEMPO_CHECK(!g.input.empty() && defined.insert(g.input).second, what + ": the input has a bad or taken name");
  TEMPO_CHECK(gp.output_size() == 1, what + ": the graph must have exactly one output (the logits), has " +
                                         std::to_string(gp.output_size()));
  g.output = gp.output(0).name();
  g.output_dims = declared_dims(gp.output(0), what);
  TEMPO_CHECK(g.output_dims.size() == 2 && g.output_dims[1] > 0,
              what + ": the output '" + g.output + "' must be N×classes with a fixed number of classes");

  int index = 0;
  for (const auto& np : gp.node()) {
    OnnxNode n;
    n.name = np.name().empty() ? std::string("#").append(std::to_string(index)) : np.name();
    ++index;
    n.op = np.op_type();
    TEMPO_CHECK(np.domain().empty() || np.domain() == "ai.onnx",
                what + ": " + n.where() + ": operator domain '" + np.domain() + "' is not supported");
    for (const auto& in : np.input()) {
      TEMPO_CHECK(in.empty() || defined.count(in),
                  what + ": " + n.where() + ": input '" + in + "' is not defined before it (the nodes must be "
                  "in topological order)");
      n.inputs.push_back(in);
    }
    for (const auto& out : np.output()) {
      TEMPO_CHECK(out.empty() || defined.insert(out).second,
                  what + ": " + n.where() + ": output '" + out + "' is defined twice");
      n.outputs.push_back(out);
    }
    TEMPO_CHECK(!n.outputs.empty() && !n.outputs[0].empty(), what + ": " + n.where() + ": has no output");
    for (const auto& a : np.attribute()) {
      TEMPO_CHECK(n.attrs.emplace(a.name(), convert_attr(a, n.where(), what)).second,
                  what + ": " + n.where() + ": attribute '" + a.name() + "' is given twice");
    }
    g.nodes.push_back(std::move(n));
  }
  TEMPO_CHECK(defined.count(g.output), what + ": the output '" + g.output + "' is not computed by any node");
  TEMPO_CHECK(g.output != g.input, what + ": the output is the input");

  // Integer constants: I64 initializers and Constant nodes' values.
  std::map<std::string, const NamedTensor*> constants;
  for (const auto& t : g.initializers)
    if (t.dtype == DType::I64) constants[t.name] = &t;
  std::set<std::string> used;
  for (auto& n : g.nodes) {
    if (n.op == "Constant" && n.attrs.size() == 1) {
      auto& [key, a] = *n.attrs.begin();
      // Normalise the scalar and list forms into the tensor form.
      if (key == "value_float" || key == "value_floats") {
        a.t.dtype = DType::F32;
        a.t.f32 = key == "value_float" ? std::vector<float>{a.f} : a.floats;
        if (key == "value_floats") a.t.shape = {static_cast<int64_t>(a.floats.size())};
      } else if (key == "value_int" || key == "value_ints") {
        a.t.dtype = DType::I64;
        a.t.i64 = key == "value_int" ? std::vector<int64_t>{a.i} : a.ints;
        if (key == "value_ints") a.t.shape = {static_cast<int64_t>(a.ints.size())};
      } else if (key == "value") {
        TEMPO_CHECK(a.kind == OnnxAttr::Kind::kTensor, what + ": " + n.where() + ": attribute 'value' must be a tensor");
      }
      a.t.name = n.outputs[0];
      if (a.t.dtype == DType::I64) constants[n.outputs[0]] = &a.t;
    }
    for (const auto& in : n.inputs) used.insert(in);
  }
  // Which values are integers (shapes and indices), by the operators' rules.
  std::set<std::string> ints;
  for (const auto& [name, t] : constants) ints.insert(name);
  for (const auto& n : g.nodes) {
    const std::string& op = n.op;
    bool is_int = false;
    if (op == "Shape" || op == "Equal") {
      is_int = true;
    } else if (op == "Cast") {
      const int64_t to = n.attr_int("to", 0);
      is_int = to == 6 || to == 7 || to == 9;
    } else if (op == "ConstantOfShape") {
      is_int = n.attrs.count("value") && n.attrs.at("value").t.dtype == DType::I64;
    } else if (op == "Where") {
      is_int = n.inputs.size() == 3 && ints.count(n.inputs[1]) && ints.count(n.inputs[2]);
    } else if (op == "Gather" || op == "Unsqueeze" || op == "Concat" || op == "Slice" || op == "Reshape" ||
               op == "Add" || op == "Sub" || op == "Mul" || op == "Div" || op == "Identity" || op == "Expand") {
      is_int = !n.inputs.empty() && ints.count(n.inputs[0]);
      if (is_int && (op == "Concat" || op == "Add" || op == "Sub" || op == "Mul" || op == "Div"))
        for (const auto& i : n.inputs)
          TEMPO_CHECK(ints.count(i), what + ": " + n.where() + ": mixes integer and float inputs");
    }
    if (is_int) ints.insert(n.outputs[0]);
  }
  TEMPO_CHECK(!ints.count(g.output), what + ": the output '" + g.output + "' is an integer tensor");
  NodeChecker checker(g, constants, ints);
  for (const auto& n : g.nodes) {
    checker.check(n);
    // Only the first output of these is computed; the rest must stay unused.
    if (n.op == "BatchNormalization" || n.op == "MaxPool" || n.op == "Dropout" || n.op == "LayerNormalization")
      for (size_t i = 1; i < n.outputs.size(); ++i)
        TEMPO_CHECK(n.outputs[i].empty() || (!used.count(n.outputs[i]) && n.outputs[i] != g.output),
                    what + ": " + n.where() + ": output " + std::to_string(i) + " ('" + n.outputs[i] +
                        "') is used; Tempo computes only the first output of " + n.op);
  }
  return g;
}

OnnxGraph read_onnx(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file(path, "ONNX model");
  return parse_onnx(bytes.data(), bytes.size(), path);
}

std::string replace_onnx_initializers(const uint8_t* data, size_t size, const std::string& what,
                                      const std::vector<NamedTensor>& tensors) {
  parse_onnx(data, size, what);  // the same checks as for training
  onnx::ModelProto m;
  TEMPO_CHECK(m.ParseFromArray(data, static_cast<int>(size)), what + ": not an ONNX model");
  std::map<std::string, const NamedTensor*> by_name;
  for (const auto& t : tensors) by_name[t.name] = &t;
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    auto it = by_name.find(t.name());
    if (it == by_name.end()) continue;
    const NamedTensor& v = *it->second;
    const NamedTensor old = convert_tensor(t, what);
    TEMPO_CHECK(old.dtype == DType::F32 && v.dtype == DType::F32 && old.shape == v.shape,
                what + ": initializer '" + t.name() + "' has shape " + shape_str(old.shape) +
                    ", the weights give " + shape_str(v.shape));
    t.clear_float_data();
    t.set_data_type(onnx::TensorProto::FLOAT);
    t.set_raw_data(std::string(reinterpret_cast<const char*>(v.f32.data()), v.f32.size() * sizeof(float)));
    by_name.erase(it);
  }
  TEMPO_CHECK(by_name.empty(), what + ": the graph has no initializer '" + (by_name.empty() ? "" : by_name.begin()->first) +
                                   "' to take the weights' tensor of that name");
  std::string out;
  TEMPO_CHECK(m.SerializeToString(&out), what + ": could not serialise the model");
  return out;
}

}  // namespace tempo
