#include "trusted/model.h"

#include <cmath>
#include <cstdio>
#include <map>

#include "common/error.h"
#include "trusted/io/onnx.h"
#include "trusted/io/safetensors.h"
#include "trusted/nn/graph.h"

namespace tempo {

namespace {

// nn.Conv2d / nn.Linear reset_parameters(): kaiming_uniform(a=√5) gives
// U(−1/√fan_in, 1/√fan_in) for the weight; the bias is U(−1/√fan_in, 1/√fan_in).
void default_init(Tensor& w, Tensor* b, int64_t fan_in, Rng& rng) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  for (int64_t i = 0; i < w.numel(); ++i) w[i] = static_cast<float>(rng.uniform(-bound, bound));
  if (b)
    for (int64_t i = 0; i < b->numel(); ++i) (*b)[i] = static_cast<float>(rng.uniform(-bound, bound));
}

// kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2/fan_out).
void kaiming_normal_fan_out(Conv2d& c, Rng& rng) {
  const double std = std::sqrt(2.0 / static_cast<double>(c.out_channels * c.kernel * c.kernel));
  for (int64_t i = 0; i < c.weight.numel(); ++i) c.weight[i] = static_cast<float>(std * rng.normal());
  if (c.has_bias) c.bias.zero();
}

void init_default_all(Layer& root, Rng& rng) {
  walk(root, [&](Layer& l) {
    if (auto* c = dynamic_cast<Conv2d*>(&l))
      default_init(c->weight, c->has_bias ? &c->bias : nullptr, c->in_channels * c->kernel * c->kernel, rng);
    else if (auto* f = dynamic_cast<Linear*>(&l))
      default_init(f->weight, f->has_bias ? &f->bias : nullptr, f->in_features, rng);
  });
}

std::unique_ptr<Model> make_cnn() {
  auto m = std::make_unique<Model>();
  m->input_shape = {1, 28, 28};
  auto s = std::make_unique<Sequential>();
  s->add(std::make_unique<Conv2d>(1, 32, 3, 1, 1));
  s->add(std::make_unique<ReLU>());
  s->add(std::make_unique<MaxPool2d>(2));
  s->add(std::make_unique<Conv2d>(32, 64, 3, 1, 1));
  s->add(std::make_unique<ReLU>());
  s->add(std::make_unique<MaxPool2d>(2));
  s->add(std::make_unique<Flatten>());
  s->add(std::make_unique<Linear>(3136, 128));
  s->add(std::make_unique<ReLU>());
  s->add(std::make_unique<Linear>(128, 10));
  m->root = std::move(s);
  return m;
}

std::unique_ptr<Model> make_mlp() {
  auto m = std::make_unique<Model>();
  m->input_shape = {1, 28, 28};
  auto s = std::make_unique<Sequential>();
  s->add(std::make_unique<Flatten>());
  s->add(std::make_unique<Linear>(784, 256));
  s->add(std::make_unique<ReLU>());
  s->add(std::make_unique<Linear>(256, 10));
  m->root = std::move(s);
  return m;
}

std::unique_ptr<Model> make_resnet(ResidualBlock::Type type, const std::vector<int>& blocks) {
  auto m = std::make_unique<Model>();
  m->input_shape = {3, 32, 32};
  auto s = std::make_unique<Sequential>();
  s->add("conv1", std::make_unique<Conv2d>(3, 64, 3, 1, 1, false));
  s->add("bn1", std::make_unique<BatchNorm2d>(64));
  s->add("relu", std::make_unique<ReLU>());
  int64_t inplanes = 64;
  const int64_t widths[4] = {64, 128, 256, 512};
  for (int li = 0; li < 4; ++li) {
    auto layer = std::make_unique<Sequential>();
    for (int b = 0; b < blocks[static_cast<size_t>(li)]; ++b) {
      int64_t stride = (li > 0 && b == 0) ? 2 : 1;
      layer->add(std::make_unique<ResidualBlock>(type, inplanes, widths[li], stride));
      inplanes = widths[li] * ResidualBlock::expansion(type);
    }
    s->add("layer" + std::to_string(li + 1), std::move(layer));
  }
  s->add("avgpool", std::make_unique<AdaptiveAvgPool2d>(1, 1));
  s->add("flatten", std::make_unique<Flatten>());
  s->add("fc", std::make_unique<Linear>(inplanes, 10));
  m->root = std::move(s);
  return m;
}

std::unique_ptr<Model> make_vgg16() {
  auto m = std::make_unique<Model>();
  m->input_shape = {3, 32, 32};
  auto features = std::make_unique<Sequential>();
  const int cfg[] = {64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0};
  int64_t in = 3;
  for (int v : cfg) {
    if (v == 0) {
      features->add(std::make_unique<MaxPool2d>(2));
    } else {
      features->add(std::make_unique<Conv2d>(in, v, 3, 1, 1));
      features->add(std::make_unique<BatchNorm2d>(v));
      features->add(std::make_unique<ReLU>());
      in = v;
    }
  }
  auto s = std::make_unique<Sequential>();
  s->add("features", std::move(features));
  s->add("flatten", std::make_unique<Flatten>());
  s->add("classifier", std::make_unique<Linear>(512, 10));
  m->root = std::move(s);
  return m;
}

// "vit" (1×28×28) or "vit:CxHxW".
VisionTransformer::Config vit_config(const std::string& name) {
  VisionTransformer::Config c;
  if (name == "vit") return c;
  const std::string shape = name.substr(4);
  long long ch = 0, h = 0, w = 0;
  char x1 = 0, x2 = 0;
  int used = 0;
  const bool parsed = std::sscanf(shape.c_str(), "%lld%c%lld%c%lld%n", &ch, &x1, &h, &x2, &w, &used) == 5 &&
                      x1 == 'x' && x2 == 'x' && used == static_cast<int>(shape.size());
  TEMPO_CHECK(parsed && ch > 0 && h > 0 && w > 0 && ch <= 4096 && h <= 65536 && w <= 65536,
              "model '" + name + "': write the input shape as vit:CxHxW, for example vit:3x32x32");
  c.channels = ch;
  c.height = h;
  c.width = w;
  TEMPO_CHECK(h % c.patch == 0 && w % c.patch == 0,
              "model '" + name + "': the height and width must divide by the patch size " + std::to_string(c.patch));
  return c;
}

// PyTorch's initialisation of tests/py/tempo_models.py's ViT: the patch
// embedding, out_proj, linear1, linear2 and the head keep nn.Conv2d's and
// nn.Linear's defaults; nn.MultiheadAttention draws in_proj_weight with
// xavier_uniform (U(±√(6/(D + 3D)))) and zeroes in_proj_bias and
// out_proj.bias; LayerNorms are 1 and 0; cls_token and pos_embed are
// N(0, 0.02²). nn.TransformerEncoder deep-copies one layer, so every encoder
// layer starts from the same weights.
void init_vit(VisionTransformer& v, Rng& rng) {
  init_default_all(v, rng);
  TransformerEncoderLayer& first = *v.layers.front();
  Linear& in = first.self_attn.in_proj;
  const double bound = std::sqrt(6.0 / static_cast<double>(in.in_features + in.out_features));
  for (int64_t i = 0; i < in.weight.numel(); ++i) in.weight[i] = static_cast<float>(rng.uniform(-bound, bound));
  in.bias.zero();
  first.self_attn.out_proj.bias.zero();
  std::vector<StateEntry> src;
  first.state(src, "");
  for (size_t l = 1; l < v.layers.size(); ++l) {
    std::vector<StateEntry> dst;
    v.layers[l]->state(dst, "");
    for (size_t i = 0; i < src.size(); ++i) *dst[i].value = *src[i].value;
  }
  for (Tensor* t : {&v.cls_token, &v.pos_embed})
    for (int64_t i = 0; i < t->numel(); ++i) (*t)[i] = static_cast<float>(0.02 * rng.normal());
}

// The model's input needs no gradient: backward stops at the first product
// (and layers before it, such as mlp's Flatten, are skipped).
void mark_no_input_grad(Layer& l) {
  l.needs_input_grad = false;
  if (l.product()) return;
  auto* seq = dynamic_cast<Sequential*>(&l);
  if (!seq) return;
  for (size_t i = 0; i < seq->size(); ++i) {
    Layer& c = seq->at(i);
    if (c.product() || dynamic_cast<Sequential*>(&c)) {
      mark_no_input_grad(c);
      return;
    }
    c.needs_input_grad = false;
  }
}

}  // namespace

