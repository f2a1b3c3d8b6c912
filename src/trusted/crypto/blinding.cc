#include "trusted/crypto/blinding.h"

#include <algorithm>

namespace tempo {

Blinding::Blinding(int row_mix, int mask_rank, float mask_magnitude) {
  if (row_mix > 0) mix_ = std::make_unique<RowMix>(row_mix);
  if (mask_rank > 0) mask_ = std::make_unique<AdditiveMask>(mask_rank, mask_magnitude);
}

const Product& Blinding::apply(const Product& p, Obfuscator& obf) {
  const Product* q = &p;
  if (mix_) {
    KeyStream ks = obf.stream();
    q = &mix_->apply(p, ks);
  }
  if (mask_) {
    KeyStream ks = obf.stream();
    q = mix_ ? &mask_->apply_in_place(*q, mix_->mixed_a(p.id), ks) : &mask_->apply(p, ks);
  }
  return *q;
}

const Product& Blinding::sent(const Product& p) const {
  if (mask_) return mask_->masked(p);
  const Product* q = mix_ ? mix_->sent(p) : nullptr;
  return q ? *q : p;
}

const float* Blinding::gradient(const Product& q, const float* dc) {
  if (!mix_) return dc;
  if (dc_.size() < static_cast<size_t>(q.m * q.n)) dc_.resize(static_cast<size_t>(q.m * q.n));
  mix_->mix(q.id, dc, q.n, dc_.data());
  return dc_.data();
}

void Blinding::finish_forward(const Product& q, float* c_sent, float* c) {
  if (mask_) mask_->unmask_forward(q, c_sent);  // the mask was added to the mixed rows
  if (mix_) mix_->unmix(q.id, c_sent, q.n, c);
  else if (c != c_sent) std::copy(c_sent, c_sent + q.m * q.n, c);
}

void Blinding::finish_input(const Product& q, const float* da_sent, float* da) const {
  if (mix_) mix_->unmix(q.id, da_sent, q.k, da);
  else if (da != da_sent) std::copy(da_sent, da_sent + q.m * q.k, da);
}

void Blinding::finish_weight(const Product& q, const float* g, float* dw) {
  if (mask_) mask_->unmask_weight(q, g, dw);  // (M·dC)ᵀ·(M·A) = dCᵀ·A: nothing to unmix
}

}  // namespace tempo
