// The layers of a vision transformer: LayerNorm, GELU, multi-head
// self-attention, the pre-norm encoder layer and the `vit` model, with
// PyTorch 1.13's semantics.
#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/nn/layers.h"

namespace tempo {

namespace {

constexpr int64_t kGrain = 1 << 14;  // elements per thread at least

// out = a + b (same shapes).
void add(const Tensor& a, const Tensor& b, Tensor& out) {
  TEMPO_CHECK(a.shape() == b.shape(), "residual shapes differ: " + shape_str(a.shape()) + " vs " + shape_str(b.shape()));
  out.resize(a.shape());
  const float* pa = a.data();
  const float* pb = b.data();
  float* po = out.data();
  parallel_for(a.numel(), [pa, pb, po](int64_t lo, int64_t hi) {
    const float* __restrict x = pa;
    const float* __restrict y = pb;
    float* __restrict z = po;
    for (int64_t i = lo; i < hi; ++i) z[i] = x[i] + y[i];
  }, kGrain);
}

// Row-wise softmax of a rows×cols block in place (max subtracted, sum in
// double).
void softmax_in_place(float* s, int64_t rows, int64_t cols) {
  for (int64_t i = 0; i < rows; ++i) {
    float* r = s + i * cols;
    float mx = r[0];
    for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, r[j]);
    double sum = 0;
    for (int64_t j = 0; j < cols; ++j) {
      r[j] = std::exp(r[j] - mx);
      sum += r[j];
    }
    const float inv = static_cast<float>(1.0 / sum);
    for (int64_t j = 0; j < cols; ++j) r[j] *= inv;
  }
}

}  // namespace

// ---- LayerNorm ---------------------------------------------------------------------------------

namespace {
// Rows per block of the parameter-gradient sums: the blocks, not the
// threads, fix the summation order, so the result is the same for every
// thread count.
constexpr int64_t kRowBlock = 32;
}  // namespace

LayerNorm::LayerNorm(int64_t f, double e) : features(f), eps(e) {
  TEMPO_CHECK(f > 0 && e > 0, "invalid LayerNorm configuration");
  weight.resize({f});
  weight.fill(1.0f);
  bias.resize({f});
  bias.zero();
  dweight.resize({f});
  dweight.zero();
  dbias.resize({f});
  dbias.zero();
}

const Tensor& LayerNorm::forward(const Tensor& x, Context&) {
  TEMPO_CHECK(x.ndim() >= 1 && x.numel() > 0 && x.dim(-1) == features,
              "LayerNorm expects …×" + std::to_string(features) + " input, got " + shape_str(x.shape()));
  x_ = &x;
  const int64_t d = features, rows = x.numel() / d;
  out_.resize(x.shape());
  if (static_cast<int64_t>(mean_.size()) < rows) {
    mean_.resize(static_cast<size_t>(rows));
    rstd_.resize(static_cast<size_t>(rows));
  }
  const float* xs = x.data();
  const float* w = weight.data();
  const float* b = bias.data();
  float* ys = out_.data();
  parallel_for(rows, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* __restrict p = xs + r * d;
      float* __restrict y = ys + r * d;
      double s = 0;
      for (int64_t i = 0; i < d; ++i) s += p[i];
      const double mean = s / static_cast<double>(d);
      double v = 0;
      for (int64_t i = 0; i < d; ++i) v += (p[i] - mean) * (p[i] - mean);
      const double rstd = 1.0 / std::sqrt(v / static_cast<double>(d) + eps);
      const float m = static_cast<float>(mean), rs = static_cast<float>(rstd);
      mean_[static_cast<size_t>(r)] = m;
      rstd_[static_cast<size_t>(r)] = rs;
      for (int64_t i = 0; i < d; ++i) y[i] = (p[i] - m) * rs * w[i] + b[i];
    }
  }, std::max<int64_t>(1, 4096 / d));
  return out_;
}

