#include "worker/worker_service.h"

#include <string>

namespace tempo {

WorkerService::WorkerService(std::unique_ptr<ComputeBackend> backend, size_t quota_bytes)
    : backend_(std::move(backend)), quota_(quota_bytes) {}

void WorkerService::result_shape(ProductOp op, const Matrix& x, const Matrix& y, int64_t groups, int64_t& rows,
                                 int64_t& cols) {
  const std::string why = product_shape(op, x.rows(), x.cols(), y.rows(), y.cols(), groups, rows, cols);
  if (!why.empty()) throw WorkerError(why);
}

void WorkerService::put(Handle h, std::shared_ptr<const Matrix> m) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t bytes = static_cast<size_t>(m->size()) * sizeof(float);
  auto it = store_.find(h);
  size_t freed = it != store_.end() ? static_cast<size_t>(it->second->size()) * sizeof(float) : 0;
  if (bytes > quota_ || held_ - freed > quota_ - bytes)
    throw WorkerError("memory quota exceeded: holding " + std::to_string(held_) + " bytes, quota " +
                      std::to_string(quota_));
  held_ = held_ - freed + bytes;
  backend_->on_store(*m);
  if (it != store_.end()) {
    backend_->on_drop(*it->second);
    it->second = std::move(m);
  } else {
    store_.emplace(h, std::move(m));
  }
}

std::shared_ptr<const Matrix> WorkerService::get(Handle h) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = store_.find(h);
  if (it == store_.end()) throw WorkerError("unknown handle " + std::to_string(h));
  return it->second;
}

void WorkerService::check_result(int64_t rows, int64_t cols) const {
  if (rows > 0 && cols > 0 && static_cast<uint64_t>(cols) > quota_ / sizeof(float) / static_cast<uint64_t>(rows))
    throw WorkerError("result of " + std::to_string(rows) + "x" + std::to_string(cols) +
                      " floats exceeds the memory quota of " + std::to_string(quota_) + " bytes");
}

Matrix WorkerService::product(ProductOp op, Handle x, Handle y, int64_t groups) {
  auto a = get(x), b = get(y);
  return product(op, *a, *b, groups);
}

Matrix WorkerService::product(ProductOp op, const Matrix& a, const Matrix& b, int64_t groups) {
  int64_t r, c;
  result_shape(op, a, b, groups, r, c);
  check_result(r, c);
  return backend_->product(op, a, b, groups);
}

Matrix WorkerService::conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) {
  auto x = get(a), y = get(b);
  return conv(op, *x, *y, g);
}

Matrix WorkerService::conv(ConvOp op, const Matrix& xm, const Matrix& ym, const ConvGeometry& g) {
  const Matrix* x = &xm;
  const Matrix* y = &ym;
  // Bounds keep every size product below 2^63 (geometry may come off the network).
  const int64_t kMax = int64_t{1} << 20, kMaxSide = int64_t{1} << 16;
  if (g.n <= 0 || g.c <= 0 || g.h <= 0 || g.w <= 0 || g.o <= 0 || g.k <= 0 || g.s <= 0 || g.p < 0 ||
      g.n > kMax || g.c > kMax || g.h > kMaxSide || g.w > kMaxSide || g.o > kMax || g.k > 64 || g.s > 64 ||
      g.p > g.k)
    throw WorkerError("invalid convolution geometry");
  const ConvGeometry c = ConvGeometry::make(g.n, g.c, g.h, g.w, g.o, g.k, g.s, g.p);
  if (c.oh <= 0 || c.ow <= 0 || c.oh != g.oh || c.ow != g.ow) throw WorkerError("invalid convolution geometry");
  const int64_t chw = c.c * c.h * c.w, ckk = c.c * c.k * c.k, op_ = c.o * c.oh * c.ow;
  auto expect = [](const Matrix& m, int64_t r, int64_t cols, const char* what) {
    if (m.rows() != r || m.cols() != cols)
      throw WorkerError(std::string(what) + " has shape " + std::to_string(m.rows()) + "x" +
                        std::to_string(m.cols()) + ", expected " + std::to_string(r) + "x" + std::to_string(cols));
  };
  switch (op) {
    case ConvOp::kForward: expect(*x, c.n, chw, "input"); expect(*y, c.o, ckk, "kernel"); break;
    case ConvOp::kBackwardInput: expect(*x, c.n, op_, "output gradient"); expect(*y, c.o, ckk, "kernel"); break;
    case ConvOp::kBackwardWeight: expect(*x, c.n, chw, "input"); expect(*y, c.n, op_, "output gradient"); break;
    default: throw WorkerError("unknown convolution operation");
  }
  switch (op) {
    case ConvOp::kForward: check_result(c.n, op_); break;
    case ConvOp::kBackwardInput: check_result(c.n, chw); break;
    default: check_result(c.o, ckk); break;
  }
  return backend_->conv(op, *x, *y, c);
}

void WorkerService::release(Handle h) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = store_.find(h);
  if (it == store_.end()) return;
  held_ -= static_cast<size_t>(it->second->size()) * sizeof(float);
  backend_->on_drop(*it->second);
  store_.erase(it);
}

void WorkerService::end_step() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [h, m] : store_) backend_->on_drop(*m);
  store_.clear();
  held_ = 0;
}

size_t WorkerService::bytes_held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_;
}

}  // namespace tempo
