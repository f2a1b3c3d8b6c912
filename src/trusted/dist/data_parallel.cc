#include "trusted/dist/data_parallel.h"

#include <sodium.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <cmath>
#include <cstring>

#include "common/error.h"
#include "common/parallel.h"

namespace tempo {

namespace {

using Clock = std::chrono::steady_clock;
// Adds the time from construction to destruction to `into`.
struct Timed {
  double& into;
  Clock::time_point t0 = Clock::now();
  explicit Timed(double& d) : into(d) {}
  ~Timed() { into += std::chrono::duration<double>(Clock::now() - t0).count(); }
};

constexpr int64_t kNonce = 32;
// The exponents the first exchange can name: |v| < 2^e for e in [kLowest, kLowest + kBuckets).
constexpr int kLowest = -200, kBuckets = 320;
// Header words: check, non-finite count, samples, stop requests, then per
// group (the loss, each gradient) the one-hot of its largest exponent.
constexpr int64_t kFirstBucket = 4;

int ceil_log2(int n) {
  int b = 0;
  while ((1 << b) < n) ++b;
  return b;
}

// Stream ids: exchange `call`, stream `who` (a rank, or kOffset for Z);
// pieces of a long vector come from forks of the stream.
constexpr uint64_t kOffset = (uint64_t{1} << 20) - 1;
uint64_t stream_id(uint64_t call, uint64_t who) { return (call << 20) | who; }

}  // namespace

DataParallel::DataParallel(Collective& comm, const Secret& shared) : comm_(comm) {
  TEMPO_CHECK(comm.size() >= 1 && static_cast<uint64_t>(comm.size()) < kOffset, "too many masters");
  uint8_t mine[kNonce];
  randombytes_buf(mine, sizeof mine);
  std::vector<uint8_t> all(static_cast<size_t>(kNonce * comm.size()));
  comm.gather(mine, kNonce, all.data());
  TEMPO_CHECK(std::memcmp(all.data() + kNonce * comm.rank(), mine, kNonce) == 0,
              "the masters' nonce exchange returned another nonce for this rank: the exchange was changed in transit");
  // The pads' secret: keyed hash of every rank's nonce under the shared secret.
  crypto_generichash(pads_.data(), pads_.size(), all.data(), all.size(), shared.data(), shared.size());
}

void DataParallel::add_pad(uint64_t* words, int64_t n, uint64_t call, bool remove_offset) const {
  TEMPO_CHECK(call < (uint64_t{1} << 43), "too many exchanges between the masters");
  const int r = rank(), N = size();
  // Pieces of at least 64 Ki words, at most 1022 of them (the stream's forks).
  const int64_t piece = std::max<int64_t>(int64_t{1} << 16, (n + 1021) / 1022);
  const int64_t pieces = (n + piece - 1) / piece;
  parallel_for(pieces, [&](int64_t lo, int64_t hi) {
    thread_local std::vector<uint64_t> buf;
    if (buf.size() < static_cast<size_t>(piece)) buf.resize(static_cast<size_t>(piece));
    for (int64_t c = lo; c < hi; ++c) {
      const int64_t at = c * piece, len = std::min(piece, n - at);
      uint64_t* w = words + at;
      auto stream = [&](uint64_t who) {
        KeyStream ks = KeyStream(pads_, stream_id(call, who)).fork(static_cast<uint32_t>(c));
        ks.fill(reinterpret_cast<uint32_t*>(buf.data()), static_cast<size_t>(2 * len));
        return buf.data();
      };
      if (remove_offset) {
        const uint64_t* z = stream(kOffset);
        for (int64_t i = 0; i < len; ++i) w[i] -= z[i];
        continue;
      }
      const uint64_t* f = stream(static_cast<uint64_t>(r));
      for (int64_t i = 0; i < len; ++i) w[i] += f[i];
      f = stream(static_cast<uint64_t>((r + 1) % N));
      for (int64_t i = 0; i < len; ++i) w[i] -= f[i];
      if (r == 0) {
        const uint64_t* z = stream(kOffset);
        for (int64_t i = 0; i < len; ++i) w[i] += z[i];
      }
    }
  });
}

void DataParallel::padded_sum(uint64_t* words, int64_t n) {
  TEMPO_CHECK(n >= 1 && words[0] == 0, "padded_sum: word 0 is the check word and must be 0");
  const uint64_t call = calls_++;
  {
    Timed t(seconds_.pads);
    add_pad(words, n, call, false);
  }
  {
    Timed t(seconds_.network);
    comm_.sum(words, n);
  }
  Timed t(seconds_.pads);
  add_pad(words, n, call, true);
  TEMPO_CHECK(words[0] == 0, "the masters' all-reduce did not cancel its pads: a rank holds another shared secret, "
                             "or the exchange was changed in transit");
}

double DataParallel::reduce_gradients(const std::vector<StateEntry>& params, double loss, int64_t samples,
                                      int64_t step) {
  const double n_here = static_cast<double>(samples);
  std::optional<Timed> encoding(std::in_place, seconds_.encode);
  // Group 0 is the loss, group t + 1 the t-th gradient; each gets its own
  // scale, so a tensor of small gradients keeps its precision beside a
  // tensor of large ones.
  grads_.clear();
  for (const StateEntry& p : params)
    if (p.grad) grads_.push_back(p.grad);
  const int64_t groups = 1 + static_cast<int64_t>(grads_.size());
  // This rank's largest |v| per group, v = samples·value, and its non-finite values.
  largest_.assign(static_cast<size_t>(groups), 0.0);
  int64_t bad = 0, total = 0;
  if (samples > 0) {
    largest_[0] = std::fabs(loss) * n_here;
    bad += !std::isfinite(loss);
  }
  for (size_t t = 0; t < grads_.size(); ++t) {
    const Tensor& g = *grads_[t];
    total += g.numel();
    if (samples == 0) continue;
    float mx = 0;
    int64_t nonfinite = 0;
    for (int64_t i = 0; i < g.numel(); ++i) {
      const float a = std::fabs(g[i]);
      if (!(a <= 3.4e38f)) ++nonfinite;  // NaN or infinite
      else mx = std::max(mx, a);
    }
    bad += nonfinite;
    largest_[t + 1] = static_cast<double>(mx) * n_here;
  }
  const int64_t words = kFirstBucket + groups * kBuckets;
  header_.assign(static_cast<size_t>(words), 0);
  header_[2] = static_cast<uint64_t>(samples);
  header_[3] = stop_ && stop_->load() ? 1 : 0;
  for (int64_t t = 0; t < groups && bad == 0; ++t) {
    if (largest_[static_cast<size_t>(t)] == 0) continue;
    int e = 0;
    std::frexp(largest_[static_cast<size_t>(t)], &e);  // largest < 2^e
    if (e < kLowest) e = kLowest;
    if (e >= kLowest + kBuckets) ++bad;  // beyond any scale: refused as diverged
    else header_[static_cast<size_t>(kFirstBucket + t * kBuckets + e - kLowest)] = 1;
  }
  header_[1] = static_cast<uint64_t>(bad);
  encoding.reset();
  padded_sum(header_.data(), words);
  encoding.emplace(seconds_.encode);
  agreed_stop_ = agreed_stop_ || header_[3] != 0;
  if (header_[1] != 0)
    throw Error("training diverged at step " + std::to_string(step) + ": a loss or gradient is not finite (or "
                "beyond 2^" + std::to_string(kLowest + kBuckets) + ") on one or more of the " +
                std::to_string(size()) + " masters; lower --lr");
  const auto everyone = static_cast<int64_t>(header_[2]);
  TEMPO_CHECK(everyone > 0, "the masters' global batch is empty");
  // Per group: the largest exponent of any rank (none: every value is 0),
  // and the scale 2^f that keeps N encodings' sum below 2^62.
  scale_.resize(static_cast<size_t>(groups));
  unscale_.resize(static_cast<size_t>(groups));
  for (int64_t t = 0; t < groups; ++t) {
    int e = kLowest;
    for (int b = kBuckets - 1; b >= 0; --b)
      if (header_[static_cast<size_t>(kFirstBucket + t * kBuckets + b)] != 0) {
        e = kLowest + b;
        break;
      }
    const int f = 62 - e - ceil_log2(size());
    scale_[static_cast<size_t>(t)] = std::ldexp(1.0, f);
    unscale_[static_cast<size_t>(t)] = std::ldexp(1.0, -f) / static_cast<double>(everyone);
  }
  // Body: check word, the loss, then every gradient in order.
  words_.assign(static_cast<size_t>(2 + total), 0);
  if (samples > 0) words_[1] = static_cast<uint64_t>(std::llrint(loss * n_here * scale_[0]));
  int64_t at = 2;
  for (size_t t = 0; t < grads_.size(); ++t) {
    const float* g = grads_[t]->data();
    uint64_t* w = words_.data() + at;
    const int64_t len = grads_[t]->numel();
    const double sc = n_here * scale_[t + 1];
    if (samples > 0)
      parallel_for(len, [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) w[i] = static_cast<uint64_t>(std::llrint(static_cast<double>(g[i]) * sc));
      }, 4096);
    at += len;
  }
  encoding.reset();
  padded_sum(words_.data(), static_cast<int64_t>(words_.size()));
  Timed decoding(seconds_.decode);
  at = 2;
  for (size_t t = 0; t < grads_.size(); ++t) {
    float* g = grads_[t]->data();
    const uint64_t* w = words_.data() + at;
    const int64_t len = grads_[t]->numel();
    const double un = unscale_[t + 1];
    parallel_for(len, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) g[i] = static_cast<float>(static_cast<double>(static_cast<int64_t>(w[i])) * un);
    }, 4096);
    at += len;
  }
  return static_cast<double>(static_cast<int64_t>(words_[1])) * unscale_[0];
}

void DataParallel::sum(double* v, int64_t n) {
  const double scale = std::ldexp(1.0, 32), limit = std::ldexp(1.0, 60 - ceil_log2(size()));
  std::vector<uint64_t> w(static_cast<size_t>(n + 1), 0);
  for (int64_t i = 0; i < n; ++i) {
    TEMPO_CHECK(std::isfinite(v[i]) && std::fabs(v[i]) * scale < limit, "a value to sum over the masters is out of range");
    w[static_cast<size_t>(i + 1)] = static_cast<uint64_t>(std::llrint(v[i] * scale));
  }
  padded_sum(w.data(), n + 1);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(static_cast<int64_t>(w[static_cast<size_t>(i + 1)])) / scale;
}

}  // namespace tempo
