// The tensor wire format: the copy-free encoders and decoders agree with
// protobuf's TensorChunk and RunPart byte for byte, across any split into
// pieces, and refuse malformed bytes with a WorkerError.
#include <gtest/gtest.h>

#include <random>

#include "wire/proto/worker.pb.h"
#include "wire/raw_chunk.h"
#include "wire/tensor_codec.h"
#include "wire/worker_api.h"

namespace tempo {
namespace {

Matrix iota(int64_t r, int64_t c) {
  Matrix m(r, c);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(i) * 0.5f - 3.0f;
  return m;
}

std::vector<std::string_view> split(const std::string& s, std::mt19937& rng, int parts) {
  std::vector<size_t> cuts = {0, s.size()};
  for (int i = 0; i < parts; ++i) cuts.push_back(rng() % (s.size() + 1));
  std::sort(cuts.begin(), cuts.end());
  std::vector<std::string_view> out;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) out.emplace_back(s.data() + cuts[i], cuts[i + 1] - cuts[i]);
  return out;
}

TEST(WireCodec, HeaderPlusDataIsAProtobufTensorChunk) {
  Matrix m = iota(3, 5);
  const std::string data(reinterpret_cast<const char*>(m.data()), 60);
  const std::string bytes = encode_chunk_header(7, 3, 5, true, data.size()) + data;
  wire::TensorChunk c;
  ASSERT_TRUE(c.ParseFromString(bytes));
  EXPECT_EQ(c.handle(), 7u);
  EXPECT_EQ(c.rows(), 3);
  EXPECT_EQ(c.cols(), 5);
  EXPECT_EQ(c.dtype(), wire::F32);
  EXPECT_EQ(c.data(), data);
  // A continuation chunk: data only.
  wire::TensorChunk d;
  ASSERT_TRUE(d.ParseFromString(encode_chunk_header(7, 3, 5, false, 8) + data.substr(0, 8)));
  EXPECT_EQ(d.rows(), 0);
  EXPECT_EQ(d.data(), data.substr(0, 8));
}

TEST(WireCodec, DecodesProtobufChunksSplitAnywhere) {
  std::mt19937 rng(3);
  Matrix m = iota(17, 9);
  for (int trial = 0; trial < 200; ++trial) {
    // The tensor in 1 to 4 protobuf chunks, each serialized and cut into pieces.
    const size_t total = 17 * 9 * 4;
    std::vector<size_t> cuts = {0, total};
    for (int i = 0, n = static_cast<int>(rng() % 4); i < n; ++i) cuts.push_back(rng() % total);
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    TensorReceiver rx;
    for (size_t i = 0; i + 1 < cuts.size(); ++i) {
      wire::TensorChunk c;
      if (i == 0) {
        c.set_handle(4);
        c.set_rows(17);
        c.set_cols(9);
        c.set_dtype(wire::F32);
      }
      c.set_data(reinterpret_cast<const char*>(m.data()) + cuts[i], cuts[i + 1] - cuts[i]);
      const std::string s = c.SerializeAsString();
      decode_chunk(split(s, rng, static_cast<int>(rng() % 5)), rx, total);
    }
    ASSERT_TRUE(rx.complete());
    EXPECT_EQ(rx.handle(), 4u);
    Matrix out = rx.take();
    ASSERT_EQ(out.rows(), 17);
    EXPECT_EQ(0, std::memcmp(out.data(), m.data(), total));
  }
}

TEST(WireCodec, MalformedChunksAreRefused) {
  const std::string data(16, '\1');
  auto decode = [](const std::string& bytes, size_t max = 1 << 20) {
    TensorReceiver rx;
    decode_chunk({std::string_view(bytes)}, rx, max);
    return rx.complete();
  };
  const std::string good = encode_chunk_header(0, 2, 2, true, 16) + data;
  EXPECT_TRUE(decode(good));
  EXPECT_THROW(decode(good.substr(0, good.size() - 1)), WorkerError) << "truncated data";
  EXPECT_THROW(decode(good.substr(0, 3)), WorkerError) << "truncated header";
  EXPECT_THROW(decode(good, 8), WorkerError) << "larger than allowed";
  EXPECT_THROW(decode(encode_chunk_header(0, 2, 2, true, 20) + data + "abcd"), WorkerError) << "overrun";
  EXPECT_THROW(decode(encode_chunk_header(0, -2, 2, true, 16) + data), WorkerError) << "negative rows";
  EXPECT_THROW(decode(encode_chunk_header(0, 0, 0, false, 16) + data), WorkerError) << "data before header";
  std::string wrong_dtype = good;
  wrong_dtype[wrong_dtype.find('\x20') + 1] = 2;
  EXPECT_THROW(decode(wrong_dtype), WorkerError) << "dtype";
  EXPECT_THROW(decode(std::string("\x30\x01", 2) + good), WorkerError) << "unknown field";
  EXPECT_THROW(decode(std::string(11, '\xff')), WorkerError) << "endless varint";
  std::string reordered = encode_chunk_header(0, 2, 2, true, 0);  // rows, cols, dtype ...
  reordered = reordered.substr(2) + reordered.substr(0, 2);       // ... then rows again
  EXPECT_THROW(decode(reordered + encode_chunk_header(0, 0, 0, false, 16) + data), WorkerError) << "order";
}

// A Run's messages: the worker's raw decoder reads what protobuf's RunPart
// serializer writes, split anywhere, and refuses anything else.
TEST(WireCodec, DecodesRunPartsSplitAnywhere) {
  std::mt19937 rng(5);
  Matrix m = iota(6, 7);
  for (int trial = 0; trial < 100; ++trial) {
    wire::RunPart before, chunk, compute;
    before.mutable_before()->set_end_step(true);
    before.mutable_before()->add_release(9);
    auto* c = chunk.mutable_chunk();
    c->set_handle(3);
    c->set_rows(6);
    c->set_cols(7);
    c->set_dtype(wire::F32);
    c->set_data(reinterpret_cast<const char*>(m.data()), 6 * 7 * 4);
    compute.mutable_compute()->set_op(wire::ComputeRequest::PRODUCT_TN);
    compute.mutable_compute()->mutable_x()->set_handle(3);
    compute.mutable_compute()->mutable_y()->set_handle(3);
    TensorReceiver rx;
    wire::Housekeeping hk;
    wire::ComputeRequest req;
    const std::string b = before.SerializeAsString(), d = chunk.SerializeAsString(), q = compute.SerializeAsString();
    EXPECT_EQ(decode_run_part(split(b, rng, static_cast<int>(rng() % 4)), rx, 1 << 20, hk, req), 1);
    EXPECT_TRUE(hk.end_step());
    ASSERT_EQ(hk.release_size(), 1);
    EXPECT_EQ(hk.release(0), 9u);
    EXPECT_EQ(decode_run_part(split(d, rng, static_cast<int>(rng() % 6)), rx, 1 << 20, hk, req), 2);
    ASSERT_TRUE(rx.complete());
    EXPECT_EQ(rx.handle(), 3u);
    Matrix out = rx.take();
    EXPECT_EQ(0, std::memcmp(out.data(), m.data(), 6 * 7 * 4));
    EXPECT_EQ(decode_run_part(split(q, rng, static_cast<int>(rng() % 4)), rx, 1 << 20, hk, req), 3);
    EXPECT_EQ(req.op(), wire::ComputeRequest::PRODUCT_TN);
    EXPECT_EQ(req.x().handle(), 3u);
  }
}

// The master's in-place run messages are protobuf RunParts.
TEST(WireCodec, MasterRunPartsParseAsProtobuf) {
  auto m = std::make_shared<const Matrix>(iota(512, 1024));  // 2 MiB: four chunks
  OutRunPart part;
  std::string data;
  int chunks = 0;
  write_chunks(m, 12, part.chunk, [&](const OutChunk& c) {
    grpc::ByteBuffer bb;
    bool own = false;
    EXPECT_TRUE(grpc::SerializationTraits<OutRunPart>::Serialize(part, &bb, &own).ok());
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(bb.Dump(&slices).ok());
    std::string bytes;
    for (const auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    wire::RunPart p;
    EXPECT_TRUE(p.ParseFromString(bytes));
    EXPECT_EQ(p.part_case(), wire::RunPart::kChunk);
    if (c.first) {
      EXPECT_EQ(p.chunk().handle(), 12u);
      EXPECT_EQ(p.chunk().rows(), 512);
      EXPECT_EQ(p.chunk().cols(), 1024);
    }
    data += p.chunk().data();
    ++chunks;
    return true;
  });
  EXPECT_EQ(chunks, 4);
  ASSERT_EQ(data.size(), 512u * 1024 * 4);
  EXPECT_EQ(0, std::memcmp(data.data(), m->data(), data.size()));
}

TEST(WireCodec, MalformedRunPartsAreRefused) {
  auto decode = [](const std::string& bytes, size_t max = 1 << 20) {
    TensorReceiver rx;
    wire::Housekeeping hk;
    wire::ComputeRequest req;
    return decode_run_part({std::string_view(bytes)}, rx, max, hk, req);
  };
  wire::RunPart chunk;
  chunk.mutable_chunk()->set_rows(2);
  chunk.mutable_chunk()->set_cols(2);
  chunk.mutable_chunk()->set_dtype(wire::F32);
  chunk.mutable_chunk()->set_data(std::string(16, '\1'));
  const std::string good = chunk.SerializeAsString();
  EXPECT_EQ(decode(good), 2);
  EXPECT_THROW(decode(""), WorkerError) << "empty message";
  EXPECT_THROW(decode(good.substr(0, good.size() - 1)), WorkerError) << "truncated";
  EXPECT_THROW(decode(good + "\x1a\x00"), WorkerError) << "two parts in one message";
  EXPECT_THROW(decode(good, 8), WorkerError) << "tensor larger than allowed";
  EXPECT_THROW(decode(std::string("\x22\x00", 2)), WorkerError) << "unknown field 4";
  EXPECT_THROW(decode(std::string("\x10\x01", 2)), WorkerError) << "wrong wire type";
  EXPECT_THROW(decode(std::string("\x1a\x02\xff\xff", 4)), WorkerError) << "malformed computation";
  EXPECT_THROW(decode(std::string("\x1a\xff\xff\xff\x7f", 5)), WorkerError) << "length beyond the message";
}

}  // namespace
}  // namespace tempo
