#include "trusted/offload_backend.h"

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "common/parallel.h"

namespace tempo {

namespace {

using Clock = std::chrono::steady_clock;

// Adds the seconds of its lifetime to a phase counter.
class PhaseTimer {
 public:
  explicit PhaseTimer(double& acc) : acc_(acc), t0_(Clock::now()) {}
  ~PhaseTimer() { acc_ += std::chrono::duration<double>(Clock::now() - t0_).count(); }

 private:
  double& acc_;
  Clock::time_point t0_;
};

// Equal contiguous row shares, a function of m and the worker count only.
std::vector<std::pair<int64_t, int64_t>> split_rows(int64_t m, size_t parts) {
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(m, static_cast<int64_t>(parts)));
  for (int64_t i = 0; i < n; ++i) out.emplace_back(m * i / n, m * (i + 1) / n);
  return out;
}

const char* kind_name(int k) {
  static const char* names[] = {"forward", "input gradient", "weight gradient"};
  return names[k];
}

}  // namespace

OffloadBackend::OffloadBackend(OffloadConfig cfg, std::vector<std::unique_ptr<WorkerApi>> workers,
                               const Secret& secret)
    : cfg_(cfg), verifier_(cfg.verify) {
  TEMPO_CHECK(!workers.empty(), "no workers given");
  TEMPO_CHECK(cfg.quarantine_after >= 1, "--quarantine-after must be at least 1");
  TEMPO_CHECK(cfg.verify.rounds >= 0 && cfg.verify.rounds <= 64, "--verify-rounds must be from 0 to 64");
  TEMPO_CHECK(cfg.verify.rate >= 0 && cfg.verify.rate <= 1, "--verify-rate must be in [0, 1]");
  TEMPO_CHECK(cfg.verify.tolerance > 0, "--verify-tolerance must be positive");
  for (auto& w : workers) slots_.push_back({std::move(w), 0, false});
  obf_ = cfg.insecure_identity ? Obfuscator::insecure_identity(secret)
                               : std::make_unique<Obfuscator>(secret, cfg.key_scale);
}

size_t OffloadBackend::healthy_workers() const {
  size_t n = 0;
  for (const auto& s : slots_) n += !s.quarantined;
  return n;
}

std::vector<size_t> OffloadBackend::usable(const std::vector<char>& excluded) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < slots_.size(); ++i)
    if (!slots_[i].quarantined && !excluded[i]) out.push_back(i);
  return out;
}

OffloadBackend::Held& OffloadBackend::held(int id) {
  if (id >= static_cast<int>(held_.size())) held_.resize(static_cast<size_t>(id) + 1);
  return held_[static_cast<size_t>(id)];
}

