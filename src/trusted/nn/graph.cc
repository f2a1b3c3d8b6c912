#include "trusted/nn/graph.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <numeric>
#include <set>

#include "common/error.h"
#include "common/parallel.h"

namespace tempo {

namespace {

constexpr int64_t kGrain = 1 << 14;

// ONNX stores PyTorch's eps and momentum as float; PyTorch computes with the
// decimal it was given. The shortest decimal that round-trips the float is
// that decimal.
double decimal_of(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.7g", v);
  return std::strtod(buf, nullptr);
}

int64_t normalise_axis(int64_t axis, int64_t rank, const std::string& where) {
  const int64_t a = axis < 0 ? axis + rank : axis;
  TEMPO_CHECK(a >= 0 && a < rank, where + ": axis " + std::to_string(axis) + " is out of range for rank " +
                                      std::to_string(rank));
  return a;
}

Shape strides_of(const Shape& s) {
  Shape st(s.size(), 1);
  for (size_t i = s.size(); i-- > 1;) st[i - 1] = st[i] * s[i];
  return st;
}

// Calls f(out_index, a_index, b_index) for every element of `out`, with
// a's and b's strides per output dimension (0 where broadcast).
template <typename F>
void for_each_broadcast(const Shape& out, const Shape& sa, const Shape& sb, F&& f) {
  const size_t r = out.size();
  const int64_t n = numel_of(out);
  if (n == 0) return;
  std::vector<int64_t> idx(r, 0);
  int64_t ia = 0, ib = 0;
  if (r == 0) {  // scalars
    f(int64_t{0}, int64_t{0}, int64_t{0});
    return;
  }
  const int64_t inner = out[r - 1];
  const int64_t ia_step = sa[r - 1], ib_step = sb[r - 1];
  for (int64_t i = 0; i < n; i += inner) {
    for (int64_t j = 0; j < inner; ++j) f(i + j, ia + j * ia_step, ib + j * ib_step);
    for (size_t d = r - 1; d-- > 0;) {  // odometer over the outer dimensions
      ++idx[d];
      ia += sa[d];
      ib += sb[d];
      if (idx[d] < out[d]) break;
      ia -= sa[d] * out[d];
      ib -= sb[d] * out[d];
      idx[d] = 0;
    }
  }
}

// NumPy's broadcasting: shapes aligned on the right; sa and sb are a's and
// b's strides per output dimension (0 where broadcast).
void broadcast_shapes(const Shape& a, const Shape& b, Shape& out, Shape& sa, Shape& sb, const std::string& where) {
  const size_t r = std::max(a.size(), b.size());
  out.assign(r, 1);
  sa.assign(r, 0);
  sb.assign(r, 0);
  const Shape ta = strides_of(a), tb = strides_of(b);
  for (size_t i = 0; i < r; ++i) {
    const int64_t da = i + a.size() >= r ? a[i + a.size() - r] : 1;
    const int64_t db = i + b.size() >= r ? b[i + b.size() - r] : 1;
    TEMPO_CHECK(da == db || da == 1 || db == 1,
                where + ": shapes " + shape_str(a) + " and " + shape_str(b) + " do not broadcast");
    out[i] = std::max(da, db);
    if (da == 0 || db == 0) out[i] = 0;
    if (da != 1) sa[i] = ta[i + a.size() - r];
    if (db != 1) sb[i] = tb[i + b.size() - r];
  }
}

}  // namespace

// One node of the graph: reads values_[in], writes values_[out].
class GraphModel::Op {
 public:
  virtual ~Op() = default;
  virtual void forward(GraphModel& g, Context& ctx) = 0;
  // Called with the output's gradient in values_[out[0]].grad (may be null
  // when no gradient reaches it).
  virtual void backward(GraphModel& g, Context& ctx) = 0;
  // True when backward must run even without an incoming gradient (it
  // writes parameter gradients).
  virtual bool has_params() const { return false; }
  std::vector<int> in, out;
  std::string where;
  static const NamedTensor& ints_view(GraphModel& g, int id, const std::string& where) { return ints_of(g, id, where); }

 protected:
  Tensor dx_;
  Value& v(GraphModel& g, size_t i) { return g.values_[static_cast<size_t>(in[i])]; }
  static Value& at(GraphModel& g, int id) { return g.values_[static_cast<size_t>(id)]; }

  // An integer value (shape, indices) computed this step, or a constant.
  static const NamedTensor& ints_of(GraphModel& g, int id, const std::string& where) {
    const NamedTensor* t = at(g, id).ints;
    TEMPO_CHECK(t != nullptr, where + ": '" + at(g, id).name + "' is not an integer tensor");
    return *t;
  }
  Value& o(GraphModel& g) { return g.values_[static_cast<size_t>(out[0])]; }
  void give(GraphModel& g, size_t i, const Tensor& grad) { g.accumulate(in[i], grad); }
};

namespace {

using Op = GraphModel::Op;
using Value = GraphModel::Value;

// A zoo layer on one input.
class LayerOp final : public Op {
 public:
  explicit LayerOp(LayerPtr l, bool params) : layer(std::move(l)), params_(params) {}
  void forward(GraphModel& g, Context& ctx) override { o(g).cur = &layer->forward(*v(g, 0).cur, ctx); }
  void backward(GraphModel& g, Context& ctx) override {
    const Tensor* dy = o(g).grad;
    if (!dy) {  // no gradient reaches it: its parameters' gradients are zero
      zero_.resize(o(g).cur->shape());
      zero_.zero();
      dy = &zero_;
    }
    const Tensor& dx = layer->backward(*dy, ctx);
    if (layer->needs_input_grad) give(g, 0, dx);
  }
  bool has_params() const override { return params_; }
  LayerPtr layer;

 private:
  bool params_;
  Tensor zero_;
};

// Identity, and Dropout where it does nothing (ratio 0): the value passes.
class IdentityOp final : public Op {
 public:
  void forward(GraphModel& g, Context&) override { o(g).cur = v(g, 0).cur; }
  void backward(GraphModel& g, Context&) override {
    if (o(g).grad && v(g, 0).requires_grad) give(g, 0, *o(g).grad);
  }
};

class BinaryOp final : public Op {
 public:
  enum class Kind { kAdd, kSub, kMul, kDiv };
  explicit BinaryOp(Kind k) : kind_(k) {}

  void forward(GraphModel& g, Context&) override {
    const Tensor& a = *v(g, 0).cur;
    const Tensor& b = *v(g, 1).cur;
    Tensor& y = o(g).own;
    if (a.shape() == b.shape()) {
      y.resize(a.shape());
      same_ = true;
      const float* pa = a.data();
      const float* pb = b.data();
      float* py = y.data();
      const Kind k = kind_;
      parallel_for(a.numel(), [=](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) py[i] = apply(k, pa[i], pb[i]);
      }, kGrain);
    } else {
      same_ = false;
      broadcast(a.shape(), b.shape());
      y.resize(out_shape_);
      const float* pa = a.data();
      const float* pb = b.data();
      float* py = y.data();
      const Kind k = kind_;
      for_each_broadcast(out_shape_, sa_, sb_, [=](int64_t i, int64_t ia, int64_t ib) { py[i] = apply(k, pa[ia], pb[ib]); });
    }
    o(g).cur = &y;
  }

  void backward(GraphModel& g, Context&) override {
    const Tensor* dyp = o(g).grad;
    if (!dyp) return;
    const Tensor& dy = *dyp;
    const Tensor& a = *v(g, 0).cur;
    const Tensor& b = *v(g, 1).cur;
    const bool need_a = v(g, 0).requires_grad, need_b = v(g, 1).requires_grad;
    if (kind_ == Kind::kAdd && same_) {  // the residual add: both inputs take dy as it is
      if (need_a) give(g, 0, dy);
      if (need_b) give(g, 1, dy);
      return;
    }
    const Kind k = kind_;
    if (need_a) {
      operand_grad(dy, a, b, false, da_, [k](float d, float x, float y) { return grad_a(k, d, x, y); });
      give(g, 0, da_);
    }
    if (need_b) {
      operand_grad(dy, a, b, true, db_, [k](float d, float x, float y) { return grad_b(k, d, x, y); });
      give(g, 1, db_);
    }
  }

