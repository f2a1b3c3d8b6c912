// Safetensors reader/writer: round trips, atomic writes, corrupt files, and
// interop with tests/py/safetensors_io.py.
#include "trusted/io/safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "common/error.h"

namespace tempo {
namespace {

namespace fs = std::filesystem;

class Safetensors : public testing::Test {
 protected:
  void SetUp() override {
    std::string t = testing::TempDir() + "tempo_st_XXXXXX";
    ASSERT_NE(mkdtemp(t.data()), nullptr);
    dir_ = t;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  std::vector<std::string> listing() const {
    std::vector<std::string> r;
    for (const auto& e : fs::directory_iterator(dir_)) r.push_back(e.path().filename().string());
    std::sort(r.begin(), r.end());
    return r;
  }
  std::string dir_;
};

NamedTensor f32(const std::string& name, Shape shape, std::vector<float> v) {
  NamedTensor t;
  t.name = name;
  t.dtype = DType::F32;
  t.shape = std::move(shape);
  t.f32 = std::move(v);
  return t;
}

NamedTensor i64(const std::string& name, Shape shape, std::vector<int64_t> v) {
  NamedTensor t;
  t.name = name;
  t.dtype = DType::I64;
  t.shape = std::move(shape);
  t.i64 = std::move(v);
  return t;
}

std::vector<uint8_t> read_bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

// A file image from a header text and a data area.
std::vector<uint8_t> image(const std::string& header, size_t data_bytes) {
  std::vector<uint8_t> r(8 + header.size() + data_bytes, 0x5a);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) r[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(r.data() + 8, header.data(), header.size());
  return r;
}

// Parses and expects a tempo::Error whose message contains every needle.
void expect_error(const std::vector<uint8_t>& img, std::vector<std::string> needles) {
  needles.push_back("bad.safetensors");
  try {
    parse_safetensors(img.data(), img.size(), "bad.safetensors");
    ADD_FAILURE() << "no error; expected one mentioning " << needles[0];
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST_F(Safetensors, RoundTripF32AndI64) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  std::vector<NamedTensor> ts = {
      f32("conv.weight", {2, 1, 2, 2}, {1, -2, 3.5f, 1e-38f, -0.0f, nan, inf, -inf}),
      i64("bn.num_batches_tracked", {}, {123456789012345LL}),
      f32("scalar", {}, {0.25f}),
      f32("empty", {0, 5}, {}),
      i64("empty_i", {0}, {}),
      i64("ids", {3}, {std::numeric_limits<int64_t>::min(), -1, std::numeric_limits<int64_t>::max()}),
  };
  write_safetensors(path("w.safetensors"), ts);
  TensorMap m = read_safetensors(path("w.safetensors"));
  ASSERT_EQ(m.size(), ts.size());
  for (const NamedTensor& t : ts) {
    ASSERT_TRUE(m.count(t.name)) << t.name;
    const NamedTensor& r = m.at(t.name);
    EXPECT_EQ(r.name, t.name);
    EXPECT_EQ(r.dtype, t.dtype) << t.name;
    EXPECT_EQ(r.shape, t.shape) << t.name;
    ASSERT_EQ(r.f32.size(), t.f32.size()) << t.name;
    if (!t.f32.empty()) {  // bit-exact (NaN, -0)
      EXPECT_EQ(std::memcmp(r.f32.data(), t.f32.data(), 4 * t.f32.size()), 0) << t.name;
    }
    EXPECT_EQ(r.i64, t.i64) << t.name;
  }
  EXPECT_EQ(listing(), std::vector<std::string>{"w.safetensors"});
}

TEST_F(Safetensors, HeaderKeepsOrderAndAlignsData) {
  write_safetensors(path("o.safetensors"), {f32("z", {1}, {1}), f32("a", {2}, {2, 3}), i64("m", {}, {4})});
  std::vector<uint8_t> b = read_bytes(path("o.safetensors"));
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | b[i];
  EXPECT_EQ(n % 8, 0u);
  std::string h(b.begin() + 8, b.begin() + 8 + static_cast<long>(n));
  EXPECT_LT(h.find("\"z\""), h.find("\"a\""));
  EXPECT_LT(h.find("\"a\""), h.find("\"m\""));
  EXPECT_EQ(b.size(), 8 + n + 4 + 8 + 8);
}

TEST_F(Safetensors, OverwriteIsAtomicAndLeavesNoTempFiles) {
  const std::string p = path("w.safetensors");
  write_safetensors(p, {f32("a", {1}, {1})});
  write_safetensors(p, {f32("a", {2}, {5, 6})});
  EXPECT_EQ(read_safetensors(p).at("a").f32, (std::vector<float>{5, 6}));
  EXPECT_EQ(listing(), std::vector<std::string>{"w.safetensors"});
}

TEST_F(Safetensors, FailedWriteKeepsOriginal) {
  const std::string p = path("w.safetensors");
  write_safetensors(p, {f32("a", {1}, {7})});
  const std::vector<uint8_t> before = read_bytes(p);
  // Data size does not match the shape.
  EXPECT_THROW(write_safetensors(p, {f32("a", {3}, {1, 2})}), Error);
  // Duplicate and reserved names.
  EXPECT_THROW(write_safetensors(p, {f32("a", {1}, {1}), f32("a", {1}, {1})}), Error);
  EXPECT_THROW(write_safetensors(p, {f32("__metadata__", {1}, {1})}), Error);
  EXPECT_THROW(write_safetensors(p, {f32("", {1}, {1})}), Error);
  EXPECT_THROW(write_safetensors(p, {f32("neg", {-1}, {})}), Error);
  EXPECT_EQ(read_bytes(p), before);
  EXPECT_EQ(listing(), std::vector<std::string>{"w.safetensors"});
}

TEST_F(Safetensors, FailureAfterTempFileRemovesIt) {
  // The temporary file is written, but renaming it over a directory fails.
  fs::create_directory(path("target"));
  fs::path keep = fs::path(path("target")) / "keep";
  std::ofstream(keep.string()) << "x";
  EXPECT_THROW(write_safetensors(path("target"), {f32("a", {1000}, std::vector<float>(1000, 1.0f))}), Error);
  EXPECT_EQ(listing(), std::vector<std::string>{"target"});
  EXPECT_TRUE(fs::is_directory(path("target")));
  EXPECT_TRUE(fs::exists(keep));
}

TEST_F(Safetensors, WriteIntoMissingDirectoryFails) {
  const std::string p = path("no/such/dir/w.safetensors");
  try {
    write_safetensors(p, {f32("a", {1}, {1})});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
  EXPECT_TRUE(listing().empty());
}

TEST_F(Safetensors, MissingFileNamesThePath) {
  try {
    read_safetensors(path("absent.safetensors"));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("absent.safetensors"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_safetensors(dir_), Error);  // a directory
}

TEST_F(Safetensors, TruncatedAtEveryPointIsAnError) {
  write_safetensors(path("w.safetensors"), {f32("a", {2, 2}, {1, 2, 3, 4}), i64("b", {2}, {1, 2})});
  const std::vector<uint8_t> full = read_bytes(path("w.safetensors"));
  parse_safetensors(full.data(), full.size(), "bad.safetensors");
  for (size_t cut = 0; cut < full.size(); ++cut) {
    std::vector<uint8_t> img(full.begin(), full.begin() + static_cast<long>(cut));
    SCOPED_TRACE("cut at " + std::to_string(cut));
    expect_error(img, {});
  }
}

TEST_F(Safetensors, HugeHeaderLength) {
  for (uint64_t n : {~uint64_t(0), uint64_t(1) << 63, uint64_t(200) << 20, uint64_t(1000)}) {
    std::vector<uint8_t> img = image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
    for (int i = 0; i < 8; ++i) img[i] = static_cast<uint8_t>(n >> (8 * i));
    SCOPED_TRACE(n);
    expect_error(img, {"header length"});
  }
}

TEST_F(Safetensors, BadJson) {
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", 4), {"JSON"});
  expect_error(image("not json at all!", 0), {"JSON"});
  expect_error(image("[1, 2, 3]", 0), {"not a JSON object"});
  expect_error(image(std::string("{\"a\xff\":1}"), 0), {"JSON"});
  expect_error(image(R"({"a":[1,2]})", 0), {"'a'"});
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1]}})", 4), {"'a'", "data_offsets"});
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", 4), {"'a'", "unknown field"});
}

TEST_F(Safetensors, UnsupportedDtypeIsNamed) {
  expect_error(image(R"({"half":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})", 4), {"'half'", "F16", "F32"});
  expect_error(image(R"({"x":{"dtype":7,"shape":[2],"data_offsets":[0,4]}})", 4), {"'x'", "dtype"});
}

TEST_F(Safetensors, BadShapes) {
  expect_error(image(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), {"'a'", "shape"});
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4), {"'a'", "shape"});
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}})", 4),
               {"'a'", "shape"});
  expect_error(
      image(R"({"a":{"dtype":"I64","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}})", 8),
      {"'a'"});
  // A zero dimension makes an empty tensor even next to huge ones.
  auto img = image(R"({"a":{"dtype":"F32","shape":[1099511627776,0],"data_offsets":[0,0]}})", 0);
  EXPECT_EQ(parse_safetensors(img.data(), img.size(), "x").at("a").f32.size(), 0u);
  // ... but the other dimensions' product must still fit in int64.
  expect_error(image(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}})", 0),
               {"'a'", "too large"});
}

