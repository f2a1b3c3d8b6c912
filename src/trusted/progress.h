// Progress of a long loop on stderr: a redrawn bar on a terminal, a plain
// line every ~10% otherwise (logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace tempo {

class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled = true);
  ~Progress() { finish(); }
  void update(int64_t done, const std::string& note = "");
  void finish();

 private:
  std::string label_, note_;
  int64_t total_, done_ = 0, last_line_ = -1;
  bool enabled_, tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
  void draw(bool final);
};

}  // namespace tempo
