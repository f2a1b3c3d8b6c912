// The scheduler of the offloading modes (tempo, offload): a LinearBackend
// that encrypts each product, splits it across workers, decrypts and verifies
// every result, and survives failing workers.
//
// Forward C = A·Wᵀ under a fresh triple (L, Q, R): every worker in the split
// holds W' and its row share of A'. Backward (key shift, DESIGN.md §2):
// the same workers compute dA from G1 and their W', and partial dW from G2
// and their A' rows; the master sums the verified partials in a fixed order.
// Any failure (an exception, a failed Freivalds check) discards the result,
// counts against the worker (quarantine after `quarantine_after`), and the
// product is re-encrypted with fresh keys for the remaining workers. With no
// worker left the master computes locally (or stops, with fallback off).
#pragma once

#include <functional>
#include <future>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "trusted/obfuscation/blinding.h"
#include "trusted/obfuscation/block_mix.h"
#include "trusted/obfuscation/obfuscator.h"
#include "trusted/offload/linear_backend.h"
#include "trusted/offload/verifier.h"
#include "wire/worker_api.h"

namespace tempo {

struct OffloadConfig {
  bool insecure_identity = false;  // offload mode: no obfuscation
  double key_scale = 4.0;
  bool key_shift = true;
  VerifyConfig verify;
  int quarantine_after = 2;
  bool fallback = true;
  bool log = true;  // a stderr line per rejected result, quarantine and fallback
  // Additive mask of this rank on the data operand of every product (0:
  // none; tempo mode only); see trusted/obfuscation/mask.h. Entries of A's rms ×
  // mask_magnitude.
  int mask_rank = 64;
  float mask_magnitude = 1.0f;
  // How the mask is drawn: dense U·Vᵀ (r multiply-adds per entry) or with
  // Kronecker-structured V (about √r); trusted/obfuscation/mask.h.
  MaskKind mask_kind = default_mask_kind();
  // Secret orthogonal mixing of the data operand's rows (and the output
  // gradient's) in groups of this size before the mask (0: none; tempo mode
  // only); see trusted/obfuscation/row_mix.h.
  int row_mix = 8;
  // Secret orthogonal mixing of the inner dimension of both operands, in
  // groups of this size (0: none; tempo mode only); hides the weights'
  // magnitudes and column signs; see trusted/obfuscation/col_mix.h.
  int col_mix = 8;
};

struct OffloadStats {
  int64_t products = 0;          // products computed by workers
  int64_t column_splits = 0;     // forward products split by columns (tensor parallel)
  int64_t apart = 0;             // backward passes with dW and dA on two workers at once
  int64_t masked = 0;            // forward products whose data operand was masked
  int64_t mixed = 0;             // forward products whose rows were mixed
  int64_t col_mixed = 0;         // forward products whose inner dimension was mixed
  int64_t verified = 0;          // of which checked
  int64_t rejected = 0;          // results discarded (failed check or error)
  int64_t local_fallbacks = 0;   // products computed in the master
  int64_t bytes_sent = 0, bytes_received = 0;
  int64_t verify_bytes = 0;      // operand bytes read by Freivalds' checks
  // Memory traffic of the trusted side: each ciphertext is one read and one
  // write pass (encryption or decryption), plus the checks' reads.
  int64_t trusted_bytes() const { return 2 * (bytes_sent + bytes_received) + verify_bytes; }
};

class OffloadBackend final : public LinearBackend {
 public:
  OffloadBackend(OffloadConfig cfg, std::vector<std::unique_ptr<WorkerApi>> workers,
                 const Secret& secret);
  const char* name() const override { return cfg_.insecure_identity ? "offload" : "tempo"; }
  void forward(const Product& p, float* c) override;
  void backward_input(const Product& p, const float* dc, float* da) override;
  void backward_weight(const Product& p, const float* dc, float* dw) override;
  void backward_input_col2im(const Product& p, const float* dc, const ConvGeometry& g, float* dx) override;
  // Under the key shift, both gradients are sent before either is awaited:
  // the workers compute dW' while the master encrypts G1, and dA' while it
  // decrypts and checks dW.
  void backward(const Product& p, const float* dc, float* dw, float* da, const ConvGeometry* g = nullptr,
                float* dx = nullptr) override;
  void conv_forward(const ConvProduct& p, float* y) override;
  void conv_backward_input(const ConvProduct& p, const float* dy, float* dx) override;
  void conv_backward_weight(const ConvProduct& p, const float* dy, float* dw) override;
  // One request per batched product: every block under its own fresh
  // triple, the blocks stacked in a secret random order; every block
  // checked; the backward products under the key shift of the forward's
  // triples, on the worker that holds its ciphertexts.
  void batched_forward(const BatchedProduct& p, float* c) override;
  void batched_backward(const BatchedProduct& p, const float* dc, float* dw, float* da) override;
  void end_step() override;
  PhaseSeconds take_phase_seconds() override;
  // The blinding's seconds by part since the last call (zeros without one); resets them.
  BlindingSeconds take_blinding_seconds() { return blind_ ? blind_->take_seconds() : BlindingSeconds{}; }
  uint64_t key_position() const override { return obf_->streams_used(); }
  void set_key_position(uint64_t p) override { obf_->set_streams_used(p); }

