// Several masters training one model (P12; docs/DESIGN-NOTES.md, "Several
// masters"). Every rank takes its shard of each global batch and, after its
// backward pass, the ranks sum their gradients over the untrusted network
// with MPI's own integer all-reduce, on fixed-point words under one-time
// pads:
//   - each rank encodes its values v (its gradients times its sample count)
//     as round(v·2^f) in uint64 words, with one scale 2^f for all ranks,
//     chosen so that the sum of N ranks' words cannot overflow (below);
//   - rank r adds the pad p_r = F_r − F_{r+1 mod N} (+ Z on rank 0), where
//     F_i and Z are ChaCha20 streams under the ranks' shared secret, fresh
//     for every exchange; the pads sum to Z, so MPI's sum (mod 2^64) is the
//     sum of the encodings plus Z, and every rank subtracts Z;
//   - every word a rank sends, every partial sum MPI forms, and the result
//     MPI hands back are uniformly random to anyone without the secret
//     (the F's make the senders' words independent, Z the result).
// The scales: a first, small exchange (padded the same way) sums, per rank
// and per tensor (and for the loss), a one-hot vector of the binary
// exponent e_r of its largest |v| (|v| < 2^e_r), with a count of non-finite
// values and the sample counts. With e the largest e_r of a tensor,
// f = 62 − e − ⌈log2 N⌉ keeps each of its encodings below 2^62 / N in
// magnitude, so the N-term sum stays below 2^62 < 2^63: never wraps, and
// every tensor keeps at least 60 − ⌈log2 N⌉ bits relative to its largest
// value (float32 has 24). A non-finite value anywhere stops every rank
// with the same error.
// The result is exact in fixed point and identical, bit for bit, on every
// rank. What a padded word protects is its value; that an exchange happens,
// and its length, are public. A word changed in transit is not detected
// (the pads hide, they do not authenticate) beyond the check word that
// must sum to zero.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "trusted/dist/collective.h"
#include "trusted/nn/layer.h"
#include "trusted/obfuscation/keys.h"

namespace tempo {

class DataParallel {
 public:
  // `shared`: the secret all ranks hold (from the owner, never over MPI).
  // Exchanges a fresh public nonce per rank (all-gather), so that no two
  // executions of the job ever use the same pads.
  DataParallel(Collective& comm, const Secret& shared);
  int rank() const { return comm_.rank(); }
  int size() const { return comm_.size(); }
  // This rank's rows [first, last) of a global batch of b rows.
  int64_t first(int64_t b) const { return b * rank() / size(); }
  int64_t last(int64_t b) const { return b * (rank() + 1) / size(); }

  // After this rank's backward pass on `samples` samples whose mean loss is
  // `loss`: every gradient in `params` becomes the global batch's mean,
  // Σ_r samples_r·g_r / Σ_r samples_r, and the global mean loss is
  // returned. Throws Error on every rank when any rank had a non-finite
  // loss or gradient (`step` names it in the message).
  double reduce_gradients(const std::vector<StateEntry>& params, double loss, int64_t samples, int64_t step);
  // Stopping (Ctrl-C) is decided together: each exchange carries whether
  // *source is set on this rank, and once any rank's was, agreed_stop() is
  // true on every rank after the same step.
  void set_stop_source(const std::atomic<bool>* source) { stop_ = source; }
  bool agreed_stop() const { return agreed_stop_; }
  // v (n values, each rank's) becomes the sum over ranks, in fixed point
  // with 2^-32 resolution (evaluation's counts and loss sums).
  void sum(double* v, int64_t n);

  // The padded, fixed-point sum itself: words (n, this rank's encodings)
  // become the sum over ranks. Word 0 must be 0 on every rank: a check that
  // the pads cancelled (Error if not). Exposed for tests.
  void padded_sum(uint64_t* words, int64_t n);
  int64_t exchanges() const { return calls_; }
  // Seconds spent in each part of the exchanges so far (benchmarks).
  struct Seconds {
    double encode = 0, pads = 0, network = 0, decode = 0;
  };
  const Seconds& seconds() const { return seconds_; }

 private:
  // Adds (sign +1) this rank's pad for exchange `call`, or subtracts (−1)
  // the common offset Z, in place.
  void add_pad(uint64_t* words, int64_t n, uint64_t call, bool remove_offset) const;
  Collective& comm_;
  Secret pads_;       // derived from the shared secret and every rank's nonce
  uint64_t calls_ = 0;
  const std::atomic<bool>* stop_ = nullptr;
  bool agreed_stop_ = false;
  Seconds seconds_;
  std::vector<uint64_t> header_, words_;
  std::vector<Tensor*> grads_;
  std::vector<double> largest_, scale_, unscale_;
};

}  // namespace tempo
