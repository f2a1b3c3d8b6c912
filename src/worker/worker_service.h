// The worker's state and compute, independent of transport: ciphertexts of
// the current step stored by handle (so backward reuses forward operands),
// products on a compute backend, a memory quota. Sees ciphertext only.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "wire/worker_api.h"

namespace tempo {

class ComputeBackend {
 public:
  virtual ~ComputeBackend() = default;
  virtual std::string name() const = 0;
  // Whether it computes on the host's cores (and their OpenMP threads), as
  // the master does: an in-process worker then runs its products on the
  // master's thread (local_worker.h).
  virtual bool on_host_cores() const { return false; }
  // z = op(x, y) in `groups` blocks (product_shape); z is allocated by the
  // backend. Shapes already checked by the service.
  virtual Matrix product(ProductOp op, const Matrix& x, const Matrix& y, int64_t groups) = 0;
  Matrix product(ProductOp op, const Matrix& x, const Matrix& y) { return product(op, x, y, 1); }
  // Shapes already checked by the service.
  virtual Matrix conv(ConvOp op, const Matrix& a, const Matrix& b, const ConvGeometry& g) = 0;
  // The service stored, or dropped, a tensor: a device backend mirrors the
  // stored ones in device memory (uploaded as they arrive), so products on
  // them move only their result. Each store is matched by one drop.
  virtual void on_store(const Matrix&) {}
  virtual void on_drop(const Matrix&) {}
};

std::unique_ptr<ComputeBackend> make_cpu_backend();

// Thread-safe. Errors are WorkerError with a message fit for the client.
class WorkerService {
 public:
  WorkerService(std::unique_ptr<ComputeBackend> backend, size_t quota_bytes);
  void put(Handle h, std::shared_ptr<const Matrix> m);
  Matrix product(ProductOp op, Handle x, Handle y, int64_t groups = 1);
  Matrix conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g);
  // The same on operands given directly (a remote client's inline tensors).
  Matrix product(ProductOp op, const Matrix& x, const Matrix& y, int64_t groups = 1);
  Matrix conv(ConvOp op, const Matrix& a, const Matrix& b, const ConvGeometry& g);
  // The stored tensor (WorkerError if unknown).
  std::shared_ptr<const Matrix> get(Handle h) const;
  size_t quota() const { return quota_; }
  void release(Handle h);
  void end_step();
  size_t bytes_held() const;
  const ComputeBackend& backend() const { return *backend_; }

  // Checks operand shapes for op in `groups` blocks; returns the result
  // shape (WorkerError if they do not fit).
  static void result_shape(ProductOp op, const Matrix& x, const Matrix& y, int64_t groups, int64_t& rows,
                           int64_t& cols);

 private:
  void check_result(int64_t rows, int64_t cols) const;
  std::unique_ptr<ComputeBackend> backend_;
  size_t quota_;
  mutable std::mutex mu_;
  std::unordered_map<Handle, std::shared_ptr<const Matrix>> store_;
  size_t held_ = 0;
};

}  // namespace tempo