bool is_onnx_model(const std::string& name) {
  return name.size() > 5 && name.compare(name.size() - 5, 5, ".onnx") == 0;
}

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names = {"mlp", "cnn", "resnet18", "resnet50", "vgg16", "vit"};
  return names;
}

std::unique_ptr<Model> build_model(const std::string& name, uint64_t seed) {
  Rng rng = Rng::derive(seed, 0x1417);
  std::unique_ptr<Model> m;
  if (name == "cnn" || name == "mlp") {
    m = name == "cnn" ? make_cnn() : make_mlp();
    init_default_all(*m->root, rng);
  } else if (name == "resnet18" || name == "resnet50") {
    m = name == "resnet18" ? make_resnet(ResidualBlock::Type::kBasic, {2, 2, 2, 2})
                           : make_resnet(ResidualBlock::Type::kBottleneck, {3, 4, 6, 3});
    // torchvision: fc keeps nn.Linear's default init; convs are re-initialised.
    init_default_all(*m->root, rng);
    walk(*m->root, [&](Layer& l) {
      if (auto* c = dynamic_cast<Conv2d*>(&l)) kaiming_normal_fan_out(*c, rng);
    });
  } else if (name == "vgg16") {
    m = make_vgg16();
    walk(*m->root, [&](Layer& l) {
      if (auto* c = dynamic_cast<Conv2d*>(&l)) kaiming_normal_fan_out(*c, rng);
      if (auto* f = dynamic_cast<Linear*>(&l)) {
        for (int64_t i = 0; i < f->weight.numel(); ++i) f->weight[i] = static_cast<float>(0.01 * rng.normal());
        f->bias.zero();
      }
    });
  } else if (name == "vit" || name.rfind("vit:", 0) == 0) {
    const VisionTransformer::Config c = vit_config(name);
    m = std::make_unique<Model>();
    m->input_shape = {c.channels, c.height, c.width};
    auto v = std::make_unique<VisionTransformer>(c);
    init_vit(*v, rng);
    m->root = std::move(v);
  } else if (is_onnx_model(name)) {
    // The graph's initializers are the initial weights: the seed plays no part.
    auto gm = std::make_unique<GraphModel>(read_onnx(name));
    m = std::make_unique<Model>();
    m->input_shape = gm->input_shape();
    m->num_classes = gm->classes();
    m->root = std::move(gm);
  } else {
    std::string list;
    for (const auto& n : model_names()) list += (list.empty() ? "" : ", ") + n;
    throw Error("unknown model '" + name + "'; choose one of: " + list + " (or vit:CxHxW, or a FILE.onnx)");
  }
  m->name = name;
  m->root->state(m->state, "");
  int next_id = 0;
  walk(*m->root, [&](Layer& l) {
    if (Product* p = l.product()) {
      p->id = next_id++;
      m->products.push_back(p);
      m->product_layers.push_back(&l);
    }
  });
  for (size_t i = 0; i < m->products.size(); ++i) {
    const Tensor* w = nullptr;
    if (auto* c = dynamic_cast<Conv2d*>(m->product_layers[i])) w = &c->weight;
    if (auto* f = dynamic_cast<Linear*>(m->product_layers[i])) w = &f->weight;
    if (!w) continue;  // (a layer that names its product itself)
    for (const auto& e : m->state) {
      if (e.value != w) continue;
      const bool suffix = e.name.size() > 7 && e.name.compare(e.name.size() - 7, 7, ".weight") == 0;
      m->products[i]->name = suffix ? e.name.substr(0, e.name.size() - 7) : e.name;  // drop ".weight"
    }
  }
  mark_no_input_grad(*m->root);
  m->set_offload(false, false);
  return m;
}

