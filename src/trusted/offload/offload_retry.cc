// OffloadBackend: products under fresh keys on one worker (retries and
// --no-key-shift), quarantine, and the fallback to the master.
#include "trusted/offload/offload_backend.h"

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/offload/offload_internal.h"

namespace tempo {

using namespace offload_detail;

// One product under a fresh, unshifted triple on worker w (a retry, or
// --no-key-shift). Z = X·Y with, per kind:
//   forward: X = A (m×k),  Y = Wᵀ (stored W, n×k)  worker: X'·(Y'ᵀ)ᵀ
//   input:   X = dC (m×n), Y = W (n×k)              worker: X'·Y'
//   weight:  X = Aᵀ (stored A, m×k), Y = dC (m×n)   worker: Y'ᵀ·X'ᵀ = Z'ᵀ
bool OffloadBackend::standalone(Kind kind, const Product& p, const float* dc, float* out, size_t w) {
  Solo s;
  return standalone_send(kind, p, dc, w, s) && standalone_finish(kind, p, dc, out, s);
}

bool OffloadBackend::standalone_send(Kind kind, const Product& p, const float* dc, size_t w, Solo& s) {
  const int64_t m = p.m, k = p.k, n = p.n;
  Triple& t = s.t;
  ProductOp op;
  int64_t& zr = s.zr;
  int64_t& zc = s.zc;
  s.w = w;
  std::vector<CipherMatrix> ops;
  {
    PhaseTimer timer(phases_.encrypt);
    switch (kind) {
      case Kind::kForward:
        t = obf_->draw_triple(m, k, n);
        ops.push_back(obf_->encrypt_x(t, operand_a(p), m, k));
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
        ops.push_back(obf_->encrypt_xt(t, operand_a(p), m, k)); // X'ᵀ
        op = ProductOp::kTN;
        zr = n;
        zc = k;
        break;
    }
  }
  s.h0 = new_handle();
  s.h1 = new_handle();
  try {
    PhaseTimer timer(phases_.transfer);
    slots_[w].api->put(s.h0, ops[0]);
    slots_[w].api->put(s.h1, ops[1]);
    s.f = slots_[w].api->product(op, s.h0, s.h1);
  } catch (const std::exception& e) {
    blame(w, p, e.what());
    return false;
  }
  stats_.bytes_sent += (ops[0].rows() * ops[0].cols() + ops[1].rows() * ops[1].cols()) * 4;
  return true;
}

bool OffloadBackend::standalone_finish(Kind kind, const Product& p, const float* dc, float* out, Solo& s) {
  const int64_t m = p.m, k = p.k, n = p.n;
  const size_t w = s.w;
  Triple& t = s.t;
  const int64_t zr = s.zr, zc = s.zc;
  Matrix z;
  try {
    PhaseTimer timer(phases_.worker);
    z = s.f.get();
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
        bad = checked(out, m, n, k, {operand_a(p), false}, {p.w, true}, ks, nullptr, 0, &h.sums);
        h.sums_valid = bad.empty();
        break;
      }
      case Kind::kInput: bad = checked(out, m, k, n, {dc, false}, {p.w, false}, ks); break;
      case Kind::kWeight: bad = checked(out, n, k, m, {dc, true}, {operand_a(p), false}, ks); break;
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
    h.chunks = {Chunk{w, 0, m, s.h0, s.h1}};
    h.kept.clear();
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
  operand_a(p);
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
    if (blind_ && blind_->pending()) {  // no attempt took A from the blinding's pass: A itself is read below
      PhaseTimer t(phases_.encrypt);
      blind_->pass();
    }
  } else if (cfg_.key_shift && h.valid) {
    bool ok = kind == Kind::kInput ? input_shifted(p, dc, out, h) : weight_shifted(p, dc, out, h);
    if (ok) return;
    for (const Chunk& ch : h.chunks) excluded_[ch.worker] = 1;
  }
  retry(kind, p, dc, out);
}

// Retries (and --no-key-shift): fresh keys, one worker at a time, workers
// not in excluded_ first. Every failure counts towards quarantine; and after
// two tries per worker the master computes the product itself.
void OffloadBackend::retry(Kind kind, const Product& p, const float* dc, float* out) {
  const bool done = try_workers([&](size_t n) { return static_cast<size_t>(p.id) % n; },
                                [&](size_t w) { return standalone(kind, p, dc, out, w); });
  if (!done) local(kind, p, dc, out);
}

bool OffloadBackend::try_workers(const std::function<size_t(size_t)>& pick, const std::function<bool(size_t)>& attempt) {
  for (size_t tries = 0; tries < 2 * slots_.size() + 1; ++tries) {
    auto ws = usable(excluded_);
    if (ws.empty()) {
      excluded_.assign(slots_.size(), 0);
      ws = usable(excluded_);
      if (ws.empty()) return false;
    }
    const size_t w = ws[pick(ws.size())];
    if (attempt(w)) return true;
    excluded_[w] = 1;
  }
  return false;
}

}  // namespace tempo