 private:
  static float apply(Kind k, float a, float b) {
    switch (k) {
      case Kind::kAdd: return a + b;
      case Kind::kSub: return a - b;
      case Kind::kMul: return a * b;
      default: return a / b;
    }
  }
  static float grad_a(Kind k, float d, float, float b) {
    switch (k) {
      case Kind::kAdd:
      case Kind::kSub: return d;
      case Kind::kMul: return d * b;
      default: return d / b;
    }
  }
  static float grad_b(Kind k, float d, float a, float b) {
    switch (k) {
      case Kind::kAdd: return d;
      case Kind::kSub: return -d;
      case Kind::kMul: return d * a;
      default: return -d * a / (b * b);
    }
  }
  void broadcast(const Shape& a, const Shape& b) { broadcast_shapes(a, b, out_shape_, sa_, sb_, where); }
  // The gradient of operand a (of b when of_b) into out: grad(dy, a, b) per
  // element, summed over the positions broadcasting repeated it.
  template <typename G>
  void operand_grad(const Tensor& dy, const Tensor& a, const Tensor& b, bool of_b, Tensor& out, G grad) {
    out.resize(of_b ? b.shape() : a.shape());
    const float* pa = a.data();
    const float* pb = b.data();
    const float* pd = dy.data();
    float* po = out.data();
    if (same_) {
      parallel_for(dy.numel(), [=](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) po[i] = grad(pd[i], pa[i], pb[i]);
      }, kGrain);
      return;
    }
    out.zero();  // serial: several outputs may land on one element
    for_each_broadcast(out_shape_, sa_, sb_, [=](int64_t i, int64_t ia, int64_t ib) {
      po[of_b ? ib : ia] += grad(pd[i], pa[ia], pb[ib]);
    });
  }
  Kind kind_;
  bool same_ = true;
  Shape out_shape_, sa_, sb_;
  Tensor da_, db_;
};

// An element-wise function y = f(x) with dy/dx = d(x, y) (Erf, Pow by a
// constant, Sqrt).
template <typename F, typename D>
class UnaryOp final : public Op {
 public:
  UnaryOp(F f, D d) : f_(f), d_(d) {}
  void forward(GraphModel& g, Context&) override {
    const Tensor& x = *v(g, 0).cur;
    Tensor& y = o(g).own;
    y.resize(x.shape());
    const float* px = x.data();
    float* py = y.data();
    const F f = f_;
    parallel_for(x.numel(), [=](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) py[i] = f(px[i]);
    }, 4096);
    o(g).cur = &y;
  }
  void backward(GraphModel& g, Context&) override {
    if (!o(g).grad || !v(g, 0).requires_grad) return;
    const Tensor& x = *v(g, 0).cur;
    dx_.resize(x.shape());
    const float* px = x.data();
    const float* py = o(g).own.data();
    const float* pd = o(g).grad->data();
    float* out = dx_.data();
    const D d = d_;
    parallel_for(x.numel(), [=](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) out[i] = pd[i] * d(px[i], py[i]);
    }, 4096);
    give(g, 0, dx_);
  }

 private:
  F f_;
  D d_;
};

template <typename F, typename D>
std::unique_ptr<Op> unary(F f, D d) {
  return std::make_unique<UnaryOp<F, D>>(f, d);
}

std::unique_ptr<Op> erf_op() {
  const float c = static_cast<float>(2.0 / std::sqrt(M_PI));
  return unary([](float x) { return std::erf(x); }, [c](float x, float) { return c * std::exp(-x * x); });
}

std::unique_ptr<Op> pow_op(float p) {
  if (p == 2.0f) return unary([](float x) { return x * x; }, [](float x, float) { return 2.0f * x; });
  if (p == 0.5f) return unary([](float x) { return std::sqrt(x); }, [](float, float y) { return 0.5f / y; });
  return unary([p](float x) { return std::pow(x, p); }, [p](float x, float) { return p * std::pow(x, p - 1); });
}

// Softmax over the last dimension.
class SoftmaxOp final : public Op {
 public:
  explicit SoftmaxOp(int64_t axis) : axis_(axis) {}
  void forward(GraphModel& g, Context&) override {
    const Tensor& x = *v(g, 0).cur;
    TEMPO_CHECK(x.ndim() >= 1 && normalise_axis(axis_, x.ndim(), where) == x.ndim() - 1,
                where + ": only the softmax over the last dimension is supported");
    Tensor& y = o(g).own;
    y.resize(x.shape());
    const int64_t c = x.dim(-1), rows = c ? x.numel() / c : 0;
    const float* px = x.data();
    float* py = y.data();
    parallel_for(rows, [=](int64_t s, int64_t e) {
      for (int64_t r = s; r < e; ++r) {
        const float* in = px + r * c;
        float* out = py + r * c;
        float m = in[0];
        for (int64_t j = 1; j < c; ++j) m = std::max(m, in[j]);
        float sum = 0;
        for (int64_t j = 0; j < c; ++j) sum += (out[j] = std::exp(in[j] - m));
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < c; ++j) out[j] *= inv;
      }
    }, 64);
    o(g).cur = &y;
  }
  void backward(GraphModel& g, Context&) override {
    if (!o(g).grad || !v(g, 0).requires_grad) return;
    const Tensor& y = o(g).own;
    dx_.resize(y.shape());
    const int64_t c = y.dim(-1), rows = c ? y.numel() / c : 0;
    const float* py = y.data();
    const float* pd = o(g).grad->data();
    float* out = dx_.data();
    parallel_for(rows, [=](int64_t s, int64_t e) {
      for (int64_t r = s; r < e; ++r) {
        float dot = 0;
        for (int64_t j = 0; j < c; ++j) dot += pd[r * c + j] * py[r * c + j];
        for (int64_t j = 0; j < c; ++j) out[r * c + j] = py[r * c + j] * (pd[r * c + j] - dot);
      }
    }, 64);
    give(g, 0, dx_);
  }

 private:
  int64_t axis_;
};

// Reshape and Flatten: the same numbers under another shape.
class ReshapeOp final : public Op {
 public:
  enum class Kind { kReshape, kFlatten, kUnsqueeze };
  // Reshape and Unsqueeze read their shape or axes from the integer value
  // `param` each step; Flatten has its axis.
  ReshapeOp(Kind kind, int param, int64_t flatten_axis) : kind_(kind), param_(param), axis_(flatten_axis) {}
  void forward(GraphModel& g, Context&) override {
    const Tensor& x = *v(g, 0).cur;
    Shape s;
    if (kind_ == Kind::kUnsqueeze) {
      const std::vector<int64_t>& axes = ints_of(g, param_, where).i64;
      const int64_t r = x.ndim() + static_cast<int64_t>(axes.size());
      std::vector<bool> one(static_cast<size_t>(r), false);
      for (int64_t a : axes) one[static_cast<size_t>(normalise_axis(a, r, where))] = true;
      for (int64_t d = 0, j = 0; d < r; ++d) s.push_back(one[static_cast<size_t>(d)] ? 1 : x.dim(static_cast<int>(j++)));
    } else if (kind_ == Kind::kFlatten) {
      const int64_t a = axis_ < 0 ? axis_ + x.ndim() : axis_;
      TEMPO_CHECK(a >= 0 && a <= x.ndim(), where + ": axis out of range for shape " + shape_str(x.shape()));
      int64_t lead = 1;
      for (int64_t i = 0; i < a; ++i) lead *= x.dim(static_cast<int>(i));
      s = {lead, lead ? x.numel() / lead : 0};
    } else {
      const std::vector<int64_t>& shape_ = ints_of(g, param_, where).i64;
      s = shape_;
      int64_t known = 1, infer = -1;
      for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == 0) {
          TEMPO_CHECK(static_cast<int>(i) < x.ndim(), where + ": a 0 in the shape has no input dimension to copy");
          s[i] = x.dim(static_cast<int>(i));
        }
        if (s[i] == -1)
          infer = static_cast<int64_t>(i);
        else
          known *= s[i];
      }
      if (infer >= 0) {
        TEMPO_CHECK(known > 0 && x.numel() % known == 0,
                    where + ": cannot reshape " + shape_str(x.shape()) + " to " + shape_str(s));
        s[static_cast<size_t>(infer)] = x.numel() / known;
      }
    }
    TEMPO_CHECK(numel_of(s) == x.numel(),
                where + ": cannot reshape " + shape_str(x.shape()) + " to " + shape_str(s));
    Tensor& y = o(g).own;
    y.resize(s);
    std::memcpy(y.data(), x.data(), sizeof(float) * static_cast<size_t>(x.numel()));
    o(g).cur = &y;
  }
  void backward(GraphModel& g, Context&) override {
    if (!o(g).grad || !v(g, 0).requires_grad) return;
    dx_.resize(v(g, 0).cur->shape());
    std::memcpy(dx_.data(), o(g).grad->data(), sizeof(float) * static_cast<size_t>(dx_.numel()));
    give(g, 0, dx_);
  }

 private:
  Kind kind_;
  int param_;
  int64_t axis_;
};

