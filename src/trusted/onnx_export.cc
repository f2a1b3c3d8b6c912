#include "trusted/onnx_export.h"

#include <onnx/onnx_pb.h>

#include <vector>

#include "common/error.h"
#include "trusted/io/file_util.h"
#include "trusted/io/onnx.h"

namespace tempo {

namespace {

class Writer {
 public:
  explicit Writer(const Model& m) : m_(m), g_(proto_.mutable_graph()) {
    proto_.set_ir_version(8);
    proto_.set_producer_name("tempo");
    auto* o = proto_.add_opset_import();
    o->set_domain("");
    o->set_version(13);
    g_->set_name(m.name);
  }

  std::string run() {
    Shape in = {-1};
    in.insert(in.end(), m_.input_shape.begin(), m_.input_shape.end());
    value(g_->add_input(), "input", in);
    const std::string out = emit(*m_.root, "input", "");
    // The last node writes the graph's output under its own name.
    value(g_->add_output(), out, {-1, m_.num_classes});
    std::string bytes;
    TEMPO_CHECK(proto_.SerializeToString(&bytes), "model " + m_.name + ": could not serialise the ONNX graph");
    return bytes;
  }

 private:
  static void value(onnx::ValueInfoProto* v, const std::string& name, const Shape& dims) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) {
      auto* dim = t->mutable_shape()->add_dim();
      if (d < 0)
        dim->set_dim_param("batch");
      else
        dim->set_dim_value(d);
    }
  }
  void initializer(const std::string& name, const Tensor& t) {
    auto* p = g_->add_initializer();
    p->set_name(name);
    p->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : t.shape()) p->add_dims(d);
    p->set_raw_data(std::string(reinterpret_cast<const char*>(t.data()), sizeof(float) * static_cast<size_t>(t.numel())));
  }
  onnx::NodeProto* node(const std::string& op, std::vector<std::string> in, const std::string& name) {
    auto* n = g_->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (auto& i : in) n->add_input(i);
    n->add_output(name.empty() ? op + "_" + std::to_string(g_->node_size()) : name + "/" + op);
    return n;
  }
  static void ints(onnx::NodeProto* n, const std::string& key, std::vector<int64_t> v) {
    auto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::INTS);
    for (int64_t x : v) a->add_ints(x);
  }
  static void integer(onnx::NodeProto* n, const std::string& key, int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(v);
  }
  static void real(onnx::NodeProto* n, const std::string& key, float v) {
    auto* a = n->add_attribute();
    a->set_name(key);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(v);
  }
  // The name a node gets from the layer's state prefix ("layer1.0.conv1.").
  static std::string label(const std::string& prefix, const std::string& fallback) {
    return prefix.empty() ? fallback : prefix.substr(0, prefix.size() - 1);
  }
  void window(onnx::NodeProto* n, int64_t k, int64_t s, int64_t p) {
    ints(n, "kernel_shape", {k, k});
    ints(n, "strides", {s, s});
    ints(n, "pads", {p, p, p, p});
  }

  // Writes the nodes of `l` reading `x`; returns its output's name.
  std::string emit(Layer& l, const std::string& x, const std::string& prefix) {
    const std::string name = label(prefix, l.kind() + "_" + std::to_string(g_->node_size()));
    if (auto* s = dynamic_cast<Sequential*>(&l)) {
      std::string h = x;
      for (size_t i = 0; i < s->size(); ++i) h = emit(s->at(i), h, prefix + s->name_at(i) + ".");
      return h;
    }
    if (auto* b = dynamic_cast<ResidualBlock*>(&l)) {
      std::vector<Layer*> parts;
      b->for_each_child([&](Layer& c) { parts.push_back(&c); });
      const std::string main = emit(*parts[0], x, prefix);
      const std::string shortcut = parts.size() > 1 ? emit(*parts[1], x, prefix + "downsample.") : x;
      auto* add = node("Add", {main, shortcut}, name + "/add");
      return node("Relu", {add->output(0)}, name + "/relu")->output(0);
    }
    if (auto* c = dynamic_cast<Conv2d*>(&l)) {
      initializer(prefix + "weight", c->weight);
      std::vector<std::string> in = {x, prefix + "weight"};
      if (c->has_bias) {
        initializer(prefix + "bias", c->bias);
        in.push_back(prefix + "bias");
      }
      auto* n = node("Conv", in, name);
      window(n, c->kernel, c->stride, c->padding);
      ints(n, "dilations", {1, 1});
      integer(n, "group", 1);
      return n->output(0);
    }
    if (auto* f = dynamic_cast<Linear*>(&l)) {
      initializer(prefix + "weight", f->weight);
      std::vector<std::string> in = {x, prefix + "weight"};
      if (f->has_bias) {
        initializer(prefix + "bias", f->bias);
        in.push_back(prefix + "bias");
      }
      auto* n = node("Gemm", in, name);
      integer(n, "transB", 1);
      return n->output(0);
    }
    if (auto* bn = dynamic_cast<BatchNorm2d*>(&l)) {
      for (auto [key, t] : {std::pair<const char*, const Tensor*>{"weight", &bn->weight}, {"bias", &bn->bias},
                            {"running_mean", &bn->running_mean}, {"running_var", &bn->running_var}})
        initializer(prefix + key, *t);
      auto* n = node("BatchNormalization",
                     {x, prefix + "weight", prefix + "bias", prefix + "running_mean", prefix + "running_var"}, name);
      real(n, "epsilon", static_cast<float>(bn->eps));
      real(n, "momentum", static_cast<float>(1.0 - bn->momentum));
      return n->output(0);
    }
    if (dynamic_cast<ReLU*>(&l)) return node("Relu", {x}, name)->output(0);
    if (dynamic_cast<Dropout*>(&l)) return x;  // inference: the identity
    if (dynamic_cast<Flatten*>(&l)) {
      auto* n = node("Flatten", {x}, name);
      integer(n, "axis", 1);
      return n->output(0);
    }
    if (auto* p = dynamic_cast<MaxPool2d*>(&l)) {
      auto* n = node("MaxPool", {x}, name);
      window(n, p->kernel(), p->stride(), p->padding());
      return n->output(0);
    }
    if (auto* p = dynamic_cast<AvgPool2d*>(&l)) {
      auto* n = node("AveragePool", {x}, name);
      window(n, p->kernel(), p->stride(), p->padding());
      integer(n, "count_include_pad", 1);
      return n->output(0);
    }
    if (auto* p = dynamic_cast<AdaptiveAvgPool2d*>(&l); p && p->global())
      return node("GlobalAveragePool", {x}, name)->output(0);
    throw Error("model " + m_.name + ": tempo export does not write " + l.kind() +
                " layers yet; export from PyTorch (torch.onnx.export) and train that file with --model FILE.onnx, "
                "which `tempo export` then fills with the trained weights");
  }

  const Model& m_;
  onnx::ModelProto proto_;
  onnx::GraphProto* g_;
};

}  // namespace

std::string export_onnx(const Model& m) {
  if (is_onnx_model(m.name)) {
    const std::vector<uint8_t> bytes = read_file(m.name, "ONNX model");
    std::vector<NamedTensor> weights;
    for (const auto& t : m.state_tensors())
      if (t.dtype == DType::F32) weights.push_back(t);
    return replace_onnx_initializers(bytes.data(), bytes.size(), m.name, weights);
  }
  return Writer(m).run();
}

}  // namespace tempo
