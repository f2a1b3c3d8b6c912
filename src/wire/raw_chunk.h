// Tensor chunks through gRPC without protobuf's copies: an outgoing chunk
// references the tensor's memory (kept alive by the slice that points into
// it), an incoming one is decoded straight into its matrix. Same bytes on
// the wire as wire::TensorChunk and wire::RunPart. The master sends operands
// and receives results this way, and the worker does the same in Run.
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/impl/serialization_traits.h>
#include <grpcpp/support/status.h>

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "wire/tensor_codec.h"

namespace tempo {

// gRPC channel arguments for tensors of many MiB, for both ends: a wide
// flow-control window from the first call (the default starts at 64 KiB and
// grows slowly), the largest frames, big socket reads.
std::vector<std::pair<const char*, int>> bulk_channel_args();

struct OutChunk {
  std::shared_ptr<const Matrix> owner;  // the tensor the data lies in
  uint64_t handle = 0;
  bool first = false;                   // carries handle and shape
  size_t offset = 0, bytes = 0;         // the data: bytes from offset of owner's buffer
};

// One message of a Run call: an operand chunk (wrapped as RunPart.chunk,
// data still in place), or, when `serialized` is set, a whole RunPart
// serialized beforehand (housekeeping, the computation).
struct OutRunPart {
  OutChunk chunk;
  std::string serialized;
};

// Calls write(chunk) for each chunk of m, in place (the first carries
// handle and shape); stops early and returns false when write does.
template <class Write>
bool write_chunks(const std::shared_ptr<const Matrix>& m, uint64_t handle, OutChunk& c, Write&& write) {
  const size_t bytes = static_cast<size_t>(m->size()) * sizeof(float), step = chunk_bytes_for(bytes);
  c.owner = m;
  c.handle = handle;
  size_t off = 0;
  do {
    c.first = off == 0;
    c.offset = off;
    c.bytes = std::min(step, bytes - off);
    off += c.bytes;
    if (!write(c)) return false;
  } while (off < bytes);
  return true;
}

// One message of a Run call as the worker receives it: a chunk's data goes
// straight into rx, other parts are parsed into before or compute.
struct InRunPart {
  TensorReceiver* rx = nullptr;
  size_t max_bytes = 0;               // largest new tensor accepted
  wire::Housekeeping* before = nullptr;
  wire::ComputeRequest* compute = nullptr;
  int part = 0;                       // RunPart field number decoded
  std::string error;                  // why a message was refused
};

struct InChunk {
  TensorReceiver* rx = nullptr;  // where the data goes
  size_t max_bytes = 0;          // largest tensor accepted
  std::string error;             // why a chunk was refused
};

}  // namespace tempo

namespace grpc {

template <>
class SerializationTraits<tempo::OutChunk, void> {
 public:
  static Status Serialize(const tempo::OutChunk& c, ByteBuffer* bb, bool* own_buffer);
  static Status Deserialize(ByteBuffer*, tempo::OutChunk*) {
    return Status(StatusCode::INTERNAL, "OutChunk is send-only");
  }
};

template <>
class SerializationTraits<tempo::OutRunPart, void> {
 public:
  static Status Serialize(const tempo::OutRunPart& p, ByteBuffer* bb, bool* own_buffer);
  static Status Deserialize(ByteBuffer*, tempo::OutRunPart*) {
    return Status(StatusCode::INTERNAL, "OutRunPart is send-only");
  }
};

template <>
class SerializationTraits<tempo::InRunPart, void> {
 public:
  static Status Serialize(const tempo::InRunPart&, ByteBuffer*, bool*) {
    return Status(StatusCode::INTERNAL, "InRunPart is receive-only");
  }
  static Status Deserialize(ByteBuffer* bb, tempo::InRunPart* p);
};

template <>
class SerializationTraits<tempo::InChunk, void> {
 public:
  static Status Serialize(const tempo::InChunk&, ByteBuffer*, bool*) {
    return Status(StatusCode::INTERNAL, "InChunk is receive-only");
  }
  static Status Deserialize(ByteBuffer* bb, tempo::InChunk* c);
};

}  // namespace grpc
