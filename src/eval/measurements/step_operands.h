// The plaintext operands of every product at one training step of a real
// run, for attacks that need what the master blinds: the data operand A
// (m×k), the weight W (n×k) and the output gradient dC (m×n) the weight
// gradient is computed from. An attacker never sees these; the suites
// blind them as the pipeline does and score against them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "trusted/trainer.h"

namespace tempo {

struct StepOperands {
  struct Product {
    std::string name;
    int64_t m = 0, k = 0, n = 0;
    std::vector<float> a, w, dc;
  };
  std::map<int, Product> products;  // by product id (cnn: 0 conv1, 1 conv2, 2 fc1, 3 fc2)
};

// Trains cfg in tee-only mode up to step `at_step` (1-based, as the other
// suites count) and keeps that step's operands; nothing is computed after it.
StepOperands capture_step(TrainConfig cfg, int64_t at_step);

}  // namespace tempo
