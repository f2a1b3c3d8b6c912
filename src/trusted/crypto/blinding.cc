#include "trusted/crypto/blinding.h"

#include <algorithm>

namespace tempo {

Blinding::Blinding(int row_mix, int mask_rank, float mask_magnitude, int col_mix) {
  if (row_mix > 0) mix_ = std::make_unique<RowMix>(row_mix);
  if (col_mix > 0) col_ = std::make_unique<ColMix>(col_mix);
  if (mask_rank > 0) mask_ = std::make_unique<AdditiveMask>(mask_rank, mask_magnitude);
}

const Product& Blinding::apply(const Product& p, Obfuscator& obf) {
  const Product* q = &p;
  if (mix_) {
    KeyStream ks = obf.stream();
    q = &mix_->apply(p, ks);
  }
  float* a = mix_ ? mix_->mixed_a(p.id) : nullptr;  // the data operand's own buffer, if any yet
  if (static_cast<size_t>(p.id) >= sent_.size()) sent_.resize(static_cast<size_t>(p.id) + 1);
  Sent& s = sent_[static_cast<size_t>(p.id)];
  if (col_) {
    KeyStream ks = obf.stream();
    col_->draw(p.id, p.k, ks);
    if (!a) {
      s.a.resize(static_cast<size_t>(p.m * p.k));
      a = s.a.data();
    }
    col_->mix(p.id, q->a, p.m, a);  // in place on the row-mixed operand
    s.w.resize(static_cast<size_t>(p.n * p.k));
    col_->mix(p.id, p.w, p.n, s.w.data());
    s.q = *q;
    s.q.a = a;
    s.q.w = s.w.data();
    q = &s.q;
  }
  if (mask_) {
    KeyStream ks = obf.stream();
    q = a ? &mask_->apply_in_place(*q, a, ks) : &mask_->apply(p, ks);
  }
  s.q = *q;
  s.valid = true;
  return s.q;
}

const Product& Blinding::sent(const Product& p) const {
  if (p.id < 0 || static_cast<size_t>(p.id) >= sent_.size()) return p;
  const Sent& s = sent_[static_cast<size_t>(p.id)];
  return s.valid && s.q.m == p.m && s.q.k == p.k && s.q.n == p.n ? s.q : p;
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

// Row and column unmixing commute (one acts on the left, one on the right).
void Blinding::finish_input(const Product& q, const float* da_sent, float* da) const {
  if (mix_) mix_->unmix(q.id, da_sent, q.k, da);
  else if (da != da_sent) std::copy(da_sent, da_sent + q.m * q.k, da);
  if (col_) col_->unmix(q.id, da, q.m, da);  // M·dA·Gᵀ·G
}

void Blinding::finish_weight(const Product& q, const float* g, float* dw) {
  if (mask_) mask_->unmask_weight(q, g, dw);  // (M·dC)ᵀ·(M·A·Gᵀ) = dCᵀ·A·Gᵀ: no rows to unmix
  if (col_) col_->unmix(q.id, dw, q.n, dw);
}

}  // namespace tempo
