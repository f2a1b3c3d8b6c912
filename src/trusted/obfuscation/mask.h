// Additive low-rank masks: the hardening against the zero-pattern leak
// (docs/SECURITY.md). A scale cannot hide a zero, so post-ReLU inputs keep
// their exact zero pattern under MM-obfuscation alone. With a mask of rank
// r, the master adds R = s·U·Vᵀ (U: m×r, V: k×r, fresh draws from the
// secret key stream for every product and step, R's entries of A's rms
// times `magnitude`) to the data operand A before it is encrypted, so that
// a worker receives (A + R)': no zero survives. U's and V's entries are odd
// integers, uniform on ±1, ±3, …, ±127, and s a float scale: U·Vᵀ is then
// an exact integer matrix (common/exact_low_rank.h), computed on Intel's
// AMX tiles where there are some (int8 products, about six times the rate
// of fp32 arithmetic), else on VNNI's int8 dot products (AVX-512 or
// AVX), else through sgemm, with the same bits.
// Workers compute (A + R)·Wᵀ and, backward, dCᵀ·(A + R); the master checks
// those as usual and then removes R's share with thin products:
//     C  = (A + R)·Wᵀ − s·U·(W·V)ᵀ          r·n·(m + k) multiply-adds
//     dW = dCᵀ·(A + R) − s·(dCᵀ·U)·Vᵀ       r·n·(m + k)
// The input gradient dA = dC·W does not involve A. Drawing R costs one
// m×k×r product. A worker that estimated R back would see the zeros again,
// which is why r must not be small (measured in SECURITY.md).
//
// MaskKind::kKron draws the same kind of mask, rank r = r1·r2 (8·8 for 64),
// at a few multiply-adds per entry instead of r: V's rows are Kronecker
// products. The k columns are placed by a fresh secret injection π on a
// grid of k1×k2 cells (k2: 2·r2 rounded up to a multiple of 8, k1 = ⌈k/k2⌉), X (k1×r1) and Y (k2×r2)
// have rows of unit norm, and
//     V[j, q1·r2 + q2] = X[c, q1]·Y[o, q2]     for (c, o) = π(j),
// so row i of R, laid out on the grid, is the k1×k2 matrix X·U_i·Yᵀ (U_i:
// row i of U as an r1×r2 matrix): r1·r2·k2 + r1·k1·k2 ≈ r1·k multiply-adds
// per row. Each entry has the same variance (the unit norms), and the
// rows span an r-dimensional space as the dense kind's do; the correction
// products are the dense kind's, with this V. Measured against the same
// attacks in docs/SECURITY.md.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "common/exact_low_rank.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/offload/linear_backend.h"