// x̂ = (x − mean)·rstd, g = dy·w:  dx = rstd·(g − mean(g) − x̂·mean(g·x̂)),
// dweight = Σ dy·x̂, dbias = Σ dy over rows.
const Tensor& LayerNorm::backward(const Tensor& dy, Context&) {
  const int64_t d = features, rows = x_->numel() / d;
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  if (static_cast<int64_t>(partial_.size()) < blocks * 2 * d) partial_.resize(static_cast<size_t>(blocks * 2 * d));
  if (needs_input_grad) dx_.resize(x_->shape());
  else dx_.resize({0});
  const float* xs = x_->data();
  const float* gs = dy.data();
  const float* w = weight.data();
  float* dxs = needs_input_grad ? dx_.data() : nullptr;
  double* part = partial_.data();
  parallel_for(blocks, [&](int64_t lo, int64_t hi) {
    for (int64_t blk = lo; blk < hi; ++blk) {
      double* __restrict pw = part + blk * 2 * d;
      double* __restrict pb = pw + d;
      std::fill(pw, pw + 2 * d, 0.0);
      const int64_t r_end = std::min(rows, (blk + 1) * kRowBlock);
      for (int64_t r = blk * kRowBlock; r < r_end; ++r) {
        const float* __restrict p = xs + r * d;
        const float* __restrict g = gs + r * d;
        const float m = mean_[static_cast<size_t>(r)], rs = rstd_[static_cast<size_t>(r)];
        double sg = 0, sgx = 0;
        for (int64_t i = 0; i < d; ++i) {
          const float xh = (p[i] - m) * rs;
          pw[i] += static_cast<double>(g[i]) * xh;
          pb[i] += g[i];
          const double gw = static_cast<double>(g[i]) * w[i];
          sg += gw;
          sgx += gw * xh;
        }
        if (!dxs) continue;
        const float mg = static_cast<float>(sg / static_cast<double>(d));
        const float mgx = static_cast<float>(sgx / static_cast<double>(d));
        float* __restrict o = dxs + r * d;
        for (int64_t i = 0; i < d; ++i) {
          const float xh = (p[i] - m) * rs;
          o[i] = rs * (g[i] * w[i] - mg - xh * mgx);
        }
      }
    }
  }, 1);
  float* dw = dweight.data();
  float* db = dbias.data();
  parallel_for(d, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      double sw = 0, sb = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        sw += part[blk * 2 * d + i];
        sb += part[blk * 2 * d + d + i];
      }
      dw[i] = static_cast<float>(sw);
      db[i] = static_cast<float>(sb);
    }
  }, 64);
  return dx_;
}

void LayerNorm::state(std::vector<StateEntry>& out, const std::string& prefix) {
  out.push_back({prefix + "weight", &weight, &dweight, nullptr});
  out.push_back({prefix + "bias", &bias, &dbias, nullptr});
}

// ---- GELU ----------------------------------------------------------------------------------------

const Tensor& GELU::forward(const Tensor& x, Context&) {
  x_ = &x;
  out_.resize(x.shape());
  const float* a = x.data();
  float* y = out_.data();
  parallel_for(x.numel(), [a, y](int64_t lo, int64_t hi) {
    const float* __restrict in = a;
    float* __restrict out = y;
    for (int64_t i = lo; i < hi; ++i) out[i] = 0.5f * in[i] * (1.0f + std::erf(in[i] * static_cast<float>(M_SQRT1_2)));
  }, kGrain);
  return out_;
}

// d/dx x·Φ(x) = Φ(x) + x·φ(x).
const Tensor& GELU::backward(const Tensor& dy, Context&) {
  dx_.resize(x_->shape());
  const float* a = x_->data();
  const float* d = dy.data();
  float* o = dx_.data();
  parallel_for(dy.numel(), [a, d, o](int64_t lo, int64_t hi) {
    const float* __restrict in = a;
    const float* __restrict g = d;
    float* __restrict out = o;
    const float alpha = static_cast<float>(M_2_SQRTPI * M_SQRT1_2 * 0.5);  // 1/√(2π)
    for (int64_t i = lo; i < hi; ++i) {
      const float cdf = 0.5f * (1.0f + std::erf(in[i] * static_cast<float>(M_SQRT1_2)));
      const float pdf = alpha * std::exp(-0.5f * in[i] * in[i]);
      out[i] = g[i] * (cdf + in[i] * pdf);
    }
  }, kGrain);
  return dx_;
}

// ---- multi-head self-attention -----------------------------------------------------------------

MultiheadAttention::MultiheadAttention(int64_t d, int64_t h) : dim(d), heads(h), in_proj(d, 3 * d), out_proj(d, d) {
  TEMPO_CHECK(d > 0 && h > 0 && d % h == 0,
              "MultiheadAttention: the width " + std::to_string(d) + " must divide into " + std::to_string(h) + " heads");
}

