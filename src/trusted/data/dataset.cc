// Dataset loading: IDX and CIFAR-10 parsers and the four --data sources.
#include "trusted/data/dataset.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "trusted/rng.h"
#include "trusted/data/gzip_reader.h"
#include "trusted/io/file_util.h"
#include "trusted/io/safetensors.h"

namespace tempo {

namespace {

constexpr int kClasses = 10;
constexpr size_t kCifarPixels = 3 * 32 * 32;
constexpr size_t kCifarRecord = 1 + kCifarPixels;

// k / 255.0f for every byte: a division, exactly as torchvision's ToTensor.
struct ByteToUnit {
  float v[256];
  ByteToUnit() {
    for (int k = 0; k < 256; ++k) v[k] = static_cast<float>(k) / 255.0f;
  }
};
const ByteToUnit& unit() {
  static const ByteToUnit t;
  return t;
}

std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

uint32_t be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

void check_sample_shape(const std::string& source, const Shape& sample, const Shape& input) {
  TEMPO_CHECK(sample == input, source + ": samples have shape " + shape_str(sample) + " but the model expects input " +
                             shape_str(input) + "; pick a --model that matches the data (or other data)");
}

void check_labels(const std::vector<int64_t>& y, int classes, const std::string& what) {
  for (size_t i = 0; i < y.size(); ++i)
    TEMPO_CHECK(y[i] >= 0 && y[i] < classes, what + ": label " + std::to_string(y[i]) + " at index " + std::to_string(i) +
                                           " is out of range [0, " + std::to_string(classes) +
                                           "); labels must be class indices");
}

std::string counts(const Dataset& d) {
  return std::to_string(d.train_y.size()) + " train, " + std::to_string(d.test_y.size()) + " test";
}

// Sizes a dataset tensor. Large ones are backed by huge pages where the kernel
// offers them: first-touching ~200 MB in 4 KiB pages costs most of the load
// time on some VMs.
void alloc_samples(Tensor& t, const Shape& s) {
  t.resize(s);
#ifdef MADV_HUGEPAGE
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t b = reinterpret_cast<uintptr_t>(t.data());
  const uintptr_t e = (b + sizeof(float) * static_cast<uintptr_t>(t.numel())) & ~(kHuge - 1);
  const uintptr_t a = (b + kHuge - 1) & ~(kHuge - 1);
  if (t.numel() > 0 && e > a) ::madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);  // advice only
#endif
}

// Number of CIFAR records in `size` bytes (a positive multiple of 3073).
size_t cifar_count(uint64_t size, const std::string& what) {
  TEMPO_CHECK(size > 0 && size % kCifarRecord == 0,
        what + ": size " + std::to_string(size) + " bytes is not a positive multiple of the 3073-byte CIFAR-10 record "
               "(truncated file, or not the binary version of CIFAR-10: use cifar-10-binary.tar.gz)");
  return static_cast<size_t>(size / kCifarRecord);
}

// Checks the labels of n records; `first` numbers them in messages.
void cifar_check_labels(const uint8_t* data, size_t n, size_t first, const std::string& what) {
  for (size_t i = 0; i < n; ++i)
    TEMPO_CHECK(data[i * kCifarRecord] < kClasses, what + ": record " + std::to_string(first + i) + " has label " +
                                                 std::to_string(data[i * kCifarRecord]) +
                                                 " (must be 0..9); the file is corrupt or not CIFAR-10");
}

void cifar_decode(const uint8_t* data, size_t n, float* x, int64_t* y) {
  const float* u = unit().v;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* r = data + i * kCifarRecord;
    y[i] = r[0];
    float* o = x + i * kCifarPixels;
    for (size_t k = 0; k < kCifarPixels; ++k) o[k] = u[r[1 + k]];
  }
}

// ---- IDX -------------------------------------------------------------------------

const char* kIdxHint = "; re-download the dataset";

