// Blind source separation against the row mixing (trusted/obfuscation/
// row_mix.h). The master replaces each secret group of b rows of the data
// operand A by Q·(its rows), Q Haar orthogonal: a secret linear mixing of
// b signals, each observed at k columns. Post-ReLU rows are sparse and
// far from Gaussian, and rows from different positions or images are
// close to independent, which is what independent component analysis
// needs: FastICA finds the unmixing that makes the outputs as non-Gaussian
// as possible, and recovers the sources up to order, sign and scale. The
// measurement is generous to the attacker: an oracle gives it each group's
// membership and undoes the keys, so it holds exactly the group's rows of
// what the master blinds (M·A·Gᵀ + U·Vᵀ in the defaults), but not Q, G, U
// or V. Used by the privacy suite (`tempo privacy --suite ica`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tempo {

struct IcaOptions {
  enum class Contrast { kLogcosh, kKurtosis };  // g(u) = tanh(u), or u³
  Contrast contrast = Contrast::kLogcosh;
  int max_iterations = 200;
  double tolerance = 1e-6;  // on 1 − |⟨w_new, w_old⟩|, the worst component
  uint64_t seed = 1;        // the initial unmixing (Gaussian)
  // The mixing is known to be orthogonal (the row mixing's Q, keys undone):
  // scale by one global factor instead of whitening, so the unmixing
  // searched is orthogonal too. Whitening assumes uncorrelated sources;
  // rows of a real operand are not (they share the channels' mean
  // activations), and whitening then mixes what it should separate.
  bool orthogonal = false;
};

struct IcaResult {
  int64_t components = 0;  // the whitened dimension (rank of the rows' covariance)
  std::vector<double> s;   // components × t, each of mean 0 and variance 1
  int iterations = 0;
  bool converged = false;
};

// Symmetric FastICA on n signals of t samples (x: n × t, row-major):
// centring, whitening by the eigen-decomposition of the covariance
// (directions with eigenvalue below 1e-10 of the largest are dropped; with
// o.orthogonal, one global scale instead), then
// fixed-point iterations W ← E[g(WZ)·Zᵀ] − diag(E[g′(WZ)])·W, each followed
// by the symmetric decorrelation W ← (W·Wᵀ)^(−1/2)·W.
IcaResult fast_ica(const double* x, int64_t n, int64_t t, const IcaOptions& o = {});

// Pearson correlation of two rows of t samples; NaN if either is constant.
double pearson(const double* x, const double* y, int64_t t);

// For each source row (sources: ns × t), the largest |Pearson correlation|
// with any row of est (ne × t); NaN for a constant source row.
std::vector<double> best_correlations(const double* sources, int64_t ns, const double* est, int64_t ne, int64_t t);

// The blinding attacked (Blinding's parameters; 0: off). Row mixing must be on.
struct IcaCase {
  int row_mix = 8, mask_rank = 0, col_mix = 0;
};

struct IcaRow {
  std::string layer;
  IcaCase blinding;
  int64_t m = 0, k = 0;
  int64_t groups = 0, sources = 0;  // groups attacked; non-constant source rows scored
  int64_t not_converged = 0;        // groups where FastICA hit max_iterations
  // Mean over groups of the mean over a group's source rows (rows of A) of
  // the best |correlation| with: the components FastICA recovers (ica; and
  // the fraction of source rows above 0.9), the rows as received (no
  // attack; and the fraction above 0.9), as many rows of Gaussian noise
  // (chance), the components when the column key is left on (the oracle
  // undoes only the row key), and those of FastICA told that the mixing is
  // orthogonal (IcaOptions::orthogonal; and the fraction above 0.9).
  double ica = 0, ica_recovered = 0, received = 0, received_recovered = 0, noise = 0, ica_column_key = 0;
  double orthogonal = 0, orthogonal_recovered = 0;
  // With column mixing: the same for FastICA's components, and for the rows
  // as received, against the rows of A·Gᵀ (what separating the rows alone
  // can give); −1 without.
  double ica_vs_col_mixed = -1, received_vs_col_mixed = -1;
};

// Blinds A (m×k; w: the weight, n×k) as the master does for product `id`
// with Blinding(c), keys from `seed`, and attacks up to max_groups of the
// row mixing's groups (evenly spread) with FastICA (o, and o made
// orthogonal).
IcaRow ica_attack(const std::string& layer, int id, const float* a, const float* w, int64_t m, int64_t k, int64_t n,
                  const IcaCase& c, uint64_t seed, double key_scale, int64_t max_groups, const IcaOptions& o = {});

}  // namespace tempo