// A strided copy: out[i] = in[map(i)] for Transpose, Slice, Gather (with a
// gather index per position) and Pad (with -1 for padding). Backward scatters
// the gradient back through the same map.
class GatherMapOp : public Op {
 public:
  std::vector<int> int_in;  // integer inputs (starts, indices, ...), read each step; -1: absent
  void forward(GraphModel& g, Context&) override {
    const Tensor& x = *v(g, 0).cur;
    bool changed = map_.empty() || x.shape() != last_in_;
    params_.resize(int_in.size());
    scalar_.resize(int_in.size());
    for (size_t k = 0; k < int_in.size(); ++k) {
      if (int_in[k] < 0) continue;
      const NamedTensor& t = ints_of(g, int_in[k], where);
      if (t.i64 != params_[k] || t.shape.empty() != scalar_[k]) changed = true;
      params_[k] = t.i64;
      scalar_[k] = t.shape.empty();
    }
    if (changed) {  // the map depends on the shape and the integer inputs alone
      build(x.shape(), last_out_);
      last_in_ = x.shape();
    }
    Tensor& y = o(g).own;
    y.resize(last_out_);
    const float* px = x.data();
    float* py = y.data();
    const int64_t* m = map_.data();
    parallel_for(y.numel(), [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) py[i] = m[i] < 0 ? 0.0f : px[m[i]];
    }, kGrain);
    o(g).cur = &y;
  }
  void backward(GraphModel& g, Context&) override {
    if (!o(g).grad || !v(g, 0).requires_grad) return;
    dx_.resize(v(g, 0).cur->shape());
    dx_.zero();
    const float* pd = o(g).grad->data();
    float* out = dx_.data();
    for (size_t i = 0; i < map_.size(); ++i)  // serial: Gather may repeat an index
      if (map_[i] >= 0) out[map_[i]] += pd[i];
    give(g, 0, dx_);
  }

 protected:
  // Sets the output shape and map_ (one input offset per output element).
  virtual void build(const Shape& in, Shape& out) = 0;
  std::vector<int64_t> map_;
  std::vector<std::vector<int64_t>> params_;  // the integer inputs' values
  std::vector<bool> scalar_;                  // ... and whether each is a scalar

 private:
  Shape last_in_, last_out_;
};

// Fills map_ for an output of shape `out` whose element at index (i_0..i_r)
// reads the input at Σ_d src(d, i_d), or padding when any src is negative.
template <typename Src>
void fill_map(std::vector<int64_t>& map, const Shape& out, Src&& src) {
  const int64_t n = numel_of(out);
  map.resize(static_cast<size_t>(n));
  std::vector<int64_t> idx(out.size(), 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t off = 0;
    bool pad = false;
    for (size_t d = 0; d < out.size(); ++d) {
      const int64_t s = src(d, idx[d]);
      if (s < 0) pad = true;
      off += s;
    }
    map[static_cast<size_t>(i)] = pad ? -1 : off;
    for (size_t d = out.size(); d-- > 0;) {
      if (++idx[d] < out[d]) break;
      idx[d] = 0;
    }
  }
}

class TransposeOp final : public GatherMapOp {
 public:
  explicit TransposeOp(std::vector<int64_t> perm) : perm_(std::move(perm)) {}

 protected:
  void build(const Shape& in, Shape& out) override {
    TEMPO_CHECK(in.size() == perm_.size(), where + ": perm has " + std::to_string(perm_.size()) +
                                               " axes, the input has shape " + shape_str(in));
    const Shape st = strides_of(in);
    out.resize(in.size());
    for (size_t d = 0; d < in.size(); ++d) out[d] = in[static_cast<size_t>(perm_[d])];
    fill_map(map_, out, [&](size_t d, int64_t i) { return i * st[static_cast<size_t>(perm_[d])]; });
  }

 private:
  std::vector<int64_t> perm_;
};

// Slice with step 1; int_in = starts, ends[, axes].
class SliceOp final : public GatherMapOp {
 protected:
  void build(const Shape& in, Shape& out) override {
    const std::vector<int64_t>& starts_ = params_[0];
    const std::vector<int64_t>& ends_ = params_[1];
    const std::vector<int64_t>& axes_ = params_[2];
    TEMPO_CHECK(starts_.size() == ends_.size() && (axes_.empty() || axes_.size() == starts_.size()),
                where + ": starts, ends and axes differ in length");
    const int64_t r = static_cast<int64_t>(in.size());
    Shape begin(in.size(), 0);
    out = in;
    for (size_t i = 0; i < starts_.size(); ++i) {
      const int64_t a = normalise_axis(axes_.empty() ? static_cast<int64_t>(i) : axes_[i], r, where);
      const int64_t dim = in[static_cast<size_t>(a)];
      auto clamp = [dim](int64_t x) { return std::clamp(x < 0 ? x + dim : x, int64_t{0}, dim); };
      const int64_t b = clamp(starts_[i]), e = clamp(ends_[i]);
      begin[static_cast<size_t>(a)] = b;
      out[static_cast<size_t>(a)] = std::max<int64_t>(0, e - b);
    }
    const Shape st = strides_of(in);
    fill_map(map_, out, [&](size_t d, int64_t i) { return (begin[d] + i) * st[d]; });
  }
};

// int_in = the indices (a scalar or 1-D).
class GatherOp final : public GatherMapOp {
 public:
  explicit GatherOp(int64_t axis) : axis_(axis) {}

 protected:
  void build(const Shape& in, Shape& out) override {
    const int64_t a = normalise_axis(axis_, static_cast<int64_t>(in.size()), where);
    const int64_t dim = in[static_cast<size_t>(a)];
    std::vector<int64_t> idx = params_[0];
    const bool scalar = scalar_[0];
    TEMPO_CHECK(!idx.empty(), where + ": no indices");
    for (int64_t& i : idx) {
      if (i < 0) i += dim;
      TEMPO_CHECK(i >= 0 && i < dim, where + ": index out of range for shape " + shape_str(in));
    }
    // Computed as if the indices were 1-D, then the axis dropped for a scalar.
    Shape full = in;
    full[static_cast<size_t>(a)] = static_cast<int64_t>(idx.size());
    const Shape st = strides_of(in);
    fill_map(map_, full, [&](size_t d, int64_t i) {
      return d == static_cast<size_t>(a) ? idx[static_cast<size_t>(i)] * st[d] : i * st[d];
    });
    out = full;
    if (scalar) out.erase(out.begin() + a);
  }

 private:
  int64_t axis_;
};

class PadOp final : public GatherMapOp {
 public:
  explicit PadOp(std::vector<int64_t> pads) : pads_(std::move(pads)) {}

 protected:
  void build(const Shape& in, Shape& out) override {
    const size_t r = in.size();
    TEMPO_CHECK(pads_.size() == 2 * r, where + ": pads are for rank " + std::to_string(pads_.size() / 2) +
                                           ", the input has shape " + shape_str(in));
    out = in;
    for (size_t d = 0; d < r; ++d) out[d] += pads_[d] + pads_[d + r];
    const Shape st = strides_of(in);
    fill_map(map_, out, [&](size_t d, int64_t i) {
      const int64_t j = i - pads_[d];
      return j < 0 || j >= in[d] ? -(int64_t{1} << 50) : j * st[d];
    });
  }

 private:
  std::vector<int64_t> pads_;
};

