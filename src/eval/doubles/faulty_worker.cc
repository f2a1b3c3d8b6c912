#include "eval/doubles/faulty_worker.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace tempo {

Tamper parse_tamper(const std::string& s) {
  if (s == "none") return Tamper::kNone;
  if (s == "entry") return Tamper::kEntry;
  if (s == "pair") return Tamper::kPair;
  if (s == "row") return Tamper::kRow;
  if (s == "zeros") return Tamper::kZeros;
  if (s == "nan") return Tamper::kNaN;
  if (s == "inf") return Tamper::kInf;
  if (s == "shape") return Tamper::kShape;
  throw std::invalid_argument("unknown tamper mode '" + s + "' (entry, row, zeros, nan, inf, shape)");
}

TamperingWorker::TamperingWorker(std::unique_ptr<WorkerApi> inner, Tamper how, double rate, uint64_t seed,
                                 int64_t honest_first, float size)
    : inner_(std::move(inner)), how_(how), rate_(rate), honest_first_(honest_first), size_(size), rng_(seed) {}

std::future<Matrix> TamperingWorker::product(ProductOp op, Handle x, Handle y, int64_t groups) {
  return maybe_lie(inner_->product(op, x, y, groups));
}

std::future<Matrix> TamperingWorker::conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) {
  return maybe_lie(inner_->conv(op, a, b, g));
}

std::future<Matrix> TamperingWorker::maybe_lie(std::future<Matrix> f) {
  const bool lie = how_ != Tamper::kNone && seen_++ >= honest_first_ &&
                   std::uniform_real_distribution<double>(0, 1)(rng_) < rate_;
  if (!lie) return f;
  const uint64_t pick = rng_();
  ++tampered_;
  const Tamper how = how_;
  return std::async(std::launch::deferred,
                    [f = std::move(f), how, pick, size = size_]() mutable {
                      return tamper_result(f.get(), how, pick, size);
                    });
}

Matrix tamper_result(Matrix z, Tamper how, uint64_t pick, float size) {
  if (z.rows() == 0 || z.cols() == 0) return z;
  const int64_t i = static_cast<int64_t>(pick % static_cast<uint64_t>(z.rows()));
  const int64_t j = static_cast<int64_t>((pick >> 32) % static_cast<uint64_t>(z.cols()));
  float* row = z.row(i);
  float mx = 0;
  for (int64_t c = 0; c < z.cols(); ++c) mx = std::max(mx, std::fabs(row[c]));
  const float delta = size * (mx > 0 ? mx : 1.0f);
  switch (how) {
    case Tamper::kEntry: row[j] += delta; break;
    case Tamper::kPair: {  // +δ and −δ in one row: cancels where the check vector's two entries nearly agree
      row[j] += delta;
      if (z.cols() > 1) row[(j + 1 + static_cast<int64_t>((pick >> 16) % static_cast<uint64_t>(z.cols() - 1))) % z.cols()] -= delta;
      break;
    }
    case Tamper::kRow:
      for (int64_t c = 0; c < z.cols(); ++c) row[c] += (c % 2 ? delta : -delta);
      break;
    case Tamper::kZeros: std::memset(z.data(), 0, sizeof(float) * static_cast<size_t>(z.size())); break;
    case Tamper::kNaN: row[j] = std::numeric_limits<float>::quiet_NaN(); break;
    case Tamper::kInf: row[j] = std::numeric_limits<float>::infinity(); break;
    case Tamper::kShape: {
      Matrix s(z.rows() - 1, z.cols());
      std::memcpy(s.data(), z.data(), sizeof(float) * static_cast<size_t>(s.size()));
      return s;
    }
    case Tamper::kNone: break;
  }
  return z;
}

namespace {

// Server-side lying: the same perturbations as TamperingWorker, inside a
// remote worker process (`tempo worker --lie-rate`).
class TamperingBackend final : public ComputeBackend {
 public:
  TamperingBackend(std::unique_ptr<ComputeBackend> inner, Tamper how, double rate, uint64_t seed)
      : inner_(std::move(inner)), how_(how), rate_(rate), rng_(seed) {}
  std::string name() const override { return inner_->name(); }
  bool on_host_cores() const override { return inner_->on_host_cores(); }
  Matrix product(ProductOp op, const Matrix& x, const Matrix& y, int64_t groups) override {
    return maybe_lie(inner_->product(op, x, y, groups));
  }
  Matrix conv(ConvOp op, const Matrix& a, const Matrix& b, const ConvGeometry& g) override {
    return maybe_lie(inner_->conv(op, a, b, g));
  }
  void on_store(const Matrix& m) override { inner_->on_store(m); }
  void on_drop(const Matrix& m) override { inner_->on_drop(m); }

 private:
  Matrix maybe_lie(Matrix z) {
    uint64_t pick;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (std::uniform_real_distribution<double>(0, 1)(rng_) >= rate_) return z;
      pick = rng_();
    }
    return tamper_result(std::move(z), how_, pick);
  }
  std::unique_ptr<ComputeBackend> inner_;
  Tamper how_;
  double rate_;
  std::mutex mu_;
  std::mt19937_64 rng_;
};

}  // namespace

std::unique_ptr<ComputeBackend> make_tampering_backend(std::unique_ptr<ComputeBackend> inner, Tamper how,
                                                       double rate, uint64_t seed) {
  return std::make_unique<TamperingBackend>(std::move(inner), how, rate, seed);
}

void RecordingWorker::put(Handle h, const CipherMatrix& m) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    const Matrix& x = m.matrix();
    records_->push_back({true, x.rows(), x.cols(), std::vector<float>(x.data(), x.data() + x.size())});
  }
  inner_->put(h, m);
}

std::future<Matrix> RecordingWorker::product(ProductOp op, Handle x, Handle y, int64_t groups) {
  return record(inner_->product(op, x, y, groups));
}

std::future<Matrix> RecordingWorker::conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) {
  return record(inner_->conv(op, a, b, g));
}

std::future<Matrix> RecordingWorker::record(std::future<Matrix> f) {
  auto recs = records_;
  std::mutex* mu = &mu_;
  return std::async(std::launch::deferred, [f = std::move(f), recs, mu]() mutable {
    Matrix z = f.get();
    std::lock_guard<std::mutex> lock(*mu);
    recs->push_back({false, z.rows(), z.cols(), std::vector<float>(z.data(), z.data() + z.size())});
    return z;
  });
}

std::vector<RecordingWorker::Record> RecordingWorker::records() const {
  std::lock_guard<std::mutex> lock(mu_);
  return *records_;
}

}  // namespace tempo