void OffloadBackend::blame(size_t w, const Product& p, const std::string& why) {
  Slot& s = slots_[w];
  ++s.failures;
  ++stats_.rejected;
  const bool quarantine = !s.quarantined && s.failures >= cfg_.quarantine_after;
  if (quarantine) s.quarantined = true;
  if (!cfg_.log) return;
  char when[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%H:%M:%S", std::localtime(&now));
  const long long step = static_cast<long long>(steps_done_ + 1);
  std::fprintf(stderr, "tempo: %s step %lld: worker %s: rejected its result for %s (%s); re-encrypting with fresh keys\n",
               when, step, s.api->name().c_str(), p.name.c_str(), why.c_str());
  if (quarantine)
    std::fprintf(stderr, "tempo: %s step %lld: WARNING: worker %s quarantined after %d failures; %zu worker(s) left\n",
                 when, step, s.api->name().c_str(), s.failures, healthy_workers());
}

std::vector<int64_t> OffloadBackend::checked(const float* c, int64_t m, int64_t n, int64_t k, Operand a,
                                             Operand b, KeyStream& ks, const int32_t* rows_k,
                                             int64_t k_full, RowSums* sums, const std::vector<double>* r_pre,
                                             const double* cr_pre) {
  // c is read only when its row products were not taken during decryption.
  stats_.verify_bytes += ((cr_pre ? 0 : m * n) + m * k + k * n) * 4 * cfg_.verify.rounds;
  return verifier_.check(c, m, n, k, a, b, ks, rows_k, k_full, sums, r_pre, cr_pre);
}

bool OffloadBackend::sample_verify() {
  if (cfg_.verify.rounds == 0 || cfg_.verify.rate <= 0) return false;
  if (cfg_.verify.rate >= 1) return true;
  KeyStream ks = obf_->stream();
  return ks.uniform() < cfg_.verify.rate;
}

bool OffloadBackend::forward_split(const Product& p, float* c, const std::vector<size_t>& ws, Held& h) {
  const int64_t m = p.m, k = p.k, n = p.n;
  auto shares = split_rows(m, ws.size());
  std::vector<CipherMatrix> as;
  h.chunks.clear();
  h.valid = false;
  {
    PhaseTimer t(phases_.encrypt);
    h.fwd = obf_->draw_triple(m, k, n);
  }
  std::vector<std::future<Matrix>> futs;
  {
    CipherMatrix wc = [&] {
      PhaseTimer t(phases_.encrypt);
      return obf_->encrypt_yt(h.fwd, p.w, n, k);
    }();
    for (size_t i = 0; i < shares.size(); ++i) {
      const size_t w = ws[i];
      Chunk ch{w, shares[i].first, shares[i].second, next_handle_++, next_handle_++};
      CipherMatrix ac = [&] {
        PhaseTimer t(phases_.encrypt);
        return obf_->encrypt_x(h.fwd, p.a, m, k, ch.r0, ch.r1);
      }();
      try {
        PhaseTimer t(phases_.transfer);
        slots_[w].api->put(ch.w, wc);
        slots_[w].api->put(ch.a, ac);
        futs.push_back(slots_[w].api->product(ProductOp::kNT, ch.a, ch.w));
      } catch (const std::exception& e) {
        blame(w, p, e.what());
        excluded_[w] = 1;
        return false;
      }
      stats_.bytes_sent += (wc.rows() * wc.cols() + ac.rows() * ac.cols()) * 4;
      h.chunks.push_back(ch);
    }
  }
  std::vector<Matrix> parts;
  const float* cp = collect_rows(p, futs, h.chunks, m, n, parts);
  if (!cp) return false;
  const bool verify = sample_verify();
  const bool fuse = verify && cfg_.verify.rounds == 1;
  KeyStream ks = obf_->stream();
  if (fuse) verifier_.draw_vector(ks, n, r_pre_), cr_pre_.resize(static_cast<size_t>(m));
  {
    PhaseTimer t(phases_.decrypt);
    h.fwd.decrypt(cp, m, n, c, 1, fuse ? r_pre_.data() : nullptr, fuse ? cr_pre_.data() : nullptr);
  }
  stats_.products += 1;
  h.sums_valid = false;
  if (verify) {
    PhaseTimer t(phases_.verify);
    ++stats_.verified;
    auto bad = checked(c, m, n, k, {p.a, false}, {p.w, true}, ks, nullptr, 0, &h.sums,
                       fuse ? &r_pre_ : nullptr, fuse ? cr_pre_.data() : nullptr);
    h.sums_valid = bad.empty();
    if (!bad.empty()) {
      // Row i of C came from row perm[i] of C' (decryption's row gather).
      const ScaledPerm linv = h.fwd.left.inverse();
      std::vector<char> seen(slots_.size(), 0);
      for (int64_t row : bad) {
        const int64_t src = linv.perm[static_cast<size_t>(row)];
        for (const Chunk& ch : h.chunks)
          if (src >= ch.r0 && src < ch.r1 && !seen[ch.worker]) {
            seen[ch.worker] = 1;
            blame(ch.worker, p, "Freivalds check failed on " + std::to_string(bad.size()) + " row(s)");
            excluded_[ch.worker] = 1;
          }
      }
      return false;
    }
  }
  h.valid = true;
  return true;
}

// Encrypts a gradient's row share for every chunk and asks the chunk's worker
// for its product with what it holds: W' (kNN, input gradient) or its rows
// of A' (kTN, weight gradient).
bool OffloadBackend::send_gradient(const Product& p, const Held& h, ProductOp op,
                                   std::vector<std::future<Matrix>>& futs,
                                   const std::function<CipherMatrix(const Chunk&)>& encrypt) {
  for (const Chunk& ch : h.chunks) {
    CipherMatrix g = [&] {
      PhaseTimer t(phases_.encrypt);
      return encrypt(ch);
    }();
    const Handle hg = next_handle_++;
    try {
      PhaseTimer t(phases_.transfer);
      slots_[ch.worker].api->put(hg, g);
      futs.push_back(op == ProductOp::kNN ? slots_[ch.worker].api->product(op, hg, ch.w)
                                          : slots_[ch.worker].api->product(op, hg, ch.a));
    } catch (const std::exception& e) {
      blame(ch.worker, p, e.what());
      return false;
    }
    stats_.bytes_sent += g.rows() * g.cols() * 4;
  }
  return true;
}

// Waits for the row shares of a split product (rows × cols each) and returns
// them as one matrix (no copy with a single share); null if any failed.
const float* OffloadBackend::collect_rows(const Product& p, std::vector<std::future<Matrix>>& futs,
                                          const std::vector<Chunk>& chunks, int64_t rows, int64_t cols,
                                          std::vector<Matrix>& parts) {
  parts.resize(futs.size());
  bool ok = true;
  for (size_t i = 0; i < futs.size(); ++i) {
    PhaseTimer t(phases_.worker);
    const Chunk& ch = chunks[i];
    try {
      parts[i] = futs[i].get();
      if (parts[i].rows() != ch.r1 - ch.r0 || parts[i].cols() != cols)
        throw WorkerError("result has shape " + std::to_string(parts[i].rows()) + "x" +
                          std::to_string(parts[i].cols()) + ", expected " + std::to_string(ch.r1 - ch.r0) +
                          "x" + std::to_string(cols));
      stats_.bytes_received += parts[i].size() * 4;
    } catch (const std::exception& e) {
      blame(ch.worker, p, e.what());
      excluded_[ch.worker] = 1;
      ok = false;
    }
  }
  if (!ok) return nullptr;
  if (parts.size() == 1) return parts[0].data();
  if (assembled_.rows() != rows || assembled_.cols() != cols) assembled_ = Matrix(rows, cols);
  for (size_t i = 0; i < parts.size(); ++i)
    std::memcpy(assembled_.row(chunks[i].r0), parts[i].data(), sizeof(float) * static_cast<size_t>(parts[i].size()));
  return assembled_.data();
}

bool OffloadBackend::input_shifted(const Product& p, const float* dc, float* da, const Held& h,
                                   const ConvGeometry* g, float* dx) {
  const int64_t m = p.m, k = p.k, n = p.n;
  const bool verify = sample_verify();
  const bool fuse = verify && cfg_.verify.rounds == 1;
  if (g && verify && !fuse) return false;  // the check would need dA itself
  Triple t1;
  {
    PhaseTimer t(phases_.encrypt);
    t1 = h.fwd.shift_input(obf_->draw(m));
  }
  std::vector<std::future<Matrix>> futs;
  if (!send_gradient(p, h, ProductOp::kNN, futs, [&](const Chunk& ch) {
        return obf_->encrypt_x(t1, dc, m, n, ch.r0, ch.r1);
      }))
    return false;
  std::vector<Matrix> parts;
  const float* zp = collect_rows(p, futs, h.chunks, m, k, parts);
  if (!zp) return false;
  KeyStream ks = obf_->stream();
  if (fuse) verifier_.draw_vector(ks, k, r_pre_), cr_pre_.resize(static_cast<size_t>(m));
  {
    PhaseTimer t(phases_.decrypt);
    if (g)
      apply_keys_col2im(zp, t1.left.inverse(), t1.right.transpose(), *g, dx, fuse ? r_pre_.data() : nullptr,
                        fuse ? cr_pre_.data() : nullptr);
    else
      t1.decrypt(zp, m, k, da, 1, fuse ? r_pre_.data() : nullptr, fuse ? cr_pre_.data() : nullptr);
  }
  stats_.products += 1;
  if (verify) {
    PhaseTimer t(phases_.verify);
    ++stats_.verified;
    auto bad = checked(da, m, k, n, {dc, false}, {p.w, false}, ks, nullptr, 0, nullptr,
                       fuse ? &r_pre_ : nullptr, fuse ? cr_pre_.data() : nullptr);
    if (!bad.empty()) {
      const ScaledPerm linv = t1.left.inverse();
      for (int64_t row : bad) {
        const int64_t src = linv.perm[static_cast<size_t>(row)];
        for (const Chunk& ch : h.chunks)
          if (src >= ch.r0 && src < ch.r1) {
            blame(ch.worker, p, "Freivalds check failed (input gradient)");
            return false;
          }
      }
      return false;
    }
  }
  return true;
}

bool OffloadBackend::weight_shifted(const Product& p, const float* dc, float* dw, const Held& h) {
  const int64_t m = p.m, k = p.k, n = p.n;
  Triple t2;
  {
    PhaseTimer t(phases_.encrypt);
    t2 = h.fwd.shift_weight(obf_->draw(n));
  }
  std::vector<std::future<Matrix>> futs;
  if (!send_gradient(p, h, ProductOp::kTN, futs, [&](const Chunk& ch) {
        return obf_->encrypt_y(t2, dc, m, n, ch.r0, ch.r1);
      }))
    return false;
  const bool verify = sample_verify();
  bool ok = true;
  for (size_t i = 0; i < futs.size(); ++i) {
    const Chunk& ch = h.chunks[i];
    Matrix z;
    {
      PhaseTimer t(phases_.worker);
      try {
        z = futs[i].get();
        if (z.rows() != n || z.cols() != k) throw WorkerError("result has the wrong shape");
        stats_.bytes_received += z.size() * 4;
      } catch (const std::exception& e) {
        blame(ch.worker, p, e.what());
        ok = false;
        continue;
      }
    }
    // Partial dW over this worker's rows S = L.perm[r0, r1), decrypted and
    // checked on its own, then summed in chunk order.
    float* dst = dw;
    if (i > 0) {
      if (partial_.rows() != n || partial_.cols() != k) partial_ = Matrix(n, k);
      dst = partial_.data();
    }
    {
      PhaseTimer t(phases_.decrypt);
      t2.decrypt_t(z.data(), n, k, dst);
    }
    if (verify) {
      PhaseTimer t(phases_.verify);
      bool ok_part;
      if (h.sums_valid) {
        // A's row sums were taken in the forward check: read only dC and dW.
        stats_.verify_bytes += ((ch.r1 - ch.r0) * n + n * k) * 4 * cfg_.verify.rounds;
        ok_part = verifier_.check_weight(dst, n, k, dc, h.sums, h.fwd.left.perm.data() + ch.r0, ch.r1 - ch.r0);
      } else {
        KeyStream ks = obf_->stream();
        ok_part = checked(dst, n, k, ch.r1 - ch.r0, {dc, true}, {p.a, false}, ks,
                          h.fwd.left.perm.data() + ch.r0, m).empty();
      }
      if (!ok_part) {
        blame(ch.worker, p, "Freivalds check failed (weight gradient)");
        ok = false;
        continue;
      }
    }
    if (i > 0) {
      PhaseTimer t(phases_.decrypt);
      const float* src = partial_.data();
      parallel_for(n * k, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) dw[j] += src[j];
      }, 1 << 14);
    }
  }
  if (!ok) return false;
  stats_.products += 1;
  if (verify) ++stats_.verified;
  return true;
}

