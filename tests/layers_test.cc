// Layer-by-layer parity with PyTorch 1.13: forward outputs, input gradients,
// parameter gradients and BatchNorm running statistics of every layer type,
// against tests/ref/make_references.py's layers.safetensors (computed in
// float64 from the same float32 inputs). Error measure: max|tempo − torch|
// relative to max|torch| of the tensor, at most 1e-5. Both Context backends
// are TeeOnlyBackend.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "common/conv.h"
#include "common/error.h"
#include "trusted/rng.h"
#include "trusted/io/safetensors.h"
#include "trusted/offload/linear_backend.h"
#include "trusted/nn/layers.h"
#include "trusted/optim/optimizer.h"
#include "common/parallel.h"

namespace tempo {
namespace {

constexpr double kTol = 1e-5;

// ---- reference file helpers --------------------------------------------------------------

const TensorMap* load_layers() {
  static std::unique_ptr<TensorMap> refs;
  static bool tried = false;
  if (!tried) {
    tried = true;
    const char* dir = std::getenv("TEMPO_REF_DIR");
    if (dir && std::filesystem::exists(std::string(dir) + "/layers.safetensors"))
      refs = std::make_unique<TensorMap>(read_safetensors(std::string(dir) + "/layers.safetensors"));
  }
  return refs.get();
}

#define LOAD_REFS_OR_FAIL(var)                                                                    \
  const TensorMap* var = load_layers();                                                           \
  if (!var)                                                                                       \
    GTEST_FAIL() << "no references: run through ctest (fixture make_references), or set "        \
                    "TEMPO_REF_DIR to the output of tests/ref/make_references.py";

// Case names of a layer: the <case> of every "<layer>/<case>/<field>" key.
std::vector<std::string> cases(const TensorMap& m, const std::string& layer) {
  std::set<std::string> out;
  const std::string prefix = layer + "/";
  for (const auto& [k, v] : m)
    if (k.rfind(prefix, 0) == 0) out.insert(k.substr(prefix.size(), k.find('/', prefix.size()) - prefix.size()));
  return {out.begin(), out.end()};
}

const NamedTensor& field(const TensorMap& m, const std::string& layer, const std::string& c,
                         const std::string& f) {
  auto it = m.find(layer + "/" + c + "/" + f);
  if (it == m.end()) throw Error("reference tensor " + layer + "/" + c + "/" + f + " is missing");
  return it->second;
}

bool has(const TensorMap& m, const std::string& layer, const std::string& c, const std::string& f) {
  return m.count(layer + "/" + c + "/" + f) > 0;
}

Tensor tensor_of(const NamedTensor& t) {
  Tensor out(t.shape);
  std::copy(t.f32.begin(), t.f32.end(), out.data());
  return out;
}

void assign(Tensor& dst, const NamedTensor& src) {
  ASSERT_EQ(numel_of(src.shape), dst.numel()) << src.name;
  std::copy(src.f32.begin(), src.f32.end(), dst.data());
}

// max|got − want| / max|want| (absolute when want is all zero).
double rel_err(const float* got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::fabs(static_cast<double>(got[i]) - want[i]));
    den = std::max(den, std::fabs(static_cast<double>(want[i])));
  }
  return den > 0 ? num / den : num;
}

// Shape and values; logs the error so the figures show in the test output.
void expect_close(const Tensor& got, const NamedTensor& want, const std::string& what, double tol = kTol) {
  ASSERT_EQ(got.shape(), want.shape) << what << ": shape " << shape_str(got.shape()) << " vs torch "
                                     << shape_str(want.shape);
  const double e = rel_err(got.data(), want.f32);
  EXPECT_LE(e, tol) << what << ": max relative error " << e;
  std::printf("  %-58s rel err %.3g\n", what.c_str(), e);
}

std::vector<int64_t> i64_of(const NamedTensor& t) { return t.i64; }

struct Backends {
  TeeOnlyBackend offload, local;
  Rng rng{42};
  Context ctx(bool training) { return Context{&offload, &local, training, &rng}; }
};

// ---- linear algebra layers -----------------------------------------------------------------

