#include "trusted/offload/offload_backend.h"

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>

#include <sodium.h>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/offload/offload_internal.h"

namespace tempo {

using namespace offload_detail;

OffloadBackend::OffloadBackend(OffloadConfig cfg, std::vector<std::unique_ptr<WorkerApi>> workers,
                               const Secret& secret)
    : cfg_(cfg), verifier_(cfg.verify) {
  TEMPO_CHECK(!workers.empty(), "no workers given");
  TEMPO_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
  TEMPO_CHECK(cfg.quarantine_after >= 1, "--quarantine-after must be at least 1");
  TEMPO_CHECK(cfg.verify.rounds >= 0 && cfg.verify.rounds <= 64, "--verify-rounds must be from 0 to 64");
  TEMPO_CHECK(cfg.verify.rate >= 0 && cfg.verify.rate <= 1, "--verify-rate must be in [0, 1]");
  TEMPO_CHECK(cfg.verify.tolerance > 0, "--verify-tolerance must be positive");
  for (auto& w : workers) slots_.push_back({std::move(w), 0, false});
  obf_ = cfg.insecure_identity ? Obfuscator::insecure_identity(secret)
                               : std::make_unique<Obfuscator>(secret, cfg.key_scale);
  TEMPO_CHECK(cfg.mask_rank >= 0 && cfg.mask_rank <= AdditiveMask::kMaxRank,
              "--mask-rank must be 0 (off) to " + std::to_string(AdditiveMask::kMaxRank));
  TEMPO_CHECK(cfg.row_mix == 0 || (cfg.row_mix >= 2 && cfg.row_mix <= 32), "--row-mix must be 0 (off) or 2 to 32");
  TEMPO_CHECK(cfg.col_mix == 0 || (cfg.col_mix >= 2 && cfg.col_mix <= 32), "--col-mix must be 0 (off) or 2 to 32");
  if ((cfg.mask_rank > 0 || cfg.row_mix > 0 || cfg.col_mix > 0) && !cfg.insecure_identity)
    blind_ = std::make_unique<Blinding>(cfg.row_mix, cfg.mask_rank, cfg.mask_magnitude, cfg.col_mix, cfg.mask_kind);
  warn_if_weakened(cfg);
}

// Settings that weaken the protection are said as loudly as offload mode.
void OffloadBackend::warn_if_weakened(const OffloadConfig& cfg) {
  if (cfg.insecure_identity) return;  // the obfuscator already says it: plaintext
  if (cfg.key_scale <= 1.0)
    std::fprintf(stderr, "tempo: WARNING: WEAKENED --key-scale 1: the keys only permute and flip signs, every "
                         "magnitude reaches the workers as it is\n");
  if (cfg.verify.rounds == 0 || cfg.verify.rate <= 0)
    std::fprintf(stderr, "tempo: WARNING: UNCHECKED --verify-%s 0: workers' results are used WITHOUT Freivalds' "
                         "check, so a lying worker goes unnoticed\n", cfg.verify.rounds == 0 ? "rounds" : "rate");
  else if (cfg.verify.rate < 1)
    std::fprintf(stderr, "tempo: warning: --verify-rate %g: only that fraction of products is checked\n",
                 cfg.verify.rate);
}

Handle OffloadBackend::new_handle() {
  Handle h = 0;
  while (h == 0) randombytes_buf(&h, sizeof h);
  return h;
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

float* OffloadBackend::scratch(std::vector<float>& buf, int64_t n) {
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

const Product& OffloadBackend::as_sent(const Product& p) const { return blind_ ? blind_->sent(p) : p; }

// Timed in its caller's phase (a retry's encryption, a check).
const float* OffloadBackend::operand_a(const Product& p) {
  if (blind_) blind_->materialise(p);
  return p.a;
}

const float* OffloadBackend::sent_gradient(const Product& plain, const Product& q, const float* dc) {
  if (!mixed(plain, q)) return dc;
  PhaseTimer t(phases_.encrypt);
  return blind_->gradient(q, dc);
}

// Blinding (mix, then mask; trusted/obfuscation/blinding.h) happens in the
// master's plaintext space, before the keys: every check below sees the
// product exactly as sent, and the corrections run after it has passed.
void OffloadBackend::forward(const Product& p, float* c) {
  if (!blind_) {
    run(Kind::kForward, p, nullptr, c);
    return;
  }
  const Product* q = nullptr;
  {
    PhaseTimer t(phases_.encrypt);
    q = &blind_->prepare(p, *obf_);
  }
  stats_.mixed += blind_->mixes();
  stats_.col_mixed += blind_->mixes_cols();
  stats_.masked += blind_->masks();
  float* out = blind_->mixes() ? scratch(mix_out_, p.m * p.n) : c;
  run(Kind::kForward, *q, nullptr, out);
  PhaseTimer t(phases_.decrypt);
  blind_->finish_forward(*q, out, c);
}

void OffloadBackend::backward_input(const Product& p, const float* dc, float* da) {
  const Product& q = as_sent(p);
  if (!mixed(p, q)) {
    run(Kind::kInput, q, dc, da);
    return;
  }
  backward_input_mixed(p, q, dc, da, true);
}

void OffloadBackend::backward_input_mixed(const Product& p, const Product& q, const float* dc, float* da,
                                          bool natural) {
  const float* g = sent_gradient(p, q, dc);
  float* out = scratch(mix_out_, q.m * q.k);
  run(Kind::kInput, q, g, out);
  PhaseTimer t(phases_.decrypt);
  blind_->finish_input(q, out, da, natural);
}

void OffloadBackend::backward_weight(const Product& p, const float* dc, float* dw) {
  const Product& q = as_sent(p);
  const float* g = sent_gradient(p, q, dc);  // (M·dC)ᵀ·(M·A) = dCᵀ·A: nothing to unmix
  run(Kind::kWeight, q, g, dw);
  if (&q == &p) return;
  PhaseTimer t(phases_.decrypt);
  blind_->finish_weight(q, g, dw);
}

void OffloadBackend::backward_input_col2im(const Product& plain, const float* dc, const ConvGeometry& g,
                                           float* dx) {
  const Product& p = as_sent(plain);
  if (mixed(plain, p)) {  // dA must be unmixed before its columns are summed into the image
    float* da = scratch(mix_da_, p.m * p.k);
    const int32_t* order = blind_->input_order(p);
    backward_input_mixed(plain, p, dc, da, order == nullptr);
    col2im(g, da, dx, order);
    return;
  }
  Held& h = held(p);
  // Decryption fused with col2im: the check's products of every round are
  // taken in the same pass, so dA itself is never formed.
  if (cfg_.key_shift && h.valid) {
    if (input_shifted(p, dc, nullptr, h, &g, dx)) return;
    h.valid = false;  // retries below use fresh, unshifted keys
  }
  if (dcols_.size() < static_cast<size_t>(p.m * p.k)) dcols_.resize(static_cast<size_t>(p.m * p.k));
  run(Kind::kInput, p, dc, dcols_.data());
  col2im(g, dcols_.data(), dx);
}

void OffloadBackend::backward(const Product& plain, const float* dc, float* dw, float* da, const ConvGeometry* g,
                              float* dx) {
  const Product& p = as_sent(plain);
  const bool mix = mixed(plain, p);
  const float* gs = sent_gradient(plain, p, dc);
  // Mixed, dA must be unmixed before its columns are summed into the image.
  // Its decryption undoes the mixing in the same pass where it can
  // (fused_input_); a retry's result is undone after.
  float* das = mix && (da || g) ? scratch(mix_out_, p.m * p.k) : nullptr;
  float* out = das ? (g ? scratch(mix_da_, p.m * p.k) : da) : nullptr;
  fused_input_ = das && blind_->fuses_input() ? out : nullptr;
  fused_done_ = false;
  // Before col2im, dA's columns stay where the column unmixing leaves them.
  const int32_t* order = g && das ? blind_->input_order(p) : nullptr;
  fused_natural_ = order == nullptr;
  if (mix) backward_plain(p, gs, dw, das, nullptr, nullptr);
  else backward_plain(p, dc, dw, da, g, dx);
  fused_input_ = nullptr;
  if (&p == &plain) return;
  PhaseTimer t(phases_.decrypt);
  if (dw) blind_->finish_weight(p, gs, dw);
  if (!das) return;
  if (!fused_done_) blind_->finish_input(p, das, out, fused_natural_);
  fused_natural_ = true;
  if (g) col2im(*g, out, dx, order);
}

// backward() on the product as sent (dw is still masked when it returns).
void OffloadBackend::backward_plain(const Product& p, const float* dc, float* dw, float* da, const ConvGeometry* g,
                                    float* dx) {
  Held& h = held(p);
  const bool input = g || da;
  if (!cfg_.key_shift && input) {
    excluded_.assign(slots_.size(), 0);
    const auto ws = usable(excluded_);
    if (ws.size() >= 2) {
      backward_apart(p, dc, dw, da, g, dx, ws);
      return;
    }
  }
  if (!cfg_.key_shift || !h.valid || !input) {
    LinearBackend::backward(p, dc, dw, da, g, dx);
    return;
  }
  excluded_.assign(slots_.size(), 0);
  Flight fw, fi;
  const bool w_sent = weight_send(p, dc, h, fw);
  const bool i_sent = input_send(p, dc, h, g != nullptr, fi);
  const bool w_ok = w_sent && weight_finish(p, dc, dw, h, fw);
  const bool i_ok = i_sent && input_finish(p, dc, da, h, g, dx, fi);
  if (w_ok && i_ok) return;
  // A failed half is re-encrypted with fresh keys, other workers first.
  auto retry_after = [&](Kind kind, float* out) {
    excluded_.assign(slots_.size(), 0);
    for (const Chunk& ch : h.chunks) excluded_[ch.worker] = 1;
    retry(kind, p, dc, out);
  };
  if (!w_ok) retry_after(Kind::kWeight, dw);
  if (i_ok) return;
  if (!g) {
    retry_after(Kind::kInput, da);
    return;
  }
  if (dcols_.size() < static_cast<size_t>(p.m * p.k)) dcols_.resize(static_cast<size_t>(p.m * p.k));
  retry_after(Kind::kInput, dcols_.data());
  col2im(*g, dcols_.data(), dx);
}

// Without the key shift each backward product is encrypted whole under fresh
// keys, so dW and dA go to two different workers and run at once.
void OffloadBackend::backward_apart(const Product& p, const float* dc, float* dw, float* da, const ConvGeometry* g,
                                    float* dx, const std::vector<size_t>& ws) {
  const size_t wi = ws[static_cast<size_t>(p.id) % ws.size()], ww = ws[static_cast<size_t>(p.id + 1) % ws.size()];
  float* in_out = da;
  if (g) {
    if (dcols_.size() < static_cast<size_t>(p.m * p.k)) dcols_.resize(static_cast<size_t>(p.m * p.k));
    in_out = dcols_.data();
  }
  Solo sw, si;
  const bool w_sent = standalone_send(Kind::kWeight, p, dc, ww, sw);
  const bool i_sent = standalone_send(Kind::kInput, p, dc, wi, si);
  const bool w_ok = w_sent && standalone_finish(Kind::kWeight, p, dc, dw, sw);
  const bool i_ok = i_sent && standalone_finish(Kind::kInput, p, dc, in_out, si);
  ++stats_.apart;
  auto again = [&](Kind kind, size_t failed, float* out) {
    excluded_.assign(slots_.size(), 0);
    excluded_[failed] = 1;
    retry(kind, p, dc, out);
  };
  if (!w_ok) again(Kind::kWeight, ww, dw);
  if (!i_ok) again(Kind::kInput, wi, in_out);
  if (g) col2im(*g, dcols_.data(), dx);
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
    h.kept.clear();
  }
  for (auto& [p, h] : held_batches_) h.valid = false;
}

PhaseSeconds OffloadBackend::take_phase_seconds() {
  PhaseSeconds p = phases_;
  phases_ = {};
  return p;
}

}  // namespace tempo
