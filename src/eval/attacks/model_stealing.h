// Model stealing through the prediction API (P5), evaluated, not prevented
// (DESIGN.md §1: attacks through the trained model's public API are out of
// scope).
//
// The attacker holds images of the task but no labels, and may query the
// trained model as `tempo predict` answers: class probabilities per image.
// With N queries it trains a substitute model on (image, answer) pairs, from
// its own initialisation, and the measurement reports how good the copy is:
// its test accuracy and how often it agrees with the victim on test images.
// Two answer kinds: the probabilities `tempo predict` returns (soft labels,
// the substitute learns them with a soft-target cross-entropy) and the
// predicted class only (hard labels, what an API restricted to labels would
// give).
//
// Split: the victim trains on the first part of the training set; the
// attacker's queries are the last `max(budgets)` training images, which the
// victim never saw, taken in order so that a larger budget extends a smaller
// one. Both are scored on the test set, which neither trained on.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "trusted/trainer.h"

namespace tempo {

struct StealingConfig {
  std::string model = "cnn";       // the victim's architecture
  std::string substitute;          // the attacker's ("": the victim's)
  std::string data = "fashion-mnist";
  uint64_t seed = 1;
  std::vector<int64_t> budgets = {100, 300, 1000, 3000, 10000};  // queries
  int victim_epochs = 1;
  int64_t batch_size = 64;
  OptimConfig optim;               // both models: SGD, lr 0.01, momentum 0.9
  // Substitute training: `epochs` passes over its queries, but at least
  // min_steps and at most max_steps steps, so that small budgets are trained
  // to convergence and large ones stay affordable.
  int substitute_epochs = 10;
  int64_t min_steps = 200, max_steps = 800;
};

struct StealingRow {
  int64_t budget = 0;
  bool soft = false;        // trained on probabilities (else on predicted classes)
  int64_t steps = 0;        // substitute training steps
  double accuracy = 0;      // substitute's test accuracy
  double agreement = 0;     // fraction of test images where substitute and victim predict the same class
};

struct StealingReport {
  std::string data;         // the data set's description
  int64_t victim_train = 0; // images the victim trained on
  int64_t pool = 0;         // images the attacker may query
  int64_t test = 0;         // test images scored
  double victim_accuracy = 0;
  double chance = 0;        // 1 / classes
  std::vector<StealingRow> rows;  // per budget: soft, then hard
};

// Trains the victim, answers the attacker's queries through predict() (the
// code path of `tempo predict`), trains one substitute per budget and answer
// kind, and scores each. All in tee-only mode. `progress`, when given, is
// called with a line after each model.
StealingReport measure_model_stealing(const StealingConfig& cfg,
                                      const std::function<void(const std::string&)>& progress = nullptr);

}  // namespace tempo
