// Internal to src/trusted/data: chunked reading of files that may be gzip
// compressed, so large datasets are decoded without whole-file buffers.
#pragma once

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tempo {

class GzipReader {
 public:
  // Reads a memory image; `what` names it in errors.
  GzipReader(const uint8_t* data, size_t size, std::string what);
  // Reads a file in chunks; a missing or unreadable file is an Error.
  explicit GzipReader(const std::string& path);
  ~GzipReader();
  GzipReader(const GzipReader&) = delete;
  GzipReader& operator=(const GzipReader&) = delete;

  // Fills up to n bytes of (decompressed) data and returns how many; fewer than
  // n only at the end. Corrupt or truncated gzip data is an Error.
  size_t read(uint8_t* dst, size_t n);
  bool is_gzip() const { return gz_; }
  // Size of the underlying (compressed) input in bytes.
  uint64_t input_size() const { return input_size_; }
  const std::string& what() const { return what_; }

 private:
  void start();
  bool fill(size_t want);  // makes at least `want` input bytes available unless the input ends
  [[noreturn]] void fail(const std::string& problem) const;

  std::string what_;
  int fd_ = -1;
  std::vector<uint8_t> buf_;
  const uint8_t* in_ = nullptr;
  size_t avail_ = 0;
  uint64_t input_size_ = 0, produced_ = 0;
  bool gz_ = false, done_ = false, live_ = false;
  z_stream zs_{};
};

}  // namespace tempo