  const OffloadStats& stats() const { return stats_; }
  size_t healthy_workers() const;
  const Verifier& verifier() const { return verifier_; }

 private:
  static void warn_if_weakened(const OffloadConfig& cfg);
  enum class Kind { kForward, kInput, kWeight };
  struct Slot {
    std::unique_ptr<WorkerApi> api;
    int failures = 0;
    bool quarantined = false;
  };
  struct Chunk {
    size_t worker;
    // Row split: A' rows [r0, r1) and all of W' on that worker. Column
    // split: all of A' and W' rows [r0, r1) (columns [r0, r1) of C).
    int64_t r0, r1;
    Handle a, w;
  };
  struct Held {  // what the workers keep of a forward product until end_step
    bool valid = false;
    Triple fwd;
    std::vector<Chunk> chunks;
    // Column split: the ciphertexts sent (A', then each chunk's W' rows), to
    // find which worker lied when a check fails. Empty for a row split.
    std::vector<CipherMatrix> kept;
    bool by_cols() const { return !kept.empty(); }
    bool sums_valid = false;  // row sums of A from a verified forward
    RowSums sums;
  };

  std::vector<size_t> usable(const std::vector<char>& excluded) const;
  bool forward_split(const Product& p, float* c, const std::vector<size_t>& ws, Held& h);
  // With g, writes col2im(dA) to dx instead of dA to da (decryption fused
  // with col2im); returns false (nothing written) if that is not possible.
  bool input_shifted(const Product& p, const float* dc, float* da, const Held& h,
                     const ConvGeometry* g = nullptr, float* dx = nullptr);
  bool send_gradient(const Product& p, const Held& h, ProductOp op, std::vector<std::future<Matrix>>& futs,
                     const std::function<CipherMatrix(const Chunk&)>& encrypt);
  bool await_parts(const Product& p, std::vector<std::future<Matrix>>& futs, const std::vector<Chunk>& chunks,
                   std::vector<Matrix>& parts, const std::function<std::pair<int64_t, int64_t>(size_t)>& shape);
  const float* collect(const Product& p, std::vector<std::future<Matrix>>& futs, const std::vector<Chunk>& chunks,
                       int64_t rows, int64_t cols, bool by_cols, std::vector<Matrix>& parts);
  const float* collect_sum(const Product& p, std::vector<std::future<Matrix>>& futs,
                           const std::vector<Chunk>& chunks, int64_t rows, int64_t cols, std::vector<Matrix>& parts);
  void blame_blocks(const Product& p, const std::vector<Chunk>& chunks,
                    const std::function<bool(size_t, KeyStream&)>& block_ok);
  // A backward product under the key shift between its send and finish.
  struct Flight {
    bool verify = false;
    Triple t;
    std::vector<std::future<Matrix>> futs;
    std::vector<CipherMatrix> blocks;  // column split: the whole gradient, then each worker's columns
  };
  bool input_send(const Product& p, const float* dc, const Held& h, bool to_image, Flight& f);
  bool input_finish(const Product& p, const float* dc, float* da, const Held& h, const ConvGeometry* g, float* dx,
                    Flight& f);
  bool weight_send(const Product& p, const float* dc, const Held& h, Flight& f);
  bool weight_finish(const Product& p, const float* dc, float* dw, const Held& h, Flight& f);
  bool weight_shifted(const Product& p, const float* dc, float* dw, const Held& h);
  bool standalone(Kind kind, const Product& p, const float* dc, float* out, size_t w);
  // The same in two halves (sent, then awaited), so that two run at once.
  struct Solo {
    Triple t;
    Handle h0 = 0, h1 = 0;
    int64_t zr = 0, zc = 0;
    size_t w = 0;
    std::future<Matrix> f;
  };
  bool standalone_send(Kind kind, const Product& p, const float* dc, size_t w, Solo& s);
  bool standalone_finish(Kind kind, const Product& p, const float* dc, float* out, Solo& s);
  void backward_apart(const Product& p, const float* dc, float* dw, float* da, const ConvGeometry* g, float* dx,
                      const std::vector<size_t>& ws);
  void local(Kind kind, const Product& p, const float* dc, float* out);
  void fallback_warning(const std::string& what);
  void conv_run(Kind kind, const ConvProduct& p, const float* dy, float* out);
  bool conv_once(Kind kind, const ConvProduct& p, const float* dy, float* out, size_t w, Held* shifted);
  bool conv_verified(Kind kind, const ConvProduct& p, const float* dy, const float* out);
  void run(Kind kind, const Product& p, const float* dc, float* out);
  // Fresh keys, one worker at a time, then the master itself.
  void retry(Kind kind, const Product& p, const float* dc, float* out);
  // attempt(w) on usable workers not in excluded_ (pick(n): which of the n),
  // excluding each that fails, then on all usable ones again; at most two
  // tries per worker. False when none succeeded.
  bool try_workers(const std::function<size_t(size_t)>& pick, const std::function<bool(size_t)>& attempt);
  void blame(size_t w, const Product& p, const std::string& why);
  bool sample_verify();
  std::vector<int64_t> checked(const float* c, int64_t m, int64_t n, int64_t k, Operand a, Operand b,
                               KeyStream& ks, const int32_t* rows_k = nullptr, int64_t k_full = 0,
                               RowSums* sums = nullptr, const std::vector<double>* r_pre = nullptr,
                               const double* cr_pre = nullptr);
  // The product as the workers know it: with its mixed and masked operand,
  // if any (p itself if it was sent as it is).
  const Product& as_sent(const Product& p) const;
  // Whether the plaintext product `plain` went out row-mixed as q (false
  // when plain is already the product as sent, as in the base class's
  // backward()). For such a product the gradient as sent (M·dc), timed as
  // encryption; dc itself otherwise.
  bool mixed(const Product& plain, const Product& q) const {
    return &q != &plain && blind_->transforms_input_gradient();
  }
  const float* sent_gradient(const Product& plain, const Product& q, const float* dc);
  // backward_input() on a mixed product (q: p as sent); natural as in
  // Blinding::finish_input.
  void backward_input_mixed(const Product& p, const Product& q, const float* dc, float* da, bool natural);
  float* scratch(std::vector<float>& buf, int64_t n);
  void backward_plain(const Product& p, const float* dc, float* dw, float* da, const ConvGeometry* g, float* dx);
  Held& held(int id);
  Held& held(const Product& p) { return held(p.id); }
  // Batched products (offload_batched.cc).
  struct BatchMixes {  // per block: M over its m rows (--row-mix), G over its k columns (--col-mix)
    std::vector<BlockMix> rows, cols;
  };
  struct HeldBatch {  // a verified forward's ciphertexts on one worker, until end_step
    bool valid = false;
    size_t worker = 0;
    Handle a = 0, w = 0;
    std::vector<Triple> fwd;     // block g's triple
    std::vector<int32_t> order;  // position j of the request holds block order[j]
    BatchMixes mix;              // the forward's mixings, reused by the shifted backward
  };
  void batched_run(Kind kind, const BatchedProduct& p, const float* dc, float* out);
  bool batched_once(Kind kind, const BatchedProduct& p, const float* dc, float* out, size_t w, HeldBatch& h,
                    bool shifted);
  std::unordered_map<const BatchedProduct*, HeldBatch> held_batches_;
  size_t batch_turn_ = 0;  // round robin over workers
  BatchMixes batch_mix_;   // an unshifted attempt's mixings (moved into HeldBatch by a forward)
  std::vector<float> batch_x_, batch_y_, batch_res_;  // the mixed plaintext operands; a result before unmixing
  // Draws fresh mixings for `groups` blocks of m×k (none when both are off).
  bool batch_mixing() const;
  void draw_batch_mixes(BatchMixes& mx, int64_t groups, int64_t m, int64_t k);