namespace tempo {

enum class MaskKind { kDense, kKron };
// "dense" | "kron"; parse_mask_kind throws on anything else.
const char* mask_kind_name(MaskKind k);
MaskKind parse_mask_kind(const std::string& s);
// The kind a mask gets when none is given (OffloadConfig's default, and
// the masks the privacy measurements draw); `tempo privacy --mask-kind`
// sets it for a whole run. Set it before any thread draws masks.
MaskKind default_mask_kind();
// Σ a[i]² in double, in a fixed number of pieces summed in order: the same
// for any number of threads (the mask's scale).
double sum_of_squares(const float* a, int64_t n);
// Σ a² of p's data operand: the layer's own (Product::a_sumsq, taken as it
// wrote A) where it took it, else sum_of_squares.
double operand_sum_of_squares(const Product& p);
void set_default_mask_kind(MaskKind k);

class AdditiveMask {
 public:
  // Largest rank: a full-rank side is up to twice it, within
  // kExactRankMax.
  static constexpr int kMaxRank = static_cast<int>(kExactRankMax / 2);
  explicit AdditiveMask(int rank, float magnitude = 1.0f, MaskKind kind = default_mask_kind());
  MaskKind kind() const { return kind_; }
  // Seconds spent drawing U and V, and adding R (in a mixing pass, add_rows
  // on several threads: their summed time over the number of threads),
  // since the last call; resets them.
  struct Seconds {
    double draw = 0, product = 0;
  };
  Seconds take_seconds();
  // p with `a` replaced by A + U·Vᵀ (fresh U, V drawn from ks); it stays
  // valid until the next apply() for the same p.id. The rank used is
  // rank, or min(m, k) (full) where that is at most twice the rank: a small
  // side (a batch of rows) is masked in full, cheaply.
  const Product& apply(const Product& p, KeyStream& ks);
  // The same on a buffer the caller owns and keeps (m×k, holding p's A; the
  // row-mixed operand, row_mix.h): A + U·Vᵀ is written over it.
  const Product& apply_in_place(const Product& p, float* a, KeyStream& ks);
  // The fused form, for a pass that writes the masked operand row group by
  // row group (Blinding with row mixing): prepare() draws U and V for p from
  // `sumsq`, the sum of squares of the operand taken beforehand (the
  // orthogonal mixings keep it); add_rows() adds the mask's rows as the pass
  // writes them; bind() then records q (the operand as masked) and returns
  // it, as apply() would have.
  void prepare(const Product& p, double sumsq, KeyStream& ks);
  const Product& bind(const Product& q);
  // rows[t] (p.k floats) += (U·Vᵀ)[index[t]] for t < n; any thread.
  void add_rows(int id, float* const* rows, const int64_t* index, int64_t n) const;
  // The masked product last applied for p.id (p itself if none was).
  const Product& masked(const Product& p) const;
  // c (m×n) holds (A + R)·Wᵀ; removes U·(W·V)ᵀ.
  void unmask_forward(const Product& p, float* c);
  // dw (n×k) holds dCᵀ·(A + R); removes (dCᵀ·U)·Vᵀ.
  void unmask_weight(const Product& p, const float* dc, float* dw);

 private:
  struct Entry {
    bool valid = false;
    Product q;
    int64_t r = 0;
    // A + R; U (m×r) as floats. Dense: R = scale·U·Vᵀ, U and V of small
    // integers, U also as int8 (rows of lr.u_stride()), V in lr. kKron:
    // R = U·Vᵀ (scale 1), Vᵀ (r×k) in vt.
    std::vector<float> am, u, vt;
    std::vector<int8_t> u8;
    ExactLowRank lr;
    float scale = 1.0f;
    const float* vt_data() const { return kron ? vt.data() : lr.vt(); }
    // kKron: the grid (k1×k2 cells), X (k1×r1), Y (k2×r2), column j's cell.
    bool kron = false;
    int64_t r1 = 0, r2 = 0, k1 = 0, k2 = 0;
    std::vector<float> x, yt;  // X; Yᵀ (r2×k2)
    std::vector<int32_t> cell;
  };
  // rows[t] += R[index[t]] for t < n: any entry, any thread.
  static void add_entry_rows(const Entry& e, float* const* rows, const int64_t* index, int64_t n);
  // rows[t] += (U·Vᵀ)[index[t]] of a kKron entry, row by row.
  static void add_kron_rows(const Entry& e, float* const* rows, const int64_t* index, int64_t n);
  const Entry* find(int id) const;
  const Product& add(const Product& p, float* dst, KeyStream& ks);
  // Draws U and V (scaled for an operand of this sum of squares) into e.
  void draw(Entry& e, const Product& p, double sumsq, KeyStream& ks);
  Entry& entry_for(const Product& p);
  int rank_;
  float magnitude_;
  MaskKind kind_;
  std::vector<Entry> entries_;
  Seconds secs_;
  mutable std::atomic<int64_t> rows_ns_{0};  // add_rows' time, summed over threads
  std::vector<float> thin_;      // n×r: W·V, or dCᵀ·U in pieces
  std::vector<int8_t> v8_;       // V (k×r) as drawn, before set_v keeps it
};

}  // namespace tempo