void Model::set_offload(bool offload_first, bool offload_last, int64_t local_below, int64_t local_inner) {
  for (size_t i = 0; i < product_layers.size(); ++i) {
    bool first = i == 0, last = i + 1 == product_layers.size();
    const auto* conv = dynamic_cast<const Conv2d*>(product_layers[i]);
    const bool narrow =
        conv && (conv->out_channels < local_below || conv->in_channels * conv->kernel * conv->kernel <= local_inner);
    // --offload-first and --offload-last offload those layers whatever
    // their width.
    product_layers[i]->offloaded = first ? offload_first : last ? offload_last : !narrow;
  }
}

int Model::set_conv_mode(const std::string& mode, int channel_from) {
  TEMPO_CHECK(mode == "im2col" || mode == "channel", "unknown --conv-mode '" + mode + "'; choose im2col or channel");
  TEMPO_CHECK(channel_from >= 1, "--channel-from must be at least 1");
  int offloaded_convs = 0, channel = 0;
  for (size_t i = 0; i < product_layers.size(); ++i) {
    auto* c = dynamic_cast<Conv2d*>(product_layers[i]);
    if (!c) continue;
    c->channel_mode = false;
    if (!c->offloaded || i == 0) continue;  // the first layer never
    ++offloaded_convs;
    if (mode == "channel" && offloaded_convs >= channel_from) {
      c->channel_mode = true;
      ++channel;
    }
  }
  return channel;
}

