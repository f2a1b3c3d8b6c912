#include "trusted/obfuscation/mask.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common/blas.h"
#include "common/copy.h"
#include "common/exact_low_rank.h"
#include "common/error.h"
#include "common/parallel.h"
#include "common/timer.h"

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

// The dense mask's integers: odd, uniform on ±1, ±3, …, ±127 (mean 0,
// variance kOddVariance), four from each word of the stream.
constexpr double kOddVariance = 16383.0 / 3.0;
void fill_odd_int8(KeyStream& ks, int8_t* out, int64_t n) {
  uint32_t words[1024];
  for (int64_t i0 = 0; i0 < n; i0 += 4096) {
    const int64_t len = std::min<int64_t>(4096, n - i0);
    ks.fill(words, static_cast<size_t>((len + 3) / 4));
    std::memcpy(out + i0, words, static_cast<size_t>(len));
    for (int64_t i = 0; i < len; ++i) out[i0 + i] = static_cast<int8_t>(static_cast<uint8_t>(out[i0 + i]) | 1u);
  }
}

typedef float V8 __attribute__((vector_size(32), aligned(4)));  // 8 floats, unaligned access

// out (rows×cols, cols a multiple of 8) = a (rows×inner, row-major) ·
// b (inner×cols): four rows by 8 columns at a time, eight independent
// chains of multiply-adds in registers.
void small_product(const float* a, int64_t rows, int64_t inner, const float* b, int64_t cols, float* out) {
  auto load = [](const float* p) { return *reinterpret_cast<const V8*>(p); };
  auto store = [](float* p, V8 v) { *reinterpret_cast<V8*>(p) = v; };
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4)
    for (int64_t o = 0; o < cols; o += 8) {
      V8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int64_t q = 0; q < inner; ++q) {
        const V8 bv = load(b + q * cols + o);
        a0 += a[i * inner + q] * bv;
        a1 += a[(i + 1) * inner + q] * bv;
        a2 += a[(i + 2) * inner + q] * bv;
        a3 += a[(i + 3) * inner + q] * bv;
      }
      store(out + i * cols + o, a0);
      store(out + (i + 1) * cols + o, a1);
      store(out + (i + 2) * cols + o, a2);
      store(out + (i + 3) * cols + o, a3);
    }
  for (; i < rows; ++i)
    for (int64_t o = 0; o < cols; o += 8) {
      V8 a0 = {};
      for (int64_t q = 0; q < inner; ++q) a0 += a[i * inner + q] * load(b + q * cols + o);
      store(out + i * cols + o, a0);
    }
}

}  // namespace

const char* mask_kind_name(MaskKind k) { return k == MaskKind::kKron ? "kron" : "dense"; }

MaskKind parse_mask_kind(const std::string& s) {
  if (s == "dense") return MaskKind::kDense;
  if (s == "kron") return MaskKind::kKron;
  throw Error("mask kind must be dense or kron, got '" + s + "'");
}

namespace {
MaskKind g_default_kind = MaskKind::kDense;
}  // namespace

MaskKind default_mask_kind() { return g_default_kind; }

double sum_of_squares(const float* a, int64_t n) {
  return sum_in_pieces(n, [a](int64_t lo, int64_t hi) {
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t i = lo; i < hi; ++i) s += static_cast<double>(a[i]) * a[i];
    return s;
  });
}

double operand_sum_of_squares(const Product& p) {
  return p.a_sumsq >= 0 ? p.a_sumsq : sum_of_squares(p.a, p.m * p.k);
}
void set_default_mask_kind(MaskKind k) { g_default_kind = k; }

AdditiveMask::AdditiveMask(int rank, float magnitude, MaskKind kind)
    : rank_(rank), magnitude_(magnitude), kind_(kind) {
  TEMPO_CHECK(rank >= 1, "mask rank must be at least 1");
  TEMPO_CHECK(rank <= kMaxRank, "mask rank must be at most " + std::to_string(kMaxRank));
  TEMPO_CHECK(magnitude > 0 && std::isfinite(magnitude), "mask magnitude must be positive");
}

const AdditiveMask::Entry* AdditiveMask::find(int id) const {
  if (id < 0 || static_cast<size_t>(id) >= entries_.size() || !entries_[static_cast<size_t>(id)].valid)
    return nullptr;
  return &entries_[static_cast<size_t>(id)];
}

