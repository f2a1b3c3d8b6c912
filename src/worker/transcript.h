// Transcripts: every tensor a worker received and returned, as it saw them
// (ciphertext). Written by `tempo worker --record DIR` for the privacy
// measurements (evaluation only), read by src/eval/measurements and src/eval/attacks.
//
// Format of a .tempotx file: records one after another, each a 32-byte
// little-endian header {char magic[4] = "TTX1"; uint8 received (1: sent by
// the master, 0: returned by the worker); uint8 pad[3]; uint64 handle;
// int64 rows; int64 cols} followed by rows·cols float32 values.
#pragma once

#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "wire/matrix.h"

namespace tempo {

class TranscriptWriter {
 public:
  explicit TranscriptWriter(const std::string& path);  // Error if it cannot be created
  ~TranscriptWriter();
  TranscriptWriter(const TranscriptWriter&) = delete;
  TranscriptWriter& operator=(const TranscriptWriter&) = delete;
  void add(bool received, uint64_t handle, const Matrix& m);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::FILE* f_ = nullptr;
  std::mutex mu_;
};

struct TranscriptRecord {
  bool received;
  uint64_t handle;
  int64_t rows, cols;
  std::vector<float> data;
};

// The whole transcript; Error naming the file and the record on a truncated
// or malformed one.
std::vector<TranscriptRecord> read_transcript(const std::string& path);

}  // namespace tempo
