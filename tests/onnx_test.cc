// Models read from ONNX (--model FILE.onnx): the zoo's exports compute
// exactly what the zoo's models compute; the initializers are the initial
// weights under PyTorch's names; every generic operator's backward agrees
// with finite differences; bad files get one clear error before training.
// (Whole training runs against PyTorch: ReferenceRun.onnx_* in
// training_parity_test.cc.)
#include <gtest/gtest.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "test_util.h"
#include "trusted/io/onnx.h"
#include "trusted/io/safetensors.h"
#include "trusted/model.h"
#include "trusted/nn/graph.h"
#include "trusted/onnx_export.h"

namespace tempo {
namespace {

using testutil::ref_dir;

// ---- graphs written here ------------------------------------------------------------------------

struct GraphBuilder {
  onnx::ModelProto m;
  onnx::GraphProto* g;
  explicit GraphBuilder(int opset = 13, Shape in = {-1, 1, 4, 4}, int64_t classes = 3) {
    m.set_ir_version(8);
    auto* o = m.add_opset_import();
    o->set_domain("");
    o->set_version(opset);
    g = m.mutable_graph();
    g->set_name("test");
    io(g->add_input(), "input", in);
    io(g->add_output(), "logits", {-1, classes});
  }
  static void io(onnx::ValueInfoProto* v, const std::string& name, const Shape& dims) {
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
  onnx::NodeProto* node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out,
                        const std::string& name = "") {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(name.empty() ? op + "_" + std::to_string(g->node_size()) : name);
    for (auto& i : in) n->add_input(i);
    for (auto& o : out) n->add_output(o);
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
  void weight(const std::string& name, const Shape& shape, uint64_t seed) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : shape) t->add_dims(d);
    for (float v : testutil::normal_vec(numel_of(shape), seed)) t->add_float_data(0.5f * v);
  }
  void int_const(const std::string& name, std::vector<int64_t> v) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    t->add_dims(static_cast<int64_t>(v.size()));
    for (int64_t x : v) t->add_int64_data(x);
  }
  std::string bytes() const {
    std::string s;
    m.SerializeToString(&s);
    return s;
  }
  OnnxGraph parse(const std::string& what = "test.onnx") const {
    const std::string s = bytes();
    return parse_onnx(reinterpret_cast<const uint8_t*>(s.data()), s.size(), what);
  }
};

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---- the zoo's exports ----------------------------------------------------------------------------

// The zoo model and its PyTorch export, from the same weights, on one batch:
// logits and every parameter gradient equal bit for bit (tee-only), so
// training through ONNX is training the zoo model.
void expect_same_models(Model* a, Model* b, const Shape& in, bool training = true) {
  ASSERT_EQ(a->state.size(), b->state.size());
  for (size_t i = 0; i < a->state.size(); ++i) EXPECT_EQ(a->state[i].name, b->state[i].name) << "state order";
  EXPECT_EQ(a->products.size(), b->products.size());
  for (size_t i = 0; i < std::min(a->products.size(), b->products.size()); ++i)
    EXPECT_EQ(a->products[i]->name, b->products[i]->name);
  EXPECT_EQ(a->input_shape, b->input_shape);
  EXPECT_EQ(a->num_classes, b->num_classes);
  Shape batch = {6};
  batch.insert(batch.end(), in.begin(), in.end());
  Tensor x(batch);
  const auto v = testutil::normal_vec(x.numel(), 5);
  std::copy(v.begin(), v.end(), x.data());
  TeeOnlyBackend be, local;
  Context ctx{&be, &local, training, nullptr};
  const Tensor ya = a->forward(x, ctx);
  const Tensor yb = b->forward(x, ctx);
  ASSERT_EQ(ya.shape(), yb.shape());
  for (int64_t i = 0; i < ya.numel(); ++i) ASSERT_EQ(ya[i], yb[i]) << "logit " << i;
  if (!training) return;
  Tensor dy(ya.shape());
  const auto d = testutil::normal_vec(dy.numel(), 6);
  std::copy(d.begin(), d.end(), dy.data());
  a->backward(dy, ctx);
  b->backward(dy, ctx);
  const auto pa = a->parameters(), pb = b->parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i)
    for (int64_t j = 0; j < pa[i].grad->numel(); ++j)
      ASSERT_EQ((*pa[i].grad)[j], (*pb[i].grad)[j]) << pa[i].name << "[" << j << "]";
}