AdditiveMask::Entry& AdditiveMask::entry_for(const Product& p) {
  TEMPO_CHECK(p.id >= 0, "a masked product needs an id");
  if (static_cast<size_t>(p.id) >= entries_.size()) entries_.resize(static_cast<size_t>(p.id) + 1);
  return entries_[static_cast<size_t>(p.id)];
}

const Product& AdditiveMask::apply(const Product& p, KeyStream& ks) {
  std::vector<float>& am = entry_for(p).am;
  am.resize(static_cast<size_t>(p.m * p.k));
  return add(p, am.data(), ks);
}

const Product& AdditiveMask::apply_in_place(const Product& p, float* a, KeyStream& ks) {
  std::vector<float>().swap(entry_for(p).am);
  return add(p, a, ks);
}

void AdditiveMask::prepare(const Product& p, double sumsq, KeyStream& ks) {
  Entry& e = entry_for(p);
  std::vector<float>().swap(e.am);
  draw(e, p, sumsq, ks);
  e.q = p;
  e.valid = true;
}

const Product& AdditiveMask::bind(const Product& q) {
  Entry& e = entry_for(q);
  TEMPO_CHECK(e.valid && e.q.m == q.m && e.q.k == q.k, "mask bound to a product it was not prepared for");
  e.q = q;
  e.q.a_sumsq = -1;
  return e.q;
}

