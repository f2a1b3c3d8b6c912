// Worker decorators for tests and evaluations: one that lies at a configured
// rate, one that records every ciphertext it receives and returns. Both wrap
// any WorkerApi and see exactly what that worker sees.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "wire/worker_api.h"
#include "worker/worker_service.h"

namespace tempo {

enum class Tamper { kNone, kEntry, kPair, kRow, kZeros, kNaN, kInf, kShape };
Tamper parse_tamper(const std::string& s);  // entry|pair|row|zeros|nan|inf|shape

// z with one perturbation of kind `how` at a place chosen by `pick`; entry
// and row perturbations are `size`·max|row| (1e-2: the size DESIGN.md §2
// says must be caught).
Matrix tamper_result(Matrix z, Tamper how, uint64_t pick, float size = 1e-2f);

// A compute backend that lies at `rate` (for `tempo worker --lie-rate`,
// which tests use to stand in for a malicious remote worker).
std::unique_ptr<ComputeBackend> make_tampering_backend(std::unique_ptr<ComputeBackend> inner, Tamper how,
                                                       double rate, uint64_t seed);

// Returns wrong results for a fraction `rate` of products (deterministic in
// `seed`): kEntry adds 1e-2·max|row| to one entry, kPair adds it to one entry
// and subtracts it from another of the same row, kRow perturbs a whole row
// by 1e-2·max|row| per entry, kZeros returns zeros, kNaN/kInf put one
// non-finite value, kShape drops the last row.
class TamperingWorker final : public WorkerApi {
 public:
  // honest_first: products answered honestly before lying starts.
  TamperingWorker(std::unique_ptr<WorkerApi> inner, Tamper how, double rate, uint64_t seed,
                  int64_t honest_first = 0, float size = 1e-2f);
  std::string name() const override { return inner_->name(); }
  void put(Handle h, const CipherMatrix& m) override { inner_->put(h, m); }
  std::future<Matrix> product(ProductOp op, Handle x, Handle y, int64_t groups) override;
  using WorkerApi::product;
  std::future<Matrix> conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) override;
  void release(Handle h) override { inner_->release(h); }
  void end_step() override { inner_->end_step(); }
  int64_t tampered() const { return tampered_; }

 private:
  std::future<Matrix> maybe_lie(std::future<Matrix> f);
  std::unique_ptr<WorkerApi> inner_;
  Tamper how_;
  double rate_;
  int64_t honest_first_, seen_ = 0;
  float size_;
  std::mt19937_64 rng_;
  std::atomic<int64_t> tampered_{0};
};

// Keeps a copy of every buffer received (puts) and returned (results).
class RecordingWorker final : public WorkerApi {
 public:
  explicit RecordingWorker(std::unique_ptr<WorkerApi> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name(); }
  void put(Handle h, const CipherMatrix& m) override;
  std::future<Matrix> product(ProductOp op, Handle x, Handle y, int64_t groups) override;
  using WorkerApi::product;
  std::future<Matrix> conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) override;
  void release(Handle h) override { inner_->release(h); }
  void end_step() override { inner_->end_step(); }

  struct Record {
    bool received;  // true: sent by the master; false: returned by the worker
    int64_t rows, cols;
    std::vector<float> data;
  };
  std::vector<Record> records() const;

 private:
  std::future<Matrix> record(std::future<Matrix> f);
  std::unique_ptr<WorkerApi> inner_;
  mutable std::mutex mu_;
  std::shared_ptr<std::vector<Record>> records_ = std::make_shared<std::vector<Record>>();
};

}  // namespace tempo
