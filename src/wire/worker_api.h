// What the master asks of a worker. Implementations: an in-process worker on
// its own thread (local:N), and a gRPC client for remote workers. Every
// operand is a CipherMatrix; results are ciphertext Matrices.
//
// Contract: handles are chosen by the master, unique within a step; a handle
// is valid from put() until end_step() or release(). Calls from one master
// thread are executed in order. Failures (a dead or lying worker, a bad
// handle, a wrong shape) surface as exceptions from the future's get().
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "common/conv.h"
#include "wire/cipher.h"

namespace tempo {

using Handle = uint64_t;

// Z = X·Yᵀ (kNT), X·Y (kNN), Xᵀ·Y (kTN).
enum class ProductOp : int { kNT = 0, kNN = 1, kTN = 2 };

// Channel-mode convolutions on 4-D tensors stored as matrices (rows: the
// first dimension). kForward: conv(X: N×CHW, W: O×Ckk) → N×O·OH·OW;
// kBackwardInput: (dY: N×O·P, W) → N×CHW; kBackwardWeight: (X, dY) → O×Ckk.
enum class ConvOp : int { kForward = 0, kBackwardInput = 1, kBackwardWeight = 2 };

class WorkerApi {
 public:
  virtual ~WorkerApi() = default;
  virtual std::string name() const = 0;
  virtual void put(Handle h, const CipherMatrix& m) = 0;
  // The product of two stored operands.
  virtual std::future<Matrix> product(ProductOp op, Handle x, Handle y) = 0;
  virtual std::future<Matrix> conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) = 0;
  virtual void release(Handle h) = 0;
  virtual void end_step() = 0;
};

// Worker failure as seen by the master (dead, timed out, malformed reply).
class WorkerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace tempo
