// The model zoo against PyTorch: state_dict names, order, dtypes and shapes
// (tests/ref/make_references.py writes state_<model>.txt from
// tests/py/tempo_models.py), initialisation statistics (PyTorch's rules, and
// torch's own initialisation), strict loading errors, save/load round trips,
// and a Tempo-saved file loaded by PyTorch with load_state_dict(strict=True)
// giving the same eval-mode logits as Tempo.
#include <gtest/gtest.h>

#include "test_util.h"
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "common/error.h"
#include "trusted/rng.h"
#include "trusted/io/safetensors.h"
#include "trusted/offload/linear_backend.h"
#include "trusted/model.h"

namespace tempo {
namespace {

namespace fs = std::filesystem;

const std::vector<std::string> kModels = {"mlp", "cnn", "resnet18", "resnet50", "vgg16", "vit"};

using testutil::ref_dir;

struct TempDir : testutil::TempDir {
  TempDir() : testutil::TempDir("tempo_models") {}
};

// One line of state_<model>.txt.
struct TorchEntry {
  std::string name, dtype;
  Shape shape;
  double mean = 0, std = 0, min = 0, max = 0;
};

std::vector<TorchEntry> read_torch_state(const std::string& path) {
  std::ifstream f(path);
  std::vector<TorchEntry> out;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    std::istringstream s(line);
    TorchEntry e;
    std::string shape;
    s >> e.name >> e.dtype >> shape >> e.mean >> e.std >> e.min >> e.max;
    if (shape != "-") {
      std::istringstream d(shape);
      std::string tok;
      while (std::getline(d, tok, ',')) e.shape.push_back(std::stoll(tok));
    }
    out.push_back(e);
  }
  return out;
}

std::string param_of(const std::string& name) { return name.substr(name.rfind('.') + 1); }
std::string module_of(const std::string& name) { return name.substr(0, name.rfind('.')); }

class PerModel : public testing::TestWithParam<std::string> {};

INSTANTIATE_TEST_SUITE_P(Zoo, PerModel, testing::ValuesIn(kModels),
                         [](const testing::TestParamInfo<std::string>& i) { return i.param; });

// ---- names, order, dtypes, shapes --------------------------------------------------------------

TEST_P(PerModel, StateDictMatchesPyTorchExactly) {
  REF_FILE_OR_FAIL(path, "state_" + GetParam() + ".txt");
  const auto torch = read_torch_state(path);
  auto m = build_model(GetParam(), 0);
  ASSERT_EQ(m->state.size(), torch.size()) << "number of state_dict entries";
  for (size_t i = 0; i < torch.size(); ++i) {
    const StateEntry& e = m->state[i];
    const TorchEntry& t = torch[i];
    EXPECT_EQ(e.name, t.name) << "entry " << i << " (state_dict order)";
    EXPECT_EQ(e.counter ? "I64" : "F32", t.dtype) << t.name;
    const Shape shape = e.counter ? Shape{} : e.value->shape();
    EXPECT_EQ(shape, t.shape) << t.name << ": tempo " << shape_str(shape) << ", torch " << shape_str(t.shape);
    // Trainable exactly when PyTorch's entry is a parameter (not a buffer).
    const std::string p = param_of(t.name);
    const bool buffer = p == "running_mean" || p == "running_var" || p == "num_batches_tracked";
    EXPECT_EQ(e.grad != nullptr, !buffer) << t.name;
    if (e.grad) {
      EXPECT_EQ(e.grad->shape(), e.value->shape()) << t.name;
    }
  }
  int64_t torch_params = 0;
  for (const auto& t : torch) {
    const std::string p = param_of(t.name);
    if (p != "running_mean" && p != "running_var" && p != "num_batches_tracked") torch_params += numel_of(t.shape);
  }
  EXPECT_EQ(m->parameter_count(), torch_params);
}

// ---- initialisation ----------------------------------------------------------------------------

struct Stats {
  double mean = 0, std = 0, min = 0, max = 0;
  int64_t n = 0;
};

Stats stats_of(const Tensor& t) {
  Stats s;
  s.n = t.numel();
  s.min = s.max = t[0];
  double sum = 0;
  for (int64_t i = 0; i < s.n; ++i) {
    sum += t[i];
    s.min = std::min<double>(s.min, t[i]);
    s.max = std::max<double>(s.max, t[i]);
  }
  s.mean = sum / static_cast<double>(s.n);
  double ss = 0;
  for (int64_t i = 0; i < s.n; ++i) ss += (t[i] - s.mean) * (t[i] - s.mean);
  s.std = s.n > 1 ? std::sqrt(ss / static_cast<double>(s.n - 1)) : 0.0;
  return s;
}

// The rule of DESIGN.md §4 for one tensor: a constant, U(−b, b) or N(0, σ²).
struct Rule {
  enum Kind { kConst, kUniform, kNormal } kind;
  double value;  // the constant, the bound b or σ
  std::string why;
};

Rule rule_for(const std::string& model, const std::string& name, const Model& m) {
  const std::string p = param_of(name), mod = module_of(name);
  const StateEntry* weight = nullptr;
  bool batchnorm = false;
  for (const auto& e : m.state) {
    if (e.name == mod + ".weight") weight = &e;
    if (e.name == mod + ".running_mean") batchnorm = true;
  }
  if (model == "vit") {
    if (p == "cls_token" || p == "pos_embed") return {Rule::kNormal, 0.02, "vit token embeddings N(0, 0.02^2)"};
    if (p == "in_proj_weight") {
      const Shape* ws = nullptr;
      for (const auto& e : m.state)
        if (e.name == name) ws = &e.value->shape();
      return {Rule::kUniform, std::sqrt(6.0 / static_cast<double>((*ws)[0] + (*ws)[1])), "xavier_uniform"};
    }
    if (p == "in_proj_bias" || name.size() >= 13 && name.compare(name.size() - 13, 13, "out_proj.bias") == 0)
      return {Rule::kConst, 0.0, "MultiheadAttention zeroes its biases"};
    if (mod.substr(mod.rfind('.') + 1).rfind("norm", 0) == 0)
      return {Rule::kConst, p == "weight" ? 1.0 : 0.0, "LayerNorm weight 1, bias 0"};
  }
  if (p == "num_batches_tracked" || p == "running_mean") return {Rule::kConst, 0.0, "buffer"};
  if (p == "running_var") return {Rule::kConst, 1.0, "buffer"};
  if (batchnorm) return {Rule::kConst, p == "weight" ? 1.0 : 0.0, "BatchNorm weight 1, bias 0"};
  const Shape& ws = weight->value->shape();
  int64_t fan_in = 1;
  for (size_t i = 1; i < ws.size(); ++i) fan_in *= ws[i];
  const double uniform_bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  const bool conv = ws.size() == 4;
  if (model == "cnn" || model == "mlp" || model == "vit")
    return {Rule::kUniform, uniform_bound, "default init U(-1/sqrt(fan_in), 1/sqrt(fan_in))"};
  if (conv) {
    if (p == "bias") return {Rule::kConst, 0.0, "conv bias 0"};
    const double fan_out = static_cast<double>(ws[0] * ws[2] * ws[3]);
    return {Rule::kNormal, std::sqrt(2.0 / fan_out), "kaiming_normal fan_out relu"};
  }
  if (model == "vgg16")
    return p == "weight" ? Rule{Rule::kNormal, 0.01, "VGG linear N(0, 0.01)"} : Rule{Rule::kConst, 0.0, "VGG linear bias 0"};
  return {Rule::kUniform, uniform_bound, "ResNet fc default init"};
}

TEST_P(PerModel, InitialisationFollowsPyTorchRules) {
  REF_FILE_OR_FAIL(path, "state_" + GetParam() + ".txt");
  const auto torch = read_torch_state(path);
  auto m = build_model(GetParam(), 5);
  ASSERT_EQ(m->state.size(), torch.size());
  int checked_statistically = 0;
  for (size_t i = 0; i < torch.size(); ++i) {
    const StateEntry& e = m->state[i];
    const TorchEntry& t = torch[i];
    SCOPED_TRACE(t.name);
    const Rule r = rule_for(GetParam(), t.name, *m);
    if (e.counter) {
      EXPECT_EQ(*e.counter, 0);
      continue;
    }
    const Stats s = stats_of(*e.value);
    const double n = static_cast<double>(s.n);
    switch (r.kind) {
      case Rule::kConst:
        EXPECT_EQ(s.min, r.value) << r.why;
        EXPECT_EQ(s.max, r.value) << r.why;
        EXPECT_EQ(t.min, r.value) << "torch: " << r.why;  // the rule is torch's
        EXPECT_EQ(t.max, r.value) << "torch: " << r.why;
        break;
      case Rule::kUniform:
        EXPECT_LE(s.max, r.value) << r.why;
        EXPECT_GE(s.min, -r.value) << r.why;
        EXPECT_LE(t.max, r.value * (1 + 1e-6)) << "torch: " << r.why;
        EXPECT_GE(t.min, -r.value * (1 + 1e-6)) << "torch: " << r.why;
        if (s.n >= 100) {
          // std of U(−b, b) is b/√3; its estimate has relative s.e. ≈ 0.45/√n.
          EXPECT_NEAR(s.std, r.value / std::sqrt(3.0), 3.0 / std::sqrt(n) * r.value / std::sqrt(3.0)) << r.why;
          EXPECT_NEAR(s.mean, 0.0, 6.0 * s.std / std::sqrt(n)) << r.why;
          EXPECT_GT(s.max, r.value * (1 - 20.0 / n)) << r.why;
          EXPECT_LT(s.min, -r.value * (1 - 20.0 / n)) << r.why;
        }
        break;
      case Rule::kNormal:
        if (s.n >= 100) {
          // s.e. of the std of a normal sample ≈ 0.71/√n.
          EXPECT_NEAR(s.std, r.value, 4.0 / std::sqrt(n) * r.value) << r.why;
          EXPECT_NEAR(s.mean, 0.0, 6.0 * r.value / std::sqrt(n)) << r.why;
          EXPECT_NEAR(t.std, r.value, 4.0 / std::sqrt(n) * r.value) << "torch: " << r.why;
        }
        break;
    }
    // And against torch's own draw: the two estimates agree.
    if (s.n >= 100 && r.kind != Rule::kConst) {
      EXPECT_NEAR(s.std, t.std, 5.0 / std::sqrt(n) * t.std) << "tempo std " << s.std << " vs torch " << t.std;
      ++checked_statistically;
    }
  }
  EXPECT_GT(checked_statistically, 0);
  // Different seeds give different weights; the same seed the same ones.
  auto a = build_model(GetParam(), 5), b = build_model(GetParam(), 6);
  const StateEntry& ea = a->state[0];
  const StateEntry& eb = b->state[0];
  const StateEntry& em = m->state[0];
  EXPECT_TRUE(std::equal(ea.value->data(), ea.value->data() + ea.value->numel(), em.value->data()));
  EXPECT_FALSE(std::equal(ea.value->data(), ea.value->data() + ea.value->numel(), eb.value->data()));
}

// nn.TransformerEncoder deep-copies its layer: every encoder layer of a
// fresh `vit` holds the same weights, as in PyTorch. vit:CxHxW sizes the
// patch embedding and the position embeddings; bad shapes are refused.
TEST(Vit, LayersStartEqualAndInputShapeIsAParameter) {
  auto m = build_model("vit", 3);
  std::map<std::string, const Tensor*> by_name;
  for (const auto& e : m->state) by_name[e.name] = e.value;
  int compared = 0;
  for (const auto& [name, t] : by_name) {
    if (name.rfind("encoder.layers.0.", 0) != 0) continue;
    const std::string rest = name.substr(17);
    for (int l = 1; l < 6; ++l) {
      const Tensor* o = by_name.at("encoder.layers." + std::to_string(l) + "." + rest);
      EXPECT_TRUE(std::equal(t->data(), t->data() + t->numel(), o->data())) << rest << " of layer " << l;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 5 * 12);
  EXPECT_EQ(by_name.at("pos_embed")->shape(), (Shape{1, 50, 192}));

  auto c = build_model("vit:3x32x32", 3);
  EXPECT_EQ(c->input_shape, (Shape{3, 32, 32}));
  for (const auto& e : c->state) {
    if (e.name == "pos_embed") EXPECT_EQ(e.value->shape(), (Shape{1, 65, 192}));
    if (e.name == "patch_embed.weight") EXPECT_EQ(e.value->shape(), (Shape{192, 3, 4, 4}));
  }
  for (const std::string bad : {"vit:3x30x32", "vit:3x32", "vit:0x32x32", "vit:3x32x32x", "vit:", "vitx"}) {
    try {
      build_model(bad, 0);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& e) {
      std::printf("  %s: %s\n", bad.c_str(), e.what());
      EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
    }
  }
}

// ---- strict loading -----------------------------------------------------------------------------

// Loading a file that differs from the model in one way throws an Error that
// names the tensor.
void expect_load_error(Model& m, const std::string& path, const std::vector<NamedTensor>& tensors,
                       const std::string& must_name) {
  write_safetensors(path, tensors);
  try {
    m.load(path);
    ADD_FAILURE() << "loading " << path << " did not throw (expected an error naming '" << must_name << "')";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'" + must_name + "'"), std::string::npos)
        << "the message does not name '" << must_name << "': " << e.what();
    std::printf("  %s\n", e.what());
  }
}

std::vector<NamedTensor> as_list(const TensorMap& m, const Model& order) {
  std::vector<NamedTensor> out;
  for (const auto& e : order.state) {
    auto it = m.find(e.name);
    if (it != m.end()) out.push_back(it->second);
  }
  for (const auto& [k, v] : m) {
    bool known = false;
    for (const auto& e : order.state) known |= e.name == k;
    if (!known) out.push_back(v);
  }
  return out;
}

TEST(ModelLoading, StrictErrorsNameTheTensor) {
  TempDir dir;
  for (const std::string name : {"cnn", "resnet18"}) {
    SCOPED_TRACE(name);
    auto m = build_model(name, 1);
    const std::string good = dir / (name + ".safetensors");
    m->save(good);
    const TensorMap file = read_safetensors(good);
    const std::string bad = dir / (name + "_bad.safetensors");
    auto fresh = build_model(name, 2);
    const std::string victim = name == "cnn" ? "3.bias" : "layer2.0.downsample.1.running_var";
    const std::string weight = name == "cnn" ? "7.weight" : "layer3.0.conv1.weight";  // 256×128×3×3
    {  // missing
      TensorMap t = file;
      t.erase(victim);
      expect_load_error(*fresh, bad, as_list(t, *m), victim);
    }
    {  // extra
      TensorMap t = file;
      NamedTensor x;
      x.name = "extra.weight";
      x.shape = {2};
      x.f32 = {1, 2};
      t[x.name] = x;
      expect_load_error(*fresh, bad, as_list(t, *m), "extra.weight");
    }
    {  // wrong shape (same number of values: a transposed layout)
      TensorMap t = file;
      NamedTensor& w = t.at(weight);
      std::swap(w.shape[0], w.shape[1]);
      expect_load_error(*fresh, bad, as_list(t, *m), weight);
    }
    {  // wrong shape (more values)
      TensorMap t = file;
      NamedTensor& w = t.at(victim);
      w.shape[0] += 1;
      w.f32.push_back(0.5f);
      expect_load_error(*fresh, bad, as_list(t, *m), victim);
    }
    {  // wrong dtype: I64 where F32 belongs
      TensorMap t = file;
      NamedTensor& w = t.at(victim);
      w.dtype = DType::I64;
      w.i64.assign(w.f32.size(), 1);
      w.f32.clear();
      expect_load_error(*fresh, bad, as_list(t, *m), victim);
    }
    if (name == "resnet18") {  // wrong dtype: F32 where the I64 counter belongs
      TensorMap t = file;
      NamedTensor& w = t.at("bn1.num_batches_tracked");
      w.dtype = DType::F32;
      w.f32 = {0.0f};
      w.i64.clear();
      expect_load_error(*fresh, bad, as_list(t, *m), "bn1.num_batches_tracked");
    }
    // And the good file still loads.
    EXPECT_NO_THROW(fresh->load(good));
  }
}

// ---- round trip ----------------------------------------------------------------------------------

// Gives every BatchNorm non-trivial statistics and affine parameters, and the
// counters a value, so that loads and saves are checked on all of them.
void perturb_batchnorm(Model& m, uint64_t seed) {
  Rng rng(seed);
  for (auto& e : m.state) {
    const std::string p = param_of(e.name);
    if (e.counter) {
      *e.counter = 7 + static_cast<int64_t>(rng.below(100));
      continue;
    }
    bool bn = false;
    for (const auto& o : m.state) bn |= o.name == module_of(e.name) + ".running_mean";
    if (!bn) continue;
    Tensor& t = *e.value;
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (p == "running_var")
        t[i] = static_cast<float>(rng.uniform(0.5, 1.5));
      else if (p == "weight")
        t[i] = static_cast<float>(1.0 + 0.1 * rng.normal());
      else
        t[i] = static_cast<float>(0.1 * rng.normal());
    }
  }
}

std::vector<char> read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

TEST_P(PerModel, SaveLoadRoundTripIsExact) {
  TempDir dir;
  auto a = build_model(GetParam(), 21);
  perturb_batchnorm(*a, 3);
  const std::string f1 = dir / "a.safetensors", f2 = dir / "b.safetensors";
  a->save(f1);
  auto b = build_model(GetParam(), 22);
  b->load(f1);
  ASSERT_EQ(a->state.size(), b->state.size());
  for (size_t i = 0; i < a->state.size(); ++i) {
    const StateEntry &ea = a->state[i], &eb = b->state[i];
    ASSERT_EQ(ea.name, eb.name);
    if (ea.counter) {
      EXPECT_EQ(*ea.counter, *eb.counter) << ea.name;
    } else {
      ASSERT_EQ(ea.value->shape(), eb.value->shape()) << ea.name;
      EXPECT_TRUE(std::equal(ea.value->data(), ea.value->data() + ea.value->numel(), eb.value->data())) << ea.name;
    }
  }
  b->save(f2);
  EXPECT_TRUE(read_bytes(f1) == read_bytes(f2)) << "saving the loaded model gives another file";
  // The file holds exactly the state_dict, in its order, with its dtypes.
  const TensorMap file = read_safetensors(f1);
  EXPECT_EQ(file.size(), a->state.size());
  for (const auto& e : a->state) {
    ASSERT_TRUE(file.count(e.name)) << e.name;
    EXPECT_EQ(file.at(e.name).dtype, e.counter ? DType::I64 : DType::F32) << e.name;
  }
}

// ---- PyTorch reads Tempo's file ------------------------------------------------------------------

TEST_P(PerModel, PyTorchLoadsTempoFileStrictlyAndAgreesOnLogits) {
  REF_FILE_OR_FAIL(script_check, "state_" + GetParam() + ".txt");
  TempDir dir;
  auto m = build_model(GetParam(), 31);
  perturb_batchnorm(*m, 4);
  const std::string weights = dir / "w.safetensors", input = dir / "x.safetensors", output = dir / "y.safetensors";
  m->save(weights);
  NamedTensor x;
  x.name = "x";
  x.shape = {3};
  x.shape.insert(x.shape.end(), m->input_shape.begin(), m->input_shape.end());
  Rng rng(9);
  x.f32.resize(static_cast<size_t>(numel_of(x.shape)));
  for (auto& v : x.f32) v = static_cast<float>(rng.normal());
  write_safetensors(input, {x});

  const std::string cmd = std::string(TEMPO_PYTHON) + " " + TEMPO_SOURCE_DIR + "/tests/ref/make_references.py logits " +
                          GetParam() + " " + weights + " " + input + " " + output + " 2>&1";
  std::FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string log;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) log += buf;
  const int rc = pclose(p);
  ASSERT_EQ(rc, 0) << cmd << "\n" << log;
  const TensorMap out = read_safetensors(output);
  const NamedTensor& want = out.at("logits");

  Tensor xt(x.shape);
  std::copy(x.f32.begin(), x.f32.end(), xt.data());
  TeeOnlyBackend be, local;
  Context ctx{&be, &local, false, nullptr};
  const Tensor& got = m->forward(xt, ctx);
  ASSERT_EQ(got.shape(), want.shape);
  double num = 0, den = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(got[i]) - want.f32[static_cast<size_t>(i)]));
    den = std::max(den, std::fabs(static_cast<double>(want.f32[static_cast<size_t>(i)])));
  }
  const double rel = num / den;
  std::printf("  %s eval logits: max |tempo - torch| / max|torch| = %.3g (max|logit| %.3g)\n", GetParam().c_str(),
              rel, den);
  RecordProperty("logits_rel_err", std::to_string(rel));
  EXPECT_GT(den, 0.0);
  EXPECT_LE(rel, 1e-5);
}

}  // namespace
}  // namespace tempo