TEST_F(Safetensors, BadOffsets) {
  // Out of range.
  expect_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4), {"'a'", "data_offsets"});
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551612,18446744073709551616]}})", 4),
               {"'a'"});
  // Mismatch with dtype size × numel.
  expect_error(image(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,4]}})", 4), {"'a'", "needs 8"});
  // End before begin, negative, wrong arity.
  expect_error(image(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4), {"'a'"});
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 4), {"'a'"});
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 4), {"'a'"});
  // Overlap.
  expect_error(image(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                     12),
               {"overlap", "'a'", "'b'"});
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                     4),
               {"overlap"});
  // Gap.
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), {"'a'", "gap"});
}

TEST_F(Safetensors, TrailingBytes) {
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 5), {"trailing"});
  expect_error(image(R"({})", 1), {"trailing"});
  auto ok = image(R"({})", 0);
  EXPECT_TRUE(parse_safetensors(ok.data(), ok.size(), "x").empty());
}

TEST_F(Safetensors, DuplicateNames) {
  expect_error(image(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                     R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                     8),
               {"'a'", "twice"});
  expect_error(image(R"({"a":{"dtype":"F32","dtype":"I64","shape":[1],"data_offsets":[0,4]}})", 4), {"twice"});
}

TEST_F(Safetensors, Metadata) {
  auto ok = image(R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  TensorMap m = parse_safetensors(ok.data(), ok.size(), "x");
  EXPECT_EQ(m.size(), 1u);
  EXPECT_TRUE(m.count("a"));
  expect_error(image(R"({"__metadata__":{"format":1}})", 0), {"__metadata__"});
  expect_error(image(R"({"__metadata__":[]})", 0), {"__metadata__"});
}

// ---- Interop with tests/py/safetensors_io.py ----------------------------------

int run_python(const std::string& code) {
  const std::string prelude = "import sys; sys.path.insert(0, \"" TEMPO_SOURCE_DIR "/tests/py\"); "
                              "import numpy as np, safetensors_io as st\n";
  // The code is passed in single quotes: it must not contain any.
  EXPECT_EQ(code.find('\''), std::string::npos);
  std::string cmd = std::string(TEMPO_PYTHON) + " -c '" + prelude + code + "'";
  return std::system(cmd.c_str());
}

TEST_F(Safetensors, PythonWritesCppReads) {
  const std::string p = path("py.safetensors");
  ASSERT_EQ(run_python("st.save(\"" + p +
                       "\", {\"w\": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "
                       "\"n\": np.array(42, dtype=np.int64), \"e\": np.zeros((0, 4), np.float32), "
                       "\"l\": np.array([-5, 1 << 40], dtype=np.int64)}, metadata={\"format\": \"pt\"})"),
            0);
  TensorMap m = read_safetensors(p);
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m.at("w").shape, (Shape{2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(m.at("w").f32[i], static_cast<float>(i) / 7.0f);
  EXPECT_EQ(m.at("n").dtype, DType::I64);
  EXPECT_EQ(m.at("n").shape, Shape{});
  EXPECT_EQ(m.at("n").i64, std::vector<int64_t>{42});
  EXPECT_EQ(m.at("e").shape, (Shape{0, 4}));
  EXPECT_EQ(m.at("l").i64, (std::vector<int64_t>{-5, int64_t(1) << 40}));
}

TEST_F(Safetensors, CppWritesPythonReads) {
  const std::string p = path("cpp.safetensors");
  write_safetensors(p, {f32("fc.weight", {2, 2}, {0.5f, -1.5f, 3.0f, 1e-7f}), i64("steps", {}, {7}),
                        f32("none", {0}, {})});
  ASSERT_EQ(run_python("d = st.load(\"" + p +
                       "\")\n"
                       "assert list(d) == [\"fc.weight\", \"steps\", \"none\"], list(d)\n"
                       "assert d[\"fc.weight\"].dtype == np.float32 and d[\"fc.weight\"].shape == (2, 2)\n"
                       "assert (d[\"fc.weight\"] == np.array([[0.5, -1.5], [3.0, 1e-7]], np.float32)).all()\n"
                       "assert d[\"steps\"].dtype == np.int64 and d[\"steps\"].shape == () and d[\"steps\"] == 7\n"
                       "assert d[\"none\"].shape == (0,)\n"
                       "t = st.load_torch(\"" + p + "\")\n"
                       "assert t[\"fc.weight\"].shape == (2, 2) and int(t[\"steps\"]) == 7\n"),
            0);
}

}  // namespace
}  // namespace tempo