// One product under a fresh, unshifted triple on worker w (a retry, or
// --no-key-shift). Z = X·Y with, per kind:
//   forward: X = A (m×k),  Y = Wᵀ (stored W, n×k)  worker: X'·(Y'ᵀ)ᵀ
//   input:   X = dC (m×n), Y = W (n×k)              worker: X'·Y'
//   weight:  X = Aᵀ (stored A, m×k), Y = dC (m×n)   worker: Y'ᵀ·X'ᵀ = Z'ᵀ
bool OffloadBackend::standalone(Kind kind, const Product& p, const float* dc, float* out, size_t w) {
  const int64_t m = p.m, k = p.k, n = p.n;
  Triple t;
  ProductOp op;
  int64_t zr, zc;
  std::vector<CipherMatrix> ops;
  {
    PhaseTimer timer(phases_.encrypt);
    switch (kind) {
      case Kind::kForward:
        t = obf_->draw_triple(m, k, n);
        ops.push_back(obf_->encrypt_x(t, p.a, m, k));
        ops.push_back(obf_->encrypt_yt(t, p.w, n, k));
        op = ProductOp::kNT;
        zr = m;
        zc = n;
        break;
      case Kind::kInput:
        t = obf_->draw_triple(m, n, k);
        ops.push_back(obf_->encrypt_x(t, dc, m, n));
        ops.push_back(obf_->encrypt_y(t, p.w, n, k));
        op = ProductOp::kNN;
        zr = m;
        zc = k;
        break;
      case Kind::kWeight:
      default:
        t = obf_->draw_triple(k, m, n);
        ops.push_back(obf_->encrypt_y(t, dc, m, n));   // Y' = G
        ops.push_back(obf_->encrypt_xt(t, p.a, m, k)); // X'ᵀ
        op = ProductOp::kTN;
        zr = n;
        zc = k;
        break;
    }
  }
  const Handle h0 = next_handle_++, h1 = next_handle_++;
  Matrix z;
  try {
    std::future<Matrix> f;
    {
      PhaseTimer timer(phases_.transfer);
      slots_[w].api->put(h0, ops[0]);
      slots_[w].api->put(h1, ops[1]);
      f = slots_[w].api->product(op, h0, h1);
    }
    stats_.bytes_sent += (ops[0].rows() * ops[0].cols() + ops[1].rows() * ops[1].cols()) * 4;
    PhaseTimer timer(phases_.worker);
    z = f.get();
    if (z.rows() != zr || z.cols() != zc) throw WorkerError("result has the wrong shape");
    stats_.bytes_received += z.size() * 4;
  } catch (const std::exception& e) {
    blame(w, p, e.what());
    return false;
  }
  {
    PhaseTimer timer(phases_.decrypt);
    if (kind == Kind::kWeight)
      t.decrypt_t(z.data(), n, k, out);
    else
      t.decrypt(z.data(), zr, zc, out);
  }
  stats_.products += 1;
  if (kind == Kind::kForward) held(p).sums_valid = false;
  if (sample_verify()) {
    PhaseTimer timer(phases_.verify);
    ++stats_.verified;
    KeyStream ks = obf_->stream();
    std::vector<int64_t> bad;
    switch (kind) {
      case Kind::kForward: {
        Held& h = held(p);
        bad = checked(out, m, n, k, {p.a, false}, {p.w, true}, ks, nullptr, 0, &h.sums);
        h.sums_valid = bad.empty();
        break;
      }
      case Kind::kInput: bad = checked(out, m, k, n, {dc, false}, {p.w, false}, ks); break;
      case Kind::kWeight: bad = checked(out, n, k, m, {dc, true}, {p.a, false}, ks); break;
    }
    if (!bad.empty()) {
      blame(w, p, std::string("Freivalds check failed (") + kind_name(static_cast<int>(kind)) + ")");
      return false;
    }
  }
  if (kind == Kind::kForward) {
    Held& h = held(p);
    h.valid = true;
    h.fwd = std::move(t);
    h.chunks = {Chunk{w, 0, m, h0, h1}};
  }
  return true;
}

