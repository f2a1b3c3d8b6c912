// Whole-file reads and crash-safe writes, with errors that name the file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tempo {

// Reads a whole regular file. `kind` describes it in error messages
// ("safetensors file", "CIFAR-10 batch"); a missing, unreadable or
// non-regular file is a tempo::Error naming the path.
std::vector<uint8_t> read_file(const std::string& path, const std::string& kind);

// True if `path` names an existing regular file.
bool is_regular_file(const std::string& path);

// Writes `path` atomically: data goes to a temporary file in the same
// directory (mode 0600), commit() fsyncs it, renames it over `path` and fsyncs
// the directory. If commit() is not reached (an error or an exception), the
// temporary file is removed and `path` is left as it was.
class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size);
  void commit();

 private:
  [[noreturn]] void fail(const std::string& problem);
  void discard() noexcept;
  std::string path_, tmp_;
  int fd_ = -1;
};

}  // namespace tempo