TEST(LayerParity, Conv2d) {
  LOAD_REFS_OR_FAIL(refs);
  const auto names = cases(*refs, "conv");
  ASSERT_GE(names.size(), 10u);
  Backends be;
  for (const auto& c : names) {
    SCOPED_TRACE("conv/" + c);
    auto cfg = i64_of(field(*refs, "conv", c, "cfg"));  // cin, cout, k, s, p, bias
    Conv2d conv(cfg[0], cfg[1], cfg[2], cfg[3], cfg[4], cfg[5] != 0);
    assign(conv.weight, field(*refs, "conv", c, "weight"));
    if (conv.has_bias) assign(conv.bias, field(*refs, "conv", c, "bias"));
    Tensor x = tensor_of(field(*refs, "conv", c, "x"));
    Tensor dy = tensor_of(field(*refs, "conv", c, "dy"));
    // Twice: the second pass reuses the layer's buffers and must agree.
    for (int pass = 0; pass < 2; ++pass) {
      conv.offloaded = pass == 0;  // both backends of the Context
      Context ctx = be.ctx(true);
      expect_close(conv.forward(x, ctx), field(*refs, "conv", c, "y"), "conv/" + c + " y");
      expect_close(conv.backward(dy, ctx), field(*refs, "conv", c, "dx"), "conv/" + c + " dx");
      expect_close(conv.dweight, field(*refs, "conv", c, "dweight"), "conv/" + c + " dweight");
      if (conv.has_bias) expect_close(conv.dbias, field(*refs, "conv", c, "dbias"), "conv/" + c + " dbias");
    }
    // The first layer of a model: no input gradient, the same weight gradient.
    conv.needs_input_grad = false;
    Context ctx = be.ctx(true);
    conv.forward(x, ctx);
    EXPECT_TRUE(conv.backward(dy, ctx).empty());
    expect_close(conv.dweight, field(*refs, "conv", c, "dweight"), "conv/" + c + " dweight (no dx)");
  }
}

// The convolution kernels against each other: oneDNN's (the default where
// the build has them: Winograd for the 3×3 stride-1 case of 32 channels on
// AVX-512 cores, direct kernels for the rest) and im2col + sgemm, on the
// geometries models use (3×3 stride 1 and 2, 1×1 stride 2 whose right
// padding is negative, 7×7 stride 2 on 3 channels, odd sizes), forward,
// both backward products alone and together, twice each (the second reuses
// the cached primitives).
TEST(ConvKernels, DefaultKernelsEqualIm2col) {
  ConvWorkspace best, im2col(ConvKernels::kIm2col);
  EXPECT_FALSE(im2col.uses_onednn());
  std::printf("  default kernels: %s (oneDNN in use: %d)\n", conv_kernels_name().c_str(), best.uses_onednn());
  Rng rng(7);
  struct Case { int64_t n, c, h, w, o, k, s, p; };
  for (const Case& t : {Case{4, 16, 12, 12, 24, 3, 1, 1}, Case{3, 32, 10, 9, 48, 3, 1, 1},
                        Case{3, 16, 13, 11, 32, 3, 2, 1}, Case{2, 16, 14, 14, 32, 1, 2, 0}, Case{2, 3, 21, 19, 8, 7, 2, 3},
                        Case{5, 8, 9, 9, 8, 5, 1, 0}}) {
    const ConvGeometry g = ConvGeometry::make(t.n, t.c, t.h, t.w, t.o, t.k, t.s, t.p);
    SCOPED_TRACE(std::to_string(t.c) + "->" + std::to_string(t.o) + " k" + std::to_string(t.k) + " s" +
                 std::to_string(t.s));
    auto fill = [&](int64_t n) {
      std::vector<float> v(static_cast<size_t>(n));
      for (float& f : v) f = static_cast<float>(rng.normal());
      return v;
    };
    const auto x = fill(g.n * g.c * g.h * g.w), w = fill(g.o * g.cols()), dy = fill(g.n * g.o * g.positions());
    auto close = [](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
      ASSERT_EQ(a.size(), b.size());
      double m = 0, d = 0;
      for (size_t i = 0; i < a.size(); ++i) {
        m = std::max(m, static_cast<double>(std::fabs(b[i])));
        d = std::max(d, static_cast<double>(std::fabs(a[i] - b[i])));
      }
      EXPECT_GT(m, 0.0) << what;
      EXPECT_LE(d, 1e-5 * m) << what << ": max difference " << d << " of max " << m;
    };
    for (int pass = 0; pass < 2; ++pass) {
      std::vector<float> y1(dy.size()), y2(dy.size()), dx1(x.size()), dx2(x.size(), 1.0f), dw1(w.size()),
          dw2(w.size(), 1.0f), dx3(x.size(), 1.0f), dw3(w.size(), 1.0f);
      conv2d_forward(g, x.data(), w.data(), y1.data(), im2col);
      conv2d_forward(g, x.data(), w.data(), y2.data(), best);
      close(y2, y1, "forward");
      conv2d_backward_input(g, dy.data(), w.data(), dx1.data(), im2col);
      conv2d_backward_input(g, dy.data(), w.data(), dx2.data(), best);
      close(dx2, dx1, "backward input");
      conv2d_backward_weight(g, x.data(), dy.data(), dw1.data(), im2col);
      conv2d_backward_weight(g, x.data(), dy.data(), dw2.data(), best);
      close(dw2, dw1, "backward weight");
      conv2d_backward(g, x.data(), dy.data(), w.data(), dw3.data(), dx3.data(), best);
      close(dw3, dw1, "both: weight");
      close(dx3, dx1, "both: input");
      std::fill(dx3.begin(), dx3.end(), 7.0f);
      conv2d_backward(g, x.data(), dy.data(), w.data(), dw3.data(), nullptr, best);
      close(dw3, dw1, "weight only");
      EXPECT_EQ(dx3[0], 7.0f);
    }
  }
}

