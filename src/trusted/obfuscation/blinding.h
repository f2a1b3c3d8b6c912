// The operands' blinding before the keys, in one place: row mixing
// (row_mix.h), column mixing of both operands (col_mix.h), then the
// additive mask added to the mixed data operand (mask.h), each off at 0;
// and what undoes each on the results. OffloadBackend sends every
// product through it, and the privacy suites reproduce what a worker
// receives with it. Both draw their randomness from two fresh streams of the
// run's obfuscator, mixing first.
#pragma once

#include <deque>
#include <memory>
#include <vector>

#include "trusted/obfuscation/col_mix.h"
#include "trusted/obfuscation/mask.h"
#include "trusted/obfuscation/obfuscator.h"
#include "trusted/obfuscation/row_mix.h"
#include "trusted/offload/linear_backend.h"

namespace tempo {

// Seconds the blinding spent on the master, by part, since the last
// take_seconds(): where the hardenings' cost goes (`tempo bench --suite
// hardening` prints it per configuration).
struct BlindingSeconds {
  double forward = 0;       // apply(): the mixings and the mask, all of it
  double mask_draw = 0;     //   of which drawing U and V
  double mask_product = 0;  //   and adding U·Vᵀ outside the mixing pass (the dense mask's m×k×r product)
  double result = 0;        // finish_forward(): the mask's correction of C and its unmixing
  double weight = 0;        // finish_weight(): the mask's correction of dW and its column unmixing
  double gradient = 0;      // gradient(): the row mixing of dC
  double input = 0;         // finish_input(), decrypt_input(): dA's unmixing (with its decryption, fused)
  // All of it (the mask's draw and product are within forward).
  double total() const { return forward + result + weight + gradient + input; }
  BlindingSeconds& operator+=(const BlindingSeconds& o) {
    forward += o.forward, mask_draw += o.mask_draw, mask_product += o.mask_product, result += o.result;
    weight += o.weight, gradient += o.gradient, input += o.input;
    return *this;
  }
  BlindingSeconds operator/(double d) const {
    return {forward / d, mask_draw / d, mask_product / d, result / d, weight / d, gradient / d, input / d};
  }
};

class Blinding {
 public:
  Blinding(int row_mix, int mask_rank, float mask_magnitude = 1.0f, int col_mix = 0,
           MaskKind mask_kind = default_mask_kind());
  bool mixes() const { return mix_ != nullptr; }
  bool mixes_cols() const { return col_ != nullptr; }
  bool masks() const { return mask_ != nullptr; }
  // Read-only views of the mixings, for measurements only (scoring an
  // attack needs the secret grouping, and the column mixing to apply to a
  // plaintext); nullptr where off. Nothing on the offload path calls them.
  const RowMix* row_mixing() const { return mix_.get(); }
  const ColMix* col_mixing() const { return col_.get(); }
  // Whether the input gradient as returned needs finish_input().
  bool transforms_input_gradient() const { return mix_ || col_; }
  // p with its data operand mixed and masked and (column mixing) its weight
  // mixed, freshly drawn; valid until the next apply() for p.id.
  const Product& apply(const Product& p, Obfuscator& obf);
  // apply() in two halves, for a caller that consumes A's rows as they are
  // made: prepare() draws everything (the same streams, in the same order)
  // and returns the product as it will be sent; pass() then makes its data
  // operand, calling sink (if given) with each group of rows (their
  // indices in q.a, and the rows as sent, in cache) on the thread that made
  // them. With row mixing only: without it, prepare() does all of apply()
  // and pass() nothing.
  // prepare() then pass() is apply(), bit for bit. write_a false: q.a is
  // not written (the sink took every row); materialise(q) writes it, the
  // same bits, by running the pass again from the operand as given (which
  // its layer keeps until its backward). Nothing may read q.a before.
  const Product& prepare(const Product& p, Obfuscator& obf);
  void pass(const RowsVisit* sink = nullptr, bool write_a = true);
  bool pending() const { return pending_ >= 0; }
  void materialise(const Product& q);
  // The product last sent for p's id and shape, or p itself if none was.
  const Product& sent(const Product& p) const;
  // For a product q as sent: the output gradient as sent (M·dc, in a buffer
  // kept here, or dc itself without mixing).
  const float* gradient(const Product& q, const float* dc);
  // Undo on the results of q: the forward product (c_sent, m×n, is used as
  // scratch), the input gradient (da_sent, m×k, to da), and the weight
  // gradient (in place; g is the gradient as sent).
  void finish_forward(const Product& q, float* c_sent, float* c);
  // natural false: dA's columns left in input_order(q)'s order (when it is
  // not nullptr), for col2im to gather through.
  void finish_input(const Product& q, const float* da_sent, float* da, bool natural = true) const;
  // Where finish_input(natural false) and decrypt_input leave column j of
  // dA: at order[j] (the column mixing's groups, which col2im can read in
  // place); nullptr where they leave the columns in order.
  const int32_t* input_order(const Product& q) const { return col_ ? col_->order(q.id) : nullptr; }
  void finish_weight(const Product& q, const float* g, float* dw);
  // finish_input() fused with the decryption: da = the input gradient of q,
  // undone, from the workers' Z (q.m×q.k), whose decryption is R·Z·Cᵀ; the
  // mixed rows are decrypted a group at a time into a buffer in cache and
  // never formed whole. dot_r/dot_out as in apply_keys_rows_here (the check's
  // products of the rows as sent). Only where fuses_input().
  bool fuses_input() const { return mix_ != nullptr; }
  void decrypt_input(const Product& q, const float* z, const ScaledPerm& r, const ScaledPerm& c,
                     const double* dot_r, double* dot_out, int dot_rounds, float* da, bool natural = true) const;
  // The seconds spent since the last call, by part; resets them.
  BlindingSeconds take_seconds();

 private:
  struct Sent {  // per product id: the product as last sent, and the column mixing's buffers
    bool valid = false;
    Product q;
    std::vector<float> a, w;  // A·Gᵀ (when not row-mixed: the row mixing's buffer holds it then), W·Gᵀ
    Product source;           // with row mixing: the product as given, from which pass() makes q.a
    bool unwritten = false;   // q.a not written by its pass (materialise() writes it)
  };
  void run_pass(Sent& s, const RowsVisit* sink, bool write_a);
  std::unique_ptr<RowMix> mix_;
  std::unique_ptr<ColMix> col_;
  std::unique_ptr<AdditiveMask> mask_;
  std::deque<Sent> sent_;  // a deque: growing it keeps references to the products as sent
  std::vector<float> dc_;
  int pending_ = -1;  // the product whose pass prepare() left to pass()
  mutable BlindingSeconds secs_;  // mask_draw and mask_product: the mask's own, added in take_seconds()
};

}  // namespace tempo
