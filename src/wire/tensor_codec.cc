#include "wire/tensor_codec.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include "wire/worker_api.h"

namespace tempo {

static_assert(std::endian::native == std::endian::little, "the wire format is little-endian");

bool encode_chunks(const Matrix& m, uint64_t handle, wire::TensorChunk& chunk,
                   const std::function<bool(const wire::TensorChunk&)>& write) {
  const char* bytes = reinterpret_cast<const char*>(m.data());
  const size_t total = static_cast<size_t>(m.size()) * sizeof(float);
  const size_t step = chunk_bytes_for(total);
  size_t off = 0;
  do {
    chunk.Clear();
    if (off == 0) {
      chunk.set_handle(handle);
      chunk.set_rows(m.rows());
      chunk.set_cols(m.cols());
      chunk.set_dtype(wire::F32);
    }
    const size_t n = std::min(step, total - off);
    chunk.set_data(bytes + off, n);
    off += n;
    if (!write(chunk)) return false;
  } while (off < total);
  return true;
}

void TensorReceiver::begin(const wire::TensorChunk& c, size_t max_bytes) {
  begin(c.handle(), c.rows(), c.cols(), c.dtype(), max_bytes);
  append(c.data().data(), c.data().size());
}

void TensorReceiver::begin(uint64_t handle, int64_t rows, int64_t cols, int dtype, size_t max_bytes) {
  if (started_) throw WorkerError("protocol error: a second tensor header in one stream");
  if (dtype != wire::F32) throw WorkerError("unsupported dtype " + std::to_string(dtype) + " (only F32)");
  const int64_t kMaxDim = int64_t{1} << 31;
  if (rows <= 0 || cols <= 0 || rows > kMaxDim || cols > kMaxDim)
    throw WorkerError("invalid tensor shape " + std::to_string(rows) + "x" + std::to_string(cols));
  const uint64_t r = static_cast<uint64_t>(rows), c = static_cast<uint64_t>(cols);
  if (c > max_bytes / sizeof(float) / r)
    throw WorkerError("tensor of " + std::to_string(r) + "x" + std::to_string(c) + " floats is larger than the " +
                      std::to_string(max_bytes) + " bytes allowed");
  total_ = r * c * sizeof(float);
  filled_ = 0;
  handle_ = handle;
  m_ = Matrix(rows, cols);
  started_ = true;
}

void TensorReceiver::check_header(uint64_t handle, int64_t rows, int64_t cols, int dtype) const {
  if (!started_) throw WorkerError("protocol error: tensor data before its header");
  if ((rows != 0 && rows != m_.rows()) || (cols != 0 && cols != m_.cols()) ||
      (dtype != wire::DTYPE_UNSPECIFIED && dtype != wire::F32) || (handle != 0 && handle != handle_))
    throw WorkerError("protocol error: a chunk changes the tensor's header");
}

void TensorReceiver::append(const wire::TensorChunk& c) {
  check_header(c.handle(), c.rows(), c.cols(), c.dtype());
  append(c.data().data(), c.data().size());
}

void TensorReceiver::append(const char* data, size_t n) {
  if (!started_) throw WorkerError("protocol error: tensor data before its header");
  if (n > total_ - filled_)
    throw WorkerError("tensor data overruns its shape: " + std::to_string(filled_ + n) + " bytes for " +
                      std::to_string(total_));
  if (n) std::memcpy(reinterpret_cast<char*>(m_.data()) + filled_, data, n);
  filled_ += n;
}

Matrix TensorReceiver::take() {
  if (!complete())
    throw WorkerError(started_ ? "truncated tensor: " + std::to_string(filled_) + " of " + std::to_string(total_) +
                                     " bytes"
                               : std::string("no tensor received"));
  started_ = false;
  return std::move(m_);
}

Matrix decode_inline(const wire::TensorChunk& t, size_t max_bytes) {
  TensorReceiver r;
  r.begin(t, max_bytes);
  return r.take();
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

namespace {

// Reads bytes across consecutive pieces.
class PieceReader {
 public:
  explicit PieceReader(const std::vector<std::string_view>& p) : p_(p) { skip_empty(); }
  bool done() const { return i_ == p_.size(); }
  uint64_t remaining() const {
    uint64_t n = 0;
    for (size_t i = i_; i < p_.size(); ++i) n += p_[i].size();
    return n - off_;
  }
  uint8_t byte() {
    if (done()) throw WorkerError("protocol error: truncated chunk");
    const uint8_t b = static_cast<uint8_t>(p_[i_][off_++]);
    if (off_ == p_[i_].size()) ++i_, off_ = 0, skip_empty();
    return b;
  }
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      const uint8_t b = byte();
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
    throw WorkerError("protocol error: malformed varint");
  }
  // Hands the next n bytes to sink in contiguous runs.
  template <class Sink>
  void bytes(uint64_t n, Sink&& sink) {
    while (n > 0) {
      if (done()) throw WorkerError("protocol error: truncated chunk data");
      const size_t take = static_cast<size_t>(std::min<uint64_t>(n, p_[i_].size() - off_));
      sink(p_[i_].data() + off_, take);
      n -= take;
      off_ += take;
      if (off_ == p_[i_].size()) ++i_, off_ = 0, skip_empty();
    }
  }

 private:
  void skip_empty() {
    while (i_ < p_.size() && p_[i_].empty()) ++i_;
  }
  const std::vector<std::string_view>& p_;
  size_t i_ = 0, off_ = 0;
};

}  // namespace

std::string encode_chunk_header(uint64_t handle, int64_t rows, int64_t cols, bool first, size_t data_bytes) {
  std::string h;
  if (first) {
    if (handle) put_varint(h, 1 << 3), put_varint(h, handle);
    put_varint(h, 2 << 3), put_varint(h, static_cast<uint64_t>(rows));
    put_varint(h, 3 << 3), put_varint(h, static_cast<uint64_t>(cols));
    put_varint(h, 4 << 3), put_varint(h, wire::F32);
  }
  if (data_bytes) put_varint(h, (5 << 3) | 2), put_varint(h, data_bytes);
  return h;
}

namespace {

// The fields of one TensorChunk, to the end of `in`.
void decode_chunk_fields(PieceReader& in, TensorReceiver& rx, size_t max_bytes) {
  uint64_t handle = 0;
  int64_t rows = 0, cols = 0;
  int dtype = 0;
  int last_field = 0;
  bool data_seen = false;
  auto header_done = [&] {
    if (!rx.started()) rx.begin(handle, rows, cols, dtype, max_bytes);
    else rx.check_header(handle, rows, cols, dtype);
  };
  while (!in.done()) {
    const uint64_t key = in.varint();
    const int field = static_cast<int>(key >> 3), type = static_cast<int>(key & 7);
    if (field <= last_field || field > 5)
      throw WorkerError("protocol error: unexpected field " + std::to_string(field) + " in a tensor chunk");
    last_field = field;
    if (field == 5) {
      if (type != 2) throw WorkerError("protocol error: tensor data of the wrong wire type");
      const uint64_t n = in.varint();
      header_done();
      data_seen = true;
      in.bytes(n, [&](const char* p, size_t len) { rx.append(p, len); });
      continue;
    }
    if (type != 0) throw WorkerError("protocol error: header field of the wrong wire type");
    const uint64_t v = in.varint();
    switch (field) {
      case 1: handle = v; break;
      case 2: rows = static_cast<int64_t>(v); break;
      case 3: cols = static_cast<int64_t>(v); break;
      default: dtype = static_cast<int>(std::min<uint64_t>(v, 1u << 20)); break;
    }
  }
  if (!data_seen) header_done();
}

}  // namespace

void decode_chunk(const std::vector<std::string_view>& pieces, TensorReceiver& rx, size_t max_bytes) {
  PieceReader in(pieces);
  decode_chunk_fields(in, rx, max_bytes);
}

int decode_run_part(const std::vector<std::string_view>& pieces, TensorReceiver& rx, size_t max_bytes,
                    wire::Housekeeping& before, wire::ComputeRequest& compute) {
  PieceReader in(pieces);
  if (in.done()) throw WorkerError("protocol error: empty run message");
  const uint64_t key = in.varint();
  const int field = static_cast<int>(key >> 3);
  if ((key & 7) != 2 || field < 1 || field > 3)
    throw WorkerError("protocol error: unexpected field " + std::to_string(field) + " in a run message");
  const uint64_t len = in.varint();
  if (len != in.remaining())
    throw WorkerError("protocol error: a run message must hold exactly one part (length " + std::to_string(len) +
                      ", " + std::to_string(in.remaining()) + " bytes follow)");
  if (field == 2) {
    decode_chunk_fields(in, rx, max_bytes);
    return field;
  }
  if (len > 2 * kMaxInlineBytes + 4096) throw WorkerError("protocol error: oversized run message");
  std::string bytes;
  bytes.reserve(static_cast<size_t>(len));
  in.bytes(len, [&](const char* p, size_t n) { bytes.append(p, n); });
  const bool ok = field == 1 ? before.ParseFromString(bytes) : compute.ParseFromString(bytes);
  if (!ok) throw WorkerError(std::string("protocol error: malformed ") + (field == 1 ? "housekeeping" : "computation"));
  return field;
}

}  // namespace tempo