// Which kernels run: oneDNN's Winograd kernels exactly where conv.h says
// (3×3, stride 1, at least kWinogradMinChannels channels in and out, maps
// of at least kWinogradMinSide, on a CPU where oneDNN has them: AVX-512),
// never under ConvKernels::kDirect.
TEST(ConvKernels, WinogradOnlyWhereChosen) {
  ConvWorkspace best, direct(ConvKernels::kDirect), im2col(ConvKernels::kIm2col);
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  // Under oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA=AVX2 stands in for an AVX2
  // CPU, where the wide case falls back to direct kernels; the other tests
  // hold their results) the CPU's flags do not say which runs.
  const bool capped = std::getenv("ONEDNN_MAX_CPU_ISA") || std::getenv("DNNL_MAX_CPU_ISA");
  const ConvGeometry wide = ConvGeometry::make(2, 32, 8, 8, 32, 3, 1, 1),
                     narrow = ConvGeometry::make(2, 16, 8, 8, 32, 3, 1, 1),
                     strided = ConvGeometry::make(2, 32, 8, 8, 32, 3, 2, 1),
                     pointwise = ConvGeometry::make(2, 32, 8, 8, 32, 1, 1, 0),
                     small = ConvGeometry::make(2, 32, 4, 8, 32, 3, 1, 1);
  auto wino = [](ConvWorkspace& ws, const ConvGeometry& g) {
    const std::string k = ws.kernel(g);
    EXPECT_FALSE(k.empty());
    return k.find("wino") != std::string::npos;
  };
  std::printf("  3x3 stride 1, 32 channels: %s (direct: %s)\n", best.kernel(wide).c_str(), direct.kernel(wide).c_str());
  const bool wide_wino = wino(best, wide);
  if (!capped) {
    EXPECT_EQ(wide_wino, best.uses_onednn() && avx512);
  }
  EXPECT_FALSE(wino(best, narrow));
  EXPECT_FALSE(wino(best, strided));
  EXPECT_FALSE(wino(best, pointwise));
  EXPECT_FALSE(wino(best, small));
  EXPECT_FALSE(wino(direct, wide));
  EXPECT_EQ(im2col.kernel(wide), "im2col+sgemm");
  EXPECT_EQ(parse_conv_kernels("direct"), ConvKernels::kDirect);
  EXPECT_EQ(parse_conv_kernels(conv_kernels_flag(ConvKernels::kBest)), ConvKernels::kBest);
  EXPECT_THROW(parse_conv_kernels("fft"), std::exception);
}

TEST(LayerParity, Linear) {
  LOAD_REFS_OR_FAIL(refs);
  const auto names = cases(*refs, "linear");
  ASSERT_GE(names.size(), 5u);
  Backends be;
  for (const auto& c : names) {
    SCOPED_TRACE("linear/" + c);
    auto cfg = i64_of(field(*refs, "linear", c, "cfg"));  // in, out, bias
    Linear lin(cfg[0], cfg[1], cfg[2] != 0);
    assign(lin.weight, field(*refs, "linear", c, "weight"));
    if (lin.has_bias) assign(lin.bias, field(*refs, "linear", c, "bias"));
    Tensor x = tensor_of(field(*refs, "linear", c, "x"));
    Tensor dy = tensor_of(field(*refs, "linear", c, "dy"));
    for (int pass = 0; pass < 2; ++pass) {
      lin.offloaded = pass == 0;
      Context ctx = be.ctx(true);
      expect_close(lin.forward(x, ctx), field(*refs, "linear", c, "y"), "linear/" + c + " y");
      expect_close(lin.backward(dy, ctx), field(*refs, "linear", c, "dx"), "linear/" + c + " dx");
      expect_close(lin.dweight, field(*refs, "linear", c, "dweight"), "linear/" + c + " dweight");
      if (lin.has_bias) expect_close(lin.dbias, field(*refs, "linear", c, "dbias"), "linear/" + c + " dbias");
    }
  }
}

