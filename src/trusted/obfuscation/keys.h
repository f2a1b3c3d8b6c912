// Keys of MM-obfuscation (DESIGN.md §2). A key for a dimension of size d is a
// secret scaled permutation S = D·Π, stored as perm/scale with
//     (S·X)[i, :] = scale[i] · X[perm[i], :]      i.e. S[i, perm[i]] = scale[i].
// A product P·X·Q of a matrix with two scaled permutations is one gather pass
// (apply_keys with rows = P, cols = Qᵀ). Keys come from a ChaCha20 stream
// keyed by the run secret; the secret never leaves the master.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "common/conv.h"
#include "trusted/secret.h"

namespace tempo {

struct ScaledPerm {
  std::vector<int32_t> perm;
  std::vector<float> scale;
  std::vector<float> inv;  // 1/scale, computed once: inverting twice is exact

  int64_t size() const { return static_cast<int64_t>(perm.size()); }
  static ScaledPerm identity(int64_t d);
  ScaledPerm inverse() const;    // S⁻¹ = Πᵀ·D⁻¹
  ScaledPerm transpose() const;  // Sᵀ
  ScaledPerm inv_t() const;      // S⁻ᵀ
};

// Y = R·X·Cᵀ for X: rows×cols, R: rows, C: cols, i.e.
// Y[i, j] = R.scale[i] · C.scale[j] · X[R.perm[i], C.perm[j]].
// Multithreaded over rows; each row of X is read once, contiguously.
void apply_keys(const float* x, int64_t rows, int64_t cols, const ScaledPerm& r,
                const ScaledPerm& c, float* y);
// Rows [r0, r1) of that result only, written to y[0 .. r1−r0). With
// block > 1 every element is a contiguous block of that many floats (a
// feature map or a kernel in channel mode), moved and scaled as one.
// dot_r/dot_out (block 1 only): also, for each of dot_rounds vectors
// (dot_r: dot_rounds × cols, round-major), dot_out[q·(r1−r0) + i − r0] =
// Σ_j y[i, j]·dot_r[q·cols + j], taken while the row is in cache (the
// Freivalds products of every round fused into decryption).
// visit (block 1 only): called with each row of x that the pass reads (its
// index, and the row while it is in cache), once per row of the result,
// on the thread that reads it: a pass over the plaintext fused into the
// encryption (the forward check's products of A).
using RowVisit = std::function<void(int64_t row, const float* data)>;
// The same for n rows at once: rows[t] is row index[t] (all in cache).
using RowsVisit = std::function<void(const int64_t* index, const float* const* rows, int64_t n)>;
void apply_keys_rows(const float* x, int64_t rows, int64_t cols, const ScaledPerm& r,
                     const ScaledPerm& c, int64_t r0, int64_t r1, float* y, int64_t block = 1,
                     const double* dot_r = nullptr, double* dot_out = nullptr, int dot_rounds = 1,
                     const RowVisit* visit = nullptr);

// Row i of R·X·Cᵀ from row R.perm[i] of X, `src`, already at hand (in
// cache): dst[j] = R.scale[i]·C.scale[j]·src[C.perm[j]], with `s` =
// R.scale[i]; the same arithmetic as apply_keys_rows, so the same bits.
void keyed_row(const float* src, float s, const ScaledPerm& c, float* dst);

// Rows [r0, r1) of R·Z·Cᵀ (block 1) into y, on the calling thread, for a
// pass that consumes them while they are in cache; with dot_r, the rows'
// products with each round's vector at dot_out[q·rows + i] (i: the row's
// index in the whole result).
void apply_keys_rows_here(const float* x, int64_t rows, int64_t cols, const ScaledPerm& r, const ScaledPerm& c,
                          int64_t r0, int64_t r1, float* y, const double* dot_r = nullptr,
                          double* dot_out = nullptr, int dot_rounds = 1);

// col2im(R·Z·Cᵀ) for Z: (g.n·P)×(g.c·k·k) without materialising R·Z·Cᵀ: one
// output row of the image at a time is decrypted into a small buffer (in
// cache), its products with dot_r taken (if given; dot_rounds vectors as in
// apply_keys_rows), and scattered into dx. The decryption of a
// convolution's input gradient fused with col2im.
void apply_keys_col2im(const float* z, const ScaledPerm& r, const ScaledPerm& c, const ConvGeometry& g,
                       float* dx, const double* dot_r = nullptr, double* dot_out = nullptr, int dot_rounds = 1);

// The run secret: 256 bits from the system CSPRNG (libsodium); move-only,
// wiped when destroyed (trusted/secret.h).
using Secret = SecretBytes<32>;
Secret random_secret();
// INSECURE, for tests and reproducible measurements only: a secret derived
// (BLAKE2b) from a public number, so that a run's keys, and with them its
// rounding, repeat exactly.
Secret secret_from_seed(uint64_t seed);
// A secret derived from `base` for another use, named by `label` and
// `counter` (BLAKE2b keyed by base): distinct labels or counters give
// independent secrets.
Secret derive_secret(const Secret& base, const char* label, uint64_t counter);

// ChaCha20 keystream (IETF variant) under the run secret, one stream per
// 64-bit stream id; the caller never reuses an id within a run.
class KeyStream {
 public:
  KeyStream(const Secret& secret, uint64_t stream_id);
  // A copy of a stream is a copy of its key, on purpose (forks, replays of
  // a draw in tests).
  KeyStream(const KeyStream& o);
  KeyStream& operator=(const KeyStream& o);
  ~KeyStream();  // wipes its copy of the secret and the buffered key material
  uint32_t u32();
  // n successive u32() values at once (the same ones), most of them
  // generated straight into out.
  void fill(uint32_t* out, size_t n);
  uint64_t u64() { return (static_cast<uint64_t>(u32()) << 32) | u32(); }
  uint32_t below(uint32_t n);  // unbiased
  double uniform();            // [0, 1), 53 bits
  // Magnitude log-uniform in [1/sigma, sigma], random sign.
  ScaledPerm scaled_perm(int64_t d, double sigma);
  // An independent stretch of this stream (ChaCha20 is seekable), for
  // drawing in parallel: the keystream from block (i + 1)·2²² on (256 MiB
  // each, i < 1023); the stream itself must stay within its first 2²² blocks,
  // and a fork within its own: drawing past them is an Error, never an overlap.
  KeyStream fork(uint32_t i) const;

