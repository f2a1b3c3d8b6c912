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

// A product of `groups` independent blocks of one shape (attention's
// per-head products): X, Y and Z are stacks of `groups` equal blocks along
// their rows, and block g of Z is op(block g of X, block g of Y). groups 1:
// one ordinary product. Sets the shape of Z, or returns why the operands of
// shapes xr×xc and yr×yc do not fit (empty: they do).
std::string product_shape(ProductOp op, int64_t xr, int64_t xc, int64_t yr, int64_t yc, int64_t groups,
                          int64_t& rows, int64_t& cols);

// Channel-mode convolutions on 4-D tensors stored as matrices (rows: the
// first dimension). kForward: conv(X: N×CHW, W: O×Ckk) → N×O·OH·OW;
// kBackwardInput: (dY: N×O·P, W) → N×CHW; kBackwardWeight: (X, dY) → O×Ckk.
enum class ConvOp : int { kForward = 0, kBackwardInput = 1, kBackwardWeight = 2 };

class WorkerApi {
 public:
  virtual ~WorkerApi() = default;
  virtual std::string name() const = 0;
  virtual void put(Handle h, const CipherMatrix& m) = 0;
  // The product of two stored operands, in `groups` blocks (product_shape).
  virtual std::future<Matrix> product(ProductOp op, Handle x, Handle y, int64_t groups) = 0;
  std::future<Matrix> product(ProductOp op, Handle x, Handle y) { return product(op, x, y, 1); }
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
