#include "trusted/obfuscation/mask.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/blas.h"
#include "common/error.h"
#include "common/parallel.h"

namespace tempo {

namespace {

// Uniform on [-h, h] from 24 random bits: variance h²/3. The stream's words
// come a few thousand at a time and are converted in a vector loop.
void fill_uniform(KeyStream& ks, float h, float* out, int64_t n) {
  const float step = 2.0f * h * 0x1.0p-24f;
  uint32_t bits[2048];
  for (int64_t i0 = 0; i0 < n; i0 += 2048) {
    const int64_t len = std::min<int64_t>(2048, n - i0);
    ks.fill(bits, static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i) out[i0 + i] = static_cast<float>(bits[i] >> 8) * step - h;
  }
}

}  // namespace

AdditiveMask::AdditiveMask(int rank, float magnitude) : rank_(rank), magnitude_(magnitude) {
  TEMPO_CHECK(rank >= 1, "mask rank must be at least 1");
  TEMPO_CHECK(magnitude > 0 && std::isfinite(magnitude), "mask magnitude must be positive");
}

const AdditiveMask::Entry* AdditiveMask::find(int id) const {
  if (id < 0 || static_cast<size_t>(id) >= entries_.size() || !entries_[static_cast<size_t>(id)].valid)
    return nullptr;
  return &entries_[static_cast<size_t>(id)];
}

const Product& AdditiveMask::apply(const Product& p, KeyStream& ks) {
  TEMPO_CHECK(p.id >= 0, "a masked product needs an id");
  if (static_cast<size_t>(p.id) >= entries_.size()) entries_.resize(static_cast<size_t>(p.id) + 1);
  std::vector<float>& am = entries_[static_cast<size_t>(p.id)].am;
  am.resize(static_cast<size_t>(p.m * p.k));
  return add(p, am.data(), ks);
}

const Product& AdditiveMask::apply_in_place(const Product& p, float* a, KeyStream& ks) {
  TEMPO_CHECK(p.id >= 0, "a masked product needs an id");
  if (static_cast<size_t>(p.id) >= entries_.size()) entries_.resize(static_cast<size_t>(p.id) + 1);
  std::vector<float>().swap(entries_[static_cast<size_t>(p.id)].am);
  return add(p, a, ks);
}

// dst (m×k) receives A + U·Vᵀ; it may be p.a itself.
const Product& AdditiveMask::add(const Product& p, float* dst, KeyStream& ks) {
  Entry& e = entries_[static_cast<size_t>(p.id)];
  const int64_t m = p.m, k = p.k;
  const int64_t side = std::min(m, k);
  e.r = side <= 2 * int64_t{rank_} ? side : rank_;
  const int64_t r = e.r;
  e.u.resize(static_cast<size_t>(m * r));
  e.v.resize(static_cast<size_t>(k * r));
  // A's rms (per-thread partial sums, combined in order: deterministic for a
  // thread count) and the copy into the masked buffer, in one pass.
  const int threads = std::max(1, num_threads());
  std::vector<double>& part = part_;
  part.assign(static_cast<size_t>(threads), 0.0);
  const int64_t per = (m + threads - 1) / threads;
  parallel_for(threads, [&](int64_t lo, int64_t hi) {
    for (int64_t t = lo; t < hi; ++t) {
      const int64_t r0 = std::min(m, t * per), r1 = std::min(m, r0 + per);
      const float* a = p.a + r0 * k;
      if (dst != p.a) std::memcpy(dst + r0 * k, a, static_cast<size_t>((r1 - r0) * k) * sizeof(float));
      double s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < (r1 - r0) * k; ++i) s += static_cast<double>(a[i]) * a[i];
      part[static_cast<size_t>(t)] = s;
    }
  });
  double ss = 0;
  for (double s : part) ss += s;
  double rms = std::sqrt(ss / static_cast<double>(m * k));
  if (!(rms > 0) || !std::isfinite(rms)) rms = 1.0;
  // Entries of U·Vᵀ: a sum of r products of variance 1 and rms²·magnitude²/r.
  const float hu = std::sqrt(3.0f);
  const float hv = static_cast<float>(std::sqrt(3.0) * rms * magnitude_ / std::sqrt(static_cast<double>(r)));
  // U in a fixed number of pieces, each from its own stretch of the stream,
  // in parallel: the draws depend on the stream only, not on the threads.
  constexpr int64_t kPieces = 16;
  parallel_for(kPieces, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      KeyStream piece = ks.fork(static_cast<uint32_t>(c));
      const int64_t r0 = m * c / kPieces, r1 = m * (c + 1) / kPieces;
      fill_uniform(piece, hu, e.u.data() + r0 * r, (r1 - r0) * r);
    }
  });
  fill_uniform(ks, hv, e.v.data(), k * r);
  sgemm(false, true, m, k, r, 1.0f, e.u.data(), r, e.v.data(), r, 1.0f, dst, k);
  e.q = p;
  e.q.a = dst;
  e.valid = true;
  return e.q;
}

const Product& AdditiveMask::masked(const Product& p) const {
  const Entry* e = find(p.id);
  return e && e->q.m == p.m && e->q.k == p.k && e->q.n == p.n ? e->q : p;
}

void AdditiveMask::unmask_forward(const Product& p, float* c) {
  const Entry* e = find(p.id);
  TEMPO_CHECK(e, "unmask of a product that was not masked: " + p.name);
  const int64_t r = e->r;
  thin_.resize(static_cast<size_t>(p.n * r));
  sgemm(false, false, p.n, r, p.k, 1.0f, p.w, p.k, e->v.data(), r, 0.0f, thin_.data(), r);       // W·V
  sgemm(false, true, p.m, p.n, r, -1.0f, e->u.data(), r, thin_.data(), r, 1.0f, c, p.n);          // −U·(W·V)ᵀ
}

void AdditiveMask::unmask_weight(const Product& p, const float* dc, float* dw) {
  const Entry* e = find(p.id);
  TEMPO_CHECK(e, "unmask of a product that was not masked: " + p.name);
  const int64_t r = e->r;
  thin_.resize(static_cast<size_t>(p.n * r));
  sgemm(true, false, p.n, r, p.m, 1.0f, dc, p.n, e->u.data(), r, 0.0f, thin_.data(), r);          // dCᵀ·U
  sgemm(false, true, p.n, p.k, r, -1.0f, thin_.data(), r, e->v.data(), r, 1.0f, dw, p.k);         // −(dCᵀ·U)·Vᵀ
}

}  // namespace tempo