class ConcatOp final : public Op {
 public:
  explicit ConcatOp(int64_t axis) : axis_(axis) {}
  void forward(GraphModel& g, Context&) override {
    const Tensor& first = *v(g, 0).cur;
    const int64_t a = normalise_axis(axis_, first.ndim(), where);
    Shape s = first.shape();
    s[static_cast<size_t>(a)] = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      const Tensor& x = *v(g, i).cur;
      TEMPO_CHECK(x.ndim() == first.ndim(), where + ": inputs of different ranks");
      for (int d = 0; d < x.ndim(); ++d)
        TEMPO_CHECK(d == a || x.dim(d) == first.dim(d),
                    where + ": shapes " + shape_str(first.shape()) + " and " + shape_str(x.shape()) + " do not concatenate");
      s[static_cast<size_t>(a)] += x.dim(static_cast<int>(a));
    }
    outer_ = 1;
    for (int64_t d = 0; d < a; ++d) outer_ *= s[static_cast<size_t>(d)];
    inner_ = 1;
    for (size_t d = static_cast<size_t>(a) + 1; d < s.size(); ++d) inner_ *= s[d];
    axis_n_ = a;
    Tensor& y = o(g).own;
    y.resize(s);
    const int64_t row = s[static_cast<size_t>(a)] * inner_;
    int64_t at = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      const Tensor& x = *v(g, i).cur;
      const int64_t w = x.dim(static_cast<int>(a)) * inner_;
      for (int64_t r = 0; r < outer_; ++r) std::memcpy(y.data() + r * row + at, x.data() + r * w, sizeof(float) * w);
      at += w;
    }
    o(g).cur = &y;
  }
  void backward(GraphModel& g, Context&) override {
    if (!o(g).grad) return;
    parts_.resize(in.size());
    const Tensor& dy = *o(g).grad;
    const int64_t row = dy.dim(static_cast<int>(axis_n_)) * inner_;
    int64_t at = 0;
    for (size_t i = 0; i < in.size(); ++i) {
      const Tensor& x = *v(g, i).cur;
      const int64_t w = x.dim(static_cast<int>(axis_n_)) * inner_;
      if (v(g, i).requires_grad) {
        parts_[i].resize(x.shape());
        for (int64_t r = 0; r < outer_; ++r)
          std::memcpy(parts_[i].data() + r * w, dy.data() + r * row + at, sizeof(float) * w);
        give(g, i, parts_[i]);
      }
      at += w;
    }
  }

 private:
  int64_t axis_, axis_n_ = 0, outer_ = 1, inner_ = 1;
  std::vector<Tensor> parts_;
};

// x·W with W stored K×N (Gemm with transB = 0, MatMul by an initializer):
// a Linear whose N×K weight is W transposed before each forward, and whose
// gradient is transposed back into W's layout after backward, so the
// product still goes through the linear backend and the state keeps the
// graph's layout.
class KnLinear final : public Layer {
 public:
  KnLinear(int64_t k, int64_t n, bool bias) : inner(k, n, bias), w({k, n}), dw({k, n}) {}
  const Tensor& forward(const Tensor& x, Context& ctx) override {
    transpose(w.data(), w.dim(0), w.dim(1), inner.weight.data());
    inner.needs_input_grad = needs_input_grad;
    inner.offloaded = offloaded;
    return inner.forward(x, ctx);
  }
  const Tensor& backward(const Tensor& dy, Context& ctx) override {
    const Tensor& dx = inner.backward(dy, ctx);
    transpose(inner.dweight.data(), dw.dim(1), dw.dim(0), dw.data());
    return dx;
  }
  Product* product() override { return inner.product(); }
  std::string kind() const override { return "Linear"; }
  Linear inner;
  Tensor w, dw;  // K×N, the graph's layout

 private:
  static void transpose(const float* src, int64_t r, int64_t c, float* dst) {
    parallel_for(r, [=](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        for (int64_t j = 0; j < c; ++j) dst[j * r + i] = src[i * c + j];
    }, 64);
  }
};

// A product of two activations, A (…×m×k) · B (…×k×n), the leading
// dimensions equal: one batched product of the backend, block g being
// A_g·(B_gᵀ)ᵀ.
class MatMulOp final : public Op {
 public:
  void forward(GraphModel& g, Context& ctx) override {
    const Tensor& a = *v(g, 0).cur;
    const Tensor& b = *v(g, 1).cur;
    TEMPO_CHECK(a.ndim() >= 2 && a.ndim() == b.ndim(),
                where + ": shapes " + shape_str(a.shape()) + " and " + shape_str(b.shape()) +
                    " (Tempo multiplies two activations of the same rank, at least 2, without broadcasting)");
    for (int d = 0; d + 2 < a.ndim(); ++d)
      TEMPO_CHECK(a.dim(d) == b.dim(d), where + ": leading dimensions of " + shape_str(a.shape()) + " and " +
                                            shape_str(b.shape()) + " differ");
    TEMPO_CHECK(a.dim(-1) == b.dim(-2), where + ": inner dimensions of " + shape_str(a.shape()) + " and " +
                                            shape_str(b.shape()) + " differ");
    p_.m = a.dim(-2);
    p_.k = a.dim(-1);
    p_.n = b.dim(-1);
    p_.groups = p_.m * p_.k != 0 ? a.numel() / (p_.m * p_.k) : 0;
    p_.name = where;
    transpose_blocks(b.data(), p_.groups, p_.k, p_.n, bt_);
    p_.a = a.data();
    p_.w = bt_.data();
    Shape s = a.shape();
    s.back() = p_.n;
    Tensor& y = o(g).own;
    y.resize(s);
    ctx.offload->batched_forward(p_, y.data());
    o(g).cur = &y;
  }
  void backward(GraphModel& g, Context& ctx) override {
    if (!o(g).grad) return;
    const bool need_a = v(g, 0).requires_grad, need_b = v(g, 1).requires_grad;
    if (!need_a && !need_b) return;
    dbt_.resize({p_.groups, p_.n, p_.k});
    if (need_a) da_.resize(v(g, 0).cur->shape());
    ctx.offload->batched_backward(p_, o(g).grad->data(), dbt_.data(), need_a ? da_.data() : nullptr);
    if (need_a) give(g, 0, da_);
    if (need_b) {
      transpose_blocks(dbt_.data(), p_.groups, p_.n, p_.k, db_);
      db_.reshape(v(g, 1).cur->shape());
      give(g, 1, db_);
    }
  }

 private:
  // out (groups × c×r) = each r×c block of src transposed.
  static void transpose_blocks(const float* src, int64_t groups, int64_t r, int64_t c, Tensor& out) {
    out.resize({groups, c, r});
    float* dst = out.data();
    parallel_for(groups, [=](int64_t b, int64_t e) {
      for (int64_t gi = b; gi < e; ++gi)
        for (int64_t i = 0; i < r; ++i)
          for (int64_t j = 0; j < c; ++j) dst[gi * r * c + j * r + i] = src[gi * r * c + i * c + j];
    });
  }
  BatchedProduct p_;
  Tensor bt_, dbt_, da_, db_;
};

// Integer arithmetic on shapes and indices, run every step (the batch size
// may change): one function per node, no gradient.
class IntOp final : public Op {
 public:
  explicit IntOp(std::function<void(GraphModel&, NamedTensor&)> f) : f_(std::move(f)) {}
  void forward(GraphModel& g, Context&) override {
    Value& out = at(g, this->out[0]);
    out.iown.dtype = DType::I64;
    f_(g, out.iown);
    TEMPO_CHECK(static_cast<int64_t>(out.iown.i64.size()) == numel_of(out.iown.shape),
                where + ": integer result of the wrong size");
    out.ints = &out.iown;
  }
  void backward(GraphModel&, Context&) override {}

 private:
  std::function<void(GraphModel&, NamedTensor&)> f_;
};

// A float value made from integers (Cast to FLOAT, ConstantOfShape with a
// float value): a constant of the step, no gradient.
class FloatFromIntOp final : public Op {
 public:
  explicit FloatFromIntOp(std::function<void(GraphModel&, Tensor&)> f) : f_(std::move(f)) {}
  void forward(GraphModel& g, Context&) override {
    f_(g, o(g).own);
    o(g).cur = &o(g).own;
  }
  void backward(GraphModel&, Context&) override {}

