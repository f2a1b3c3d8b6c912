// Tensor chunks on the master's side of gRPC without protobuf's copies: an
// outgoing chunk references the ciphertext's memory (kept alive by the slice
// that points into it), an incoming one is decoded straight into the result
// matrix. Same bytes on the wire as wire::TensorChunk, so the worker reads
// and writes them with plain protobuf.
#pragma once

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/impl/serialization_traits.h>
#include <grpcpp/support/status.h>

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
class SerializationTraits<tempo::InChunk, void> {
 public:
  static Status Serialize(const tempo::InChunk&, ByteBuffer*, bool*) {
    return Status(StatusCode::INTERNAL, "InChunk is receive-only");
  }
  static Status Deserialize(ByteBuffer* bb, tempo::InChunk* c);
};

}  // namespace grpc