std::vector<StateEntry> Model::parameters() const {
  std::vector<StateEntry> out;
  for (const auto& e : state)
    if (e.grad) out.push_back(e);
  return out;
}

int64_t Model::parameter_count() const {
  int64_t n = 0;
  for (const auto& e : state)
    if (e.grad) n += e.value->numel();
  return n;
}

void Model::load(const std::string& path) { load_map(read_safetensors(path), path); }

void Model::load_map(TensorMap file, const std::string& path) {
  // Check everything first, so that a bad file leaves the model unchanged.
  for (const auto& e : state) {
    auto it = file.find(e.name);
    TEMPO_CHECK(it != file.end(), path + ": tensor '" + e.name + "' is missing (model " + name + ")");
    const NamedTensor& t = it->second;
    if (e.counter) {
      TEMPO_CHECK(t.dtype == DType::I64, path + ": tensor '" + e.name + "' must be I64, found " + dtype_name(t.dtype));
      TEMPO_CHECK(numel_of(t.shape) == 1,
            path + ": tensor '" + e.name + "' must hold a single value, got shape " + shape_str(t.shape));
    } else {
      TEMPO_CHECK(t.dtype == DType::F32, path + ": tensor '" + e.name + "' must be F32, found " + dtype_name(t.dtype));
      TEMPO_CHECK(t.shape == e.value->shape(), path + ": tensor '" + e.name + "' has shape " + shape_str(t.shape) +
                                             ", model " + name + " expects " + shape_str(e.value->shape()));
    }
  }
  if (file.size() != state.size()) {
    for (const auto& e : state) file.erase(e.name);
    throw Error(path + ": unexpected tensor '" + file.begin()->first + "' for model " + name +
                (file.size() > 1 ? " (and " + std::to_string(file.size() - 1) + " more)" : ""));
  }
  for (const auto& e : state) {
    const NamedTensor& t = file.at(e.name);
    if (e.counter)
      *e.counter = t.i64[0];
    else
      std::copy(t.f32.begin(), t.f32.end(), e.value->data());
  }
}

void Model::save(const std::string& path) const { write_safetensors(path, state_tensors()); }

std::vector<NamedTensor> Model::state_tensors() const {
  std::vector<NamedTensor> out;
  out.reserve(state.size());
  for (const auto& e : state) {
    NamedTensor t;
    t.name = e.name;
    if (e.counter) {
      t.dtype = DType::I64;
      t.shape = {};
      t.i64 = {*e.counter};
    } else {
      t.dtype = DType::F32;
      t.shape = e.value->shape();
      t.f32.assign(e.value->data(), e.value->data() + e.value->numel());
    }
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace tempo
