#include "worker/worker_service.h"

#include <string>

namespace tempo {

WorkerService::WorkerService(std::unique_ptr<ComputeBackend> backend, size_t quota_bytes)
    : backend_(std::move(backend)), quota_(quota_bytes) {}

void WorkerService::result_shape(ProductOp op, const Matrix& x, const Matrix& y, int64_t& rows,
                                 int64_t& cols) {
  int64_t xi, xk, yk, yj;
  switch (op) {
    case ProductOp::kNT: xi = x.rows(); xk = x.cols(); yj = y.rows(); yk = y.cols(); break;
    case ProductOp::kNN: xi = x.rows(); xk = x.cols(); yk = y.rows(); yj = y.cols(); break;
    case ProductOp::kTN: xi = x.cols(); xk = x.rows(); yk = y.rows(); yj = y.cols(); break;
    default: throw WorkerError("unknown product operation " + std::to_string(static_cast<int>(op)));
  }
  if (xk != yk)
    throw WorkerError("operand shapes do not match: inner dimensions " + std::to_string(xk) +
                      " and " + std::to_string(yk));
  rows = xi;
  cols = yj;
}

void WorkerService::put(Handle h, std::shared_ptr<const Matrix> m) {
  std::lock_guard<std::mutex> lock(mu_);
  const size_t bytes = static_cast<size_t>(m->size()) * sizeof(float);
  auto it = store_.find(h);
  size_t freed = it != store_.end() ? static_cast<size_t>(it->second->size()) * sizeof(float) : 0;
  if (held_ - freed + bytes > quota_)
    throw WorkerError("memory quota exceeded: holding " + std::to_string(held_) + " bytes, quota " +
                      std::to_string(quota_));
  held_ = held_ - freed + bytes;
  store_[h] = std::move(m);
}

std::shared_ptr<const Matrix> WorkerService::get(Handle h) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = store_.find(h);
  if (it == store_.end()) throw WorkerError("unknown handle " + std::to_string(h));
  return it->second;
}

Matrix WorkerService::product(ProductOp op, Handle x, Handle y) {
  auto a = get(x), b = get(y);
  int64_t r, c;
  result_shape(op, *a, *b, r, c);
  return backend_->product(op, *a, *b);
}

void WorkerService::release(Handle h) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = store_.find(h);
  if (it == store_.end()) return;
  held_ -= static_cast<size_t>(it->second->size()) * sizeof(float);
  store_.erase(it);
}

void WorkerService::end_step() {
  std::lock_guard<std::mutex> lock(mu_);
  store_.clear();
  held_ = 0;
}

size_t WorkerService::bytes_held() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_;
}

}  // namespace tempo
