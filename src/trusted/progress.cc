#include "trusted/progress.h"

#include <unistd.h>

#include <cstdio>

namespace tempo {

Progress::Progress(std::string label, int64_t total, bool enabled)
    : label_(std::move(label)), total_(total > 0 ? total : 1), enabled_(enabled),
      tty_(isatty(STDERR_FILENO) != 0), start_(std::chrono::steady_clock::now()), last_draw_(start_) {}

void Progress::update(int64_t done, const std::string& note) {
  if (!enabled_ || finished_) return;
  done_ = done;
  note_ = note;
  auto now = std::chrono::steady_clock::now();
  if (tty_) {
    if (now - last_draw_ > std::chrono::milliseconds(100) || done == total_) {
      last_draw_ = now;
      draw(false);
    }
  } else {
    int64_t decile = done * 10 / total_;
    if (decile != last_line_ && decile > 0) {
      last_line_ = decile;
      draw(false);
    }
  }
}

void Progress::draw(bool final) {
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double per = done_ > 0 ? el / static_cast<double>(done_) : 0;
  const double eta = per * static_cast<double>(total_ - done_);
  const int64_t pct = done_ * 100 / total_;
  if (tty_) {
    constexpr int kWidth = 28;
    int fill = static_cast<int>(done_ * kWidth / total_);
    std::string bar(static_cast<size_t>(fill), '=');
    if (fill < kWidth) bar += '>';
    bar.resize(kWidth, ' ');
    std::fprintf(stderr, "\r\033[K%s [%s] %lld/%lld %s  %.1f ms/step  %s %.0fs", label_.c_str(),
                 bar.c_str(), static_cast<long long>(done_), static_cast<long long>(total_),
                 note_.c_str(), per * 1e3, final ? "took" : "eta", final ? el : eta);
    if (final) std::fputc('\n', stderr);
  } else {
    std::fprintf(stderr, "%s: %lld/%lld (%lld%%) %s  %.1f ms/step  %.0fs\n", label_.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_),
                 static_cast<long long>(pct), note_.c_str(), per * 1e3, el);
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  if (tty_ && done_ > 0) draw(true);
}

}  // namespace tempo