const Tensor& MultiheadAttention::forward(const Tensor& x, Context& ctx) {
  TEMPO_CHECK(x.ndim() == 3 && x.dim(2) == dim && x.numel() > 0,
              "MultiheadAttention expects B×T×" + std::to_string(dim) + " tokens, got " + shape_str(x.shape()));
  batch_ = x.dim(0);
  tokens_ = x.dim(1);
  const int64_t T = tokens_, D = dim, E = dim / heads, H = heads, G = batch_ * heads;
  const Tensor& qkv = in_proj.forward(x, ctx);  // B×T×3D: Q, K, V side by side
  qs_.resize({G, T, E});
  k_.resize({G, T, E});
  vt_.resize({G, E, T});
  probs_.resize({G, T, T});
  o_.resize({G, T, E});
  attn_.resize({batch_, T, D});
  const float alpha = static_cast<float>(1.0 / std::sqrt(static_cast<double>(E)));
  const float* src = qkv.data();
  float* qs = qs_.data();
  float* ks = k_.data();
  float* vt = vt_.data();
  parallel_for(G, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      const int64_t b = j / H, h = j % H;
      for (int64_t t = 0; t < T; ++t) {
        const float* row = src + (b * T + t) * 3 * D + h * E;
        for (int64_t e = 0; e < E; ++e) {
          qs[(j * T + t) * E + e] = row[e] * alpha;
          ks[(j * T + t) * E + e] = row[D + e];
          vt[(j * E + e) * T + t] = row[2 * D + e];
        }
      }
    }
  }, 1);
  LinearBackend& be = offloaded ? *ctx.offload : *ctx.local;
  scores_.a = qs_.data();
  scores_.w = k_.data();
  scores_.groups = G;
  scores_.m = T;
  scores_.k = E;
  scores_.n = T;
  be.batched_forward(scores_, probs_.data());  // S = (Q/√E)·Kᵀ
  float* p = probs_.data();
  parallel_for(G, [&](int64_t lo, int64_t hi) { softmax_in_place(p + lo * T * T, (hi - lo) * T, T); }, 1);
  mix_.a = probs_.data();
  mix_.w = vt_.data();
  mix_.groups = G;
  mix_.m = T;
  mix_.k = T;
  mix_.n = E;
  be.batched_forward(mix_, o_.data());  // O = P·V
  const float* o = o_.data();
  float* out = attn_.data();
  parallel_for(G, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      const int64_t b = j / H, h = j % H;
      for (int64_t t = 0; t < T; ++t) std::copy_n(o + (j * T + t) * E, E, out + (b * T + t) * D + h * E);
    }
  }, 1);
  return out_proj.forward(attn_, ctx);
}

// With dO the gradient of one head's output:
//   dP = dO·Vᵀ   dV = Pᵀ·dO   dS = P∘(dP − rowsum(dP∘P))   dQ = dS·K/√E   dK = dSᵀ·Q/√E.
const Tensor& MultiheadAttention::backward(const Tensor& dy, Context& ctx) {
  const Tensor& dattn = out_proj.backward(dy, ctx);
  const int64_t T = tokens_, D = dim, E = dim / heads, H = heads, G = batch_ * heads;
  const float alpha = static_cast<float>(1.0 / std::sqrt(static_cast<double>(E)));
  do_.resize({G, T, E});
  dprobs_.resize({G, T, T});
  dvt_.resize({G, E, T});
  dqs_.resize({G, T, E});
  dk_.resize({G, T, E});
  dqkv_.resize({batch_, T, 3 * D});
  const float* da = dattn.data();
  float* dob = do_.data();
  parallel_for(G, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      const int64_t b = j / H, h = j % H;
      for (int64_t t = 0; t < T; ++t) std::copy_n(da + (b * T + t) * D + h * E, E, dob + (j * T + t) * E);
    }
  }, 1);
  LinearBackend& be = offloaded ? *ctx.offload : *ctx.local;
  be.batched_backward(mix_, do_.data(), dvt_.data(), dprobs_.data());  // dVᵀ, dP
  const float* p = probs_.data();
  float* ds = dprobs_.data();
  parallel_for(G * T, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* pr = p + r * T;
      float* dr = ds + r * T;
      double dot = 0;
      for (int64_t c = 0; c < T; ++c) dot += static_cast<double>(dr[c]) * pr[c];
      const float dt = static_cast<float>(dot);
      for (int64_t c = 0; c < T; ++c) dr[c] = pr[c] * (dr[c] - dt);
    }
  }, 64);
  be.batched_backward(scores_, dprobs_.data(), dk_.data(), dqs_.data());  // dK, d(Q/√E)
  const float* dq = dqs_.data();
  const float* dk = dk_.data();
  const float* dv = dvt_.data();
  float* dst = dqkv_.data();
  parallel_for(G, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      const int64_t b = j / H, h = j % H;
      for (int64_t t = 0; t < T; ++t) {
        float* row = dst + (b * T + t) * 3 * D + h * E;
        for (int64_t e = 0; e < E; ++e) {
          row[e] = dq[(j * T + t) * E + e] * alpha;
          row[D + e] = dk[(j * T + t) * E + e];
          row[2 * D + e] = dv[(j * E + e) * T + t];
        }
      }
    }
  }, 1);
  return in_proj.backward(dqkv_, ctx);
}