 private:
  std::function<void(GraphModel&, Tensor&)> f_;
};

// Expand(x, shape): x broadcast to the shape; backward sums over the copies.
class ExpandOp final : public Op {
 public:
  explicit ExpandOp(int shape) : shape_(shape) {}
  void forward(GraphModel& g, Context&) override {
    const Tensor& x = *v(g, 0).cur;
    const NamedTensor& s = ints_of(g, shape_, where);
    broadcast_shapes(x.shape(), s.i64, out_, sa_, sb_, where);
    Tensor& y = o(g).own;
    y.resize(out_);
    const float* px = x.data();
    float* py = y.data();
    for_each_broadcast(out_, sa_, sb_, [=](int64_t i, int64_t ia, int64_t) { py[i] = px[ia]; });
    o(g).cur = &y;
  }
  void backward(GraphModel& g, Context&) override {
    if (!o(g).grad || !v(g, 0).requires_grad) return;
    dx_.resize(v(g, 0).cur->shape());
    dx_.zero();
    float* out = dx_.data();
    const float* pd = o(g).grad->data();
    for_each_broadcast(out_, sa_, sb_, [=](int64_t i, int64_t ia, int64_t) { out[ia] += pd[i]; });
    give(g, 0, dx_);
  }

 private:
  int shape_;
  Shape out_, sa_, sb_;
};

// ReduceMean over the last axis, keepdims (LayerNorm as PyTorch exports it).
class ReduceMeanOp final : public Op {
 public:
  void forward(GraphModel& g, Context&) override {
    const Tensor& x = *v(g, 0).cur;
    TEMPO_CHECK(x.ndim() >= 1, where + ": needs at least one dimension");
    Shape s = x.shape();
    s.back() = 1;
    Tensor& y = o(g).own;
    y.resize(s);
    const int64_t c = x.dim(-1), rows = y.numel();
    const float* px = x.data();
    float* py = y.data();
    parallel_for(rows, [=](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        float sum = 0;
        for (int64_t j = 0; j < c; ++j) sum += px[r * c + j];
        py[r] = sum / static_cast<float>(c);
      }
    }, 64);
    o(g).cur = &y;
  }
  void backward(GraphModel& g, Context&) override {
    if (!o(g).grad || !v(g, 0).requires_grad) return;
    const Tensor& x = *v(g, 0).cur;
    dx_.resize(x.shape());
    const int64_t c = x.dim(-1), rows = c ? x.numel() / c : 0;
    const float* pd = o(g).grad->data();
    float* out = dx_.data();
    const float inv = 1.0f / static_cast<float>(c);
    parallel_for(rows, [=](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        for (int64_t j = 0; j < c; ++j) out[r * c + j] = pd[r] * inv;
    }, 64);
    give(g, 0, dx_);
  }
};

// Element-wise integer arithmetic with NumPy broadcasting (Div truncates).
void int_binary(const std::string& op, const NamedTensor& a, const NamedTensor& b, NamedTensor& out,
                const std::string& where) {
  Shape sa, sb;
  broadcast_shapes(a.shape, b.shape, out.shape, sa, sb, where);
  out.i64.resize(static_cast<size_t>(numel_of(out.shape)));
  for_each_broadcast(out.shape, sa, sb, [&](int64_t i, int64_t ia, int64_t ib) {
    const int64_t x = a.i64[static_cast<size_t>(ia)], y = b.i64[static_cast<size_t>(ib)];
    int64_t r = 0;
    if (op == "Add") r = x + y;
    else if (op == "Sub") r = x - y;
    else if (op == "Mul") r = x * y;
    else if (op == "Equal") r = x == y;
    else {
      TEMPO_CHECK(y != 0, where + ": integer division by zero");
      r = x / y;
    }
    out.i64[static_cast<size_t>(i)] = r;
  });
  if (a.shape.empty() && b.shape.empty()) out.shape.clear();
}

}  // namespace

GraphModel::~GraphModel() = default;

