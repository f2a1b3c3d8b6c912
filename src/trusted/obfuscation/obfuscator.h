// The obfuscator: the only code that turns plaintext into what a worker may
// see. It draws fresh keys for every product from the run secret, encrypts
// operands into CipherMatrix values (the only type WorkerApi accepts) and
// decrypts results. insecure_identity() is the single, loudly logged way to
// send plaintext (the `offload` ablation): its keys are identities.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <memory>
#include <vector>

#include "trusted/obfuscation/keys.h"
#include "wire/cipher.h"

namespace tempo {

class Obfuscator {
 public:
  // Keys drawn from ChaCha20 under `secret`; scales log-uniform in [1/σ, σ].
  Obfuscator(const Secret& secret, double key_scale);
  Obfuscator(const Obfuscator&) = delete;
  Obfuscator& operator=(const Obfuscator&) = delete;
  ~Obfuscator();  // wipes the run secret
  // Identity keys: workers see plaintext. Logs a warning on stderr.
  // The secret still keys the verifier's random vectors.
  static std::unique_ptr<Obfuscator> insecure_identity(const Secret& secret);

  bool identity() const { return identity_; }
  ScaledPerm draw(int64_t d);
  Triple draw_triple(int64_t m, int64_t k, int64_t n);
  // A fresh secret stream (Freivalds vectors, sampling decisions).
  KeyStream stream() { return KeyStream(secret_, next_stream_++); }

  // Ciphertexts, one apply_keys pass each (see Triple).
  // Rows [r0, r1) of the ciphertext (r1 < 0: all rows): a worker's share.
  // visit: as in apply_keys_rows (block 1), on each row of x encrypted.
  CipherMatrix encrypt_x(const Triple& t, const float* x, int64_t m, int64_t k, int64_t r0 = 0,
                         int64_t r1 = -1, int64_t block = 1, const RowVisit* visit = nullptr) const;
  // encrypt_x (block 1) of an X that a pass makes a few rows at a time
  // (the blinding's, trusted/obfuscation/blinding.h), fused with it: `pass`
  // is called once with a sink, which it must give every row j < m of X
  // exactly once (j, and the row, in cache; a few rows a call), in any
  // order, from any of its threads (fencing its streamed stores before it
  // returns); each row is keyed straight into its place in the ciphertext
  // (streamed where large), after `visit` has seen the call's rows. X is
  // never read again. One ciphertext per range of its rows ([r0, r1), the
  // workers' shares), each what encrypt_x(t, X, m, k, r0, r1) gives, bit
  // for bit.
  using RowPass = std::function<void(const RowsVisit& sink)>;
  std::vector<CipherMatrix> encrypt_x_from(const Triple& t, int64_t m, int64_t k,
                                           const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                           const RowPass& pass, const RowsVisit* visit = nullptr) const;
  CipherMatrix encrypt_xt(const Triple& t, const float* xt, int64_t k, int64_t m, int64_t block = 1) const;
  CipherMatrix encrypt_y(const Triple& t, const float* y, int64_t k, int64_t n, int64_t r0 = 0,
                         int64_t r1 = -1, int64_t block = 1) const;
  CipherMatrix encrypt_yt(const Triple& t, const float* yt, int64_t n, int64_t k, int64_t block = 1,
                          int64_t r0 = 0, int64_t r1 = -1) const;
  // A batch of products' operands: `order.size()` plaintext blocks of
  // rows×cols floats each, as stored (block g at blocks + g·rows·cols),
  // stacked along the rows so that position j of the ciphertext holds block
  // order[j] encrypted under ts[order[j]] by the Triple method of `part`
  // (X: encrypt_x, Xt: encrypt_xt, Y: encrypt_y, Yt: encrypt_yt; each keeps
  // the block's shape). Blocks in parallel.
  enum class Part { kX, kXt, kY, kYt };
  CipherMatrix encrypt_batch(Part part, const std::vector<Triple>& ts, const std::vector<int32_t>& order,
                             const float* blocks, int64_t rows, int64_t cols) const;
  // Columns [c0, c1) of a ciphertext (still ciphertext): a worker's share
  // of a column split.
  static CipherMatrix columns(const CipherMatrix& c, int64_t c0, int64_t c1);

  // Position in the key stream (for sealed checkpoints).
  uint64_t streams_used() const { return next_stream_; }
  void set_streams_used(uint64_t n) { next_stream_ = n; }

 private:
  Obfuscator() = default;
  template <typename Fill>
  static CipherMatrix seal(int64_t rows, int64_t cols, Fill&& fill);
  Secret secret_{};
  double sigma_ = 4.0;
  bool identity_ = false;
  uint64_t next_stream_ = 0;
};

}  // namespace tempo
