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

// Throws Error(msg) unless cond holds. For checks on user-controlled input.
inline void check(bool cond, const std::string& msg) {
  if (!cond) throw Error(msg);
}

}  // namespace tempo