// ---- pooling, element-wise, shape ------------------------------------------------------------

// Forward y and backward dx of a parameter-free layer made by `make(cfg)`.
template <typename Make>
void check_plain_layer(const TensorMap& refs, const std::string& layer, size_t min_cases, Make make) {
  const auto names = cases(refs, layer);
  ASSERT_GE(names.size(), min_cases) << layer;
  Backends be;
  for (const auto& c : names) {
    SCOPED_TRACE(layer + "/" + c);
    std::vector<int64_t> cfg;
    if (has(refs, layer, c, "cfg")) cfg = i64_of(field(refs, layer, c, "cfg"));
    LayerPtr l = make(cfg);
    Tensor x = tensor_of(field(refs, layer, c, "x"));
    Tensor dy = tensor_of(field(refs, layer, c, "dy"));
    for (int pass = 0; pass < 2; ++pass) {
      Context ctx = be.ctx(pass == 0);
      expect_close(l->forward(x, ctx), field(refs, layer, c, "y"), layer + "/" + c + " y");
      expect_close(l->backward(dy, ctx), field(refs, layer, c, "dx"), layer + "/" + c + " dx");
    }
  }
}

TEST(LayerParity, MaxPool2d) {
  LOAD_REFS_OR_FAIL(refs);
  check_plain_layer(*refs, "maxpool", 6, [](const std::vector<int64_t>& c) {
    return std::make_unique<MaxPool2d>(c[0], c[1], c[2]);
  });
}

// PyTorch's max-pooling rule on the cases random data never hits: ties
// (the first maximum wins), -inf everywhere, and NaN (the first NaN of a
// window wins and is propagated), against a direct reading of the rule; the
// backward pass sends each gradient to the window's winner.
TEST(MaxPool2d, TiesInfinitiesAndNanFollowPyTorch) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const int64_t H = 7, W = 9;
  Rng rng(3);
  std::vector<float> plane(H * W);
  for (auto& v : plane) v = static_cast<float>(static_cast<int>(rng.below(4)));  // small integers: many ties
  plane[0] = plane[1] = -inf;
  plane[9] = plane[10] = -inf;                      // a whole 2×2 window of -inf
  std::vector<float> with_nan = plane;
  with_nan[3] = nan;                                      // a NaN first in its window...
  with_nan[2 * W + 5] = 7.0f, with_nan[3 * W + 4] = nan;  // ...and one after a larger value
  with_nan[4 * W + 7] = nan, with_nan[4 * W + 8] = nan;   // two NaNs: the first wins
  Backends be;
  // Without a NaN, 2×2 windows of stride 2 take a path of their own.
  for (bool nans : {false, true})
  for (auto [k, st, pad] : {std::tuple{2, 2, 0}, {3, 2, 1}, {2, 1, 0}}) {
    if (nans) plane = with_nan;
    char trace[64];
    std::snprintf(trace, sizeof trace, "kernel %d, stride %d, padding %d, NaNs %d", k, st, pad, nans);
    SCOPED_TRACE(trace);
    MaxPool2d pool(k, st, pad);
    Tensor x({1, 1, H, W});
    std::copy(plane.begin(), plane.end(), x.data());
    Context ctx = be.ctx(true);
    const Tensor y = pool.forward(x, ctx);
    const int64_t OH = y.dim(2), OW = y.dim(3);
    Tensor dy({1, 1, OH, OW});
    for (int64_t i = 0; i < dy.numel(); ++i) dy[i] = static_cast<float>(i + 1);
    const Tensor dx = pool.backward(dy, ctx);
    std::vector<float> want_dx(H * W, 0.0f);
    for (int64_t oy = 0; oy < OH; ++oy)
      for (int64_t ox = 0; ox < OW; ++ox) {
        float best = -inf;
        int64_t at = -1;
        for (int64_t iy = oy * st - pad; iy < oy * st - pad + k; ++iy)
          for (int64_t ix = ox * st - pad; ix < ox * st - pad + k; ++ix) {
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
            const float v = plane[iy * W + ix];
            if (at >= 0 && std::isnan(best)) continue;  // a NaN already won
            if (at < 0 || v > best || std::isnan(v)) best = v, at = iy * W + ix;
          }
        const float got = y[oy * OW + ox];
        if (std::isnan(best)) EXPECT_TRUE(std::isnan(got)) << oy << "," << ox;
        else EXPECT_EQ(got, best) << oy << "," << ox;
        want_dx[static_cast<size_t>(at)] += dy[oy * OW + ox];
      }
    for (int64_t i = 0; i < H * W; ++i) EXPECT_EQ(dx[i], want_dx[static_cast<size_t>(i)]) << "input " << i;
  }
}