void expect_same_as_zoo(const std::string& zoo, const std::string& run, const Shape& in) {
  REF_FILE_OR_FAIL(onnx_path, "run_" + run + ".onnx");
  REF_FILE_OR_FAIL(init, "run_" + run + "_init.safetensors");
  auto a = build_model(zoo, 0), b = build_model(onnx_path, 0);
  a->load(init);
  b->load(init);
  expect_same_models(a.get(), b.get(), in);
}

TEST(Onnx, TheCnnExportComputesAsTheZooCnn) { expect_same_as_zoo("cnn", "cnn_sgd", {1, 28, 28}); }
TEST(Onnx, TheResnet18ExportComputesAsTheZooResnet18) { expect_same_as_zoo("resnet18", "resnet18_sgd", {3, 32, 32}); }

// tempo export of a zoo model, read back: the same model with the same
// weights, in training (batch statistics) and in evaluation (running ones).
TEST(Onnx, ExportedZooModelsReadBackAsTheSameModels) {
  testutil::TempDir dir("tempo_onnx");
  for (const std::string name : {"mlp", "cnn", "resnet18"}) {
    SCOPED_TRACE(name);
    auto a = build_model(name, 4);
    for (auto& e : a->state)  // running statistics that are not the initial ones
      if (e.name.find("running_") != std::string::npos)
        for (int64_t i = 0; i < e.value->numel(); ++i) (*e.value)[i] += 0.25f + 0.01f * static_cast<float>(i % 7);
    const std::string path = dir / (name + ".onnx");
    {
      const std::string bytes = export_onnx(*a);
      std::ofstream(path, std::ios::binary) << bytes;
    }
    auto b = build_model(path, 0);
    expect_same_models(a.get(), b.get(), a->input_shape, false);
    expect_same_models(a.get(), b.get(), a->input_shape, true);
  }
  EXPECT_NE(error_of([] { export_onnx(*build_model("vit", 0)); }).find("torch.onnx.export"), std::string::npos);
}

// tempo export of a model read from ONNX keeps its graph, with new weights.
TEST(Onnx, ExportFillsAnImportedGraphWithTrainedWeights) {
  REF_FILE_OR_FAIL(onnx_path, "run_odd_resnet_sgd.onnx");
  REF_FILE_OR_FAIL(final_path, "run_odd_resnet_sgd_final.safetensors");
  testutil::TempDir dir("tempo_onnx");
  auto a = build_model(onnx_path, 0);
  a->load(final_path);
  const std::string path = dir / "trained.onnx";
  std::ofstream(path, std::ios::binary) << export_onnx(*a);
  auto b = build_model(path, 0);
  const TensorMap want = read_safetensors(final_path);
  for (const auto& e : b->state) {
    if (e.counter) continue;  // num_batches_tracked is not part of a graph
    const NamedTensor& w = want.at(e.name);
    for (int64_t i = 0; i < e.value->numel(); ++i) ASSERT_EQ((*e.value)[i], w.f32[static_cast<size_t>(i)]) << e.name;
  }
  expect_same_models(a.get(), b.get(), {1, 28, 28}, false);
}

TEST(Onnx, InitializersAreTheInitialWeightsUnderPyTorchsNames) {
  REF_FILE_OR_FAIL(onnx_path, "run_odd_resnet_sgd.onnx");
  REF_FILE_OR_FAIL(init, "run_odd_resnet_sgd_init.safetensors");
  auto m = build_model(onnx_path, 0);
  const TensorMap want = read_safetensors(init);  // PyTorch's state_dict
  ASSERT_EQ(m->state.size(), want.size());
  for (const auto& e : m->state) {
    SCOPED_TRACE(e.name);
    auto it = want.find(e.name);
    ASSERT_NE(it, want.end()) << "not a state_dict name";
    if (e.counter) {
      EXPECT_EQ(*e.counter, it->second.i64.at(0));
      continue;
    }
    ASSERT_EQ(e.value->shape(), it->second.shape);
    for (int64_t i = 0; i < e.value->numel(); ++i) ASSERT_EQ((*e.value)[i], it->second.f32[static_cast<size_t>(i)]);
  }
  // Six convolutions and the head go through the linear backend.
  EXPECT_EQ(m->products.size(), 7u);
  EXPECT_EQ(m->input_shape, (Shape{1, 28, 28}));
  EXPECT_EQ(m->num_classes, 10);
}

// ---- every generic operator's backward ----------------------------------------------------------