void OffloadBackend::fallback_warning(const std::string& what) {
  if (!cfg_.fallback)
    throw Error("no usable worker left for " + what +
                " and --no-fallback is set: stopping (the weights of the last completed step are kept)");
  if (!warned_fallback_ && cfg_.log) {
    warned_fallback_ = true;
    std::fprintf(stderr,
                 "tempo: WARNING: no usable worker left: continuing in TEE-ONLY mode (every product "
                 "computed in the master); pass --no-fallback to stop instead\n");
  }
  ++stats_.local_fallbacks;
}

void OffloadBackend::local(Kind kind, const Product& p, const float* dc, float* out) {
  fallback_warning(p.name);
  switch (kind) {
    case Kind::kForward: local_.forward(p, out); break;
    case Kind::kInput: local_.backward_input(p, dc, out); break;
    case Kind::kWeight: local_.backward_weight(p, dc, out); break;
  }
}

void OffloadBackend::run(Kind kind, const Product& p, const float* dc, float* out) {
  excluded_.assign(slots_.size(), 0);
  Held& h = held(p);
  if (kind == Kind::kForward) {
    auto ws = usable(excluded_);
    if (!ws.empty() && forward_split(p, out, ws, h)) return;
    h.valid = false;
  } else if (cfg_.key_shift && h.valid) {
    bool ok = kind == Kind::kInput ? input_shifted(p, dc, out, h) : weight_shifted(p, dc, out, h);
    if (ok) return;
    for (const Chunk& ch : h.chunks) excluded_[ch.worker] = 1;
  }
  // Retries (and --no-key-shift): fresh keys, one worker at a time, other
  // workers first. Every failure counts towards quarantine; and after two
  // tries per worker the master computes the product itself.
  for (size_t attempt = 0; attempt < 2 * slots_.size() + 1; ++attempt) {
    auto ws = usable(excluded_);
    if (ws.empty()) {
      excluded_.assign(slots_.size(), 0);
      ws = usable(excluded_);
      if (ws.empty()) break;
    }
    const size_t w = ws[static_cast<size_t>(p.id) % ws.size()];
    if (standalone(kind, p, dc, out, w)) return;
    excluded_[w] = 1;
  }
  local(kind, p, dc, out);
}

