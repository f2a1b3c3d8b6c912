// OffloadBackend: channel-mode convolutions (DESIGN.md §2, "Convolutions").
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
        ha = new_handle();
        slots_[w].api->put(ha, ops[0]);
      } else if (shifted) {
        hb = new_handle();
        slots_[w].api->put(hb, ops[0]);
      } else {
        ha = new_handle();
        hb = new_handle();
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
    h.kept.clear();
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

}  // namespace tempo