void AdditiveMask::draw(Entry& e, const Product& p, double sumsq, KeyStream& ks) {
  ScopeSeconds timed(secs_.draw);
  const int64_t m = p.m, k = p.k;
  const int64_t side = std::min(m, k);
  e.r = side <= 2 * int64_t{rank_} ? side : rank_;
  const int64_t r = e.r;
  e.u.resize(static_cast<size_t>(m * r));
  double rms = std::sqrt(sumsq / static_cast<double>(m * k));
  if (!(rms > 0) || !std::isfinite(rms)) rms = 1.0;
  // kKron: r1·r2 = r, r1 the largest factor up to √r; the grid's k1 rows
  // must hold r1 independent ones (else the product is masked densely).
  e.kron = false;
  if (kind_ == MaskKind::kKron && r == rank_) {
    int64_t r1 = static_cast<int64_t>(std::sqrt(static_cast<double>(r)));
    while (r % r1) --r1;
    const int64_t r2 = r / r1, k2 = (2 * r2 + 7) / 8 * 8, k1 = (k + k2 - 1) / k2;
    if (k1 >= 2 * r1) e.kron = true, e.r1 = r1, e.r2 = r2, e.k1 = k1, e.k2 = k2;
  }
  // U in a fixed number of pieces, each from its own stretch of the stream,
  // in parallel: the draws depend on the stream only, not on the threads.
  constexpr int64_t kPieces = 16;
  if (!e.kron) {
    // Dense: U and V of odd integers (fill_odd_int8), R = scale·U·Vᵀ, an
    // entry a sum of r products of variance kOddVariance² times scale²:
    // rms²·magnitude². The integer product is exact (exact_low_rank.h).
    e.scale = static_cast<float>(rms * magnitude_ / (std::sqrt(static_cast<double>(r)) * kOddVariance));
    std::vector<int8_t>& v = v8_;
    v.resize(static_cast<size_t>(k * r));
    fill_odd_int8(ks, v.data(), k * r);
    // A sum of an even number of odd products can be zero, and a zero of
    // A would then reach the worker (about once in 10⁵ entries): for even
    // r, V's first column is even instead (±2, ±6, …, ±126, the same
    // variance to 2e-4), so every entry of U·Vᵀ is odd, never zero.
    if (r % 2 == 0)
      for (int64_t j = 0; j < k; ++j) {
        int8_t& x = v[static_cast<size_t>(j * r)];
        x = static_cast<int8_t>(((x >> 1) | 1) * 2);
      }
    e.lr.set_v(v.data(), k, r);
    const int64_t stride = e.lr.u_stride();
    // Rows of stride > r keep zeros past r (drawn rows fill r bytes each).
    if (stride != r || e.u8.size() != static_cast<size_t>(m * stride)) e.u8.assign(static_cast<size_t>(m * stride), 0);
    parallel_for(kPieces, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) {
        KeyStream piece = ks.fork(static_cast<uint32_t>(c));
        const int64_t r0 = m * c / kPieces, r1 = m * (c + 1) / kPieces;
        int8_t* u8 = e.u8.data() + r0 * stride;
        if (stride == r) fill_odd_int8(piece, u8, (r1 - r0) * r);
        else
          for (int64_t i = 0; i < r1 - r0; ++i) fill_odd_int8(piece, u8 + i * stride, r);
        float* u = e.u.data() + r0 * r;
        for (int64_t i = 0; i < r1 - r0; ++i)
          for (int64_t q = 0; q < r; ++q) u[i * r + q] = u8[i * stride + q];
      }
    });
    return;
  }
  // kKron: U's entries carry the whole variance (X's and Y's rows are unit
  // vectors, so every entry of R has variance Var(U)).
  e.scale = 1.0f;
  e.vt.resize(static_cast<size_t>(r * k));
  const float hu = static_cast<float>(std::sqrt(3.0) * rms * magnitude_);
  parallel_for(kPieces, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      KeyStream piece = ks.fork(static_cast<uint32_t>(c));
      const int64_t r0 = m * c / kPieces, r1 = m * (c + 1) / kPieces;
      fill_uniform(piece, hu, e.u.data() + r0 * r, (r1 - r0) * r);
    }
  });
  const int64_t r1 = e.r1, r2 = e.r2, k1 = e.k1, k2 = e.k2;
  auto unit_rows = [&](std::vector<float>& z, int64_t rows, int64_t cols) {
    z.resize(static_cast<size_t>(rows * cols));
    fill_uniform(ks, 1.0f, z.data(), rows * cols);
    for (int64_t i = 0; i < rows; ++i) {
      double ss = 0;
      for (int64_t c = 0; c < cols; ++c) ss += double{z[static_cast<size_t>(i * cols + c)]} * z[static_cast<size_t>(i * cols + c)];
      const float f = ss > 0 ? static_cast<float>(1.0 / std::sqrt(ss)) : 0.0f;
      for (int64_t c = 0; c < cols; ++c) z[static_cast<size_t>(i * cols + c)] *= f;
    }
  };
  unit_rows(e.x, k1, r1);
  std::vector<float> y;
  unit_rows(y, k2, r2);
  e.yt.resize(y.size());
  for (int64_t o = 0; o < k2; ++o)
    for (int64_t q2 = 0; q2 < r2; ++q2) e.yt[static_cast<size_t>(q2 * k2 + o)] = y[static_cast<size_t>(o * r2 + q2)];
  // A secret injection of the k columns into the k1·k2 cells.
  std::vector<int32_t> cells(static_cast<size_t>(k1 * k2));
  for (size_t i = 0; i < cells.size(); ++i) cells[i] = static_cast<int32_t>(i);
  for (int64_t i = k1 * k2 - 1; i > 0; --i)
    std::swap(cells[static_cast<size_t>(i)], cells[ks.below(static_cast<uint32_t>(i + 1))]);
  e.cell.assign(cells.begin(), cells.begin() + k);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t c = e.cell[static_cast<size_t>(j)] / k2, o = e.cell[static_cast<size_t>(j)] % k2;
    for (int64_t q1 = 0; q1 < r1; ++q1)
      for (int64_t q2 = 0; q2 < r2; ++q2)
        e.vt[static_cast<size_t>((q1 * r2 + q2) * k + j)] =
            e.x[static_cast<size_t>(c * r1 + q1)] * y[static_cast<size_t>(o * r2 + q2)];
  }
}

// Row i of R on the grid: T = U_i·Yᵀ (r1×k2), then G = X·T (k1×k2), and
// column j takes G at its cell (k2 is a multiple of 8, for small_product).
void AdditiveMask::add_kron_rows(const Entry& e, float* const* rows, const int64_t* index, int64_t n) {
  const int64_t r1 = e.r1, r2 = e.r2, k1 = e.k1, k2 = e.k2, k = e.q.k, r = r1 * r2;
  thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(r1 * k2 + k1 * k2)) buf.resize(static_cast<size_t>(r1 * k2 + k1 * k2));
  float* t = buf.data();
  float* g = t + r1 * k2;
  const float* x = e.x.data();
  const float* yt = e.yt.data();
  const int32_t* cell = e.cell.data();
  for (int64_t row = 0; row < n; ++row) {
    small_product(e.u.data() + index[row] * r, r1, r2, yt, k2, t);  // T = U_i·Yᵀ
    small_product(x, k1, r1, t, k2, g);                              // G = X·T
    float* dst = rows[row];
    int64_t j = 0;
#if defined(__AVX2__)
    for (; j + 8 <= k; j += 8) {
      const __m256 v = _mm256_i32gather_ps(g, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cell + j)), 4);
      _mm256_storeu_ps(dst + j, _mm256_add_ps(_mm256_loadu_ps(dst + j), v));
    }