void OffloadBackend::forward(const Product& p, float* c) { run(Kind::kForward, p, nullptr, c); }

void OffloadBackend::backward_input(const Product& p, const float* dc, float* da) {
  run(Kind::kInput, p, dc, da);
}

void OffloadBackend::backward_weight(const Product& p, const float* dc, float* dw) {
  run(Kind::kWeight, p, dc, dw);
}

// ---- Channel mode ----------------------------------------------------------
// The triple's dimensions are images (N), input channels (C) and output
// channels (O); each "element" is a feature map or a kernel (block).

bool OffloadBackend::conv_verified(Kind kind, const ConvProduct& p, const float* dy, const float* out) {
  if (!sample_verify()) return true;
  PhaseTimer t(phases_.verify);
  ++stats_.verified;
  const ConvGeometry& g = p.g;
  stats_.verify_bytes += (g.n * g.c * g.h * g.w + g.o * g.c * g.k * g.k + g.n * g.o * g.oh * g.ow) * 4 *
                         cfg_.verify.rounds;
  KeyStream ks = obf_->stream();
  switch (kind) {
    case Kind::kForward: return verifier_.check_conv_forward(out, p.x, p.w, g, ks);
    case Kind::kInput: return verifier_.check_conv_input(out, dy, p.w, g, ks);
    case Kind::kWeight:
    default: return verifier_.check_conv_weight(out, p.x, dy, g, ks);
  }
}