GraphModel::GraphModel(const OnnxGraph& g) {
  const std::string& file = g.file;
  std::map<std::string, int> ids;
  auto new_value = [&](const std::string& name) {
    values_.emplace_back();
    values_.back().name = name;
    ids[name] = static_cast<int>(values_.size()) - 1;
    return static_cast<int>(values_.size()) - 1;
  };
  // Uses of every name, to find initializers used more than once.
  std::map<std::string, int> uses;
  std::map<std::string, const OnnxNode*> producer;
  for (const auto& n : g.nodes) {
    for (const auto& i : n.inputs)
      if (!i.empty()) ++uses[i];
    for (const auto& o : n.outputs)
      if (!o.empty()) producer[o] = &n;
  }
  std::map<std::string, const NamedTensor*> float_consts;  // Constant nodes' float values
  std::map<std::string, StateEntry> entries;               // by initializer name
  std::set<std::string> claimed;                           // initializers a layer owns

  input_ = new_value(g.input);
  input_shape_.assign(g.input_dims.begin() + 1, g.input_dims.end());
  classes_ = g.output_dims[1];

  auto where_of = [&](const OnnxNode& n) { return file + ": " + n.where(); };
  auto claim = [&](const OnnxNode& n, const std::string& name, Tensor* value, Tensor* grad) {
    const NamedTensor* t = g.initializer(name);
    TEMPO_CHECK(t && t->dtype == DType::F32, where_of(n) + ": '" + name + "' must be a float initializer");
    TEMPO_CHECK(uses[name] == 1 && !claimed.count(name),
                where_of(n) + ": initializer '" + name + "' is used by several nodes (shared weights are not supported)");
    TEMPO_CHECK(t->shape == value->shape(), where_of(n) + ": initializer '" + name + "' has shape " +
                                                shape_str(t->shape) + ", the layer needs " + shape_str(value->shape()));
    std::copy(t->f32.begin(), t->f32.end(), value->data());
    claimed.insert(name);
    entries[name] = StateEntry{name, value, grad, nullptr};
  };
  // The value of a name used as a float operand of a generic operator:
  // a computed value, a Constant's value, or an initializer (a parameter).
  auto operand = [&](const OnnxNode& n, const std::string& name) -> int {
    auto it = ids.find(name);
    if (it != ids.end()) return it->second;
    if (auto c = float_consts.find(name); c != float_consts.end()) {
      const int id = new_value(name);
      store_.emplace_back(c->second->shape);
      std::copy(c->second->f32.begin(), c->second->f32.end(), store_.back().data());
      values_[static_cast<size_t>(id)].cur = &store_.back();
      return id;
    }
    const NamedTensor* t = g.initializer(name);
    TEMPO_CHECK(t, where_of(n) + ": input '" + name + "' is an integer constant where a float value is needed");
    TEMPO_CHECK(t->dtype == DType::F32, where_of(n) + ": initializer '" + name + "' must be float here");
    TEMPO_CHECK(!claimed.count(name),
                where_of(n) + ": initializer '" + name + "' is used by several nodes (shared weights are not supported)");
    claimed.insert(name);
    const int id = new_value(name);
    store_.emplace_back(t->shape);
    std::copy(t->f32.begin(), t->f32.end(), store_.back().data());
    Tensor* value = &store_.back();
    store_.emplace_back(t->shape);
    Tensor* grad = &store_.back();
    grad->zero();
    Value& val = values_[static_cast<size_t>(id)];
    val.cur = value;
    val.is_param = true;
    val.requires_grad = true;
    val.param_grad = grad;
    entries[name] = StateEntry{name, value, grad, nullptr};
    return id;
  };
  // The value of an integer input (a constant, or computed from shapes).
  auto int_id = [&](const OnnxNode& n, size_t i) -> int {
    const std::string& name = n.inputs[i];
    auto it = ids.find(name);
    if (it != ids.end()) {
      TEMPO_CHECK(values_[static_cast<size_t>(it->second)].ints || values_[static_cast<size_t>(it->second)].int_op,
                  where_of(n) + ": input '" + name + "' must be an integer tensor");
      return it->second;
    }
    const NamedTensor* t = g.initializer(name);
    TEMPO_CHECK(t && t->dtype == DType::I64, where_of(n) + ": input '" + name + "' must be an integer tensor");
    const int id = new_value(name);
    values_[static_cast<size_t>(id)].ints = t;  // copied below, with the other constants
    int_constants_.push_back(*t);
    values_[static_cast<size_t>(id)].ints = &int_constants_.back();
    return id;
  };
  auto is_int = [&](const std::string& name) {
    auto it = ids.find(name);
    if (it != ids.end()) return values_[static_cast<size_t>(it->second)].ints != nullptr || values_[static_cast<size_t>(it->second)].int_op;
    const NamedTensor* t = g.initializer(name);
    return t && t->dtype == DType::I64;
  };
  // A constant integer input's values, at build time.
  auto ints = [&](const OnnxNode& n, size_t i) -> const NamedTensor& {
    const Value& val = values_[static_cast<size_t>(int_id(n, i))];
    TEMPO_CHECK(val.ints && !val.int_op, where_of(n) + ": input '" + n.inputs[i] + "' must be a constant");
    return *val.ints;
  };
  auto has = [](const OnnxNode& n, size_t i) { return i < n.inputs.size() && !n.inputs[i].empty(); };
  // Nodes folded into a layer (the Transpose of nn.Linear's weight).
  std::set<const OnnxNode*> folded;
  for (const auto& n : g.nodes) {
    if (n.op != "MatMul" || g.initializer(n.inputs[1])) continue;
    auto p = producer.find(n.inputs[1]);
    if (p == producer.end() || p->second->op != "Transpose") continue;
    const OnnxNode& t = *p->second;
    const NamedTensor* w = g.initializer(t.inputs[0]);
    if (w && w->dtype == DType::F32 && w->shape.size() == 2 && t.attr_ints("perm", {}) == std::vector<int64_t>{1, 0} &&
        uses[t.outputs[0]] == 1)
      folded.insert(&t);
  }

  std::vector<std::string> bn_running_var;  // names after which num_batches_tracked goes
  std::map<std::string, int64_t*> bn_counters;
  for (const auto& n : g.nodes) {
    if (folded.count(&n)) continue;
    const std::string where = where_of(n);
    std::unique_ptr<Op> op;
    bool layer_params = false;
    LayerPtr layer;
    // Integer nodes (shapes, indices): computed every step, no gradient.
    const bool int_node = (n.op == "Shape" || n.op == "Equal" || n.op == "Where" ||
                           (n.op == "Cast" && n.attr_int("to", 1) != 1) ||
                           (n.op == "ConstantOfShape" && n.attrs.count("value") &&
                            n.attrs.at("value").t.dtype == DType::I64) ||
                           ((n.op == "Gather" || n.op == "Unsqueeze" || n.op == "Concat" || n.op == "Slice" ||
                             n.op == "Reshape" || n.op == "Add" || n.op == "Sub" || n.op == "Mul" || n.op == "Div" ||
                             n.op == "Identity" || n.op == "Cast") &&
                            is_int(n.inputs[0])));
    if (int_node) {
      TEMPO_CHECK(n.op != "Cast" || is_int(n.inputs[0]), where + ": casts from float to integer are not supported");
      std::vector<int> in_ids;
      if (n.op == "Shape") {
        in_ids.push_back(is_int(n.inputs[0]) ? int_id(n, 0) : operand(n, n.inputs[0]));
      } else {
        for (size_t i = 0; i < n.inputs.size(); ++i) in_ids.push_back(n.inputs[i].empty() ? -1 : int_id(n, i));
      }
      const std::string op_name = n.op;
      const int64_t axis = n.attr_int("axis", 0);
      const NamedTensor fill = n.attrs.count("value") ? n.attrs.at("value").t : NamedTensor{};
      auto f = [op_name, in_ids, axis, fill, where](GraphModel& gm, NamedTensor& out) {
        auto in = [&](size_t i) -> const NamedTensor& { return Op::ints_view(gm, in_ids[i], where); };
        out.i64.clear();
        if (op_name == "Shape") {
          const Value& x = gm.values_[static_cast<size_t>(in_ids[0])];
          const Shape s = x.ints ? x.ints->shape : x.cur->shape();
          out.shape = {static_cast<int64_t>(s.size())};
          out.i64 = s;
        } else if (op_name == "Identity" || op_name == "Cast") {
          out.shape = in(0).shape;
          out.i64 = in(0).i64;
        } else if (op_name == "Add" || op_name == "Sub" || op_name == "Mul" || op_name == "Div" || op_name == "Equal") {
          int_binary(op_name, in(0), in(1), out, where);
        } else if (op_name == "Where") {
          const NamedTensor &c = in(0), &a = in(1), &b = in(2);
          NamedTensor ab;
          int_binary("Add", a, b, ab, where);  // the broadcast shape of the branches
          NamedTensor sel;
          int_binary("Add", c, ab, sel, where);
          out.shape = sel.shape;
          Shape s1, sc, sab;
          broadcast_shapes(c.shape, ab.shape, s1, sc, sab, where);
          Shape s2, sa, sb;
          broadcast_shapes(a.shape, s1, s2, sa, sb, where);
          Shape s3, sb2, sx;
          broadcast_shapes(b.shape, s1, s3, sb2, sx, where);
          out.i64.resize(static_cast<size_t>(numel_of(s1)));
          for_each_broadcast(s1, sc, sab, [&](int64_t i, int64_t ic, int64_t) { out.i64[static_cast<size_t>(i)] = ic; });
          std::vector<int64_t> ai(out.i64.size()), bi(out.i64.size());
          for_each_broadcast(s2, sa, sb, [&](int64_t i, int64_t ia, int64_t) { ai[static_cast<size_t>(i)] = ia; });
          for_each_broadcast(s3, sb2, sx, [&](int64_t i, int64_t ib, int64_t) { bi[static_cast<size_t>(i)] = ib; });
          for (size_t i = 0; i < out.i64.size(); ++i)
            out.i64[i] = c.i64[static_cast<size_t>(out.i64[i])] ? a.i64[static_cast<size_t>(ai[i])]
                                                                 : b.i64[static_cast<size_t>(bi[i])];
          out.shape = s1;
        } else if (op_name == "ConstantOfShape") {
          out.shape = in(0).i64;
          for (int64_t d : out.shape) TEMPO_CHECK(d >= 0 && d <= (int64_t{1} << 24), where + ": bad shape");
          out.i64.assign(static_cast<size_t>(numel_of(out.shape)), fill.i64.empty() ? 0 : fill.i64[0]);
        } else if (op_name == "Unsqueeze") {
          const NamedTensor& x = in(0);
          const int64_t r = static_cast<int64_t>(x.shape.size() + in(1).i64.size());
          std::vector<bool> one(static_cast<size_t>(r), false);
          for (int64_t a : in(1).i64) one[static_cast<size_t>(normalise_axis(a, r, where))] = true;
          out.shape.clear();
          for (int64_t d = 0, j = 0; d < r; ++d)
            out.shape.push_back(one[static_cast<size_t>(d)] ? 1 : x.shape[static_cast<size_t>(j++)]);
          out.i64 = x.i64;
        } else if (op_name == "Concat") {
          out.shape = {0};
          for (size_t i = 0; i < in_ids.size(); ++i) {
            TEMPO_CHECK(in(i).shape.size() == 1, where + ": only 1-D integer tensors are concatenated");
            out.i64.insert(out.i64.end(), in(i).i64.begin(), in(i).i64.end());
          }
          out.shape = {static_cast<int64_t>(out.i64.size())};
        } else if (op_name == "Gather") {
          const NamedTensor &x = in(0), &idx = in(1);
          TEMPO_CHECK(x.shape.size() == 1 && normalise_axis(axis, 1, where) == 0,
                      where + ": only 1-D integer tensors are gathered");
          out.shape = idx.shape;
          for (int64_t k : idx.i64) {
            const int64_t d = x.shape[0];
            const int64_t j = k < 0 ? k + d : k;
            TEMPO_CHECK(j >= 0 && j < d, where + ": index out of range");
            out.i64.push_back(x.i64[static_cast<size_t>(j)]);
          }
        } else if (op_name == "Slice") {
          const NamedTensor& x = in(0);
          TEMPO_CHECK(x.shape.size() == 1, where + ": only 1-D integer tensors are sliced");
          const int64_t d = x.shape[0];
          auto clamp = [d](int64_t v) { return std::clamp(v < 0 ? v + d : v, int64_t{0}, d); };
          const int64_t b = clamp(in(1).i64.at(0)), e = clamp(in(2).i64.at(0));
          for (int64_t j = b; j < e; ++j) out.i64.push_back(x.i64[static_cast<size_t>(j)]);
          out.shape = {static_cast<int64_t>(out.i64.size())};
        } else if (op_name == "Reshape") {
          const NamedTensor& x = in(0);
          out.shape = in(1).i64;
          int64_t known = 1;
          for (int64_t& v : out.shape) known *= v == -1 ? 1 : v;
          for (int64_t& v : out.shape)
            if (v == -1) v = known ? static_cast<int64_t>(x.i64.size()) / known : 0;
          TEMPO_CHECK(numel_of(out.shape) == static_cast<int64_t>(x.i64.size()), where + ": bad integer reshape");
          out.i64 = x.i64;
        }
      };
      auto op = std::make_unique<IntOp>(f);
      op->where = where;
      const int out_id = new_value(n.outputs[0]);
      values_[static_cast<size_t>(out_id)].int_op = true;
      op->out.push_back(out_id);
      ops_.push_back(std::move(op));
      continue;
    }
    if (n.op == "Constant") {
      const NamedTensor& t = n.attrs.begin()->second.t;
      if (t.dtype == DType::F32) {
        float_consts[n.outputs[0]] = &t;
      } else {
        int_constants_.push_back(t);
        const int id = new_value(n.outputs[0]);
        values_[static_cast<size_t>(id)].ints = &int_constants_.back();
      }
      continue;
    }
    if (n.op == "Conv") {
      const NamedTensor& w = *g.initializer(n.inputs[1]);
      const int64_t stride = n.attr_ints("strides", {1, 1})[0], pad = n.attr_ints("pads", {0, 0, 0, 0})[0];
      auto c = std::make_unique<Conv2d>(w.shape[1], w.shape[0], w.shape[2], stride, pad, has(n, 2));
      claim(n, n.inputs[1], &c->weight, &c->dweight);
      if (has(n, 2)) claim(n, n.inputs[2], &c->bias, &c->dbias);
      layer = std::move(c);
      layer_params = true;
    } else if ((n.op == "Gemm" && n.attr_int("transB", 0) == 0) ||
               (n.op == "MatMul" && g.initializer(n.inputs[1]) && g.initializer(n.inputs[1])->shape.size() == 2 &&
                !g.initializer(n.inputs[0]))) {
      const NamedTensor& w = *g.initializer(n.inputs[1]);
      TEMPO_CHECK(w.dtype == DType::F32, where + ": the weight must be a float initializer");
      const bool bias = n.op == "Gemm" && has(n, 2);
      auto l = std::make_unique<KnLinear>(w.shape[0], w.shape[1], bias);
      claim(n, n.inputs[1], &l->w, &l->dw);
      if (bias) claim(n, n.inputs[2], &l->inner.bias, &l->inner.dbias);
      const std::string& wn = n.inputs[1];
      const bool suffix = wn.size() > 7 && wn.compare(wn.size() - 7, 7, ".weight") == 0;
      l->inner.product()->name = suffix ? wn.substr(0, wn.size() - 7) : wn;
      layer = std::move(l);
      layer_params = true;
    } else if (n.op == "Gemm") {
      const NamedTensor& w = *g.initializer(n.inputs[1]);
      auto l = std::make_unique<Linear>(w.shape[1], w.shape[0], has(n, 2));
      claim(n, n.inputs[1], &l->weight, &l->dweight);
      if (has(n, 2)) claim(n, n.inputs[2], &l->bias, &l->dbias);
      layer = std::move(l);
      layer_params = true;
    } else if (n.op == "MatMul" && producer.count(n.inputs[1]) && folded.count(producer[n.inputs[1]])) {
      const std::string& wname = producer[n.inputs[1]]->inputs[0];
      const NamedTensor& w = *g.initializer(wname);
      auto l = std::make_unique<Linear>(w.shape[1], w.shape[0], false);
      claim(n, wname, &l->weight, &l->dweight);
      layer = std::move(l);
      layer_params = true;
    } else if (n.op == "MatMul") {
      TEMPO_CHECK(!g.initializer(n.inputs[0]) && !g.initializer(n.inputs[1]),
                  where + ": a MatMul of an initializer by an activation (W·x), or by a weight of more than two "
                  "dimensions, is not supported; write it as x·W");
      op = std::make_unique<MatMulOp>();
    } else if (n.op == "BatchNormalization") {
      const NamedTensor& s = *g.initializer(n.inputs[1]);
      auto b = std::make_unique<BatchNorm2d>(s.shape[0], decimal_of(n.attr_float("epsilon", 1e-5f)),
                                             decimal_of(1.0 - n.attr_float("momentum", 0.9f)));
      claim(n, n.inputs[1], &b->weight, &b->dweight);
      claim(n, n.inputs[2], &b->bias, &b->dbias);
      claim(n, n.inputs[3], &b->running_mean, nullptr);
      claim(n, n.inputs[4], &b->running_var, nullptr);
      bn_running_var.push_back(n.inputs[4]);
      bn_counters[n.inputs[4]] = &b->num_batches_tracked;
      layer = std::move(b);
      layer_params = true;
    } else if (n.op == "LayerNormalization") {
      const NamedTensor& s = *g.initializer(n.inputs[1]);
      auto l = std::make_unique<LayerNorm>(s.shape[0], decimal_of(n.attr_float("epsilon", 1e-5f)));
      claim(n, n.inputs[1], &l->weight, &l->dweight);
      if (has(n, 2)) claim(n, n.inputs[2], &l->bias, &l->dbias);
      layer = std::move(l);
      layer_params = true;
    } else if (n.op == "Relu") {
      layer = std::make_unique<ReLU>();
    } else if (n.op == "MaxPool" || n.op == "AveragePool") {
      const int64_t k = n.attr_ints("kernel_shape", {})[0];
      const int64_t s = n.attr_ints("strides", {1, 1})[0], p = n.attr_ints("pads", {0, 0, 0, 0})[0];
      if (n.op == "MaxPool")
        layer = std::make_unique<MaxPool2d>(k, s, p);
      else
        layer = std::make_unique<AvgPool2d>(k, s, p);
    } else if (n.op == "GlobalAveragePool") {
      layer = std::make_unique<AdaptiveAvgPool2d>(1, 1);
    } else if (n.op == "Dropout") {
      double ratio = 0.5;
      if (has(n, 1)) {
        auto c = float_consts.find(n.inputs[1]);
        const NamedTensor* t = c != float_consts.end() ? c->second : g.initializer(n.inputs[1]);
        ratio = decimal_of(t->f32[0]);
      }
      if (ratio > 0)
        layer = std::make_unique<Dropout>(ratio);
      else
        op = std::make_unique<IdentityOp>();
    } else if (n.op == "Identity") {
      op = std::make_unique<IdentityOp>();
    } else if (n.op == "Add" || n.op == "Sub" || n.op == "Mul" || n.op == "Div") {
      const auto k = n.op == "Add"   ? BinaryOp::Kind::kAdd
                     : n.op == "Sub" ? BinaryOp::Kind::kSub
                     : n.op == "Mul" ? BinaryOp::Kind::kMul
                                     : BinaryOp::Kind::kDiv;
      op = std::make_unique<BinaryOp>(k);
    } else if (n.op == "Erf") {
      op = erf_op();
    } else if (n.op == "Softmax") {
      op = std::make_unique<SoftmaxOp>(n.attr_int("axis", -1));
    } else if (n.op == "Flatten") {
      op = std::make_unique<ReshapeOp>(ReshapeOp::Kind::kFlatten, -1, n.attr_int("axis", 1));
    } else if (n.op == "Reshape") {
      op = std::make_unique<ReshapeOp>(ReshapeOp::Kind::kReshape, int_id(n, 1), 0);
    } else if (n.op == "Unsqueeze") {
      op = std::make_unique<ReshapeOp>(ReshapeOp::Kind::kUnsqueeze, int_id(n, 1), 0);
    } else if (n.op == "Expand") {
      op = std::make_unique<ExpandOp>(int_id(n, 1));
    } else if (n.op == "ReduceMean") {
      op = std::make_unique<ReduceMeanOp>();
    } else if (n.op == "Pow") {
      auto c = float_consts.find(n.inputs[1]);
      const NamedTensor* e = c != float_consts.end() ? c->second : g.initializer(n.inputs[1]);
      TEMPO_CHECK(e && e->f32.size() == 1, where + ": the exponent must be a float constant");
      op = pow_op(e->f32[0]);
    } else if (n.op == "Sqrt") {
      op = pow_op(0.5f);
    } else if (n.op == "Cast" && !is_int(n.inputs[0])) {
      op = std::make_unique<IdentityOp>();  // float to float
    } else if (n.op == "Cast" || n.op == "ConstantOfShape") {  // integers to a float constant
      const int src = int_id(n, 0);
      const bool cast = n.op == "Cast";
      const float fill = n.attrs.count("value") && !n.attrs.at("value").t.f32.empty() ? n.attrs.at("value").t.f32[0] : 0.0f;
      auto fop = std::make_unique<FloatFromIntOp>([src, cast, fill, where](GraphModel& gm, Tensor& out) {
        const NamedTensor& t = Op::ints_view(gm, src, where);
        if (cast) {
          out.resize(t.shape);
          for (size_t i = 0; i < t.i64.size(); ++i) out[static_cast<int64_t>(i)] = static_cast<float>(t.i64[i]);
        } else {
          out.resize(t.i64);
          out.fill(fill);
        }
      });
      fop->where = where;
      const int out_id = new_value(n.outputs[0]);
      fop->out.push_back(out_id);
      ops_.push_back(std::move(fop));
      continue;
    } else if (n.op == "Transpose") {
      op = std::make_unique<TransposeOp>(n.attr_ints("perm", {}));
    } else if (n.op == "Concat") {
      op = std::make_unique<ConcatOp>(n.attr_int("axis", 0));
    } else if (n.op == "Slice") {
      auto sl = std::make_unique<SliceOp>();
      sl->int_in = {int_id(n, 1), int_id(n, 2), has(n, 3) ? int_id(n, 3) : -1};
      op = std::move(sl);
    } else if (n.op == "Gather") {
      auto ga = std::make_unique<GatherOp>(n.attr_int("axis", 0));
      ga->int_in = {int_id(n, 1)};
      op = std::move(ga);
    } else if (n.op == "Pad") {
      op = std::make_unique<PadOp>(ints(n, 1).i64);
    } else {
      throw Error(where + ": operator not supported");  // parse_onnx has refused it already
    }
    if (layer) {
      layers_.push_back(layer.get());
      op = std::make_unique<LayerOp>(std::move(layer), layer_params);
      op->in.push_back(operand(n, n.inputs[0]));
    } else {
      const size_t float_inputs = n.op == "Reshape" || n.op == "Slice" || n.op == "Gather" || n.op == "Pad" ||
                                          n.op == "Dropout" || n.op == "Unsqueeze" || n.op == "Expand" ||
                                          n.op == "Pow"
                                      ? 1
                                      : n.inputs.size();
      for (size_t i = 0; i < float_inputs; ++i) {
        TEMPO_CHECK(!n.inputs[i].empty(), where + ": input " + std::to_string(i) + " must be given");
        op->in.push_back(operand(n, n.inputs[i]));
      }
    }
    op->where = where;
    bool req = false;
    for (int i : op->in) req = req || values_[static_cast<size_t>(i)].requires_grad;
    if (auto* lo = dynamic_cast<LayerOp*>(op.get())) lo->layer->needs_input_grad = req;
    const int out = new_value(n.outputs[0]);
    values_[static_cast<size_t>(out)].requires_grad = req || layer_params;
    op->out.push_back(out);
    ops_.push_back(std::move(op));
  }
  auto it = ids.find(g.output);
  TEMPO_CHECK(it != ids.end() && !values_[static_cast<size_t>(it->second)].ints,
              file + ": the output '" + g.output + "' is not a float value computed by the graph");
  output_ = it->second;
  TEMPO_CHECK(output_ != input_, file + ": the output is the input");

  // The state, in the file's order.
  for (const auto& t : g.initializers) {
    auto e = entries.find(t.name);
    if (e == entries.end()) continue;
    state_.push_back(e->second);
    auto c = bn_counters.find(t.name);
    if (c != bn_counters.end()) {
      const std::string& rv = t.name;
      const std::string suffix = "running_var";
      const std::string name = rv.size() >= suffix.size() && rv.compare(rv.size() - suffix.size(), suffix.size(), suffix) == 0
                                   ? rv.substr(0, rv.size() - suffix.size()) + "num_batches_tracked"
                                   : rv + ".num_batches_tracked";
      state_.push_back(StateEntry{name, nullptr, nullptr, c->second});
    }
  }
  std::set<std::string> names;
  for (const auto& e : state_)
    TEMPO_CHECK(names.insert(e.name).second, file + ": two state entries would be named '" + e.name + "'");
  needs_input_grad = false;
}