// Checks the magic number; returns the number of dimensions.
size_t idx_rank(const uint8_t* data, size_t size, const std::string& what) {
  TEMPO_CHECK(size >= 4, what + ": only " + std::to_string(size) + " bytes, too short for an IDX file (truncated?)" + kIdxHint);
  const uint32_t magic = be32(data);
  TEMPO_CHECK(magic == 0x00000803 || magic == 0x00000801,
        what + ": magic number " + hex32(magic) +
            " is not an IDX file of unsigned bytes (expected 0x00000803 for images or 0x00000801 for labels)" +
            kIdxHint);
  return data[3];
}

// Reads nd dimensions after the magic; `total` gets their product, false if
// it overflows.
bool idx_dims(const uint8_t* data, size_t nd, std::vector<int64_t>& dims, uint64_t& total) {
  bool fits = true;
  total = 1;
  for (size_t i = 0; i < nd; ++i) {
    uint32_t d = be32(data + 4 + 4 * i);
    dims.push_back(d);
    if (__builtin_mul_overflow(total, uint64_t(d), &total)) fits = false;
  }
  return fits;
}

[[noreturn]] void idx_short(const std::string& what, const std::vector<int64_t>& dims, bool fits, uint64_t total,
                            uint64_t have) {
  throw Error(what + ": dimensions " + shape_str(dims) + " need " + (fits ? std::to_string(total) : "too many") +
              " bytes of data but the file has " + std::to_string(have) + " (truncated?)" + kIdxHint);
}

[[noreturn]] void idx_long(const std::string& what, const std::vector<int64_t>& dims, const std::string& extra) {
  throw Error(what + ": " + extra + " unexpected bytes after the " + shape_str(dims) +
              " data (dimensions do not match the file size)" + kIdxHint);
}

// An IDX file (gzip or plain) read in chunks: the header at construction,
// the payload through each().
class IdxStream {
 public:
  IdxStream(const std::string& path, size_t rank) : r_(path) {
    uint8_t head[16];
    size_t got = r_.read(head, 4);
    const size_t nd = idx_rank(head, got, path);
    TEMPO_CHECK(nd == rank, path + (rank == 3 ? ": holds labels (magic 0x00000801), expected images (0x00000803)"
                                        : ": holds images (magic 0x00000803), expected labels (0x00000801)") +
                          "; check the file names");
    got = r_.read(head + 4, 4 * nd);
    TEMPO_CHECK(got == 4 * nd, path + ": file ends inside the IDX header (truncated)" + kIdxHint);
    bool fits = idx_dims(head, nd, dims_, payload_);
    // Refuse sizes the input cannot hold before allocating for them.
    const uint64_t bound = r_.is_gzip() ? r_.input_size() * 1100 + 1024 : r_.input_size();
    TEMPO_CHECK(fits && payload_ <= bound, path + ": dimensions " + shape_str(dims_) +
                                         " need more data than a file of this size can hold (corrupt header?)" +
                                         kIdxHint);
  }
  const std::vector<int64_t>& dims() const { return dims_; }

  // Calls f(bytes, count, offset) over the payload; checks its exact size.
  template <class F>
  void each(F&& f) {
    std::vector<uint8_t> buf(size_t(1) << 18);
    uint64_t done = 0;
    while (done < payload_) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), payload_ - done));
      const size_t got = r_.read(buf.data(), want);
      f(buf.data(), got, done);
      done += got;
      if (got < want) idx_short(r_.what(), dims_, true, payload_, done);
    }
    uint8_t extra;
    if (r_.read(&extra, 1) != 0) idx_long(r_.what(), dims_, "some");
  }

 private:
  GzipReader r_;
  std::vector<int64_t> dims_;
  uint64_t payload_ = 0;
};

// ---- fashion-mnist ----------------------------------------------------------

std::string find_idx(const std::string& dir, const std::string& name) {
  std::string gz = dir + "/" + name + ".gz", plain = dir + "/" + name;
  if (is_regular_file(gz)) return gz;
  if (is_regular_file(plain)) return plain;
  throw Error("fashion-mnist: cannot find " + gz + " (nor " + plain +
              "); install the Debian package dataset-fashion-mnist (scripts/setup.sh) or pass "
              "--data fashion-mnist:DIR with a directory holding the four IDX files");
}