// One channel-mode convolution on worker w: under the forward triple's key
// shift when `shifted` is given (backward), else under a fresh triple.
bool OffloadBackend::conv_once(Kind kind, const ConvProduct& p, const float* dy, float* out, size_t w,
                               Held* shifted) {
  const ConvGeometry& g = p.g;
  const int64_t HW = g.h * g.w, P = g.oh * g.ow, kk = g.k * g.k;
  Triple t;
  std::vector<CipherMatrix> ops;
  Handle ha = 0, hb = 0;
  ConvOp op = ConvOp::kForward;
  {
    PhaseTimer timer(phases_.encrypt);
    if (shifted && kind == Kind::kInput) {
      t = shifted->fwd.shift_input(obf_->draw(g.n));
      ops.push_back(obf_->encrypt_x(t, dy, g.n, g.o, 0, -1, P));  // G1; W' is on the worker
      hb = shifted->chunks[0].w;
      op = ConvOp::kBackwardInput;
    } else if (shifted) {
      t = shifted->fwd.shift_weight(obf_->draw(g.o));
      ops.push_back(obf_->encrypt_y(t, dy, g.n, g.o, 0, -1, P));  // G2; X' is on the worker
      ha = shifted->chunks[0].a;
      op = ConvOp::kBackwardWeight;
    } else if (kind == Kind::kForward) {
      t = obf_->draw_triple(g.n, g.c, g.o);
      ops.push_back(obf_->encrypt_x(t, p.x, g.n, g.c, 0, -1, HW));
      ops.push_back(obf_->encrypt_yt(t, p.w, g.o, g.c, kk));
    } else if (kind == Kind::kInput) {
      t = obf_->draw_triple(g.n, g.o, g.c);
      ops.push_back(obf_->encrypt_x(t, dy, g.n, g.o, 0, -1, P));
      ops.push_back(obf_->encrypt_y(t, p.w, g.o, g.c, 0, -1, kk));
      op = ConvOp::kBackwardInput;
    } else {
      t = obf_->draw_triple(g.c, g.n, g.o);
      ops.push_back(obf_->encrypt_xt(t, p.x, g.n, g.c, HW));
      ops.push_back(obf_->encrypt_y(t, dy, g.n, g.o, 0, -1, P));
      op = ConvOp::kBackwardWeight;
    }
  }
  Matrix z;
  try {
    std::future<Matrix> f;
    {
      PhaseTimer timer(phases_.transfer);
      if (shifted && kind == Kind::kInput) {
        ha = next_handle_++;
        slots_[w].api->put(ha, ops[0]);
      } else if (shifted) {
        hb = next_handle_++;
        slots_[w].api->put(hb, ops[0]);
      } else {
        ha = next_handle_++;
        hb = next_handle_++;
        slots_[w].api->put(ha, ops[0]);
        slots_[w].api->put(hb, ops[1]);
      }
      f = slots_[w].api->conv(op, ha, hb, g);
    }
    for (const auto& c : ops) stats_.bytes_sent += c.rows() * c.cols() * 4;
    PhaseTimer timer(phases_.worker);
    z = f.get();
    const int64_t zr = kind == Kind::kWeight ? g.o : g.n;
    const int64_t zc = kind == Kind::kForward ? g.o * P : kind == Kind::kInput ? g.c * HW : g.c * kk;
    if (z.rows() != zr || z.cols() != zc) throw WorkerError("result has the wrong shape");
    stats_.bytes_received += z.size() * 4;
  } catch (const std::exception& e) {
    blame(w, Product{p.id, p.name}, e.what());
    return false;
  }
  {
    PhaseTimer timer(phases_.decrypt);
    if (kind == Kind::kForward) t.decrypt(z.data(), g.n, g.o, out, P);
    else if (kind == Kind::kInput) t.decrypt(z.data(), g.n, g.c, out, HW);
    else t.decrypt_t(z.data(), g.o, g.c, out, kk);
  }
  stats_.products += 1;
  if (!conv_verified(kind, p, dy, out)) {
    blame(w, Product{p.id, p.name}, "Freivalds check failed (channel-mode convolution)");
    return false;
  }
  if (kind == Kind::kForward) {
    Held& h = held(p.id);
    h.valid = true;
    h.fwd = std::move(t);
    h.chunks = {Chunk{w, 0, g.n, ha, hb}};
  }
  return true;
}