Shape GraphModel::input_shape() const { return input_shape_; }

void GraphModel::accumulate(int id, const Tensor& grad) {
  Value& v = values_[static_cast<size_t>(id)];
  if (!v.grad) {
    v.grad = &grad;
    return;
  }
  TEMPO_CHECK(v.grad->shape() == grad.shape(), "gradients of '" + v.name + "' have shapes " + shape_str(v.grad->shape()) +
                                                   " and " + shape_str(grad.shape()));
  if (v.grad != &v.gown) {
    v.gown.resize(grad.shape());
    std::memcpy(v.gown.data(), v.grad->data(), sizeof(float) * static_cast<size_t>(grad.numel()));
    v.grad = &v.gown;
  }
  float* d = v.gown.data();
  const float* s = grad.data();
  parallel_for(grad.numel(), [=](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) d[i] += s[i];
  }, kGrain);
}

const Tensor& GraphModel::forward(const Tensor& x, Context& ctx) {
  TEMPO_CHECK(x.ndim() == static_cast<int>(input_shape_.size()) + 1,
              "the ONNX model expects input of shape N×" + shape_str(input_shape_) + ", got " + shape_str(x.shape()));
  for (int d = 1; d < x.ndim(); ++d)
    TEMPO_CHECK(x.dim(d) == input_shape_[static_cast<size_t>(d - 1)],
                "the ONNX model expects input of shape N×" + shape_str(input_shape_) + ", got " + shape_str(x.shape()));
  values_[static_cast<size_t>(input_)].cur = &x;
  for (auto& op : ops_) op->forward(*this, ctx);
  const Tensor& y = *values_[static_cast<size_t>(output_)].cur;
  TEMPO_CHECK(y.ndim() == 2 && y.dim(0) == x.dim(0) && y.dim(1) == classes_,
              "the ONNX model's output has shape " + shape_str(y.shape()) + ", expected " +
                  std::to_string(x.dim(0)) + "×" + std::to_string(classes_));
  return y;
}

const Tensor& GraphModel::backward(const Tensor& dy, Context& ctx) {
  for (auto& v : values_) v.grad = nullptr;
  values_[static_cast<size_t>(output_)].grad = &dy;
  for (size_t i = ops_.size(); i-- > 0;) {
    Op& op = *ops_[i];
    if (!values_[static_cast<size_t>(op.out[0])].grad && !op.has_params()) continue;
    if (!values_[static_cast<size_t>(op.out[0])].requires_grad) continue;
    op.backward(*this, ctx);
  }
  for (auto& v : values_) {
    if (!v.is_param) continue;
    if (!v.grad)
      v.param_grad->zero();
    else if (v.grad != v.param_grad)
      std::memcpy(v.param_grad->data(), v.grad->data(), sizeof(float) * static_cast<size_t>(v.param_grad->numel()));
  }
  dx_.resize({0});
  return dx_;
}

void GraphModel::state(std::vector<StateEntry>& out, const std::string& prefix) {
  for (const auto& e : state_) {
    StateEntry s = e;
    s.name = prefix + e.name;
    out.push_back(s);
  }
}

void GraphModel::for_each_child(const std::function<void(Layer&)>& fn) {
  for (Layer* l : layers_) fn(*l);
}

}  // namespace tempo