void load_idx_pair(const std::string& dir, const std::string& prefix, const Shape& input, Tensor& x,
                   std::vector<int64_t>& y) {
  const std::string ip = find_idx(dir, prefix + "-images-idx3-ubyte");
  const std::string lp = find_idx(dir, prefix + "-labels-idx1-ubyte");
  IdxStream lb(lp, 1), im(ip, 3);
  const int64_t n = im.dims()[0];
  TEMPO_CHECK(n == lb.dims()[0], ip + " has " + std::to_string(n) + " images but " + lp + " has " +
                               std::to_string(lb.dims()[0]) + " labels; the files do not belong together");
  TEMPO_CHECK(n > 0, ip + ": holds no images" + kIdxHint);
  check_sample_shape(ip, {1, im.dims()[1], im.dims()[2]}, input);
  y.resize(static_cast<size_t>(n));
  lb.each([&](const uint8_t* b, size_t k, uint64_t at) { std::copy(b, b + k, y.begin() + static_cast<long>(at)); });
  check_labels(y, kClasses, lp);
  alloc_samples(x, {n, 1, im.dims()[1], im.dims()[2]});
  const float* u = unit().v;
  float* o = x.data();
  im.each([&](const uint8_t* b, size_t k, uint64_t at) {
    for (size_t i = 0; i < k; ++i) o[at + i] = u[b[i]];
  });
}

Dataset load_fashion(const std::string& dir, const Shape& input) {
  Dataset d;
  load_idx_pair(dir, "train", input, d.train_x, d.train_y);
  load_idx_pair(dir, "t10k", input, d.test_x, d.test_y);
  d.sample_shape = input;
  d.description = "fashion-mnist (" + dir + "): " + counts(d);
  return d;
}

// ---- cifar10 -----------------------------------------------------------------

void load_cifar_files(const std::vector<std::string>& paths, Tensor& x, std::vector<int64_t>& y) {
  size_t total = 0;
  for (const std::string& p : paths) {
    GzipReader r(p);
    TEMPO_CHECK(!r.is_gzip(), p + ": is gzip-compressed; extract cifar-10-binary.tar.gz and pass the directory of .bin files");
    total += cifar_count(r.input_size(), p);
  }
  alloc_samples(x, {static_cast<int64_t>(total), 3, 32, 32});
  y.resize(total);
  std::vector<uint8_t> buf(256 * kCifarRecord);
  size_t at = 0;
  for (const std::string& p : paths) {
    GzipReader r(p);
    const size_t n = cifar_count(r.input_size(), p);
    TEMPO_CHECK(at + n <= total, p + ": the file changed while being read");
    for (size_t i = 0; i < n;) {
      const size_t k = std::min<size_t>(256, n - i);
      TEMPO_CHECK(r.read(buf.data(), k * kCifarRecord) == k * kCifarRecord, p + ": the file shrank while being read");
      cifar_check_labels(buf.data(), k, i, p);
      cifar_decode(buf.data(), k, x.data() + (at + i) * kCifarPixels, y.data() + at + i);
      i += k;
    }
    at += n;
  }
  TEMPO_CHECK(at == total, "cifar10: a batch file changed while being read");
}

Dataset load_cifar(std::string dir, const Shape& input) {
  if (!is_regular_file(dir + "/data_batch_1.bin") && is_regular_file(dir + "/cifar-10-batches-bin/data_batch_1.bin"))
    dir += "/cifar-10-batches-bin";
  std::vector<std::string> train;
  for (int i = 1; i <= 5; ++i) train.push_back(dir + "/data_batch_" + std::to_string(i) + ".bin");
  train.push_back(dir + "/test_batch.bin");
  for (const std::string& p : train)
    TEMPO_CHECK(is_regular_file(p), "cifar10: cannot find " + p +
                                  "; pass --data cifar10:DIR with the extracted cifar-10-batches-bin directory of "
                                  "the binary version (cifar-10-binary.tar.gz)");
  std::string test = train.back();
  train.pop_back();
  Dataset d;
  d.sample_shape = {3, 32, 32};
  check_sample_shape("cifar10 (" + dir + ")", d.sample_shape, input);
  load_cifar_files(train, d.train_x, d.train_y);
  load_cifar_files({test}, d.test_x, d.test_y);
  d.cifar_augment = true;
  d.norm_mean = {0.4914f, 0.4822f, 0.4465f};
  d.norm_std = {0.2470f, 0.2435f, 0.2616f};
  d.description = "cifar10 (" + dir + "): " + counts(d);
  return d;
}