void OffloadBackend::conv_run(Kind kind, const ConvProduct& p, const float* dy, float* out) {
  excluded_.assign(slots_.size(), 0);
  Held& h = held(p.id);
  if (kind == Kind::kForward) {
    h.valid = false;
  } else if (cfg_.key_shift && h.valid) {
    const size_t w = h.chunks[0].worker;
    if (!slots_[w].quarantined && conv_once(kind, p, dy, out, w, &h)) return;
    excluded_[w] = 1;
  }
  for (;;) {
    auto ws = usable(excluded_);
    if (ws.empty()) {
      excluded_.assign(slots_.size(), 0);
      ws = usable(excluded_);
      if (ws.empty()) break;
    }
    const size_t w = ws[static_cast<size_t>(p.id) % ws.size()];
    if (conv_once(kind, p, dy, out, w, nullptr)) return;
    excluded_[w] = 1;
  }
  fallback_warning(p.name);
  switch (kind) {
    case Kind::kForward: local_.conv_forward(p, out); break;
    case Kind::kInput: local_.conv_backward_input(p, dy, out); break;
    case Kind::kWeight: local_.conv_backward_weight(p, dy, out); break;
  }
}

void OffloadBackend::conv_forward(const ConvProduct& p, float* y) { conv_run(Kind::kForward, p, nullptr, y); }

void OffloadBackend::conv_backward_input(const ConvProduct& p, const float* dy, float* dx) {
  conv_run(Kind::kInput, p, dy, dx);
}

void OffloadBackend::conv_backward_weight(const ConvProduct& p, const float* dy, float* dw) {
  conv_run(Kind::kWeight, p, dy, dw);
}

void OffloadBackend::backward_input_col2im(const Product& p, const float* dc, const ConvGeometry& g, float* dx) {
  Held& h = held(p);
  // Fused only with at most one verification round (whose products are
  // taken in the same pass); otherwise the check needs dA itself.
  if (cfg_.key_shift && h.valid && cfg_.verify.rounds <= 1) {
    if (input_shifted(p, dc, nullptr, h, &g, dx)) return;
    h.valid = false;  // retries below use fresh, unshifted keys
  }
  if (dcols_.size() < static_cast<size_t>(p.m * p.k)) dcols_.resize(static_cast<size_t>(p.m * p.k));
  run(Kind::kInput, p, dc, dcols_.data());
  col2im(g, dcols_.data(), dx);
}

void OffloadBackend::end_step() {
  ++steps_done_;
  for (auto& s : slots_) {
    if (s.quarantined) continue;
    try {
      s.api->end_step();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tempo: worker %s: end of step failed: %s\n", s.api->name().c_str(), e.what());
    }
  }
  for (auto& h : held_) {
    h.valid = false;
    h.chunks.clear();
  }
}

PhaseSeconds OffloadBackend::take_phase_seconds() {
  PhaseSeconds p = phases_;
  phases_ = {};
  return p;
}

}  // namespace tempo
