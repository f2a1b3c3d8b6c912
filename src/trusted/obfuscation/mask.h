// Additive low-rank masks: the hardening against the zero-pattern leak
// (docs/SECURITY.md). A scale cannot hide a zero, so post-ReLU inputs keep
// their exact zero pattern under MM-obfuscation alone. With a mask of rank
// r, the master adds R = U·Vᵀ (U: m×r, V: k×r, fresh uniform draws from the
// secret key stream for every product and step, R's entries of A's rms
// times `magnitude`) to the data operand A before it is encrypted, so that
// a worker receives (A + R)': no zero survives. Workers compute (A + R)·Wᵀ
// and, backward, dCᵀ·(A + R); the master checks those as usual and then
// removes R's share with thin products:
//     C  = (A + R)·Wᵀ − U·(W·V)ᵀ          r·n·(m + k) multiply-adds
//     dW = dCᵀ·(A + R) − (dCᵀ·U)·Vᵀ       r·n·(m + k)
// The input gradient dA = dC·W does not involve A. Drawing R costs one
// m×k×r sgemm. A worker that estimated R back would see the zeros again,
// which is why r must not be small (measured in SECURITY.md).
#pragma once

#include <cstdint>
#include <vector>

#include "trusted/obfuscation/keys.h"
#include "trusted/offload/linear_backend.h"

namespace tempo {

class AdditiveMask {
 public:
  explicit AdditiveMask(int rank, float magnitude = 1.0f);
  // p with `a` replaced by A + U·Vᵀ (fresh U, V drawn from ks); it stays
  // valid until the next apply() for the same p.id. The rank used is
  // rank, or min(m, k) (full) where that is at most twice the rank: a small
  // side (a batch of rows) is masked in full, cheaply.
  const Product& apply(const Product& p, KeyStream& ks);
  // The same on a buffer the caller owns and keeps (m×k, holding p's A; the
  // row-mixed operand, row_mix.h): A + U·Vᵀ is written over it.
  const Product& apply_in_place(const Product& p, float* a, KeyStream& ks);
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
    std::vector<float> am, u, v;  // A + U·Vᵀ, U, V
  };
  const Entry* find(int id) const;
  const Product& add(const Product& p, float* dst, KeyStream& ks);
  int rank_;
  float magnitude_;
  std::vector<Entry> entries_;
  std::vector<double> part_;     // per-thread sums of squares
  std::vector<float> thin_;      // n×r: W·V or dCᵀ·U
};

}  // namespace tempo