TEST(LayerParity, AvgPool2dCountIncludePad) {
  LOAD_REFS_OR_FAIL(refs);
  check_plain_layer(*refs, "avgpool", 6, [](const std::vector<int64_t>& c) {
    return std::make_unique<AvgPool2d>(c[0], c[1], c[2]);
  });
}

TEST(LayerParity, AdaptiveAvgPool2d) {
  LOAD_REFS_OR_FAIL(refs);
  check_plain_layer(*refs, "adaptive", 5, [](const std::vector<int64_t>& c) {
    return std::make_unique<AdaptiveAvgPool2d>(c[0], c[1]);
  });
}

TEST(LayerParity, ReLU) {
  LOAD_REFS_OR_FAIL(refs);
  check_plain_layer(*refs, "relu", 3, [](const std::vector<int64_t>&) { return std::make_unique<ReLU>(); });
}

TEST(LayerParity, Flatten) {
  LOAD_REFS_OR_FAIL(refs);
  check_plain_layer(*refs, "flatten", 3, [](const std::vector<int64_t>&) { return std::make_unique<Flatten>(); });
}

// ---- BatchNorm2d -------------------------------------------------------------------------------

TEST(LayerParity, BatchNorm2dTrainAndEval) {
  LOAD_REFS_OR_FAIL(refs);
  const auto names = cases(*refs, "bn");
  ASSERT_GE(names.size(), 5u);
  Backends be;
  int trained = 0, evaluated = 0;
  for (const auto& c : names) {
    SCOPED_TRACE("bn/" + c);
    const std::string w = "bn/" + c;
    auto cfg = i64_of(field(*refs, "bn", c, "cfg"));  // channels, training
    const bool training = cfg[1] != 0;
    BatchNorm2d bn(cfg[0]);
    EXPECT_EQ(bn.eps, 1e-5);
    EXPECT_EQ(bn.momentum, 0.1);
    assign(bn.weight, field(*refs, "bn", c, "weight"));
    assign(bn.bias, field(*refs, "bn", c, "bias"));
    assign(bn.running_mean, field(*refs, "bn", c, "running_mean0"));
    assign(bn.running_var, field(*refs, "bn", c, "running_var0"));
    Context ctx = be.ctx(training);
    if (training) {
      // Two forwards: the running statistics move twice (unbiased variance);
      // the gradients are those of the second.
      ++trained;
      Tensor x1 = tensor_of(field(*refs, "bn", c, "x1"));
      expect_close(bn.forward(x1, ctx), field(*refs, "bn", c, "y1"), w + " y (1st forward)");
    } else {
      ++evaluated;
    }
    Tensor x = tensor_of(field(*refs, "bn", c, "x"));
    Tensor dy = tensor_of(field(*refs, "bn", c, "dy"));
    expect_close(bn.forward(x, ctx), field(*refs, "bn", c, "y"), w + " y");
    expect_close(bn.backward(dy, ctx), field(*refs, "bn", c, "dx"), w + " dx");
    expect_close(bn.dweight, field(*refs, "bn", c, "dweight"), w + " dweight");
    expect_close(bn.dbias, field(*refs, "bn", c, "dbias"), w + " dbias");
    expect_close(bn.running_mean, field(*refs, "bn", c, "running_mean"), w + " running_mean");
    expect_close(bn.running_var, field(*refs, "bn", c, "running_var"), w + " running_var");
    EXPECT_EQ(bn.num_batches_tracked, field(*refs, "bn", c, "num_batches_tracked").i64.at(0)) << w;
  }
  EXPECT_GE(trained, 3);
  EXPECT_GE(evaluated, 1);
}

