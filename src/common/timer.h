// Adds the seconds of a scope's lifetime to a counter: the phase and part
// timings that `tempo bench` and the metrics report (two clock reads a scope).
#pragma once

#include <chrono>

namespace tempo {

class ScopeSeconds {
 public:
  explicit ScopeSeconds(double& acc) : acc_(acc), t0_(std::chrono::steady_clock::now()) {}
  ~ScopeSeconds() { acc_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }
  ScopeSeconds(const ScopeSeconds&) = delete;
  ScopeSeconds& operator=(const ScopeSeconds&) = delete;

 private:
  double& acc_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace tempo
