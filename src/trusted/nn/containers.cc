#include "common/error.h"
#include "common/parallel.h"
#include "trusted/nn/layers.h"

namespace tempo {

void walk(Layer& root, const std::function<void(Layer&)>& fn) {
  fn(root);
  root.for_each_child([&](Layer& child) { walk(child, fn); });
}

Layer& Sequential::add(std::string name, LayerPtr layer) {
  children_.emplace_back(std::move(name), std::move(layer));
  return *children_.back().second;
}

const Tensor& Sequential::forward(const Tensor& x, Context& ctx) {
  const Tensor* h = &x;
  for (auto& [name, layer] : children_) h = &layer->forward(*h, ctx);
  return *h;
}

const Tensor& Sequential::backward(const Tensor& dy, Context& ctx) {
  const Tensor* g = &dy;
  for (size_t i = children_.size(); i-- > 0;) {
    g = &children_[i].second->backward(*g, ctx);
    if (!children_[i].second->needs_input_grad) {
      dx_.resize({0});
      return dx_;
    }
  }
  return *g;
}

void Sequential::state(std::vector<StateEntry>& out, const std::string& prefix) {
  for (auto& [name, layer] : children_) layer->state(out, prefix + name + ".");
}

void Sequential::for_each_child(const std::function<void(Layer&)>& fn) {
  for (auto& [name, layer] : children_) fn(*layer);
}

ResidualBlock::ResidualBlock(Type type, int64_t inplanes, int64_t planes, int64_t stride)
    : type_(type) {
  const int64_t outplanes = planes * expansion(type);
  if (type == Type::kBasic) {
    main_.add("conv1", std::make_unique<Conv2d>(inplanes, planes, 3, stride, 1, false));
    main_.add("bn1", std::make_unique<BatchNorm2d>(planes));
    main_.add("relu", std::make_unique<ReLU>());
    main_.add("conv2", std::make_unique<Conv2d>(planes, planes, 3, 1, 1, false));
    main_.add("bn2", std::make_unique<BatchNorm2d>(planes));
  } else {
    main_.add("conv1", std::make_unique<Conv2d>(inplanes, planes, 1, 1, 0, false));
    main_.add("bn1", std::make_unique<BatchNorm2d>(planes));
    main_.add("relu", std::make_unique<ReLU>());
    main_.add("conv2", std::make_unique<Conv2d>(planes, planes, 3, stride, 1, false));
    main_.add("bn2", std::make_unique<BatchNorm2d>(planes));
    main_.add("relu", std::make_unique<ReLU>());
    main_.add("conv3", std::make_unique<Conv2d>(planes, outplanes, 1, 1, 0, false));
    main_.add("bn3", std::make_unique<BatchNorm2d>(outplanes));
  }
  if (stride != 1 || inplanes != outplanes) {
    downsample_ = std::make_unique<Sequential>();
    downsample_->add(std::make_unique<Conv2d>(inplanes, outplanes, 1, stride, 0, false));
    downsample_->add(std::make_unique<BatchNorm2d>(outplanes));
  }
}

const Tensor& ResidualBlock::forward(const Tensor& x, Context& ctx) {
  const Tensor& h = main_.forward(x, ctx);
  const Tensor& id = downsample_ ? downsample_->forward(x, ctx) : x;
  TEMPO_CHECK(h.shape() == id.shape(), "residual shapes differ: " + shape_str(h.shape()) + " vs " +
                                     shape_str(id.shape()));
  out_.resize(h.shape());
  const float* __restrict a = h.data();
  const float* __restrict b = id.data();
  float* __restrict y = out_.data();
  parallel_for(h.numel(), [a, b, y](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      float s = a[i] + b[i];
      y[i] = s > 0.0f ? s : 0.0f;
    }
  }, 1 << 14);
  return out_;
}

const Tensor& ResidualBlock::backward(const Tensor& dy, Context& ctx) {
  dsum_.resize(dy.shape());
  // (Restrict-qualified pointers captured by a lambda lose the qualifier:
  // this loop was scalar, with a branch per element, 3% of a tee-only
  // resnet18 step.)
  relu_backward(out_.data(), dy.data(), dsum_.data(), dy.numel());
  const Tensor& dmain = main_.backward(dsum_, ctx);
  const Tensor& did = downsample_ ? downsample_->backward(dsum_, ctx) : dsum_;
  dx_.resize(dmain.shape());
  const float* __restrict a = dmain.data();
  const float* __restrict b = did.data();
  float* __restrict o = dx_.data();
  parallel_for(dx_.numel(), [a, b, o](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) o[i] = a[i] + b[i];
  }, 1 << 14);
  return dx_;
}

void ResidualBlock::state(std::vector<StateEntry>& out, const std::string& prefix) {
  main_.state(out, prefix);
  if (downsample_) downsample_->state(out, prefix + "downsample.");
}

void ResidualBlock::for_each_child(const std::function<void(Layer&)>& fn) {
  fn(main_);
  if (downsample_) fn(*downsample_);
}

}  // namespace tempo
