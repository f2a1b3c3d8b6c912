#include "trusted/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "trusted/io/file_util.h"

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts are not supported");

namespace tempo {

namespace {

// Largest header accepted (the reference implementation uses the same bound).
constexpr uint64_t kMaxHeader = 100u << 20;

const char* kHint = "; the file is corrupt or not a safetensors file: re-create it (e.g. with --save or "
                    "tests/py/safetensors_io.py)";

[[noreturn]] void fail(const std::string& what, const std::string& problem) {
  throw Error(what + ": " + problem + kHint);
}

std::string tensor_ctx(const std::string& name) { return "tensor '" + name + "': "; }

size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 8; }

// Reads a non-negative JSON integer that fits in int64.
bool get_uint(const nlohmann::json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    out = static_cast<uint64_t>(s);
  } else {
    return false;
  }
  return out <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
}

struct Entry {
  std::string name;
  uint64_t begin, end;
};

}  // namespace

const char* dtype_name(DType t) { return t == DType::F32 ? "F32" : "I64"; }

namespace {

// The JSON header of n bytes at hb, refusing duplicate keys (nlohmann keeps
// only the last one silently).
nlohmann::json parse_header(const char* hb, uint64_t n, const std::string& what) {
  const char* he = hb + n;
  // Detect duplicate keys (nlohmann keeps only the last one silently).
  std::vector<std::set<std::string>> keys;
  std::string dup;
  int dup_depth = 0;
  auto cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (ev == E::object_start) {
      keys.emplace_back();
    } else if (ev == E::object_end) {
      if (!keys.empty()) keys.pop_back();
    } else if (ev == E::key && !keys.empty() && dup.empty()) {
      const std::string& k = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(k).second) {
        dup = k;
        dup_depth = depth;
      }
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hb, he, cb);
  } catch (const nlohmann::json::exception& e) {
    fail(what, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!dup.empty()) {
    if (dup_depth == 1) fail(what, "tensor '" + dup + "' appears twice in the header");
    fail(what, "key '" + dup + "' appears twice in one header entry");
  }
  if (!header.is_object()) fail(what, "header is not a JSON object");

  return header;
}

// One tensor's header entry `v`, with its data copied from the data area
// (data_size bytes at area); its byte range in *range.
NamedTensor parse_entry(const std::string& name, const nlohmann::json& v, const uint8_t* area, uint64_t data_size,
                        const std::string& what, Entry* range) {
  const std::string ctx = tensor_ctx(name);
  if (name.empty()) fail(what, "a tensor has an empty name");
  if (!v.is_object()) fail(what, ctx + "header entry is not a JSON object");
  for (auto f = v.begin(); f != v.end(); ++f)
    if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
      fail(what, ctx + "unknown field '" + f.key() + "' (expected dtype, shape, data_offsets)");
  auto dt = v.find("dtype");
  auto sh = v.find("shape");
  auto off = v.find("data_offsets");
  if (dt == v.end() || sh == v.end() || off == v.end())
    fail(what, ctx + "entry needs dtype, shape and data_offsets");
  if (!dt->is_string()) fail(what, ctx + "dtype is not a string");
  NamedTensor t;
  t.name = name;
  const std::string& ds = dt->get_ref<const std::string&>();
  if (ds == "F32") {
    t.dtype = DType::F32;
  } else if (ds == "I64") {
    t.dtype = DType::I64;
  } else {
    // Printed via dump() so odd bytes come out escaped.
    throw Error(what + ": " + ctx + "dtype " + nlohmann::json(ds).dump(-1, ' ', true) +
                " is not supported (only F32 and I64 are); convert the tensor to float32 or int64 "
                "before saving");
  }
  if (!sh->is_array()) fail(what, ctx + "shape is not an array");
  // The product of the non-zero dimensions must fit in int64 even when a zero
  // makes the tensor empty, so numel_of() on the shape cannot overflow.
  uint64_t numel = 1;
  bool zero = false, overflow = false;
  for (const auto& d : *sh) {
    uint64_t dim;
    if (!get_uint(d, dim))
      fail(what, ctx + "shape " + sh->dump() + " has an entry that is not a non-negative integer");
    t.shape.push_back(static_cast<int64_t>(dim));
    if (dim == 0) zero = true;
    else overflow |= __builtin_mul_overflow(numel, dim, &numel);
  }
  const uint64_t esize = dtype_size(t.dtype);
  uint64_t nbytes = 0;
  if (overflow || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
      __builtin_mul_overflow(numel, esize, &nbytes))
    fail(what, ctx + "shape " + shape_str(t.shape) + " is too large");
  if (zero) numel = nbytes = 0;
  if (!off->is_array() || off->size() != 2) fail(what, ctx + "data_offsets is not a [begin, end] pair");
  uint64_t b, e;
  if (!get_uint((*off)[0], b) || !get_uint((*off)[1], e))
    fail(what, ctx + "data_offsets " + off->dump() + " are not non-negative integers");
  if (b > e) fail(what, ctx + "data_offsets " + off->dump() + " end before they begin");
  if (e > data_size)
    fail(what, ctx + "data_offsets " + off->dump() + " run past the end of the " + std::to_string(data_size) +
                   "-byte data area (truncated file?)");
  if (e - b != nbytes)
    fail(what, ctx + "data_offsets " + off->dump() + " span " + std::to_string(e - b) + " bytes but " + ds +
                   " shape " + shape_str(t.shape) + " needs " + std::to_string(nbytes));
  if (t.dtype == DType::F32) {
    t.f32.resize(numel);
    if (nbytes) std::memcpy(t.f32.data(), area + b, nbytes);
  } else {
    t.i64.resize(numel);
    if (nbytes) std::memcpy(t.i64.data(), area + b, nbytes);
  }
  *range = {name, b, e};
  return t;
}

