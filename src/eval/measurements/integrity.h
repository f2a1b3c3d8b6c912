// Integrity, measured (P5): how well Freivalds' check catches a lying worker
// (detection rate against the size of the lie and the number of rounds) and
// how often it accuses an honest one (false alarms over many products),
// through the whole pipeline: encryption, a worker, decryption, the check.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "eval/doubles/faulty_worker.h"

namespace tempo {

struct HonestReport {
  int64_t products = 0;     // checked products (forward, input and weight gradients)
  int64_t false_alarms = 0; // results rejected although the worker was honest
  double worst_tau = 0;     // the smallest τ under which every row would have passed
  double tau = 0;           // the τ in force
};

// `products` honest products of layer-like shapes (forward, input gradient,
// weight gradient with key shift, in turn), keys from `seed`.
HonestReport measure_false_alarms(int64_t products, double tau, uint64_t seed,
                                  const std::function<void(int64_t)>& progress = nullptr);

struct DetectionRow {
  Tamper kind;
  double size;   // the change, relative to max |row| of the result
  int rounds;
  int64_t trials = 0, caught = 0;
  // Over the lies that passed: the largest error they left in the plaintext
  // result, after unblinding, as max over rows of max|out − A·Wᵀ| / max|row
  // of A·Wᵀ| (0 if every lie was caught). The check bounds the error in the
  // rows as sent (mixed and masked); this is what reaches training.
  double passed_error = 0;
};

// For every kind × size × rounds: `trials` forward products on a worker that
// lies in every one of them; how many lies the check caught.
std::vector<DetectionRow> measure_detection(const std::vector<Tamper>& kinds, const std::vector<double>& sizes,
                                            const std::vector<int>& rounds, int64_t trials, double tau,
                                            uint64_t seed);

std::string tamper_name(Tamper t);

// The per-row relative error of `out` (m×n) against a·wᵀ (a: m×k, w: n×k),
// in double: max over rows of max_j |out − ref| / max_j |ref|.
double max_row_relative_error(const float* out, const float* a, const float* w, int64_t m, int64_t k, int64_t n);

}  // namespace tempo
