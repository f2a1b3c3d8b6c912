// Freivalds' check of a decrypted product (DESIGN.md §2). For C = A·B
// (C: m×n, inner dimension k) and a secret random r (entries ±(1 + u), u
// uniform in [0, 1): a random sign as in the classic check, and a magnitude
// so that no perturbation of a row cancels exactly), in double precision:
//     e = C·r − A·(B·r)
// and row i passes iff |e_i| ≤ τ·√k·u·sqrt(((A∘A)·((B∘B)·(r∘r)))_i), written
// so that NaN fails. u is the unit round-off of the precision the master
// chose (fp32: 2⁻²⁴). O(mk + kn + mn) per round instead of O(mkn).
#pragma once

#include <cstdint>
#include <vector>

#include "common/conv.h"
#include "trusted/obfuscation/keys.h"

namespace tempo {

// A read-only operand. stored_t: the matrix is stored transposed (e.g. the
// weight W = Bᵀ of a linear layer).
struct Operand {
  const float* data;
  bool stored_t;
};

// Row sums of a forward operand A (M×K) against secret vectors r', taken in
// the forward check's pass over A, so that the later check of the weight
// gradient dW = dCᵀ·A needs only dC and dW (no second pass over A).
struct RowSums {
  int rounds = 0;
  int64_t m = 0, k = 0;
  std::vector<double> r;   // rounds × k
  std::vector<double> ar;  // rounds × m: A·r'
  std::vector<double> aa;  // rounds × m: (A∘A)·(r'∘r')
};

struct VerifyConfig {
  int rounds = 2;  // one round passes ~2e-3 of two-entry 1e-2 lies (docs/SECURITY.md)
  double rate = 1.0;        // fraction of products checked
  double tolerance = 16.0;  // τ
  double unit_roundoff = 0x1.0p-24;
};

class Verifier {
 public:
  explicit Verifier(VerifyConfig cfg) : cfg_(cfg) {}
  const VerifyConfig& config() const { return cfg_; }

  // Checks c (m×n) = a (m×k) · b (k×n). If rows_k is non-null, the product
  // runs over those k indices only (k of them, into operands whose k extent
  // is k_full). Returns the failing rows of c (empty: passed). Randomness
  // from `ks` (secret).
  //
  // sums (a in rows, no subset): also fill RowSums for check_weight().
  // r_pre, cr_pre: use these vectors r (one per round, round-major: rounds
  // × n), drawn earlier with draw_vectors(), and these row products c·r
  // (rounds × m, round-major), computed while c was decrypted, instead of
  // reading c again.
  std::vector<int64_t> check(const float* c, int64_t m, int64_t n, int64_t k, Operand a, Operand b,
                             KeyStream& ks, const int32_t* rows_k = nullptr, int64_t k_full = 0,
                             RowSums* sums = nullptr, const std::vector<double>* r_pre = nullptr,
                             const double* cr_pre = nullptr);

  // check() in three parts, for a caller that reads A's rows in a pass of
  // its own (the forward operand's key application): begin() takes the
  // arguments of check() that do not involve a or c, draws the vectors
  // from ks exactly as check() does, and projects b; project_row(i, row)
  // then takes row i of A as sent (its k inner values in order), once per
  // row, from any thread; end() compares with c (m×n) or with cr_pre, and
  // returns what check() returns. Rows of A not projected fail.
  void begin(int64_t m, int64_t n, int64_t k, Operand b, KeyStream& ks, const int32_t* rows_k = nullptr,
             int64_t k_full = 0, RowSums* sums = nullptr, const std::vector<double>* r_pre = nullptr);
  void project_row(int64_t i, const float* row);
  // project_row(index[t], rows[t]) for t < n, the same bits, faster (the
  // check's vectors read once for two rows).
  void project_rows(const int64_t* index, const float* const* rows, int64_t n);
  std::vector<int64_t> end(const float* c, const double* cr_pre = nullptr);

  // Checks dw (n×k) = dcᵀ·A over the rows `rows` (count of them) of dc
  // (m_full×n) and A, with A's row sums from the forward check.
  bool check_weight(const float* dw, int64_t n, int64_t k, const float* dc, const RowSums& sums,
                    const int32_t* rows, int64_t count);

  // A fresh vector of the check's distribution: entries ±(1 + u).
  void draw_vector(KeyStream& ks, int64_t n, std::vector<double>& out);
  // One such vector per round, round-major (rounds × n), for r_pre.
  void draw_vectors(KeyStream& ks, int64_t n, std::vector<double>& out);

  // Channel-mode convolutions (no bias), checked by combining channels with
  // a random r: Σ_o r_o·Y[:, o] = conv(X, Σ_o r_o·W[o]) for the forward;
  // Σ_c r_c·dX[:, c] = convᵀ(dY, Σ_c r_c·W[:, c]) for the input gradient;
  // Σ_o r_o·dW[o] = corr(X, Σ_o r_o·dY[:, o]) for the weight gradient.
  // Return true when the result passes.
  bool check_conv_forward(const float* y, const float* x, const float* w, const ConvGeometry& g, KeyStream& ks);
  bool check_conv_input(const float* dx, const float* dy, const float* w, const ConvGeometry& g, KeyStream& ks);
  bool check_conv_weight(const float* dw, const float* x, const float* dy, const ConvGeometry& g, KeyStream& ks);

  // Largest |e_i| / bound_i seen so far over honest-looking rows (for
  // calibration reports).
  double worst_ratio() const { return worst_ratio_; }

 private:
  VerifyConfig cfg_;
  double worst_ratio_ = 0;
  std::vector<double> r_, r2_, rp2_, br_, bb_, y_, s_;
  std::vector<double> cv_a_, cv_b_, cv_lhs_, cv_rhs_, cv_s_;
  std::vector<double> cv_parts_;  // check_weight's partial sums, per piece
  // The shape of one check(): c is m×n, k inner indices used (rows_k, or
  // 0..k-1) of operands whose inner extent is kfull.
  struct Dims {
    int64_t m, n, k, kfull;
    const int32_t* rows_k;
    int rounds;  // every round's vectors at once, round-major
  };
  Dims d_{};                  // the check begun
  RowSums* sums_ = nullptr;   // its row sums, if taken
  void project_b(Operand b);
  void project_a(Operand a);
  void compare_rows(const float* c, const double* cr_pre, double scale, std::vector<double>& worst_t);
  void draw(KeyStream& ks, int64_t n);
  bool compare(int64_t rows, int64_t k_eff);
  std::vector<char> failed_;
};

}  // namespace tempo