// ---- torchvision residual blocks --------------------------------------------------------------

TEST(LayerParity, ResidualBlocksTrainMode) {
  LOAD_REFS_OR_FAIL(refs);
  const auto names = cases(*refs, "block");
  ASSERT_GE(names.size(), 4u);
  Backends be;
  for (const auto& c : names) {
    SCOPED_TRACE("block/" + c);
    const std::string w = "block/" + c;
    auto cfg = i64_of(field(*refs, "block", c, "cfg"));  // type, inplanes, planes, stride
    ResidualBlock block(cfg[0] == 0 ? ResidualBlock::Type::kBasic : ResidualBlock::Type::kBottleneck, cfg[1],
                        cfg[2], cfg[3]);
    std::vector<StateEntry> state;
    block.state(state, "");
    // Same state names as torchvision's block, every one loaded.
    size_t torch_entries = 0;
    for (const auto& [k, v] : *refs)
      if (k.rfind(w + "/p/", 0) == 0) ++torch_entries;
    EXPECT_EQ(state.size(), torch_entries);
    for (const auto& e : state) {
      const NamedTensor& t = field(*refs, "block", c, "p/" + e.name);
      if (e.counter)
        *e.counter = t.i64.at(0);
      else
        assign(*e.value, t);
    }
    Context ctx = be.ctx(true);
    Tensor x = tensor_of(field(*refs, "block", c, "x"));
    Tensor dy = tensor_of(field(*refs, "block", c, "dy"));
    expect_close(block.forward(x, ctx), field(*refs, "block", c, "y"), w + " y");
    expect_close(block.backward(dy, ctx), field(*refs, "block", c, "dx"), w + " dx");
    for (const auto& e : state) {
      if (e.grad) expect_close(*e.grad, field(*refs, "block", c, "g/" + e.name), w + " grad " + e.name);
      if (e.counter) {
        EXPECT_EQ(*e.counter, field(*refs, "block", c, "s/" + e.name).i64.at(0)) << e.name;
      }
      if (!e.grad && e.value) expect_close(*e.value, field(*refs, "block", c, "s/" + e.name), w + " " + e.name);
    }
  }
}

// ---- loss ----------------------------------------------------------------------------------------

TEST(LayerParity, CrossEntropyMean) {
  LOAD_REFS_OR_FAIL(refs);
  const auto names = cases(*refs, "xent");
  ASSERT_GE(names.size(), 4u);
  for (const auto& c : names) {
    SCOPED_TRACE("xent/" + c);
    Tensor logits = tensor_of(field(*refs, "xent", c, "logits"));
    std::vector<int64_t> labels = field(*refs, "xent", c, "labels").i64;
    Tensor dlogits;
    const double loss = cross_entropy(logits, labels, &dlogits);
    const double want = field(*refs, "xent", c, "loss").f32.at(0);
    EXPECT_NEAR(loss, want, 1e-6 * std::max(1.0, std::fabs(want))) << "xent/" << c;
    std::printf("  %-58s loss %.9g vs torch %.9g\n", ("xent/" + c).c_str(), loss, want);
    expect_close(dlogits, field(*refs, "xent", c, "dlogits"), "xent/" + c + " dlogits");
    // Without a gradient buffer: the same loss.
    EXPECT_EQ(cross_entropy(logits, labels, nullptr), loss);
  }
}

// ---- Dropout (no torch reference: its masks are random) --------------------------------------

