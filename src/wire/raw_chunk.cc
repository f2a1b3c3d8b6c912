#include "wire/raw_chunk.h"

#include <grpc/grpc.h>

#include <vector>

namespace tempo {

std::vector<std::pair<const char*, int>> bulk_channel_args() {
  return {{GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, static_cast<int>(kMaxMessageBytes)},
          {GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (1 << 24) - 1},
          {GRPC_ARG_TCP_READ_CHUNK_SIZE, 1 << 20},
          {GRPC_ARG_TCP_MIN_READ_CHUNK_SIZE, 256 << 10},
          {GRPC_ARG_TCP_MAX_READ_CHUNK_SIZE, 4 << 20}};
}

}  // namespace tempo

namespace grpc {

namespace {

void release_owner(void* owner) { delete static_cast<std::shared_ptr<const tempo::Matrix>*>(owner); }

}  // namespace

Status SerializationTraits<tempo::OutChunk, void>::Serialize(const tempo::OutChunk& c, ByteBuffer* bb,
                                                            bool* own_buffer) {
  const tempo::Matrix& m = *c.owner;
  const std::string header = tempo::encode_chunk_header(c.handle, m.rows(), m.cols(), c.first, c.bytes);
  Slice parts[2] = {Slice(header), Slice()};
  size_t n = 1;
  if (c.bytes) {
    char* data = const_cast<char*>(reinterpret_cast<const char*>(m.data())) + c.offset;
    parts[1] = Slice(data, c.bytes, release_owner, new std::shared_ptr<const tempo::Matrix>(c.owner));
    n = 2;
  }
  ByteBuffer out(parts, n);
  bb->Swap(&out);
  *own_buffer = true;
  return Status::OK;
}

Status SerializationTraits<tempo::InChunk, void>::Deserialize(ByteBuffer* bb, tempo::InChunk* c) {
  std::vector<Slice> slices;
  Status st = bb->Dump(&slices);
  bb->Clear();
  if (!st.ok()) return st;
  std::vector<std::string_view> pieces;
  pieces.reserve(slices.size());
  for (const Slice& s : slices) pieces.emplace_back(reinterpret_cast<const char*>(s.begin()), s.size());
  try {
    tempo::decode_chunk(pieces, *c->rx, c->max_bytes);
  } catch (const std::exception& e) {
    c->error = e.what();
    return Status(StatusCode::INTERNAL, c->error);
  }
  return Status::OK;
}

}  // namespace grpc
