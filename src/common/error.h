// Errors that reach the user. Every failure a user can cause (a bad file, a
// bad flag, a bad shape) is raised as tempo::Error with one message that
// names the thing and says what to do; the CLI prints it and exits 1.
#pragma once

#include <stdexcept>
#include <string>

namespace tempo {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace tempo

// Throws tempo::Error(message) unless cond holds. For checks on
// user-controlled input. The message is built only when the check fails,
// so checks cost nothing on hot paths.
#define TEMPO_CHECK(cond, ...)                          \
  do {                                                  \
    if (!(cond)) throw ::tempo::Error(__VA_ARGS__);     \
  } while (0)