// The tensors must tile the data area exactly: no overlap, no gap, no tail.
void check_tiling(std::vector<Entry>& entries, uint64_t data_size, const std::string& what) {
  std::sort(entries.begin(), entries.end(),
            [](const Entry& x, const Entry& y) { return x.begin != y.begin ? x.begin < y.begin : x.end < y.end; });
  uint64_t pos = 0;
  const Entry* prev = nullptr;
  for (const Entry& en : entries) {
    if (en.begin < pos)
      fail(what, "tensors '" + prev->name + "' and '" + en.name + "' overlap in the data area");
    if (en.begin > pos)
      fail(what, tensor_ctx(en.name) + "data starts at byte " + std::to_string(en.begin) +
                     " but the previous tensor ends at byte " + std::to_string(pos) + " (unused gap)");
    pos = en.end;
    prev = &en;
  }
  if (pos != data_size)
    fail(what, std::to_string(data_size - pos) + " trailing bytes after the last tensor's data");
}

}  // namespace

TensorMap parse_safetensors(const uint8_t* data, size_t size, const std::string& what) {
  if (size < 8)
    fail(what, "file is only " + std::to_string(size) + " bytes, too short for the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > kMaxHeader)
    fail(what, "header length " + std::to_string(n) + " is larger than the 100 MiB limit");
  if (n > size - 8)
    fail(what, "header length " + std::to_string(n) + " exceeds the " + std::to_string(size - 8) +
                   " bytes after the length field (truncated file?)");
  if (n < 2) fail(what, "header length " + std::to_string(n) + " is too small for a JSON object");

  const nlohmann::json header = parse_header(reinterpret_cast<const char*>(data + 8), n, what);
  const uint64_t data_size = size - 8 - n;
  const uint8_t* area = data + 8 + n;
  TensorMap out;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(what, "__metadata__ is not a JSON object");
      for (auto m = v.begin(); m != v.end(); ++m)
        if (!m.value().is_string()) fail(what, "__metadata__ value for '" + m.key() + "' is not a string");
      continue;
    }
    Entry range;
    NamedTensor t = parse_entry(name, v, area, data_size, what, &range);
    entries.push_back(range);
    out.emplace(name, std::move(t));
  }
  check_tiling(entries, data_size, what);
  return out;
}

TensorMap read_safetensors(const std::string& path) {
  std::vector<uint8_t> bytes = read_file(path, "safetensors file");
  return parse_safetensors(bytes.data(), bytes.size(), path);
}

namespace {

// The 8-byte length and the JSON header of `tensors`, validated; `what` names
// the destination in errors.
std::string header_bytes(const std::vector<NamedTensor>& tensors, const std::string& what) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const NamedTensor& t : tensors) {
    const std::string ctx = "cannot write " + what + ": tensor '" + t.name + "' ";
    TEMPO_CHECK(!t.name.empty(), "cannot write " + what + ": a tensor has an empty name");
    TEMPO_CHECK(t.name != "__metadata__", ctx + "uses the reserved name __metadata__");
    TEMPO_CHECK(seen.insert(t.name).second, ctx + "appears twice");
    uint64_t numel = 1;
    for (int64_t d : t.shape) {
      TEMPO_CHECK(d >= 0, ctx + "has a negative dimension in shape " + shape_str(t.shape));
      TEMPO_CHECK(!__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel),
            ctx + "has a shape " + shape_str(t.shape) + " that is too large");
    }
    size_t have = t.dtype == DType::F32 ? t.f32.size() : t.i64.size();
    TEMPO_CHECK(have == numel, ctx + "has " + std::to_string(have) + " " + dtype_name(t.dtype) +
                             " values but shape " + shape_str(t.shape) + " needs " + std::to_string(numel));
    uint64_t nbytes = numel * dtype_size(t.dtype);
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string hs = header.dump();
  // Pad with spaces so the data area starts 8-byte aligned (as the reference
  // writer does).
  hs.append((8 - hs.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = hs.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>(n >> (8 * i));
  return out + hs;
}

template <typename Sink>
void emit(const std::vector<NamedTensor>& tensors, const std::string& what, Sink&& sink) {
  const std::string head = header_bytes(tensors, what);
  sink(head.data(), head.size());
  for (const NamedTensor& t : tensors) {
    if (t.dtype == DType::F32)
      sink(t.f32.data(), t.f32.size() * sizeof(float));
    else
      sink(t.i64.data(), t.i64.size() * sizeof(int64_t));
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<NamedTensor>& tensors) {
  AtomicFile f(path);
  emit(tensors, path, [&f](const void* p, size_t n) { f.write(p, n); });
  f.commit();
}

std::vector<uint8_t> serialize_safetensors(const std::vector<NamedTensor>& tensors, const std::string& what) {
  std::vector<uint8_t> out;
  emit(tensors, what, [&out](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  });
  return out;
}

}  // namespace tempo