#endif
    for (; j < k; ++j) dst[j] += g[cell[j]];
  }
}

// dst (m×k) receives A + U·Vᵀ; it may be p.a itself.
const Product& AdditiveMask::add(const Product& p, float* dst, KeyStream& ks) {
  Entry& e = entries_[static_cast<size_t>(p.id)];
  const int64_t m = p.m, k = p.k;
  if (dst != p.a) parallel_copy(dst, p.a, static_cast<size_t>(m * k) * sizeof(float));
  draw(e, p, operand_sum_of_squares(p), ks);
  e.q = p;
  ScopeSeconds timed(secs_.product);
  parallel_for(m, [&](int64_t lo, int64_t hi) {
    float* rows[64];
    int64_t index[64];
    for (int64_t i0 = lo; i0 < hi; i0 += 64) {
      const int64_t nb = std::min<int64_t>(64, hi - i0);
      for (int64_t t = 0; t < nb; ++t) index[t] = i0 + t, rows[t] = dst + (i0 + t) * k;
      add_entry_rows(e, rows, index, nb);
    }
  }, 64);
  e.q.a = dst;
  e.q.a_sumsq = -1;
  e.valid = true;
  return e.q;
}

void AdditiveMask::add_entry_rows(const Entry& e, float* const* rows, const int64_t* index, int64_t n) {
  if (e.kron) {
    add_kron_rows(e, rows, index, n);
    return;
  }
  const int8_t* u[64];
  const int64_t stride = e.lr.u_stride();
  for (int64_t t0 = 0; t0 < n; t0 += 64) {
    const int64_t nb = std::min<int64_t>(64, n - t0);
    for (int64_t t = 0; t < nb; ++t) u[t] = e.u8.data() + index[t0 + t] * stride;
    e.lr.add(u, rows + t0, nb, e.scale);
  }
}

void AdditiveMask::add_rows(int id, float* const* rows, const int64_t* index, int64_t n) const {
  const Entry* e = find(id);
  TEMPO_CHECK(e, "mask rows of a product that was not masked");
  const auto t0 = std::chrono::steady_clock::now();
  add_entry_rows(*e, rows, index, n);
  rows_ns_.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count(),
                     std::memory_order_relaxed);
}

AdditiveMask::Seconds AdditiveMask::take_seconds() {
  Seconds s = secs_;
  s.product += static_cast<double>(rows_ns_.exchange(0)) * 1e-9 / std::max(1, num_threads());
  secs_ = {};
  return s;
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
  sgemm(false, true, p.n, r, p.k, 1.0f, p.w, p.k, e->vt_data(), p.k, 0.0f, thin_.data(), r);  // W·V
  sgemm(false, true, p.m, p.n, r, -e->scale, e->u.data(), r, thin_.data(), r, 1.0f, c, p.n);  // −U·(W·V)ᵀ
}

void AdditiveMask::unmask_weight(const Product& p, const float* dc, float* dw) {
  const Entry* e = find(p.id);
  TEMPO_CHECK(e, "unmask of a product that was not masked: " + p.name);
  const int64_t r = e->r, nr = p.n * r;
  // dCᵀ·U (n×r) sums over all m rows: BLAS splits only its small n×r
  // result over threads, so the sum runs on few. Instead, kPieces fixed
  // row ranges, each one product on its own thread, added in order: the
  // same bits for any thread count.
  constexpr int64_t kPieces = 16;
  const int64_t pieces = std::min<int64_t>(kPieces, std::max<int64_t>(1, p.m / 256));
  const float* sum = sum_vectors_in_pieces(p.m, pieces, static_cast<size_t>(nr), thin_,
                                           [&](int64_t r0, int64_t r1, float* part) {
                                             sgemm(true, false, p.n, r, r1 - r0, 1.0f, dc + r0 * p.n, p.n,
                                                   e->u.data() + r0 * r, r, 0.0f, part, r);  // dC[r0:r1]ᵀ·U[r0:r1]
                                           });
  sgemm(false, false, p.n, p.k, r, -e->scale, sum, r, e->vt_data(), p.k, 1.0f, dw, p.k);  // −(dCᵀ·U)·Vᵀ
}

}  // namespace tempo