// ---- tensors -------------------------------------------------------------------

void take_pair(TensorMap& m, const std::string& path, const std::string& xn, const std::string& yn, Tensor& x,
               std::vector<int64_t>& y) {
  NamedTensor& xi = m.at(xn);
  NamedTensor& yi = m.at(yn);
  const std::string fix = "; expected '" + xn + "' N×C×H×W F32 and '" + yn + "' N I64";
  TEMPO_CHECK(xi.dtype == DType::F32, path + ": tensor '" + xn + "' has dtype " + dtype_name(xi.dtype) +
                                    ", expected F32 (convert the images to float32)");
  TEMPO_CHECK(yi.dtype == DType::I64, path + ": tensor '" + yn + "' has dtype " + dtype_name(yi.dtype) +
                                    ", expected I64 (convert the labels to int64)");
  TEMPO_CHECK(xi.shape.size() == 4, path + ": tensor '" + xn + "' has shape " + shape_str(xi.shape) + fix);
  TEMPO_CHECK(yi.shape.size() == 1, path + ": tensor '" + yn + "' has shape " + shape_str(yi.shape) + fix);
  TEMPO_CHECK(xi.shape[0] == yi.shape[0], path + ": '" + xn + "' has " + std::to_string(xi.shape[0]) + " samples but '" +
                                        yn + "' has " + std::to_string(yi.shape[0]) + " labels; they must match");
  for (size_t i = 0; i < xi.f32.size(); ++i)
    TEMPO_CHECK(std::isfinite(xi.f32[i]), path + ": tensor '" + xn + "' holds a non-finite value (NaN or Inf) at sample " +
                                        std::to_string(xi.shape[0] ? i / (xi.f32.size() / xi.shape[0]) : 0) +
                                        "; clean the data");
  check_labels(yi.i64, kClasses, path + ": tensor '" + yn + "'");
  alloc_samples(x, xi.shape);
  if (!xi.f32.empty()) std::memcpy(x.data(), xi.f32.data(), xi.f32.size() * sizeof(float));
  y = std::move(yi.i64);
  std::vector<float>().swap(xi.f32);
}

// Dataset from the tensors of a tensors: file or of an encrypted container
// (which also carries the preprocessing: normalisation and augmentation).
Dataset from_tensors(TensorMap m, const std::string& path, const Shape& input, bool preprocessing) {
  const char* holds = preprocessing
                          ? "; an encrypted data set holds images, labels, test_images, test_labels, norm_mean, "
                            "norm_std, augment"
                          : "; a tensors: data file holds only images, labels, test_images, test_labels";
  for (const auto& [name, t] : m)
    TEMPO_CHECK(name == "images" || name == "labels" || name == "test_images" || name == "test_labels" ||
                    (preprocessing && (name == "norm_mean" || name == "norm_std" || name == "augment")),
                path + ": unexpected tensor '" + name + "'" + holds);
  TEMPO_CHECK(m.count("images") && m.count("labels"),
        path + ": missing tensor '" + std::string(m.count("images") ? "labels" : "images") +
            "'; a tensors: data file needs 'images' (N×C×H×W F32) and 'labels' (N I64)");
  TEMPO_CHECK(m.count("test_images") == m.count("test_labels"),
        path + ": has '" + std::string(m.count("test_images") ? "test_images" : "test_labels") + "' but not '" +
            std::string(m.count("test_images") ? "test_labels" : "test_images") + "'; give both or neither");
  Dataset d;
  take_pair(m, path, "images", "labels", d.train_x, d.train_y);
  TEMPO_CHECK(!d.train_y.empty(), path + ": 'images' holds no samples");
  d.sample_shape.assign(d.train_x.shape().begin() + 1, d.train_x.shape().end());
  if (m.count("test_images")) {
    take_pair(m, path, "test_images", "test_labels", d.test_x, d.test_y);
    Shape ts(d.test_x.shape().begin() + 1, d.test_x.shape().end());
    TEMPO_CHECK(ts == d.sample_shape, path + ": 'test_images' samples are " + shape_str(ts) + " but 'images' samples are " +
                                    shape_str(d.sample_shape) + "; they must match");
  }
  check_sample_shape(path, d.sample_shape, input);
  if (m.count("norm_mean") || m.count("norm_std")) {
    TEMPO_CHECK(m.count("norm_mean") && m.count("norm_std"), path + ": give both norm_mean and norm_std or neither");
    const NamedTensor& mean = m.at("norm_mean");
    const NamedTensor& sd = m.at("norm_std");
    const int64_t c = d.sample_shape[0];
    TEMPO_CHECK(mean.dtype == DType::F32 && sd.dtype == DType::F32 && mean.shape == Shape{c} && sd.shape == Shape{c},
                path + ": norm_mean and norm_std must be F32 with one value per channel (" + std::to_string(c) + ")");
    for (float v : sd.f32) TEMPO_CHECK(v > 0 && std::isfinite(v), path + ": norm_std must be positive");
    for (float v : mean.f32) TEMPO_CHECK(std::isfinite(v), path + ": norm_mean must be finite");
    d.norm_mean = mean.f32;
    d.norm_std = sd.f32;
  }
  if (m.count("augment")) {
    const NamedTensor& a = m.at("augment");
    TEMPO_CHECK(a.dtype == DType::I64 && numel_of(a.shape) == 1 && (a.i64[0] == 0 || a.i64[0] == 1),
                path + ": 'augment' must be one I64, 0 or 1");
    d.cifar_augment = a.i64[0] == 1;
  }
  d.description = path + ": " + counts(d);
  return d;
}