TEST(LayerBehaviour, DropoutTrainZeroesAboutPAndScalesSurvivors) {
  Backends be;
  for (double p : {0.1, 0.5, 0.8}) {
    SCOPED_TRACE("p = " + std::to_string(p));
    Dropout drop(p);
    Tensor x({8, 16, 25, 25});  // 80000 values
    Rng data(7);
    for (int64_t i = 0; i < x.numel(); ++i) x[i] = static_cast<float>(data.uniform(0.5, 1.5));
    Context ctx = be.ctx(true);
    const Tensor& y = drop.forward(x, ctx);
    ASSERT_EQ(y.shape(), x.shape());
    const float scale = static_cast<float>(1.0 / (1.0 - p));
    int64_t zeros = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      if (y[i] == 0.0f)
        ++zeros;
      else
        ASSERT_NEAR(y[i], x[i] * scale, 1e-6f * x[i] * scale) << "survivor " << i;
    }
    const double n = static_cast<double>(x.numel());
    const double frac = static_cast<double>(zeros) / n;
    const double sigma = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(frac, p, 5 * sigma);
    std::printf("  dropout p=%.2f: zeroed %.4f (5 sigma = %.4f)\n", p, frac, 5 * sigma);
    // Backward: the same mask and scale.
    Tensor dy(x.shape());
    for (int64_t i = 0; i < dy.numel(); ++i) dy[i] = static_cast<float>(data.uniform(-1, 1));
    const Tensor& dx = drop.backward(dy, ctx);
    ASSERT_EQ(dx.shape(), x.shape());
    for (int64_t i = 0; i < x.numel(); ++i) {
      if (y[i] == 0.0f)
        ASSERT_EQ(dx[i], 0.0f) << i;
      else
        ASSERT_NEAR(dx[i], dy[i] * scale, 1e-6f * std::fabs(dy[i]) * scale) << i;
    }
    // A second forward draws a different mask.
    Tensor y1 = y;
    const Tensor& y2 = drop.forward(x, ctx);
    int64_t differ = 0;
    for (int64_t i = 0; i < x.numel(); ++i) differ += (y1[i] == 0.0f) != (y2[i] == 0.0f);
    EXPECT_GT(differ, 0);
  }
}

TEST(LayerBehaviour, DropoutEvalIsIdentity) {
  Backends be;
  Dropout drop(0.5);
  Tensor x({4, 3, 5, 5});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = static_cast<float>(i) * 0.25f - 7.0f;
  Context ctx = be.ctx(false);
  const Tensor& y = drop.forward(x, ctx);
  ASSERT_EQ(y.shape(), x.shape());
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(y[i], x[i]);
  Tensor dy = x;
  const Tensor& dx = drop.backward(dy, ctx);
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(dx[i], dy[i]);
  // p = 0 in training is the identity too.
  Dropout none(0.0);
  Context train = be.ctx(true);
  const Tensor& z = none.forward(x, train);
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(z[i], x[i]);
}


// ---- transformer layers ------------------------------------------------------------------------------

// A module case of make_references.py's module_case: every parameter loaded
// by its state name (`prefix` + Tempo's name = PyTorch's), forward y,
// backward dx (when the case has one) and every parameter gradient. Run
// twice, so that buffers reused from the first pass change nothing.
void check_module(const TensorMap& refs, const std::string& layer, const std::string& c, Layer& l,
                  const std::string& prefix) {
  const std::string w = layer + "/" + c;
  std::vector<StateEntry> state;
  l.state(state, prefix);
  size_t torch_entries = 0;
  for (const auto& [k, v] : refs)
    if (k.rfind(w + "/p/", 0) == 0) ++torch_entries;
  EXPECT_EQ(state.size(), torch_entries) << "parameters";
  for (const auto& e : state) assign(*e.value, field(refs, layer, c, "p/" + e.name));
  Backends be;
  Tensor x = tensor_of(field(refs, layer, c, "x"));
  Tensor dy = tensor_of(field(refs, layer, c, "dy"));
  for (int pass = 0; pass < 2; ++pass) {
    Context ctx = be.ctx(true);
    expect_close(l.forward(x, ctx), field(refs, layer, c, "y"), w + " y");
    const Tensor& dx = l.backward(dy, ctx);
    if (has(refs, layer, c, "dx")) expect_close(dx, field(refs, layer, c, "dx"), w + " dx");
    for (const auto& e : state) expect_close(*e.grad, field(refs, layer, c, "g/" + e.name), w + " grad " + e.name);
  }
}

TEST(LayerParity, LayerNorm) {
  LOAD_REFS_OR_FAIL(refs);
  const auto names = cases(*refs, "layernorm");
  ASSERT_GE(names.size(), 4u);
  for (const auto& c : names) {
    SCOPED_TRACE("layernorm/" + c);
    LayerNorm ln(i64_of(field(*refs, "layernorm", c, "cfg"))[0]);
    check_module(*refs, "layernorm", c, ln, "");
  }
}

TEST(LayerParity, GeluExact) {
  LOAD_REFS_OR_FAIL(refs);
  check_plain_layer(*refs, "gelu", 3, [](const std::vector<int64_t>&) { return std::make_unique<GELU>(); });
}