 private:
  void refill();
  // Error, before any of it is generated, if the next `blocks` blocks would
  // run past this stream's stretch (and into a fork's).
  void reserve(uint64_t blocks) const;
  Secret key_;
  std::array<uint8_t, 12> nonce_{};
  uint64_t block_ = 0;                  // the next block (ChaCha20's 32-bit counter)
  uint64_t limit_ = uint64_t{1} << 22;  // the first block past this stream's stretch
  std::array<uint32_t, 16 * 16> buf_{};
  size_t pos_ = buf_.size();
};

// A (left, inner, right) triple: X' = left·X·inner⁻¹, Y' = inner·Y·right⁻¹,
// X'·Y' = left·(X·Y)·right⁻¹. Each method is one apply_keys pass over the
// operand as it is stored (t: the operand is stored transposed). `block`:
// elements are blocks of floats (channel mode: X is N×C feature maps, Y is
// C×O kernels, and the "product" is a convolution, bilinear like one).
struct Triple {
  ScaledPerm left, inner, right;

  // X: m×k; rows [r0, r1) of X' (r1 < 0: all).
  void encrypt_x(const float* x, int64_t m, int64_t k, float* out, int64_t r0 = 0,
                 int64_t r1 = -1, int64_t block = 1, const RowVisit* visit = nullptr) const;
  void encrypt_xt(const float* xt, int64_t k, int64_t m, float* out, int64_t block = 1) const;  // Xᵀ: k×m → X'ᵀ
  // Y: k×n; rows [r0, r1) of Y' (r1 < 0: all).
  void encrypt_y(const float* y, int64_t k, int64_t n, float* out, int64_t r0 = 0,
                 int64_t r1 = -1, int64_t block = 1) const;
  // Yᵀ: n×k → rows [r0, r1) of Y'ᵀ (r1 < 0: all).
  void encrypt_yt(const float* yt, int64_t n, int64_t k, float* out, int64_t block = 1, int64_t r0 = 0,
                  int64_t r1 = -1) const;
  void decrypt(const float* z, int64_t m, int64_t n, float* out, int64_t block = 1,
               const double* dot_r = nullptr, double* dot_out = nullptr,
               int dot_rounds = 1) const;  // Z' = X'·Y' → X·Y
  void decrypt_t(const float* zt, int64_t n, int64_t m, float* out, int64_t block = 1) const;  // Z'ᵀ → (X·Y)ᵀ

  // The circular key shift of DESIGN.md §2. From the forward triple
  // (L, Q, R) of C = A·B:
  //   input-gradient triple  (L1, R⁻ᵀ, Q⁻ᵀ) for dA = dC·Bᵀ: its Y' is B'ᵀ
  //   weight-gradient triple (Q⁻ᵀ, L⁻ᵀ, R2⁻¹) for dB = Aᵀ·dC: its X' is A'ᵀ
  // so the worker reuses A' and B' and only the gradient is encrypted.
  Triple shift_input(ScaledPerm l1) const;
  Triple shift_weight(ScaledPerm r2) const;
};

}  // namespace tempo