Dataset load_tensors(const std::string& path, const Shape& input) {
  Dataset d = from_tensors(read_safetensors(path), path, input, false);
  d.description = "tensors (" + path + "): " + counts(d);
  return d;
}

// ---- synthetic -------------------------------------------------------------------

Dataset load_synthetic(const std::string& arg, const Shape& input, uint64_t seed) {
  int64_t n = 10000;
  if (!arg.empty()) {
    bool digits = arg.size() <= 9 && arg.find_first_not_of("0123456789") == std::string::npos;
    TEMPO_CHECK(digits && std::stoll(arg) > 0,
          "--data synthetic:" + arg + ": N must be a positive whole number up to 999999999, e.g. synthetic:1000");
    n = std::stoll(arg);
  }
  const int64_t per = numel_of(input);
  const int64_t nt = n / 5;
  TEMPO_CHECK((n + nt) <= (int64_t(1) << 31) / per,
        "--data synthetic:" + arg + ": " + std::to_string(n + nt) + " samples of shape " + shape_str(input) +
            " would need more than 8 GiB; use a smaller N");
  Dataset d;
  d.sample_shape = input;
  std::vector<float> means(static_cast<size_t>(kClasses * per));
  Rng mr = Rng::derive(seed, 0x5e17'0001);
  for (float& m : means) m = static_cast<float>(mr.normal());
  auto fill = [&](int64_t count, uint64_t tag, Tensor& x, std::vector<int64_t>& y) {
    Shape s = {count};
    s.insert(s.end(), input.begin(), input.end());
    alloc_samples(x, s);
    y.resize(static_cast<size_t>(count));
    Rng r = Rng::derive(seed, tag);
    for (int64_t i = 0; i < count; ++i) {
      int64_t label = static_cast<int64_t>(r.below(kClasses));
      y[static_cast<size_t>(i)] = label;
      const float* m = means.data() + label * per;
      float* o = x.data() + i * per;
      for (int64_t k = 0; k < per; ++k) o[k] = m[k] + static_cast<float>(r.normal());
    }
  };
  fill(n, 0x5e17'0002, d.train_x, d.train_y);
  fill(nt, 0x5e17'0003, d.test_x, d.test_y);
  d.description = "synthetic (seed " + std::to_string(seed) + "): " + counts(d);
  return d;
}

}  // namespace

IdxArray parse_idx(const uint8_t* data, size_t size, const std::string& what) {
  const size_t nd = idx_rank(data, size, what);
  const size_t head = 4 + 4 * nd;
  TEMPO_CHECK(size >= head, what + ": file ends inside the IDX header (truncated)" + kIdxHint);
  IdxArray a;
  uint64_t total;
  const bool fits = idx_dims(data, nd, a.dims, total);
  const uint64_t have = size - head;
  if (!fits || total > have) idx_short(what, a.dims, fits, total, have);
  if (total < have) idx_long(what, a.dims, std::to_string(have - total));
  a.bytes.assign(data + head, data + size);
  return a;
}

void parse_cifar(const uint8_t* data, size_t size, const std::string& what, std::vector<float>& x,
                 std::vector<int64_t>& y) {
  const size_t n = cifar_count(size, what);
  cifar_check_labels(data, n, 0, what);
  const size_t x0 = x.size(), y0 = y.size();
  x.resize(x0 + n * kCifarPixels);
  y.resize(y0 + n);
  cifar_decode(data, n, x.data() + x0, y.data() + y0);
}

Dataset dataset_from_tensors(TensorMap tensors, const std::string& what, const Shape& input_shape) {
  return from_tensors(std::move(tensors), what, input_shape, true);
}

std::vector<NamedTensor> dataset_tensors(const Dataset& d) {
  auto images = [](const std::string& name, const Tensor& x) {
    NamedTensor t{name, DType::F32, x.shape(), {}, {}};
    t.f32.assign(x.data(), x.data() + x.numel());
    return t;
  };
  auto labels = [](const std::string& name, const std::vector<int64_t>& y) {
    return NamedTensor{name, DType::I64, {static_cast<int64_t>(y.size())}, {}, y};
  };
  std::vector<NamedTensor> out;
  out.push_back(images("images", d.train_x));
  out.push_back(labels("labels", d.train_y));
  if (!d.test_y.empty()) {
    out.push_back(images("test_images", d.test_x));
    out.push_back(labels("test_labels", d.test_y));
  }
  if (!d.norm_mean.empty()) {
    const int64_t c = static_cast<int64_t>(d.norm_mean.size());
    out.push_back({"norm_mean", DType::F32, {c}, d.norm_mean, {}});
    out.push_back({"norm_std", DType::F32, {c}, d.norm_std, {}});
  }
  out.push_back({"augment", DType::I64, {1}, {}, {d.cifar_augment ? 1 : 0}});
  return out;
}

Dataset load_dataset(const std::string& spec, const Shape& input_shape, uint64_t seed) {
  bool ok_shape = input_shape.size() == 3;
  for (int64_t d : input_shape) ok_shape = ok_shape && d > 0;
  TEMPO_CHECK(ok_shape, "--data " + spec + ": the model's input shape " + shape_str(input_shape) + " is not C×H×W");
  const size_t colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  const bool has_arg = colon != std::string::npos;
  const std::string arg = has_arg ? spec.substr(colon + 1) : "";
  TEMPO_CHECK(!has_arg || !arg.empty(), "--data " + spec + ": nothing after ':'; give a path or count, or drop the ':'");
  if (kind == "fashion-mnist") return load_fashion(has_arg ? arg : "/usr/share/datasets/fashion-mnist", input_shape);
  if (kind == "cifar10") {
    TEMPO_CHECK(has_arg, "--data cifar10 needs a directory: --data cifar10:DIR (the extracted cifar-10-batches-bin)");
    return load_cifar(arg, input_shape);
  }
  if (kind == "tensors") {
    TEMPO_CHECK(has_arg, "--data tensors needs a file: --data tensors:FILE.safetensors");
    return load_tensors(arg, input_shape);
  }
  if (kind == "synthetic") return load_synthetic(arg, input_shape, seed);
  TEMPO_CHECK(kind != "encrypted", "--data " + spec + ": an encrypted data set is opened by `tempo train` with the "
                                   "owner's key release (--owner-key, --attest-dir); see docs/CONFIDENTIAL.md");
  throw Error("--data " + spec +
              ": unknown dataset; use fashion-mnist[:DIR], cifar10:DIR, tensors:FILE or synthetic[:N]");
}

}  // namespace tempo