TEST(LayerParity, MultiheadSelfAttention) {
  LOAD_REFS_OR_FAIL(refs);
  const auto names = cases(*refs, "attention");
  ASSERT_GE(names.size(), 4u);
  for (const auto& c : names) {
    SCOPED_TRACE("attention/" + c);
    const auto cfg = i64_of(field(*refs, "attention", c, "cfg"));  // dim, heads
    MultiheadAttention mha(cfg[0], cfg[1]);
    check_module(*refs, "attention", c, mha, "attn.");
  }
}

TEST(LayerParity, TransformerEncoderLayerPreNorm) {
  LOAD_REFS_OR_FAIL(refs);
  const auto names = cases(*refs, "encoder");
  ASSERT_GE(names.size(), 2u);
  for (const auto& c : names) {
    SCOPED_TRACE("encoder/" + c);
    const auto cfg = i64_of(field(*refs, "encoder", c, "cfg"));  // dim, heads, ff
    TransformerEncoderLayer layer(cfg[0], cfg[1], cfg[2]);
    check_module(*refs, "encoder", c, layer, "");
  }
}

TEST(LayerParity, VisionTransformer) {
  LOAD_REFS_OR_FAIL(refs);
  const auto names = cases(*refs, "vit");
  ASSERT_GE(names.size(), 2u);
  for (const auto& c : names) {
    SCOPED_TRACE("vit/" + c);
    const auto k = i64_of(field(*refs, "vit", c, "cfg"));  // C, H, W, patch, dim, depth, heads, mlp, classes
    VisionTransformer vit({k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8]});
    check_module(*refs, "vit", c, vit, "");
  }
}

TEST(LayerBehaviour, TransformerShapesAreChecked) {
  Backends be;
  Context ctx = be.ctx(true);
  EXPECT_THROW(MultiheadAttention(10, 3), Error);
  MultiheadAttention mha(6, 2);
  Tensor flat({4, 6});
  EXPECT_THROW(mha.forward(flat, ctx), Error);
  LayerNorm ln(5);
  Tensor wrong({2, 4});
  EXPECT_THROW(ln.forward(wrong, ctx), Error);
  VisionTransformer::Config cfg;
  cfg.height = 30;  // not a multiple of the patch size 4
  EXPECT_THROW(VisionTransformer{cfg}, Error);
}


// SGD's step is vectorised; its result must be, bit for bit, the scalar
// definition with the multiply-adds fused (d = g + wd·p, buf = momentum·buf
// + d, p −= lr·buf, as it ran before), on sizes with vector tails, on 1 and
// 2 threads, with and without momentum and weight decay. (A tail that
// rounded momentum·buf and the add separately changed cnn's weights after
// ten steps.)
TEST(Optimizer, SgdIsTheFusedScalarDefinitionBitForBit) {
  const int threads = num_threads();
  for (int nt : {1, 2})
    for (double mom : {0.0, 0.9})
      for (double wd : {0.0, 5e-4}) {
        SCOPED_TRACE("threads " + std::to_string(nt) + ", momentum " + std::to_string(mom) + ", wd " +
                     std::to_string(wd));
        set_num_threads(nt);
        Rng rng(41);
        const int64_t n = 16411;  // odd: every vector loop ends in a scalar tail
        Tensor p({n}), g({n});
        for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(rng.normal());
        std::vector<float> want(p.data(), p.data() + n), buf(static_cast<size_t>(n), 0.0f);
        OptimConfig cfg;
        cfg.momentum = mom;
        cfg.weight_decay = wd;
        auto opt = make_optimizer(cfg, {{"p", &p, &g, nullptr}});
        const float lr = 0.05f, fm = static_cast<float>(mom), fwd = static_cast<float>(wd);
        for (int step = 0; step < 4; ++step) {
          for (int64_t i = 0; i < n; ++i) g[i] = static_cast<float>(rng.normal());
          opt->step(lr);
          for (int64_t i = 0; i < n; ++i) {
            float d = fwd != 0.0f ? std::fma(fwd, want[i], g[i]) : g[i];
            if (mom != 0) d = buf[i] = step == 0 ? d : std::fma(buf[i], fm, d);
            want[i] = std::fma(-lr, d, want[i]);
          }
          int64_t differ = 0;
          for (int64_t i = 0; i < n; ++i) differ += std::memcmp(&want[i], &p[i], sizeof(float)) != 0;
          ASSERT_EQ(differ, 0) << "step " << step + 1;
        }
      }
  set_num_threads(threads);
}

}  // namespace
}  // namespace tempo