void MultiheadAttention::state(std::vector<StateEntry>& out, const std::string& prefix) {
  scores_.name = prefix + "scores";
  mix_.name = prefix + "values";
  out.push_back({prefix + "in_proj_weight", &in_proj.weight, &in_proj.dweight, nullptr});
  out.push_back({prefix + "in_proj_bias", &in_proj.bias, &in_proj.dbias, nullptr});
  out_proj.state(out, prefix + "out_proj.");
}

void MultiheadAttention::for_each_child(const std::function<void(Layer&)>& fn) {
  fn(in_proj);
  fn(out_proj);
}

// ---- encoder layer --------------------------------------------------------------------------------

TransformerEncoderLayer::TransformerEncoderLayer(int64_t d, int64_t h, int64_t ff)
    : self_attn(d, h), linear1(d, ff), linear2(ff, d), norm1(d), norm2(d) {}

const Tensor& TransformerEncoderLayer::forward(const Tensor& x, Context& ctx) {
  add(x, self_attn.forward(norm1.forward(x, ctx), ctx), x1_);
  const Tensor& f = linear2.forward(gelu.forward(linear1.forward(norm2.forward(x1_, ctx), ctx), ctx), ctx);
  add(x1_, f, out_);
  return out_;
}

const Tensor& TransformerEncoderLayer::backward(const Tensor& dy, Context& ctx) {
  const Tensor& dn2 = norm2.backward(linear1.backward(gelu.backward(linear2.backward(dy, ctx), ctx), ctx), ctx);
  add(dy, dn2, dx1_);
  add(dx1_, norm1.backward(self_attn.backward(dx1_, ctx), ctx), dx_);
  return dx_;
}

void TransformerEncoderLayer::state(std::vector<StateEntry>& out, const std::string& prefix) {
  self_attn.state(out, prefix + "self_attn.");
  linear1.state(out, prefix + "linear1.");
  linear2.state(out, prefix + "linear2.");
  norm1.state(out, prefix + "norm1.");
  norm2.state(out, prefix + "norm2.");
}

void TransformerEncoderLayer::for_each_child(const std::function<void(Layer&)>& fn) {
  fn(norm1);
  fn(self_attn);
  fn(norm2);
  fn(linear1);
  fn(gelu);
  fn(linear2);
}

// ---- the vit model --------------------------------------------------------------------------------

VisionTransformer::VisionTransformer(const Config& c)
    : config(c), patch_embed(c.channels, c.dim, c.patch, c.patch, 0, true), norm(c.dim), head(c.dim, c.classes) {
  TEMPO_CHECK(c.channels > 0 && c.height > 0 && c.width > 0 && c.patch > 0 && c.depth > 0 && c.mlp > 0 &&
                  c.classes > 0,
              "invalid vit configuration");
  TEMPO_CHECK(c.height % c.patch == 0 && c.width % c.patch == 0,
              "vit: the input's height and width (" + std::to_string(c.height) + "×" + std::to_string(c.width) +
                  ") must divide by the patch size " + std::to_string(c.patch));
  tokens_ = 1 + (c.height / c.patch) * (c.width / c.patch);
  cls_token.resize({1, 1, c.dim});
  cls_token.zero();
  dcls_token.resize(cls_token.shape());
  dcls_token.zero();
  pos_embed.resize({1, tokens_, c.dim});
  pos_embed.zero();
  dpos_embed.resize(pos_embed.shape());
  dpos_embed.zero();
  for (int64_t i = 0; i < c.depth; ++i) layers.push_back(std::make_unique<TransformerEncoderLayer>(c.dim, c.heads, c.mlp));
  patch_embed.needs_input_grad = false;  // the model's input
  needs_input_grad = false;
}