// loss = Σ r ⊙ model(x): its gradient by the graph's backward against
// central differences, for the input's stand-in (a parameter `p` the graph
// reads first) and every other parameter.
void expect_gradients_match(GraphBuilder& b, const Shape& in) {
  const OnnxGraph g = b.parse();
  GraphModel m(g);
  std::vector<StateEntry> state;
  m.state(state, "");
  TeeOnlyBackend be, local;
  Context ctx{&be, &local, true, nullptr};
  Shape batch = {2};
  batch.insert(batch.end(), in.begin(), in.end());
  Tensor x(batch);
  const auto xv = testutil::normal_vec(x.numel(), 11);
  std::copy(xv.begin(), xv.end(), x.data());
  const Tensor y0 = m.forward(x, ctx);
  Tensor r(y0.shape());
  const auto rv = testutil::normal_vec(r.numel(), 12);
  std::copy(rv.begin(), rv.end(), r.data());
  m.backward(r, ctx);
  auto loss = [&]() {
    const Tensor& y = m.forward(x, ctx);
    double s = 0;
    for (int64_t i = 0; i < y.numel(); ++i) s += static_cast<double>(y[i]) * r[i];
    return s;
  };
  int checked = 0;
  for (const auto& e : state) {
    if (!e.grad) continue;
    const Tensor analytic = *e.grad;
    for (int64_t i = 0; i < e.value->numel(); ++i) {
      const float keep = (*e.value)[i];
      const float h = 1e-2f;
      (*e.value)[i] = keep + h;
      const double up = loss();
      (*e.value)[i] = keep - h;
      const double down = loss();
      (*e.value)[i] = keep;
      const double numeric = (up - down) / (2.0 * h);
      EXPECT_NEAR(analytic[i], numeric, 2e-2 * std::max(1.0, std::fabs(numeric))) << e.name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

TEST(Onnx, GenericOperatorsBackwardMatchesFiniteDifferences) {
  // input (N×1×4×4) -> Gemm-free chain of the generic operators, every
  // parameter read by one of them:
  //   a = Pad(input + p0)  -> Slice back to 4×4 -> Transpose(0,1,3,2)
  //   b = a * p1 (broadcast 4), c = b / (p2 broadcast 1×1×4×1) - p3
  //   d = Concat(c, Erf(c)) on axis 1 -> Softmax over last -> Reshape N×-1 ... Gather a few columns
  //   e = MatMul of two activations: (N×2×4×4)·(N×2×4×4), then Flatten and Gemm to 3 logits.
  GraphBuilder b(13, {-1, 1, 4, 4}, 3);
  b.weight("p0", {1, 1, 4, 4}, 1);
  b.weight("p1", {4}, 2);
  b.weight("p2", {1, 1, 4, 1}, 3);
  b.weight("p3", {1}, 4);
  b.weight("fc.weight", {3, 8}, 5);
  b.weight("fc.bias", {3}, 6);
  for (int i = 0; i < 4; ++i) {  // keep p2 away from 0 (a divisor)
    auto* t = b.g->mutable_initializer(2);
    t->set_float_data(i, 1.5f + 0.25f * i);
  }
  b.int_const("pads", {0, 0, 1, 1, 0, 0, 1, 1});
  b.int_const("starts", {1, 1});
  b.int_const("ends", {5, 5});
  b.int_const("axes", {2, 3});
  b.int_const("shape", {0, -1});
  b.int_const("cols", {0, 5, 17, 31, 2, 9, 20, 30});
  b.node("Add", {"input", "p0"}, {"x0"});
  b.node("Pad", {"x0", "pads"}, {"x1"});
  b.node("Slice", {"x1", "starts", "ends", "axes"}, {"x2"});
  GraphBuilder::ints(b.node("Transpose", {"x2"}, {"x3"}), "perm", {0, 1, 3, 2});
  b.node("Mul", {"x3", "p1"}, {"x4"});
  b.node("Div", {"x4", "p2"}, {"x5"});
  b.node("Sub", {"x5", "p3"}, {"x6"});
  b.node("Erf", {"x6"}, {"x7"});
  GraphBuilder::integer(b.node("Concat", {"x6", "x7"}, {"x8"}), "axis", 1);
  b.node("Softmax", {"x8"}, {"x9"});
  b.node("MatMul", {"x9", "x8"}, {"x10"});
  b.node("Reshape", {"x10", "shape"}, {"x11"});
  GraphBuilder::integer(b.node("Gather", {"x11", "cols"}, {"x12"}), "axis", 1);
  GraphBuilder::integer(b.node("Flatten", {"x12"}, {"x13"}), "axis", 1);
  auto* gemm = b.node("Gemm", {"x13", "fc.weight", "fc.bias"}, {"logits"});
  GraphBuilder::integer(gemm, "transB", 1);
  expect_gradients_match(b, {1, 4, 4});
}

TEST(Onnx, ShapeArithmeticAndLayerNormPiecesMatchFiniteDifferences) {
  // LayerNorm as PyTorch exports it (ReduceMean, Sub, Pow, Sqrt, Div), a
  // parameter Expanded to the batch by a shape computed from the input
  // (Shape, Gather, Unsqueeze, Concat), and a Reshape to a computed shape.
  GraphBuilder b(13, {-1, 3, 5}, 4);
  b.weight("tok", {1, 1, 5}, 21);
  b.weight("fc.weight", {4, 20}, 22);
  b.int_const("zero", {0});
  b.int_const("ones", {1, 1});
  b.int_const("minus1", {-1});
  auto* two = b.g->add_initializer();
  two->set_name("two");
  two->set_data_type(onnx::TensorProto::FLOAT);
  two->add_float_data(2.0f);
  b.g->mutable_initializer()->RemoveLast();  // (a Constant node instead, as the export has)
  auto* c = b.node("Constant", {}, {"two"});
  auto* a = c->add_attribute();
  a->set_name("value_float");
  a->set_type(onnx::AttributeProto::FLOAT);
  a->set_f(2.0f);
  b.node("ReduceMean", {"input"}, {"m"});
  GraphBuilder::ints(b.g->mutable_node(b.g->node_size() - 1), "axes", {-1});
  b.node("Sub", {"input", "m"}, {"d"});
  b.node("Pow", {"d", "two"}, {"sq"});
  b.node("ReduceMean", {"sq"}, {"var"});
  GraphBuilder::ints(b.g->mutable_node(b.g->node_size() - 1), "axes", {-1});
  b.node("Sqrt", {"var"}, {"sd"});
  b.node("Div", {"d", "sd"}, {"ln"});
  b.node("Shape", {"input"}, {"shape"});
  b.node("Gather", {"shape", "zero"}, {"n1"});       // [N]
  b.node("Concat", {"n1", "ones"}, {"eshape"});      // [N, 1, 1]
  GraphBuilder::integer(b.g->mutable_node(b.g->node_size() - 1), "axis", 0);
  b.node("Expand", {"tok", "eshape"}, {"toks"});     // N×1×5
  b.node("Concat", {"toks", "ln"}, {"seq"});         // N×4×5
  GraphBuilder::integer(b.g->mutable_node(b.g->node_size() - 1), "axis", 1);
  b.node("Concat", {"n1", "minus1"}, {"flat"});      // [N, -1]
  GraphBuilder::integer(b.g->mutable_node(b.g->node_size() - 1), "axis", 0);
  b.node("Reshape", {"seq", "flat"}, {"rows"});
  GraphBuilder::integer(b.node("Gemm", {"rows", "fc.weight"}, {"logits"}), "transB", 1);
  // The input itself has no gradient here: check tok and fc through it.
  expect_gradients_match(b, {3, 5});
}

// Weights in K×N layout (Gemm with transB = 0, MatMul by an initializer,
// as `x @ W` exports): still products of the linear backend, gradients in
// the graph's layout.
TEST(Onnx, WeightsInKByNLayoutAreProductsWithGradients) {
  GraphBuilder b(13, {-1, 6}, 3);
  b.weight("w1", {6, 5}, 31);
  b.weight("b1", {5}, 32);
  b.weight("w2", {5, 3}, 33);
  b.node("Gemm", {"input", "w1", "b1"}, {"h"});
  b.node("Mul", {"h", "h"}, {"h2"});
  b.node("MatMul", {"h2", "w2"}, {"logits"});
  expect_gradients_match(b, {6});
  const OnnxGraph g = b.parse();
  GraphModel m(g);
  int products = 0;
  walk(m, [&](Layer& l) { products += l.product() != nullptr; });
  EXPECT_EQ(products, 2);
}

TEST(Onnx, ASharedValueSumsItsGradients) {
  // x used three times: by a Relu-free residual Add and a Mul with itself.
  GraphBuilder b(13, {-1, 4}, 2);
  b.weight("p", {4}, 7);
  b.weight("fc.weight", {2, 4}, 8);
  b.node("Add", {"input", "p"}, {"a"});
  b.node("Mul", {"a", "a"}, {"sq"});
  b.node("Add", {"sq", "a"}, {"s"});
  GraphBuilder::integer(b.node("Gemm", {"s", "fc.weight"}, {"logits"}), "transB", 1);
  expect_gradients_match(b, {4});
}

// ---- bad files -------------------------------------------------------------------------------------

TEST(Onnx, BadGraphsGetOneErrorNamingFileNodeAndOperator) {
  {
    GraphBuilder b;
    b.node("LSTM", {"input"}, {"logits"}, "my_lstm");
    const std::string e = error_of([&] { b.parse("model.onnx"); });
    EXPECT_NE(e.find("model.onnx"), std::string::npos) << e;
    EXPECT_NE(e.find("my_lstm"), std::string::npos) << e;
    EXPECT_NE(e.find("(LSTM)"), std::string::npos) << e;
    EXPECT_NE(e.find("not supported"), std::string::npos) << e;
  }
  {
    GraphBuilder b(11);
    EXPECT_NE(error_of([&] { b.parse(); }).find("opset 11 is not supported"), std::string::npos);
  }
  {
    GraphBuilder b;
    b.weight("w", {2, 1, 3, 3}, 1);
    auto* c = b.node("Conv", {"input", "w"}, {"logits"}, "conv");
    GraphBuilder::ints(c, "dilations", {2, 2});
    const std::string e = error_of([&] { b.parse(); });
    EXPECT_NE(e.find("node 'conv' (Conv): attribute dilations must be 1"), std::string::npos) << e;
  }
  {
    GraphBuilder b;
    b.node("Relu", {"nothing"}, {"logits"}, "r");
    EXPECT_NE(error_of([&] { b.parse(); }).find("input 'nothing' is not defined before it"), std::string::npos);
  }
  {  // a weight used twice (shared weights): refused when the layers are built
    GraphBuilder b(13, {-1, 4}, 4);
    b.weight("w", {4, 4}, 1);
    GraphBuilder::integer(b.node("Gemm", {"input", "w"}, {"h"}), "transB", 1);
    GraphBuilder::integer(b.node("Gemm", {"h", "w"}, {"logits"}), "transB", 1);
    const std::string e = error_of([&] { GraphModel m(b.parse()); });
    EXPECT_NE(e.find("used by several nodes"), std::string::npos) << e;
  }
  {  // BatchNormalization's running statistics output used downstream
    GraphBuilder b;
    for (const char* n : {"s", "bb", "m", "v"}) b.weight(n, {1}, 2);
    b.node("BatchNormalization", {"input", "s", "bb", "m", "v"}, {"y", "rm"}, "bn");
    b.node("Add", {"y", "rm"}, {"logits"});
    EXPECT_NE(error_of([&] { b.parse(); }).find("output 1 ('rm') is used"), std::string::npos);
  }
  EXPECT_NE(error_of([] {
              const std::string junk = "this is not a protobuf \x01\x02\xff";
              parse_onnx(reinterpret_cast<const uint8_t*>(junk.data()), junk.size(), "junk.onnx");
            }).find("junk.onnx: not an ONNX model"),
            std::string::npos);
  {  // an initializer whose data does not fill its shape
    GraphBuilder b;
    b.weight("w", {2, 1, 3, 3}, 1);
    b.g->mutable_initializer(0)->add_dims(5);
    b.node("Conv", {"input", "w"}, {"logits"});
    EXPECT_NE(error_of([&] { b.parse(); }).find("tensor 'w'"), std::string::npos);
  }
}

TEST(Onnx, TheCliRefusesABadModelBeforeTrainingAndWritesNothing) {
  testutil::TempDir dir("tempo_onnx");
  GraphBuilder b(13, {-1, 1, 28, 28}, 10);
  b.node("Celu", {"input"}, {"logits"}, "odd_activation");
  const std::string path = dir / "bad.onnx";
  {
    std::ofstream f(path, std::ios::binary);
    f << b.bytes();
  }
  const std::string save = dir / "out.safetensors";
  const std::string cmd = std::string(TEMPO_BINARY) + " train --model " + path +
                          " --data synthetic:64 --steps 1 --no-progress --save " + save + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  const int rc = pclose(p);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("node 'odd_activation' (Celu): operator not supported"), std::string::npos) << out;
  EXPECT_NE(out.find(path), std::string::npos) << out;
  EXPECT_EQ(out.find("step"), std::string::npos) << "trained before refusing: " << out;
  EXPECT_FALSE(std::filesystem::exists(save));
}

}  // namespace
}  // namespace tempo
