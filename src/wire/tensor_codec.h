// Matrices on the wire: raw little-endian float32 rows in TensorChunk
// messages of at most kChunkBytes of data each. Both sides use these, and
// both treat the other's bytes as hostile: a receiver knows the largest
// tensor it will accept before it allocates anything.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "wire/matrix.h"
#include "wire/proto/worker.pb.h"

namespace tempo {

constexpr uint32_t kWireProtocol = 2;
constexpr size_t kChunkBytes = size_t{4} << 20;       // data per TensorChunk
constexpr size_t kMaxMessageBytes = size_t{16} << 20;  // any one gRPC message
constexpr size_t kMaxInlineBytes = size_t{4} << 20;    // an inline operand

// Chunk size for a tensor of `total` bytes: a quarter of it, from 256 KiB
// to kChunkBytes, so that sending, parsing and copying overlap even for
// tensors of one or two MiB.
inline size_t chunk_bytes_for(size_t total) {
  return std::min(kChunkBytes, std::max(total / 4, size_t{256} << 10));
}

// Calls write(chunk) for each chunk of m (the first carries handle and
// shape); stops early and returns false when write does.
bool encode_chunks(const Matrix& m, uint64_t handle, wire::TensorChunk& scratch,
                   const std::function<bool(const wire::TensorChunk&)>& write);

// Reassembles one tensor from its chunks. Errors are WorkerError naming the
// fault (dtype, shape, size, order).
class TensorReceiver {
 public:
  // First chunk: checks dtype and shape, that rows·cols·4 ≤ max_bytes, then
  // allocates and copies its data.
  void begin(const wire::TensorChunk& first, size_t max_bytes);
  void append(const wire::TensorChunk& next);
  // The same in parts: a header, then data in pieces.
  void begin(uint64_t handle, int64_t rows, int64_t cols, int dtype, size_t max_bytes);
  void check_header(uint64_t handle, int64_t rows, int64_t cols, int dtype) const;
  void append(const char* data, size_t n);
  int64_t rows() const { return m_.rows(); }
  int64_t cols() const { return m_.cols(); }
  bool started() const { return started_; }
  bool complete() const { return started_ && filled_ == total_; }
  uint64_t handle() const { return handle_; }
  // The tensor; throws unless complete.
  Matrix take();

 private:
  bool started_ = false;
  uint64_t handle_ = 0;
  Matrix m_;
  size_t total_ = 0, filled_ = 0;
};

// One-message tensor (an inline operand).
Matrix decode_inline(const wire::TensorChunk& t, size_t max_bytes);

// Appends v as a protobuf varint.
void put_varint(std::string& out, uint64_t v);

// The TensorChunk wire format written and read without protobuf's copies:
// the header fields (handle, rows, cols, dtype) and the length prefix of the
// data, for a chunk whose data follows in place.
std::string encode_chunk_header(uint64_t handle, int64_t rows, int64_t cols, bool first, size_t data_bytes);
// Parses one serialized TensorChunk given as consecutive pieces, feeding it
// to rx: the first chunk of a tensor starts rx (max_bytes bounds its size),
// later ones append. Throws WorkerError on malformed bytes. Fields must come
// in field-number order, as every protobuf serializer writes them.
void decode_chunk(const std::vector<std::string_view>& pieces, TensorReceiver& rx, size_t max_bytes);
// The same for one serialized RunPart, which must hold exactly one part: a
// chunk goes to rx as above; housekeeping or a computation is parsed into
// `before` or `compute`. Returns the part's field number (1 before, 2 chunk,
// 3 compute); WorkerError on malformed bytes.
int decode_run_part(const std::vector<std::string_view>& pieces, TensorReceiver& rx, size_t max_bytes,
                    wire::Housekeeping& before, wire::ComputeRequest& compute);

}  // namespace tempo