const Tensor& VisionTransformer::forward(const Tensor& x, Context& ctx) {
  const Config& c = config;
  TEMPO_CHECK(x.ndim() == 4 && x.dim(0) > 0 && x.dim(1) == c.channels && x.dim(2) == c.height && x.dim(3) == c.width,
              "vit expects N×" + std::to_string(c.channels) + "×" + std::to_string(c.height) + "×" +
                  std::to_string(c.width) + " images, got " + shape_str(x.shape()));
  const Tensor& pe = patch_embed.forward(x, ctx);  // B×D×(H/p)×(W/p)
  const int64_t B = x.dim(0), T = tokens_, D = c.dim, N = T - 1;
  x0_.resize({B, T, D});
  const float* cls = cls_token.data();
  const float* pos = pos_embed.data();
  const float* src = pe.data();
  float* dst = x0_.data();
  parallel_for(B, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      float* row0 = dst + b * T * D;
      for (int64_t d = 0; d < D; ++d) row0[d] = cls[d] + pos[d];
      for (int64_t d = 0; d < D; ++d) {
        const float* plane = src + (b * D + d) * N;
        for (int64_t n = 0; n < N; ++n) row0[(1 + n) * D + d] = plane[n] + pos[(1 + n) * D + d];
      }
    }
  }, 1);
  const Tensor* h = &x0_;
  for (auto& l : layers) h = &l->forward(*h, ctx);
  cls_rows_.resize({B, D});
  for (int64_t b = 0; b < B; ++b) std::copy_n(h->data() + b * T * D, D, cls_rows_.data() + b * D);
  return head.forward(norm.forward(cls_rows_, ctx), ctx);
}

const Tensor& VisionTransformer::backward(const Tensor& dy, Context& ctx) {
  const Tensor& dcls = norm.backward(head.backward(dy, ctx), ctx);  // B×D
  const int64_t B = dcls.dim(0), T = tokens_, D = config.dim, N = T - 1;
  dx_tokens_.resize({B, T, D});
  dx_tokens_.zero();
  for (int64_t b = 0; b < B; ++b) std::copy_n(dcls.data() + b * D, D, dx_tokens_.data() + b * T * D);
  const Tensor* g = &dx_tokens_;
  for (size_t i = layers.size(); i-- > 0;) g = &layers[i]->backward(*g, ctx);
  const float* gs = g->data();
  float* dpos = dpos_embed.data();
  parallel_for(T * D, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      float s = 0;
      for (int64_t b = 0; b < B; ++b) s += gs[b * T * D + i];
      dpos[i] = s;
    }
  }, 256);
  std::copy_n(dpos, D, dcls_token.data());  // the class token's gradient is position 0's
  dpatches_.resize({B, D, config.height / config.patch, config.width / config.patch});
  float* dp = dpatches_.data();
  parallel_for(B, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b)
      for (int64_t d = 0; d < D; ++d)
        for (int64_t n = 0; n < N; ++n) dp[(b * D + d) * N + n] = gs[b * T * D + (1 + n) * D + d];
  }, 1);
  patch_embed.backward(dpatches_, ctx);
  dx_.resize({0});
  return dx_;
}

void VisionTransformer::state(std::vector<StateEntry>& out, const std::string& prefix) {
  out.push_back({prefix + "cls_token", &cls_token, &dcls_token, nullptr});
  out.push_back({prefix + "pos_embed", &pos_embed, &dpos_embed, nullptr});
  patch_embed.state(out, prefix + "patch_embed.");
  for (size_t i = 0; i < layers.size(); ++i) layers[i]->state(out, prefix + "encoder.layers." + std::to_string(i) + ".");
  norm.state(out, prefix + "norm.");
  head.state(out, prefix + "head.");
}

void VisionTransformer::for_each_child(const std::function<void(Layer&)>& fn) {
  fn(patch_embed);
  for (auto& l : layers) fn(*l);
  fn(norm);
  fn(head);
}

}  // namespace tempo
