// Confidential I/O (P6): the encrypted container (tampering of every kind),
// key files, the simulated attestation and key release, the owner's flow end
// to end through a real worker process with a search of every file written
// and every byte the worker received for plaintext, and sealed checkpoints:
// kill -9 at a random step plus --resume gives bitwise the weights of an
// uninterrupted run.
#include <gtest/gtest.h>
#include <sodium.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <new>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "process_util.h"
#include "test_util.h"
#include "trusted/confidential/confidential.h"
#include "trusted/confidential/attestation.h"
#include "trusted/confidential/container.h"
#include "trusted/data/dataset.h"
#include "trusted/io/file_util.h"
#include "worker/transcript.h"

namespace tempo {
namespace {

namespace fs = std::filesystem;
using testutil::TempDir;

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(g());
  return v;
}

std::vector<uint8_t> file_bytes(const std::string& p) { return read_file(p, "test file"); }

void put_file(const std::string& p, const std::vector<uint8_t>& b) {
  AtomicFile f(p);
  f.write(b.data(), b.size());
  f.commit();
}

// Expects open_container to throw an Error containing `needle`.
void expect_rejected(const std::vector<uint8_t>& file, const SymKey& key, const std::string& needle,
                     const std::string& what) {
  try {
    open_container(file.data(), file.size(), "f", ContainerKind::kData, &key, nullptr);
    ADD_FAILURE() << what << ": accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << what << ": " << e.what();
  }
}

// ---- Container ------------------------------------------------------------------

class Container : public ::testing::Test {
 protected:
  // 2.5 MiB: three chunks of 1 MiB, 1 MiB and 0.5 MiB.
  void SetUp() override {
    payload_ = random_bytes((5u << 20) / 2, 1);
    key_ = random_sym_key();
    write_container(d_ / "c.tenc", ContainerKind::kData, key_, payload_.data(), payload_.size());
    file_ = file_bytes(d_ / "c.tenc");
  }
  size_t header() const { return 8 + 16 + 8 + 16 + 24; }
  size_t chunk(int i) const { return header() + static_cast<size_t>(i) * ((1u << 20) + 17); }
  TempDir d_{"container"};
  std::vector<uint8_t> payload_, file_;
  SymKey key_;
};

TEST_F(Container, RoundTripsAndHidesThePayload) {
  EXPECT_EQ(file_.size(), chunk(2) + (1u << 19) + 17);
  EXPECT_EQ(open_container(file_.data(), file_.size(), "f", ContainerKind::kData, &key_, nullptr), payload_);
  // No 16-byte run of the payload appears in the file.
  const std::string hay(file_.begin(), file_.end());
  for (size_t off = 0; off + 16 <= payload_.size(); off += 65521)
    EXPECT_EQ(hay.find(std::string(payload_.begin() + off, payload_.begin() + off + 16)), std::string::npos);
  for (size_t n : {size_t{0}, size_t{1}, size_t{1} << 20}) {
    std::vector<uint8_t> p = random_bytes(n, 2);
    write_container(d_ / "n.tenc", ContainerKind::kCheckpoint, key_, p.data(), p.size());
    EXPECT_EQ(read_container(d_ / "n.tenc", ContainerKind::kCheckpoint, &key_, nullptr), p) << n;
  }
  const ContainerInfo info = read_container_info(d_ / "c.tenc");
  EXPECT_EQ(info.kind, ContainerKind::kData);
  EXPECT_EQ(info.payload_bytes, payload_.size());
  EXPECT_FALSE(info.to_public_key);
}

TEST_F(Container, EveryFlippedBitIsCaught) {
  std::vector<size_t> where;
  for (size_t i = 0; i < header(); ++i) where.push_back(i);  // every header byte
  std::mt19937 g(7);
  for (int i = 0; i < 60; ++i) where.push_back(header() + g() % (file_.size() - header()));
  for (int c = 0; c < 3; ++c)  // first and last bytes of each chunk (data and tag)
    for (size_t off : {chunk(c), chunk(c) + 1, (c < 2 ? chunk(c + 1) : file_.size()) - 1})
      where.push_back(off);
  for (size_t pos : where) {
    std::vector<uint8_t> bad = file_;
    bad[pos] ^= static_cast<uint8_t>(1u << (pos % 8));
    try {
      open_container(bad.data(), bad.size(), "f", ContainerKind::kData, &key_, nullptr);
      ADD_FAILURE() << "a flipped bit at byte " << pos << " was accepted";
    } catch (const Error&) {
    }
  }
}

TEST_F(Container, TruncationReorderingAndTrailingBytesAreCaught) {
  for (size_t cut : {size_t{0}, size_t{5}, size_t{30}, header() - 1, header(), chunk(1), chunk(1) + 100,
                     chunk(2), file_.size() - 1}) {
    std::vector<uint8_t> t(file_.begin(), file_.begin() + static_cast<long>(cut));
    try {
      open_container(t.data(), t.size(), "f", ContainerKind::kData, &key_, nullptr);
      ADD_FAILURE() << "truncated at " << cut << ": accepted";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_TRUE(m.find("truncated") != std::string::npos || m.find("not a Tempo") != std::string::npos)
          << cut << ": " << m;
    }
  }
  // The first two chunks have the same length: swap them.
  std::vector<uint8_t> swapped = file_;
  std::copy(file_.begin() + static_cast<long>(chunk(0)), file_.begin() + static_cast<long>(chunk(1)),
            swapped.begin() + static_cast<long>(chunk(1)));
  std::copy(file_.begin() + static_cast<long>(chunk(1)), file_.begin() + static_cast<long>(chunk(2)),
            swapped.begin() + static_cast<long>(chunk(0)));
  expect_rejected(swapped, key_, "fails authentication", "swapped chunks");
  // Drop the last chunk and shrink the announced size to match: the header
  // is authenticated, and chunk 2 does not end the stream.
  std::vector<uint8_t> dropped(file_.begin(), file_.begin() + static_cast<long>(chunk(2)));
  const uint64_t two = 2u << 20;
  std::memcpy(dropped.data() + 24, &two, 8);
  expect_rejected(dropped, key_, "fails authentication", "dropped last chunk");
  std::vector<uint8_t> longer = file_;
  longer.push_back(0);
  expect_rejected(longer, key_, "after its last chunk", "trailing byte");
}

TEST_F(Container, WrongKeysAndKindsAreNamed) {
  expect_rejected(file_, random_sym_key(), "different key", "wrong key");
  try {
    open_container(file_.data(), file_.size(), "f", ContainerKind::kModel, &key_, nullptr);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is an encrypted data set, not a model"), std::string::npos) << e.what();
  }
  const BoxKeyPair owner = random_box_keypair(), other = random_box_keypair();
  write_container_to(d_ / "m.tenc", ContainerKind::kModel, owner.pk, payload_.data(), 1000);
  EXPECT_EQ(read_container(d_ / "m.tenc", ContainerKind::kModel, nullptr, &owner),
            std::vector<uint8_t>(payload_.begin(), payload_.begin() + 1000));
  try {
    read_container(d_ / "m.tenc", ContainerKind::kModel, nullptr, &other);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not encrypted to this owner key"), std::string::npos) << e.what();
  }
}

TEST(KeyFiles, KindsAreCheckedAndNeverOverwritten) {
  TempDir d("keys");
  const SymKey k = random_sym_key();
  write_key_file(d / "data.key", kDataKeyLabel, k.data(), k.size());
  EXPECT_EQ(read_sym_key(d / "data.key", kDataKeyLabel), k);
  try {
    read_sym_key(d / "data.key", kSealingKeyLabel);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds a tempo-data-key-v1"), std::string::npos) << e.what();
  }
  EXPECT_THROW(write_key_file(d / "data.key", kDataKeyLabel, k.data(), k.size()), Error);
  EXPECT_EQ(read_sym_key(d / "data.key", kDataKeyLabel), k) << "an existing key must survive";
  put_file(d / "junk", {'h', 'i'});
  EXPECT_THROW(read_sym_key(d / "junk", kDataKeyLabel), Error);
}

// ---- Attestation ------------------------------------------------------------------

class Attestation : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = {{"model", "cnn"}, {"optimizer", {{"lr", 0.01}}}, {"owner_public_key", to_hex(owner_.pk.data(), 32)}};
    binary_ = sha256(reinterpret_cast<const uint8_t*>("tempo"), 5);
    report_ = make_report(binary_, config_, master_.pk);
  }
  CheckedReport check(const std::string& report, bool allow = true) {
    return check_report(report, "r", allow, binary_, config_, owner_.pk);
  }
  void expect_refused(const std::string& report, const std::string& needle, bool allow = true,
                      const nlohmann::json* expected = nullptr, const std::array<uint8_t, 32>* binary = nullptr) {
    try {
      check_report(report, "r", allow, binary ? *binary : binary_, expected ? *expected : config_, owner_.pk);
      ADD_FAILURE() << "accepted; expected: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
  BoxKeyPair owner_ = random_box_keypair(), master_ = random_box_keypair();
  nlohmann::json config_;
  std::array<uint8_t, 32> binary_{};
  std::string report_;
};

TEST_F(Attestation, ReleasedKeyReachesOnlyThatMaster) {
  const CheckedReport r = check(report_);
  EXPECT_EQ(r.master_pk, master_.pk);
  const SymKey data_key = random_sym_key();
  const std::string release = wrap_data_key(data_key, r, owner_);
  const auto sha = sha256(reinterpret_cast<const uint8_t*>(report_.data()), report_.size());
  EXPECT_EQ(unwrap_data_key(release, "w", owner_.pk, master_, sha), data_key);
  // Another master (another ephemeral key), another report, another owner.
  EXPECT_THROW(unwrap_data_key(release, "w", owner_.pk, random_box_keypair(), sha), Error);
  auto other = sha;
  other[0] ^= 1;
  EXPECT_THROW(unwrap_data_key(release, "w", owner_.pk, master_, other), Error);
  EXPECT_THROW(unwrap_data_key(release, "w", random_box_keypair().pk, master_, sha), Error);
}

TEST_F(Attestation, WrongMeasurementsAreRefused) {
  expect_refused(report_, "SIMULATED", false);
  nlohmann::json expected = config_;
  expected["optimizer"]["lr"] = 0.1;
  expect_refused(report_, "differs from the expected one in optimizer", true, &expected);
  auto other_binary = binary_;
  other_binary[3] ^= 1;
  expect_refused(report_, "measurement mismatch: the master runs a binary", true, nullptr, &other_binary);
  // Editing the report (here: the learning rate it states) breaks its signature.
  nlohmann::json edited = nlohmann::json::parse(report_);
  edited["config"]["optimizer"]["lr"] = 0.1;
  expect_refused(edited.dump(), "signature does not verify");
  expect_refused("{\"format\":\"x\"}", "not a Tempo attestation report");
  // A master configured to encrypt the model to someone else.
  nlohmann::json thief = config_;
  thief["owner_public_key"] = to_hex(random_box_keypair().pk.data(), 32);
  expect_refused(make_report(binary_, thief, master_.pk), "another owner key", true, &thief);
}

// ---- The owner's flow through a real worker ----------------------------------------

int run(const std::vector<std::string>& argv, const std::string& log, double seconds = 300) {
  return testutil::wait_exit(testutil::spawn(argv, log), seconds);
}

// 32-byte windows of plaintext, indexed by their first 8 bytes.
class Needles {
 public:
  void add_floats(const float* p, int64_t n, int count, uint32_t seed, const std::string& what) {
    std::mt19937 g(seed);
    for (int i = 0; i < count && n >= 8; ++i) {
      const int64_t off = static_cast<int64_t>(g() % static_cast<uint32_t>(n - 7));
      bool nonzero = true;
      for (int j = 0; j < 8; ++j) nonzero = nonzero && p[off + j] != 0.0f;
      if (!nonzero) continue;  // zeros survive scaling; they prove nothing
      std::string w(reinterpret_cast<const char*>(p + off), 32);
      uint64_t h;
      std::memcpy(&h, w.data(), 8);
      by_prefix_.emplace(h, std::make_pair(w, what));
    }
  }
  size_t size() const { return by_prefix_.size(); }
  // The first needle found in `hay`, or "".
  std::string find_in(const std::vector<uint8_t>& hay) const {
    for (size_t i = 0; i + 32 <= hay.size(); ++i) {
      uint64_t h;
      std::memcpy(&h, hay.data() + i, 8);
      auto range = by_prefix_.equal_range(h);
      for (auto it = range.first; it != range.second; ++it)
        if (std::memcmp(it->second.first.data(), hay.data() + i, 32) == 0) return it->second.second;
    }
    return "";
  }

 private:
  std::unordered_multimap<uint64_t, std::pair<std::string, std::string>> by_prefix_;
};

TEST(OwnerFlow, EncryptedDataInEncryptedModelOutNoPlaintextAnywhere) {
  TempDir d("owner");
  const std::string T = TEMPO_BINARY;
  const std::string run_dir = d / "master", rec = d / "transcripts", att = run_dir + "/attest";
  fs::create_directories(att);
  fs::create_directories(rec);
  ASSERT_EQ(run({T, "owner", "keygen", "--dir", d / "owner"}, d / "keygen.log"), 0) << testutil::read_text(d / "keygen.log");
  ASSERT_EQ(run({T, "owner", "keygen", "--dir", d / "owner"}, d / "keygen2.log"), 1) << "keygen must not overwrite keys";
  EXPECT_NE(testutil::read_text(d / "keygen2.log").find("refusing to overwrite"), std::string::npos);
  const std::string data = run_dir + "/data.tenc";
  ASSERT_EQ(run({T, "owner", "encrypt-data", "--data", "synthetic:480", "--seed", "5", "--data-key",
                 d / "owner/data.key", "-o", data},
                d / "enc.log"),
            0)
      << testutil::read_text(d / "enc.log");

  testutil::WorkerProcess worker(d.path(), "w", {"--record", rec});
  const std::vector<std::string> flags = {
      "--model", "cnn", "--data", "encrypted:" + data, "--seed", "5", "--batch-size", "32", "--steps", "6",
      "--workers", worker.address(), "--owner-key", d / "owner/owner.pub", "--attest-dir", att,
      "--threads", "1", "--no-progress"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = {T, "train"};
    a.insert(a.end(), flags.begin(), flags.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  ASSERT_EQ(run(with({"--print-config", "--checkpoint-every", "2"}), d / "expected.json"), 0);
  const std::string expected = d / "expected.json";
  const pid_t master = testutil::spawn(
      with({"--save", run_dir + "/model.tenc", "--metrics", run_dir + "/metrics.jsonl", "--checkpoint-every", "2",
            "--checkpoint", run_dir + "/ck.tenc", "--sealing-key", run_dir + "/seal.key", "--attest-timeout", "60"}),
      d / "train.log");
  for (int i = 0; i < 300 && !fs::exists(att + "/report.json"); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const std::vector<std::string> release = {T, "owner", "release", "--report", att + "/report.json",
                                            "--owner-key", d / "owner/owner.key", "--data-key",
                                            d / "owner/data.key", "--expect-config", expected, "-o",
                                            att + "/data-key.wrapped"};
  // Without --allow-simulated, and with a configuration that differs from
  // the master's: refused, and no key release written.
  ASSERT_EQ(run(release, d / "rel1.log"), 1);
  EXPECT_NE(testutil::read_text(d / "rel1.log").find("SIMULATED"), std::string::npos);
  std::string other = testutil::read_text(expected);
  other.replace(other.find("\"steps\": 6"), 10, "\"steps\": 7");
  put_file(d / "other.json", std::vector<uint8_t>(other.begin(), other.end()));
  std::vector<std::string> wrong = release;
  wrong[10] = d / "other.json";
  wrong.push_back("--allow-simulated");
  ASSERT_EQ(run(wrong, d / "rel2.log"), 1);
  EXPECT_NE(testutil::read_text(d / "rel2.log").find("measurement mismatch"), std::string::npos)
      << testutil::read_text(d / "rel2.log");
  EXPECT_FALSE(fs::exists(att + "/data-key.wrapped"));
  std::vector<std::string> ok = release;
  ok.push_back("--allow-simulated");
  ASSERT_EQ(run(ok, d / "rel3.log"), 0) << testutil::read_text(d / "rel3.log");
  ASSERT_EQ(testutil::wait_exit(master, 300), 0) << testutil::read_text(d / "train.log");

  // The owner decrypts the model; PyTorch loads it strictly.
  const std::string plain_model = d / "model.safetensors";
  ASSERT_EQ(run({T, "owner", "decrypt-model", "--owner-key", d / "owner/owner.key", "--report",
                 att + "/report.json", "--allow-simulated", "--in", run_dir + "/model.tenc", "-o", plain_model},
                d / "dec.log"),
            0)
      << testutil::read_text(d / "dec.log");
  const std::string py = std::string(TEMPO_PYTHON) + " -c 'import sys; sys.path.insert(0, \"" TEMPO_SOURCE_DIR
                         "/tests/py\"); import tempo_models, safetensors_io as st; m = tempo_models.build(\"cnn\"); "
                         "m.load_state_dict(st.load_torch(\"" + plain_model + "\"), strict=True)'";
  EXPECT_EQ(std::system(py.c_str()), 0) << "PyTorch must load the decrypted model";

  // Plaintext: every training and test image, the initial and the final weights.
  auto model = build_model("cnn", 5);
  const Dataset ds = load_dataset("synthetic:480", model->input_shape, 5);
  Needles needles;
  for (int64_t i = 0; i < ds.train_x.dim(0); ++i)
    needles.add_floats(ds.train_x.data() + i * 784, 784, 1, static_cast<uint32_t>(i), "a training image");
  for (int64_t i = 0; i < ds.test_x.dim(0); ++i)
    needles.add_floats(ds.test_x.data() + i * 784, 784, 1, static_cast<uint32_t>(i), "a test image");
  for (const NamedTensor& t : model->state_tensors())
    if (t.dtype == DType::F32) needles.add_floats(t.f32.data(), static_cast<int64_t>(t.f32.size()), 8, 1, "initial " + t.name);
  const TensorMap final_weights = read_safetensors(plain_model);
  for (const auto& [name, t] : final_weights)
    if (t.dtype == DType::F32) needles.add_floats(t.f32.data(), static_cast<int64_t>(t.f32.size()), 8, 2, "final " + name);
  ASSERT_GT(needles.size(), 600u);
  // The search finds plaintext where there is some.
  EXPECT_NE(needles.find_in(file_bytes(plain_model)), "");

  size_t files = 0, bytes = 0;
  for (const std::string& root : {run_dir, rec})
    for (const auto& e : fs::recursive_directory_iterator(root)) {
      if (!e.is_regular_file()) continue;
      const std::vector<uint8_t> b = file_bytes(e.path());
      ++files;
      bytes += b.size();
      EXPECT_EQ(needles.find_in(b), "") << e.path() << " holds plaintext";
    }
  std::printf("searched %zu files, %.1f MiB (the master's directory and the worker's transcripts) for %zu "
              "plaintext windows\n", files, static_cast<double>(bytes) / (1 << 20), needles.size());
  EXPECT_GT(fs::file_size(rec + "/" + fs::directory_iterator(rec)->path().filename().string()), 0u);

  // A resumed encrypted run needs no second key release: the sealed
  // checkpoint (after step 6) holds the data key.
  ASSERT_EQ(run(with({"--resume", run_dir + "/ck.tenc", "--sealing-key", run_dir + "/seal.key", "--save",
                      run_dir + "/again.tenc", "--attest-timeout", "1"}),
                d / "resume.log"),
            0)
      << testutil::read_text(d / "resume.log");
  // It keeps the attested key (sealed in the checkpoint): the owner accepts
  // its model against the report it released the key to.
  EXPECT_EQ(run({T, "owner", "decrypt-model", "--owner-key", d / "owner/owner.key", "--report",
                 att + "/report.json", "--allow-simulated", "--in", run_dir + "/again.tenc", "-o",
                 d / "again.safetensors"},
                d / "dec2.log"),
            0)
      << testutil::read_text(d / "dec2.log");

  // Damaged or foreign model files: one error, no output.
  std::vector<uint8_t> m = file_bytes(run_dir + "/model.tenc");
  m[m.size() / 2] ^= 4;
  put_file(d / "bad.tenc", m);
  for (const auto& [in, key] : {std::pair<std::string, std::string>{d / "bad.tenc", d / "owner/owner.key"},
                                {run_dir + "/model.tenc", d / "owner/owner.pub"}}) {
    const std::string out = d / "never.safetensors";
    EXPECT_EQ(run({T, "owner", "decrypt-model", "--owner-key", key, "--report", att + "/report.json",
                   "--allow-simulated", "--in", in, "-o", out},
                  d / "bad.log"),
              1);
    EXPECT_FALSE(fs::exists(out));
    EXPECT_NE(testutil::read_text(d / "bad.log").find("tempo: error:"), std::string::npos);
  }
}

// P8 item 4: the owner accepts only a model sealed by the attested master.
// Before, `decrypt-model` opened anything sealed to the owner's public key
// (crypto_box_seal), so a host could hand over a model of its own.
TEST(OwnerFlow, ModelFromAnyoneButTheAttestedMasterIsRefused) {
  TempDir d("auth");
  const std::string T = TEMPO_BINARY;
  ASSERT_EQ(run({T, "owner", "keygen", "--dir", d / "owner"}, d / "keygen.log"), 0);
  const auto owner_pk = read_owner_public(d / "owner/owner.pub");
  const BoxKeyPair master = random_box_keypair(), host = random_box_keypair();
  const nlohmann::json config = {{"model", "mlp"}, {"owner_public_key", to_hex(owner_pk.data(), 32)}};
  const std::string report = make_report(self_binary_sha256(), config, master.pk);
  put_file(d / "report.json", std::vector<uint8_t>(report.begin(), report.end()));
  auto model = build_model("mlp", 3);
  std::vector<uint8_t> plain = serialize_safetensors(model->state_tensors(), "m");
  write_container_from(d / "good.tenc", ContainerKind::kModel, master, owner_pk, plain.data(), plain.size());
  write_container_from(d / "other.tenc", ContainerKind::kModel, host, owner_pk, plain.data(), plain.size());
  write_container_to(d / "anon.tenc", ContainerKind::kModel, owner_pk, plain.data(), plain.size());
  // A forged sender field: the host's box under the master's public key.
  std::vector<uint8_t> forged = file_bytes(d / "other.tenc");
  std::memcpy(forged.data() + 32, master.pk.data(), 32);  // wrap bytes start after the 32-byte fixed header
  put_file(d / "forged.tenc", forged);
  auto decrypt = [&](const std::string& in, const std::string& log, std::vector<std::string> extra = {"--allow-simulated"}) {
    std::vector<std::string> a = {T, "owner", "decrypt-model", "--owner-key", d / "owner/owner.key", "--report",
                                  d / "report.json", "--in", in, "-o", d / "out.safetensors"};
    a.insert(a.end(), extra.begin(), extra.end());
    return run(a, d / log);
  };
  EXPECT_EQ(decrypt(d / "good.tenc", "good.log", {}), 1) << "a simulated report needs --allow-simulated";
  EXPECT_NE(testutil::read_text(d / "good.log").find("SIMULATED"), std::string::npos);
  for (const auto& [file, why] : {std::pair<std::string, std::string>{"other.tenc", "not sealed by the attested master"},
                                  {"anon.tenc", "sealed anonymously"},
                                  {"forged.tenc", "forged"}}) {
    EXPECT_EQ(decrypt(d / file, file + ".log"), 1) << file;
    const std::string log = testutil::read_text(d / (file + ".log"));
    EXPECT_NE(log.find("tempo: error: "), std::string::npos) << log;
    EXPECT_NE(log.find(why), std::string::npos) << file << ": " << log;
    EXPECT_FALSE(fs::exists(d / "out.safetensors")) << file;
  }
  ASSERT_EQ(decrypt(d / "good.tenc", "ok.log"), 0) << testutil::read_text(d / "ok.log");
  EXPECT_EQ(read_safetensors(d / "out.safetensors").size(), model->state_tensors().size());
  // A report naming another owner is refused before any model is opened.
  const BoxKeyPair stranger = random_box_keypair();
  const std::string foreign = make_report(self_binary_sha256(), {{"owner_public_key", to_hex(stranger.pk.data(), 32)}},
                                          master.pk);
  EXPECT_THROW(attested_master_key(foreign, "r", true, owner_pk), Error);
  EXPECT_EQ(attested_master_key(report, "r", true, owner_pk), master.pk);
}

// A master with an owner attests even on plain data, so it needs --attest-dir.
TEST(OwnerFlow, OwnerKeyWithoutAttestDirIsOneClearError) {
  TempDir d("noatt");
  const std::string T = TEMPO_BINARY;
  ASSERT_EQ(run({T, "owner", "keygen", "--dir", d / "owner"}, d / "keygen.log"), 0);
  EXPECT_EQ(run({T, "train", "--model", "mlp", "--data", "synthetic:64", "--steps", "1", "--mode", "tee-only",
                 "--owner-key", d / "owner/owner.pub", "--save", d / "m.tenc", "--no-progress"},
                d / "train.log"),
            1);
  const std::string log = testutil::read_text(d / "train.log");
  EXPECT_NE(log.find("tempo: error: --owner-key: pass --attest-dir"), std::string::npos) << log;
  EXPECT_FALSE(fs::exists(d / "m.tenc"));
}

TEST(OwnerFlow, DamagedDataSetIsRefused) {
  TempDir d("data");
  const SymKey key = random_sym_key();
  auto model = build_model("mlp", 1);
  const Dataset ds = load_dataset("synthetic:100", model->input_shape, 1);
  std::vector<uint8_t> plain = serialize_safetensors(dataset_tensors(ds), "x");
  write_container(d / "d.tenc", ContainerKind::kData, key, plain.data(), plain.size());
  const Dataset back = load_encrypted_dataset(d / "d.tenc", key, model->input_shape);
  ASSERT_EQ(back.train_y, ds.train_y);
  EXPECT_EQ(std::memcmp(back.train_x.data(), ds.train_x.data(), ds.train_x.numel() * sizeof(float)), 0);
  EXPECT_EQ(back.test_y, ds.test_y);
  std::vector<uint8_t> f = file_bytes(d / "d.tenc");
  f[f.size() - 40] ^= 1;
  put_file(d / "bad.tenc", f);
  EXPECT_THROW(load_encrypted_dataset(d / "bad.tenc", key, model->input_shape), Error);
  EXPECT_THROW(load_encrypted_dataset(d / "d.tenc", random_sym_key(), model->input_shape), Error);
}

// ---- Memory hygiene ----------------------------------------------------------------

// The locked memory (VmLck) of a running process, in kB; -1 once it is gone.
long locked_kb(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  if (!f) return -1;
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmLck:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

// train, eval and predict hold plaintext weights and data: each locks its
// memory whatever the data, or, where the locked-memory limit forbids it,
// says so.
TEST(MemoryHygiene, CommandsWithPlaintextLockTheirMemory) {
  struct rlimit rl{};
  const bool can_lock = geteuid() == 0 || (getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur == RLIM_INFINITY);
  TempDir d("lock");
  const std::string T = TEMPO_BINARY;
  ASSERT_EQ(run({T, "train", "--data", "synthetic:64", "--steps", "1", "--batch-size", "32", "--no-progress",
                 "--save", d / "m.safetensors", "--mode", "tee-only"},
                d / "save.log"),
            0);
  const std::vector<std::vector<std::string>> commands = {
      {T, "train", "--data", "synthetic:20000", "--model", "resnet18", "--batch-size", "8", "--no-progress"},
      {T, "eval", "--data", "synthetic:20000", "--init", d / "m.safetensors", "--batch-size", "1"},
      {T, "predict", "--data", "synthetic:20000", "--init", d / "m.safetensors", "--batch-size", "1", "--output",
       d / "p.csv"}};
  for (const auto& args : commands) {
    const pid_t pid = testutil::spawn(args, d / "cmd.log");
    long kb = 0;
    for (int i = 0; i < 400 && kb <= 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
      kb = locked_kb(pid);
      if (kb < 0) break;
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    if (can_lock)
      EXPECT_GT(kb, 0) << args[1] << " did not lock its memory: " << testutil::read_text(d / "cmd.log");
    else
      EXPECT_NE(testutil::read_text(d / "cmd.log").find("cannot lock memory"), std::string::npos) << args[1];
  }
}

// Key holders wipe their secrets when they are destroyed.
// Keys cannot be copied by accident: every further copy is an explicit
// clone(), and a key moved elsewhere leaves zeros behind.
static_assert(!std::is_copy_constructible_v<SymKey> && !std::is_copy_assignable_v<SymKey>);
static_assert(!std::is_copy_constructible_v<Secret> && std::is_nothrow_move_constructible_v<Secret>);
static_assert(!std::is_copy_constructible_v<BoxKeyPair> && !std::is_copy_constructible_v<RunState>);

TEST(MemoryHygiene, SecretsAreMoveOnlyAndMovingWipesTheSource) {
  SymKey a = random_sym_key();
  const SymKey copy = a.clone();
  EXPECT_TRUE(a == copy);
  SymKey b = std::move(a);
  EXPECT_TRUE(b == copy);
  const SymKey zero{};
  EXPECT_TRUE(a == zero) << "the moved-from key must be wiped";  // NOLINT(bugprone-use-after-move)
  RunState s;
  s.secret = random_secret();
  s.data_key = b.clone();
  RunState t = std::move(s);
  EXPECT_TRUE(s.secret == Secret{});  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(*t.data_key == copy);
}

TEST(MemoryHygiene, KeyHoldersWipeTheirSecrets) {
  const Secret s = secret_from_seed(77);
  auto holds_secret = [&](const unsigned char* p, size_t n) {
    for (size_t i = 0; i + s.size() <= n; ++i)
      if (std::memcmp(p + i, s.data(), s.size()) == 0) return true;
    return false;
  };
  alignas(KeyStream) unsigned char ks_mem[sizeof(KeyStream)];
  auto* ks = new (ks_mem) KeyStream(s, 3);
  ks->u32();
  ASSERT_TRUE(holds_secret(ks_mem, sizeof ks_mem));
  ks->~KeyStream();
  EXPECT_FALSE(holds_secret(ks_mem, sizeof ks_mem));
  alignas(RunState) unsigned char rs_mem[sizeof(RunState)];
  auto* rs = new (rs_mem) RunState();
  rs->secret = s.clone();
  ASSERT_TRUE(holds_secret(rs_mem, sizeof rs_mem));
  rs->~RunState();
  EXPECT_FALSE(holds_secret(rs_mem, sizeof rs_mem));
  alignas(BoxKeyPair) unsigned char kp_mem[sizeof(BoxKeyPair)];
  auto* kp = new (kp_mem) BoxKeyPair();
  std::memcpy(kp->sk.data(), s.data(), s.size());
  ASSERT_TRUE(holds_secret(kp_mem, sizeof kp_mem));
  kp->~BoxKeyPair();
  EXPECT_FALSE(holds_secret(kp_mem, sizeof kp_mem));
}

// ---- The attested configuration ------------------------------------------------

// Every `tempo train` flag either changes what --print-config prints (the
// configuration an attestation report measures and a checkpoint must match),
// or is on the list of flags that bear on no security property, with why. A
// new flag that is neither fails here.
TEST(AttestedConfig, EveryTrainFlagIsMeasuredOrListedAsHarmless) {
  TempDir d("flags");
  const std::string T = TEMPO_BINARY;
  ASSERT_EQ(run({T, "owner", "keygen", "--dir", d / "owner"}, d / "keygen.log"), 0);
  put_file(d / "init.bin", std::vector<uint8_t>{1, 2, 3});
  // What a worker sees or what is checked: another value must change the
  // measured configuration.
  const std::map<std::string, std::vector<std::string>> measured = {
      {"--model", {"mlp"}}, {"--data", {"synthetic:100"}}, {"--mode", {"offload"}}, {"--seed", {"3"}},
      {"--batch-size", {"32"}}, {"--init", {d / "init.bin"}}, {"--offload-first", {}}, {"--offload-last", {}},
      {"--local-below", {"0"}}, {"--conv-mode", {"channel"}}, {"--channel-from", {"1"}}, {"--key-scale", {"2"}}, {"--no-key-shift", {}},
      {"--mask-rank", {"8"}}, {"--mask-kind", {"kron"}}, {"--row-mix", {"4"}}, {"--col-mix", {"4"}},
      {"--verify-rounds", {"3"}},
      {"--verify-rate", {"0.5"}}, {"--verify-tolerance", {"8"}}, {"--quarantine-after", {"5"}},
      {"--insecure-key-seed", {"1"}}, {"--no-fallback", {}}, {"--epochs", {"2"}}, {"--steps", {"5"}},
      {"--optimizer", {"adam"}}, {"--lr", {"0.02"}}, {"--momentum", {"0.5"}}, {"--weight-decay", {"0.1"}},
      {"--lr-schedule", {"step"}}, {"--lr-step-size", {"3"}}, {"--lr-gamma", {"0.5"}}, {"--no-shuffle", {}},
      {"--owner-key", {d / "owner/owner.pub"}}, {"--checkpoint-every", {"5"}}, {"--tf32", {}}};
  // Bear on no security property: where to connect and how to authenticate
  // the channel to untrusted workers (they see only ciphertext either way),
  // paths, thread counts and the master's own convolution kernels (both
  // change rounding only), and display.
  const std::set<std::string> harmless = {
      "--workers", "--token-file", "--tls-ca", "--tls-cert", "--tls-key", "--local-backend", "--worker-timeout",
      "--threads", "--conv-algo", "--save", "--metrics", "--no-progress", "--attest-dir", "--attest-timeout",
      "--checkpoint", "--sealing-key", "--resume", "--print-config", "--help"};
  ASSERT_EQ(run({T, "train", "--help"}, d / "help.txt"), 0);
  const std::string help = testutil::read_text(d / "help.txt");
  // The options' own lines: "  --name ..." or "  -h,--name ...".
  std::set<std::string> flags;
  std::istringstream lines(help);
  for (std::string line; std::getline(lines, line);) {
    const size_t b = line.find_first_not_of(' ');
    if (b == std::string::npos || line[b] != '-') continue;
    const size_t p = line.find("--", b);
    if (p == std::string::npos || p > b + 3) continue;
    size_t e = p + 2;
    while (e < line.size() && (std::isalnum(static_cast<unsigned char>(line[e])) || line[e] == '-')) ++e;
    flags.insert(line.substr(p, e - p));
  }
  ASSERT_GT(flags.size(), 40u) << help;
  auto config = [&](const std::vector<std::string>& extra) {
    std::vector<std::string> a = {T, "train", "--print-config"};
    a.insert(a.end(), extra.begin(), extra.end());
    EXPECT_EQ(run(a, d / "config.json"), 0) << testutil::read_text(d / "config.json");
    return testutil::read_text(d / "config.json");
  };
  const std::string base = config({});
  for (const std::string& f : flags) {
    if (harmless.count(f)) continue;
    auto it = measured.find(f);
    if (it == measured.end()) {
      ADD_FAILURE() << f << " is neither measured by --print-config nor listed as bearing on no security property";
      continue;
    }
    std::vector<std::string> extra = {f};
    extra.insert(extra.end(), it->second.begin(), it->second.end());
    EXPECT_NE(config(extra), base) << f << " does not change the measured configuration";
  }
  for (const auto& [f, v] : measured) EXPECT_TRUE(flags.count(f)) << f << " is no longer a train flag";
}

// ---- Sealed checkpoints -------------------------------------------------------------

struct ResumeCase {
  std::string mode;
  std::vector<std::string> extra;
  std::string steps = "60";
  // Tee-only resumes bitwise; a tempo-mode resume draws fresh keys, so it
  // continues within the parity tolerance of DESIGN.md §4 instead.
  bool bitwise = true;
};

std::vector<std::string> train_args(const TempDir& d, const ResumeCase& rc, const std::string& save,
                                     std::vector<std::string> more) {
  std::vector<std::string> a = {TEMPO_BINARY, "train", "--model", "cnn", "--data", "synthetic:1600",
                                "--batch-size", "32", "--epochs", "2", "--steps", rc.steps, "--threads", "1",
                                "--seed", "4", "--mode", rc.mode, "--no-progress", "--save", save,
                                "--checkpoint", d / "ck.tenc", "--sealing-key", d / "seal.key"};
  a.insert(a.end(), rc.extra.begin(), rc.extra.end());
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

int64_t steps_logged(const std::string& metrics) {
  const std::string m = testutil::read_text(metrics);
  int64_t n = 0;
  for (size_t p = m.find("\"kind\":\"step\""); p != std::string::npos; p = m.find("\"kind\":\"step\"", p + 1)) ++n;
  return n;
}

// kill -9 at a random step, then --resume: bitwise the weights of a run
// that was never interrupted (2 epochs of 50 steps, stopping at step 60), or
// in tempo mode within the tolerance and not bitwise (fresh keys).
// With SIGINT (Ctrl-C) the run finishes its step, seals a checkpoint of it
// (the interval is never reached), and exits 130.
void kill_and_resume(const ResumeCase& rc, int sig = SIGKILL) {
  TempDir d("resume");
  ASSERT_EQ(run(train_args(d, rc, d / "full.safetensors", {}), d / "full.log"), 0) << testutil::read_text(d / "full.log");
  std::random_device rd;
  const int64_t steps = std::stoll(rc.steps);
  const int64_t kill_at = 4 + static_cast<int64_t>(rd() % static_cast<unsigned>(steps - 10));
  std::printf("%s: signal %d after step %lld\n", rc.mode.c_str(), sig, static_cast<long long>(kill_at));
  const std::string metrics = d / "m.jsonl";
  const std::string every = sig == SIGKILL ? "3" : "1000";
  const pid_t pid = testutil::spawn(
      train_args(d, rc, d / "res.safetensors", {"--checkpoint-every", every, "--metrics", metrics}), d / "part.log");
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (steps_logged(metrics) < kill_at && std::chrono::steady_clock::now() < end &&
         waitpid(pid, nullptr, WNOHANG) == 0)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(pid, sig);
  if (sig == SIGKILL) {
    EXPECT_EQ(testutil::wait_exit(pid, 30), 128 + SIGKILL) << "the run ended before the kill";
    EXPECT_FALSE(fs::exists(d / "res.safetensors"));
  } else {
    EXPECT_EQ(testutil::wait_exit(pid, 60), 130) << testutil::read_text(d / "part.log");
    EXPECT_NE(testutil::read_text(d / "part.log").find("continue with --resume"), std::string::npos)
        << testutil::read_text(d / "part.log");
  }
  ASSERT_EQ(run(train_args(d, rc, d / "res.safetensors",
                           {"--checkpoint-every", every, "--metrics", metrics, "--resume", d / "ck.tenc"}),
                d / "resume.log"),
            0)
      << testutil::read_text(d / "resume.log");
  if (rc.bitwise) {
    EXPECT_EQ(testutil::read_text(d / "res.safetensors"), testutil::read_text(d / "full.safetensors"))
        << rc.mode << ": resumed weights differ from the uninterrupted run (killed after step " << kill_at << ")";
  } else {
    const double err = testutil::max_rel_error(d / "res.safetensors", d / "full.safetensors");
    std::printf("%s: resumed run within %.3g·max|w| of the uninterrupted one\n", rc.mode.c_str(), err);
    // Fresh keys move float32 rounding, which ReLU and max-pool decisions
    // amplify: six key seeds of this 30-step run differ from tee-only by
    // 4.5e-7 to 7.4e-3 (docs/BENCHMARKS.md, "Tempo mode against PyTorch").
    EXPECT_LT(err, 3e-2);
    EXPECT_NE(testutil::read_text(d / "res.safetensors"), testutil::read_text(d / "full.safetensors"))
        << "a resumed tempo run reproduced the original's rounding: it reused its keys";
  }
  // The metrics hold every step exactly once, in order.
  const std::string m = testutil::read_text(metrics);
  int64_t expect = 1;
  for (size_t p = m.find("\"step\":"); p != std::string::npos; p = m.find("\"step\":", p + 1))
    EXPECT_EQ(std::stoll(m.substr(p + 7)), expect++) << m;
  EXPECT_EQ(expect, steps + 1);
}

// --local-below 0 offloads as runs before the flag did, and its measured
// configuration is theirs: a checkpoint sealed before the flag existed
// resumes with --local-below 0 (the default is measured).
TEST(AttestedConfig, LocalBelowZeroMeasuresAsBeforeTheFlag) {
  TrainConfig c;
  c.data = "synthetic:64";
  EXPECT_EQ(run_config(c).at("local_below"), kDefaultLocalBelow);
  c.local_below = 0;
  EXPECT_FALSE(run_config(c).contains("local_below"));
  c.mode = "tee-only";
  c.local_below = kDefaultLocalBelow;
  EXPECT_FALSE(run_config(c).contains("local_below")) << "tee-only offloads nothing";
}

TEST(Checkpoint, KillAndResumeIsBitwiseTeeOnly) { kill_and_resume({"tee-only", {}}); }

TEST(Checkpoint, CtrlCSealsTheStepAndResumesBitwise) { kill_and_resume({"tee-only", {}}, SIGINT); }

TEST(Checkpoint, KillAndResumeTempoDrawsFreshKeys) {
  // Even with a fixed (insecure) key seed, which the uninterrupted run shares.
  kill_and_resume({"tempo", {"--workers", "local:1", "--insecure-key-seed", "9"}, "30", false});
}

// The ciphertexts a resumed execution sends, as its worker recorded them
// (`tempo worker --record`): the received matrices' bytes.
std::set<std::string> sent_matrices(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& f : fs::directory_iterator(dir))
    for (const TranscriptRecord& r : read_transcript(f.path().string()))
      if (r.received)
        out.insert(std::string(reinterpret_cast<const char*>(r.data.data()), r.data.size() * sizeof(float)));
  return out;
}

TEST(Checkpoint, ExecutionsResumedFromOneCheckpointShareNoCiphertext) {
  // A host replays one sealed checkpoint twice. Each execution draws its own
  // keys: no matrix one worker receives is sent again to the other.
  TempDir d("replay");
  const ResumeCase rc{"tempo", {"--checkpoint-every", "5"}, "12"};  // the last checkpoint: after step 10
  ASSERT_EQ(run(train_args(d, rc, d / "a.safetensors", {"--workers", "local:1"}), d / "a.log"), 0)
      << testutil::read_text(d / "a.log");
  std::vector<std::set<std::string>> sent;
  for (const std::string run_name : {"r1", "r2"}) {
    fs::create_directories(d / run_name);
    fs::copy_file(d / "ck.tenc", d / (run_name + ".tenc"));
    testutil::WorkerProcess w(d.path(), run_name + "w", {"--record", d / run_name});
    const ResumeCase again{"tempo", {}, "12"};
    ASSERT_EQ(run(train_args(d, again, d / (run_name + ".safetensors"),
                             {"--workers", w.address(), "--resume", d / (run_name + ".tenc")}),
                  d / (run_name + ".log")),
              0)
        << testutil::read_text(d / (run_name + ".log"));
    w.stop(SIGTERM);
    sent.push_back(sent_matrices(d / run_name));
    ASSERT_GT(sent.back().size(), 10u) << "the worker recorded nothing";
  }
  size_t common = 0;
  for (const std::string& m : sent[1]) common += sent[0].count(m);
  std::printf("two executions resumed from one checkpoint: %zu and %zu matrices sent, %zu in common\n",
              sent[0].size(), sent[1].size(), common);
  EXPECT_EQ(common, 0u);
}

TEST(Checkpoint, ResumeRefusesAnOlderCheckpoint) {
  // A run checkpoints after steps 7 and 14; a copy of the one after 14 is
  // kept; resuming it once seals newer checkpoints (monotonic counter beside
  // the sealing key), after which the copy is refused as a rollback.
  TempDir d("secret");
  const ResumeCase rc{"tempo", {"--workers", "local:1", "--checkpoint-every", "7"}, "20"};
  ASSERT_EQ(run(train_args(d, rc, d / "a.safetensors", {}), d / "a.log"), 0) << testutil::read_text(d / "a.log");
  EXPECT_EQ(testutil::read_text(d / "seal.key.counter"), "2\n");
  fs::copy_file(d / "ck.tenc", d / "old.tenc");
  const ResumeCase more{"tempo", {"--workers", "local:1", "--checkpoint-every", "3"}, "20"};
  ASSERT_EQ(run(train_args(d, more, d / "b.safetensors", {"--resume", d / "ck.tenc"}), d / "b.log"), 0)
      << testutil::read_text(d / "b.log");
  EXPECT_NE(testutil::read_text(d / "b.log").find("after step 14"), std::string::npos) << testutil::read_text(d / "b.log");
  EXPECT_LT(testutil::max_rel_error(d / "a.safetensors", d / "b.safetensors"), 5e-3);
  EXPECT_EQ(testutil::read_text(d / "seal.key.counter"), "4\n");  // after steps 15 and 18
  EXPECT_EQ(run(train_args(d, more, d / "c.safetensors", {"--resume", d / "old.tenc"}), d / "old.log"), 1);
  EXPECT_NE(testutil::read_text(d / "old.log").find("older than the last one this master sealed"), std::string::npos)
      << testutil::read_text(d / "old.log");
  EXPECT_FALSE(fs::exists(d / "c.safetensors"));
  // The newest checkpoint still resumes.
  ASSERT_EQ(run(train_args(d, more, d / "n.safetensors", {"--resume", d / "ck.tenc"}), d / "new.log"), 0)
      << testutil::read_text(d / "new.log");
  EXPECT_EQ(testutil::read_text(d / "new.log").find("--conv-algo"), std::string::npos) << testutil::read_text(d / "new.log");
  // Other convolution kernels in the master resume too, with a warning that
  // the rounding moves.
  ASSERT_EQ(run(train_args(d, more, d / "k.safetensors", {"--resume", d / "ck.tenc", "--conv-algo", "direct"}),
                d / "k.log"),
            0)
      << testutil::read_text(d / "k.log");
  EXPECT_NE(testutil::read_text(d / "k.log").find("made with --conv-algo winograd, this run has direct"),
            std::string::npos)
      << testutil::read_text(d / "k.log");
  // Other settings, another sealing key, a damaged checkpoint: one error each.
  EXPECT_EQ(run(train_args(d, rc, d / "c.safetensors", {"--resume", d / "ck.tenc", "--lr", "0.02"}), d / "c.log"), 1);
  EXPECT_NE(testutil::read_text(d / "c.log").find("other settings: optimizer"), std::string::npos)
      << testutil::read_text(d / "c.log");
  const SymKey k = random_sym_key();
  write_key_file(d / "other.key", kSealingKeyLabel, k.data(), k.size());
  std::vector<std::string> a = train_args(d, rc, d / "c.safetensors", {"--resume", d / "ck.tenc"});
  *std::find(a.begin(), a.end(), d / "seal.key") = d / "other.key";
  EXPECT_EQ(run(a, d / "c2.log"), 1);
  EXPECT_NE(testutil::read_text(d / "c2.log").find("different key"), std::string::npos) << testutil::read_text(d / "c2.log");
  std::vector<uint8_t> ck = file_bytes(d / "ck.tenc");
  ck[ck.size() / 3] ^= 0x10;
  put_file(d / "ck.tenc", ck);
  EXPECT_EQ(run(train_args(d, rc, d / "c.safetensors", {"--resume", d / "ck.tenc"}), d / "c3.log"), 1);
  EXPECT_NE(testutil::read_text(d / "c3.log").find("fails authentication"), std::string::npos);
  EXPECT_FALSE(fs::exists(d / "c.safetensors"));
}

}  // namespace
}  // namespace tempo