  OffloadConfig cfg_;
  std::vector<Slot> slots_;
  std::unique_ptr<Obfuscator> obf_;
  std::unique_ptr<Blinding> blind_;       // null when neither is on, and in offload mode
  std::vector<float> mix_out_, mix_da_;  // a result before Mᵀ; dA before col2im
  // Set by backward() for a mixed product: the input gradient's decryption
  // then writes it undone here (Blinding::decrypt_input), and says so in
  // fused_done_ when that attempt succeeds.
  float* fused_input_ = nullptr;
  bool fused_done_ = false;
  // Whether it leaves dA's columns in order; false before col2im, which
  // reads them where the column unmixing leaves them (Blinding::input_order).
  bool fused_natural_ = true;
  // A row-mixed product's first forward attempt encrypts A as the
  // blinding's pass makes it (the pass forward() left pending: Blinding::pass
  // with Obfuscator::encrypt_x_from), and A itself is not written.
  // operand_a(): a product's data operand, for whatever reads it after that first
  // attempt (a retry, a check without the forward's row sums, the
  // fallback): written first where the fused pass left it unwritten
  // (Blinding::materialise). Every read of a sent product's `a` goes
  // through here.
  const float* operand_a(const Product& p);
  Verifier verifier_;
  TeeOnlyBackend local_;
  std::vector<Held> held_;
  // A fresh handle for a stored operand: 64 random bits (never 0), so that
  // handles tell a worker nothing of how many products, workers or retries
  // there are. From the system CSPRNG, apart from the key streams.
  static Handle new_handle();
  PhaseSeconds phases_;
  OffloadStats stats_;
  bool warned_fallback_ = false;
  int64_t steps_done_ = 0;
  std::vector<char> excluded_;
  Matrix assembled_, partial_;
  std::vector<double> r_pre_, cr_pre_;
  std::vector<float> dcols_;
};

}  // namespace tempo
