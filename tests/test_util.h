// Helpers shared by the test files: the PyTorch reference directory and a
// temporary directory removed at the end of a test.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "common/error.h"

namespace tempo::testutil {

// Where tests/ref/make_references.py wrote the references (set by CTest).
inline std::string ref_dir() {
  const char* d = std::getenv("TEMPO_REF_DIR");
  return d ? d : "";
}

class TempDir {
 public:
  explicit TempDir(const std::string& tag = "tempo") {
    std::string t = testing::TempDir() + tag + "_XXXXXX";
    if (!mkdtemp(t.data())) throw Error("mkdtemp failed");
    path_ = t;
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string operator/(const std::string& n) const { return path_ + "/" + n; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace tempo::testutil

// A missing reference is a failure, never a skip: the references come from
// the make_references fixture that CTest runs first.
#define REF_FILE_OR_FAIL(var, name)                                                                     \
  const std::string var = ::tempo::testutil::ref_dir() + "/" + (name);                                  \
  if (::tempo::testutil::ref_dir().empty() || !std::filesystem::exists(var))                            \
    GTEST_FAIL() << "no reference " << (name) << ": run through ctest (fixture make_references), or set " \
                                                 "TEMPO_REF_DIR";
