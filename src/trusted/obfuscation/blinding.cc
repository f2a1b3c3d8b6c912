#include "trusted/obfuscation/blinding.h"

#include <algorithm>
#include <optional>

#include "common/error.h"
#include "common/parallel.h"
#include "common/timer.h"

namespace tempo {

Blinding::Blinding(int row_mix, int mask_rank, float mask_magnitude, int col_mix, MaskKind mask_kind) {
  if (row_mix > 0) mix_ = std::make_unique<RowMix>(row_mix);
  if (col_mix > 0) col_ = std::make_unique<ColMix>(col_mix);
  if (mask_rank > 0) mask_ = std::make_unique<AdditiveMask>(mask_rank, mask_magnitude, mask_kind);
}

const Product& Blinding::apply(const Product& p, Obfuscator& obf) {
  const Product& q = prepare(p, obf);
  pass();
  return q;
}

const Product& Blinding::prepare(const Product& p, Obfuscator& obf) {
  ScopeSeconds timed(secs_.forward);
  if (static_cast<size_t>(p.id) >= sent_.size()) sent_.resize(static_cast<size_t>(p.id) + 1);
  // A pass left by an attempt that threw: its A is made when read.
  if (pending_ >= 0) sent_[static_cast<size_t>(pending_)].unwritten = true;
  pending_ = -1;
  Sent& s = sent_[static_cast<size_t>(p.id)];
  s.unwritten = false;
  const Product* q = &p;
  float* a = nullptr;  // the data operand's own buffer, once there is one
  // Streams in a fixed order (row mixing, column mixing, mask), whichever
  // are on.
  std::optional<KeyStream> row_ks, col_ks, mask_ks;
  if (mix_) row_ks.emplace(obf.stream());
  if (col_) {
    col_ks.emplace(obf.stream());
    col_->draw(p.id, p.k, *col_ks);
  }
  if (mask_) mask_ks.emplace(obf.stream());
  // With row mixing, A is written by one pass (pass()): each group of rows
  // mixed, then its columns, then the mask added (its scale from A's sum
  // of squares, which the orthogonal mixings keep), while they are in cache.
  if (mix_) {
    if (mask_) mask_->prepare(p, operand_sum_of_squares(p), *mask_ks);
    q = &mix_->draw(p, *row_ks);
    a = mix_->mixed_a(p.id);
    s.source = p;
    pending_ = p.id;
  }
  if (col_) {
    if (!a) {
      s.a.resize(static_cast<size_t>(p.m * p.k));
      a = s.a.data();
      col_->mix(p.id, p.a, p.m, a);
    }
    s.w.resize(static_cast<size_t>(p.n * p.k));
    col_->mix(p.id, p.w, p.n, s.w.data());
    s.q = *q;
    s.q.a = a;
    s.q.w = s.w.data();
    q = &s.q;
  }
  if (mask_)
    q = mix_ ? &mask_->bind(*q) : a ? &mask_->apply_in_place(*q, a, *mask_ks) : &mask_->apply(p, *mask_ks);
  if (q != &s.q) s.q = *q;
  s.valid = true;
  return s.q;
}

void Blinding::pass(const RowsVisit* sink, bool write_a) {
  if (pending_ < 0) return;
  Sent& s = sent_[static_cast<size_t>(pending_)];
  pending_ = -1;
  run_pass(s, sink, write_a);
}

void Blinding::materialise(const Product& q) {
  if (q.id < 0 || static_cast<size_t>(q.id) >= sent_.size()) return;
  Sent& s = sent_[static_cast<size_t>(q.id)];
  if (s.unwritten) run_pass(s, nullptr, true);
}

void Blinding::run_pass(Sent& s, const RowsVisit* sink, bool write_a) {
  ScopeSeconds timed(secs_.forward);
  const Product& p = s.source;
  const int id = p.id;
  const ColMix* col = col_.get();
  const AdditiveMask* mask = mask_.get();
  RowMix::After after;
  if (col || mask || sink)
    after = [col, mask, id, sink](float* const* rows, const int64_t* index, int64_t n) {
      if (col) col->mix_here(id, rows, n);
      if (mask) mask->add_rows(id, rows, index, n);
      if (sink) (*sink)(index, rows, n);
    };
  mix_->mix(id, p.a, p.k, write_a ? mix_->mixed_a(id) : nullptr, after);
  s.unwritten = !write_a;
}

const Product& Blinding::sent(const Product& p) const {
  if (p.id < 0 || static_cast<size_t>(p.id) >= sent_.size()) return p;
  const Sent& s = sent_[static_cast<size_t>(p.id)];
  return s.valid && s.q.m == p.m && s.q.k == p.k && s.q.n == p.n ? s.q : p;
}

const float* Blinding::gradient(const Product& q, const float* dc) {
  if (!mix_) return dc;
  ScopeSeconds timed(secs_.gradient);
  if (dc_.size() < static_cast<size_t>(q.m * q.n)) dc_.resize(static_cast<size_t>(q.m * q.n));
  mix_->mix(q.id, dc, q.n, dc_.data());
  return dc_.data();
}

void Blinding::finish_forward(const Product& q, float* c_sent, float* c) {
  ScopeSeconds timed(secs_.result);
  if (mask_) mask_->unmask_forward(q, c_sent);  // the mask was added to the mixed rows
  if (mix_) mix_->unmix(q.id, c_sent, q.n, c);
  else if (c != c_sent) std::copy(c_sent, c_sent + q.m * q.n, c);
}

// Row and column unmixing commute (one acts on the left, one on the right):
// with both, each group's rows are unmixed by columns as soon as the row
// pass has written them.
void Blinding::finish_input(const Product& q, const float* da_sent, float* da, bool natural) const {
  ScopeSeconds timed(secs_.input);
  const ColMix* col = col_.get();
  const int id = q.id;
  if (mix_)
    mix_->unmix(q.id, da_sent, q.k, da, col ? RowMix::After([col, id, natural](float* const* rows, const int64_t*, int64_t n) {
      col->unmix_here(id, rows, n, natural);
    }) : RowMix::After());
  else if (col)
    col->unmix(q.id, da_sent, q.m, da, natural);  // dA·Gᵀ·G
  else if (da != da_sent)
    std::copy(da_sent, da_sent + q.m * q.k, da);
}

void Blinding::decrypt_input(const Product& q, const float* z, const ScaledPerm& r, const ScaledPerm& c,
                             const double* dot_r, double* dot_out, int dot_rounds, float* da, bool natural) const {
  ScopeSeconds timed(secs_.input);
  TEMPO_CHECK(mix_, "fused decryption of an input gradient needs row mixing");
  const ColMix* col = col_.get();
  const int id = q.id;
  const int64_t m = q.m, k = q.k;
  mix_->unmix_from(
      id, k,
      [&](int64_t r0, int64_t r1, float* buf) {
        apply_keys_rows_here(z, m, k, r, c, r0, r1, buf, dot_r, dot_out, dot_rounds);
      },
      da, col ? RowMix::After([col, id, natural](float* const* rows, const int64_t*, int64_t n) {
        col->unmix_here(id, rows, n, natural);
      }) : RowMix::After());
}

void Blinding::finish_weight(const Product& q, const float* g, float* dw) {
  ScopeSeconds timed(secs_.weight);
  if (mask_) mask_->unmask_weight(q, g, dw);  // (M·dC)ᵀ·(M·A·Gᵀ) = dCᵀ·A·Gᵀ: no rows to unmix
  if (col_) col_->unmix(q.id, dw, q.n, dw);
}

BlindingSeconds Blinding::take_seconds() {
  BlindingSeconds out = secs_;
  if (mask_) {
    const AdditiveMask::Seconds m = mask_->take_seconds();
    out.mask_draw = m.draw;
    out.mask_product = m.product;
  }
  secs_ = {};
  return out;
}

}  // namespace tempo
