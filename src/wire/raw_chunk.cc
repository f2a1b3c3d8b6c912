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

// The chunk's header (after `prefix`) and its data, in place.
void serialize_chunk(const tempo::OutChunk& c, const std::string& prefix, ByteBuffer* bb) {
  const tempo::Matrix& m = *c.owner;
  const std::string header = prefix + tempo::encode_chunk_header(c.handle, m.rows(), m.cols(), c.first, c.bytes);
  Slice parts[2] = {Slice(header), Slice()};
  size_t n = 1;
  if (c.bytes) {
    char* data = const_cast<char*>(reinterpret_cast<const char*>(m.data())) + c.offset;
    parts[1] = Slice(data, c.bytes, release_owner, new std::shared_ptr<const tempo::Matrix>(c.owner));
    n = 2;
  }
  ByteBuffer out(parts, n);
  bb->Swap(&out);
}

}  // namespace

Status SerializationTraits<tempo::OutChunk, void>::Serialize(const tempo::OutChunk& c, ByteBuffer* bb,
                                                            bool* own_buffer) {
  serialize_chunk(c, std::string(), bb);
  *own_buffer = true;
  return Status::OK;
}

Status SerializationTraits<tempo::OutRunPart, void>::Serialize(const tempo::OutRunPart& p, ByteBuffer* bb,
                                                              bool* own_buffer) {
  *own_buffer = true;
  if (!p.serialized.empty()) {
    Slice s(p.serialized);
    ByteBuffer out(&s, 1);
    bb->Swap(&out);
    return Status::OK;
  }
  // RunPart field 2 (chunk), length-delimited: the chunk's own length is
  // its header plus its data.
  const tempo::OutChunk& c = p.chunk;
  const size_t chunk_len =
      tempo::encode_chunk_header(c.handle, c.owner->rows(), c.owner->cols(), c.first, c.bytes).size() + c.bytes;
  std::string prefix;
  tempo::put_varint(prefix, (2 << 3) | 2);
  tempo::put_varint(prefix, chunk_len);
  serialize_chunk(c, prefix, bb);
  return Status::OK;
}

namespace {

// Hands the buffer's bytes to decode as pieces; an exception becomes *error.
template <class F>
Status decode_buffer(ByteBuffer* bb, std::string* error, F&& decode) {
  std::vector<Slice> slices;
  Status st = bb->Dump(&slices);
  bb->Clear();
  if (!st.ok()) return st;
  std::vector<std::string_view> pieces;
  pieces.reserve(slices.size());
  for (const Slice& s : slices) pieces.emplace_back(reinterpret_cast<const char*>(s.begin()), s.size());
  try {
    decode(pieces);
  } catch (const std::exception& e) {
    *error = e.what();
    return Status(StatusCode::INTERNAL, *error);
  }
  return Status::OK;
}

}  // namespace

Status SerializationTraits<tempo::InChunk, void>::Deserialize(ByteBuffer* bb, tempo::InChunk* c) {
  return decode_buffer(bb, &c->error, [&](const auto& pieces) { tempo::decode_chunk(pieces, *c->rx, c->max_bytes); });
}

Status SerializationTraits<tempo::InRunPart, void>::Deserialize(ByteBuffer* bb, tempo::InRunPart* p) {
  return decode_buffer(bb, &p->error, [&](const auto& pieces) {
    p->part = tempo::decode_run_part(pieces, *p->rx, p->max_bytes, *p->before, *p->compute);
  });
}

}  // namespace grpc
