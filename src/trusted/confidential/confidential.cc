#include "trusted/confidential/confidential.h"

#include <sodium.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "common/error.h"
#include "trusted/confidential/attestation.h"
#include "trusted/io/file_util.h"
#include "trusted/io/safetensors.h"

namespace tempo {

namespace {

constexpr const char* kReportName = "report.json";
constexpr const char* kReleaseName = "data-key.wrapped";

std::string hex(const std::array<uint8_t, 32>& b) { return to_hex(b.data(), b.size()); }

// 32 bytes as an I64[4] tensor and back (checkpoints hold only F32 and I64).
NamedTensor bytes32(const std::string& name, const uint8_t* p) {
  NamedTensor t{name, DType::I64, {4}, {}, std::vector<int64_t>(4)};
  std::memcpy(t.i64.data(), p, 32);
  return t;
}
NamedTensor scalar(const std::string& name, int64_t v) { return {name, DType::I64, {1}, {}, {v}}; }

}  // namespace

std::string encrypted_data_path(const std::string& spec) {
  const std::string prefix = "encrypted:";
  if (spec.rfind(prefix, 0) != 0) return "";
  TEMPO_CHECK(spec.size() > prefix.size(), "--data encrypted needs a file: --data encrypted:FILE (made by "
                                           "`tempo owner encrypt-data`)");
  return spec.substr(prefix.size());
}

nlohmann::json run_config(const TrainConfig& cfg) {
  nlohmann::json c;
  c["format"] = "tempo-run-config-v1";
  c["model"] = cfg.model;
  const std::string enc = encrypted_data_path(cfg.data);
  if (!enc.empty()) {
    c["data"] = "encrypted";
    const ContainerInfo info = read_container_info(enc);
    TEMPO_CHECK(info.kind == ContainerKind::kData,
                enc + " is an encrypted " + std::string(container_kind_name(info.kind)) + ", not a data set");
    c["data_id"] = hex(info.id);
  } else {
    c["data"] = cfg.data;
  }
  c["mode"] = cfg.mode;
  c["seed"] = cfg.seed;
  c["batch_size"] = cfg.batch_size;
  c["epochs"] = cfg.epochs;
  c["steps"] = cfg.steps;
  c["shuffle"] = cfg.shuffle;
  c["optimizer"] = {{"kind", cfg.optim.kind},         {"lr", cfg.optim.lr},
                    {"momentum", cfg.optim.momentum}, {"weight_decay", cfg.optim.weight_decay},
                    {"schedule", cfg.optim.schedule}, {"step_size", cfg.optim.step_size},
                    {"gamma", cfg.optim.gamma}};
  if (!cfg.init.empty()) c["init_sha256"] = hex(sha256_file(cfg.init));
  if (cfg.mode != "tee-only") {
    c["offload_first"] = cfg.offload_first;
    c["offload_last"] = cfg.offload_last;
    // Not written for 0, which offloads as runs before the flag did: their
    // configurations (and sealed checkpoints) stay what they were, and
    // resume with --local-below 0.
    if (cfg.local_below != 0) c["local_below"] = cfg.local_below;
    c["conv_mode"] = cfg.conv_mode;
    c["channel_from"] = cfg.channel_from;
    c["key_scale"] = cfg.offload.key_scale;
    c["key_shift"] = cfg.offload.key_shift;
    c["mask_rank"] = cfg.offload.mask_rank;
    // Only when not the default, so that the configurations of runs with
    // the default mask stay what they were.
    if (cfg.offload.mask_kind != MaskKind::kDense) c["mask_kind"] = mask_kind_name(cfg.offload.mask_kind);
    c["row_mix"] = cfg.offload.row_mix;
    c["col_mix"] = cfg.offload.col_mix;
    c["verify"] = {{"rounds", cfg.offload.verify.rounds},
                   {"rate", cfg.offload.verify.rate},
                   {"tolerance", cfg.offload.verify.tolerance}};
    c["quarantine_after"] = cfg.offload.quarantine_after;
    c["fallback"] = cfg.offload.fallback;
    c["tf32"] = cfg.remote.tf32;
    if (cfg.insecure_key_seed >= 0) c["insecure_key_seed"] = cfg.insecure_key_seed;
  }
  if (!cfg.owner_key.empty()) c["owner_public_key"] = hex(read_owner_public(cfg.owner_key));
  // Whether the state (data key included) is sealed to disk at all; how
  // often is not measured, so a resumed run may choose another interval.
  c["sealed_checkpoints"] = cfg.checkpoint_every > 0;
  return c;
}

Attestation attest(const TrainConfig& cfg, const nlohmann::json& config) {
  TEMPO_CHECK(!cfg.attest_dir.empty(),
              "--owner-key: pass --attest-dir DIR, where the master writes its attestation report (the owner "
              "checks it before releasing a data key, and to accept the trained model, which the master seals "
              "with the report's key)");
  struct stat st;
  TEMPO_CHECK(::stat(cfg.attest_dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode),
              "--attest-dir " + cfg.attest_dir + " is not a directory (create it first)");
  const std::string report_path = cfg.attest_dir + "/" + kReportName;
  ::unlink((cfg.attest_dir + "/" + kReleaseName).c_str());  // a release from an earlier run answers another report
  Attestation a;
  a.master = random_box_keypair();
  const std::string report = make_report(self_binary_sha256(), config, a.master.pk);
  AtomicFile f(report_path);
  f.write(report.data(), report.size());
  f.commit();
  a.report_sha256 = sha256(reinterpret_cast<const uint8_t*>(report.data()), report.size());
  std::fprintf(stderr, "tempo: attestation report (SIMULATED: no SGX) written to %s\n", report_path.c_str());
  return a;
}

SymKey await_data_key(const TrainConfig& cfg, const Attestation& a) {
  TEMPO_CHECK(!cfg.owner_key.empty(), "--data " + cfg.data + " is encrypted: pass the owner's public key "
                                      "(--owner-key FILE) so that the owner's key release can be checked and the "
                                      "model encrypted to the owner");
  const std::string report_path = cfg.attest_dir + "/" + kReportName;
  const std::string release_path = cfg.attest_dir + "/" + kReleaseName;
  std::fprintf(stderr,
               "tempo: waiting up to %.0f s for the owner's key release %s\n"
               "tempo:   (owner: tempo owner release --report %s --out %s ...)\n",
               cfg.attest_timeout_s, release_path.c_str(), report_path.c_str(), release_path.c_str());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(cfg.attest_timeout_s);
  while (!is_regular_file(release_path)) {
    TEMPO_CHECK(!g_stop_requested, "interrupted while waiting for the owner's key release");
    TEMPO_CHECK(std::chrono::steady_clock::now() < deadline,
                "no key release from the owner after " + std::to_string(static_cast<int>(cfg.attest_timeout_s)) +
                    " s (expected " + release_path + "; raise --attest-timeout or run `tempo owner release`)");
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::vector<uint8_t> raw = read_file(release_path, "key release");
  SymKey key = unwrap_data_key(std::string(raw.begin(), raw.end()), release_path,
                                     read_owner_public(cfg.owner_key), a.master, a.report_sha256);
  std::fprintf(stderr, "tempo: data key released by the owner\n");
  return key;
}

void lock_memory() {
  // Under a finite limit, MCL_FUTURE would make allocations fail once the
  // limit is reached: lock only when the whole process may be locked
  // (no limit, or root's CAP_IPC_LOCK).
  struct rlimit rl{};
  const bool unlimited = ::getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur == RLIM_INFINITY;
  if (!unlimited && ::geteuid() != 0) {
    std::fprintf(stderr, "tempo: warning: cannot lock memory (the locked-memory limit is %llu KiB): plaintext "
                 "data, weights and keys may be swapped to disk; raise it (ulimit -l unlimited, or "
                 "LimitMEMLOCK=infinity in a systemd unit) or disable swap\n",
                 static_cast<unsigned long long>(rl.rlim_cur / 1024));
    return;
  }
  if (::mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0) return;
  const int e = errno;
  std::fprintf(stderr, "tempo: warning: cannot lock memory (%s): decrypted data may be swapped to disk; raise "
               "the locked-memory limit (ulimit -l unlimited, or LimitMEMLOCK= in a systemd unit) or disable swap\n",
               std::strerror(e));
}

void protect_process() {
  ::prctl(PR_SET_DUMPABLE, 0);
  lock_memory();
}

Dataset load_encrypted_dataset(const std::string& path, const SymKey& key, const Shape& input_shape) {
  std::vector<uint8_t> plain = read_container(path, ContainerKind::kData, &key, nullptr);
  TensorMap m;
  try {
    m = parse_safetensors(plain.data(), plain.size(), path + " (decrypted)");
  } catch (...) {
    sodium_memzero(plain.data(), plain.size());
    throw;
  }
  sodium_memzero(plain.data(), plain.size());
  return dataset_from_tensors(std::move(m), "encrypted data set " + path, input_shape);
}

void save_model(const TrainConfig& cfg, const Model& model, const BoxKeyPair* master) {
  if (cfg.owner_key.empty()) {
    model.save(cfg.save);
    return;
  }
  TEMPO_CHECK(master != nullptr, "internal: a model for the owner is sealed with the attested master's key");
  std::vector<uint8_t> plain = serialize_safetensors(model.state_tensors(), cfg.save);
  write_container_from(cfg.save, ContainerKind::kModel, *master, read_owner_public(cfg.owner_key), plain.data(),
                       plain.size());
  sodium_memzero(plain.data(), plain.size());
}

// ---- Sealed checkpoints --------------------------------------------------------

SymKey sealing_key(const std::string& path, bool create) {
  TEMPO_CHECK(!path.empty(), "sealed checkpoints need --sealing-key FILE (simulation of the enclave's sealing "
                             "key; made on first use, keep it to resume)");
  if (create && !is_regular_file(path)) {
    SymKey k = random_sym_key();
    write_key_file(path, kSealingKeyLabel, k.data(), k.size());
    std::fprintf(stderr, "tempo: made sealing key %s (SIMULATED sealing: on SGX the enclave's own key is used)\n",
                 path.c_str());
    return k;
  }
  return read_sym_key(path, kSealingKeyLabel);
}

std::string counter_path(const std::string& sealing_key_path) { return sealing_key_path + ".counter"; }

uint64_t read_counter(const std::string& path) {
  if (!is_regular_file(path)) return 0;
  const std::vector<uint8_t> raw = read_file(path, "monotonic counter file");
  std::string text(raw.begin(), raw.end());
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  TEMPO_CHECK(!text.empty() && text.size() <= 19 && text.find_first_not_of("0123456789") == std::string::npos,
              "monotonic counter file " + path + " is malformed (expected a decimal number)");
  return std::stoull(text);
}

void advance_counter(const std::string& path, uint64_t value) {
  if (value <= read_counter(path)) return;
  const std::string text = std::to_string(value) + "\n";
  AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

void check_not_rolled_back(const std::string& checkpoint, const RunState& s, const std::string& counter_file) {
  const uint64_t last = read_counter(counter_file);
  if (s.counter < last)
    throw Error("--resume " + checkpoint + ": this checkpoint is older than the last one this master sealed "
                "(checkpoint " + std::to_string(s.counter) + ", counter " + std::to_string(last) + " in " +
                counter_file + "): a host may not roll training back; resume from the newest checkpoint");
}

void write_checkpoint(const std::string& path, const SymKey& key, const nlohmann::json& config, const Model& model,
                      Optimizer& optim, const RunState& s) {
  std::vector<NamedTensor> t = model.state_tensors();
  for (auto& e : t) e.name = "model/" + e.name;
  const auto opt = optim.state_tensors();
  for (size_t i = 0; i < opt.size(); ++i) {
    NamedTensor o{"optim/" + std::to_string(i), DType::F32, opt[i]->shape(), {}, {}};
    o.f32.assign(opt[i]->data(), opt[i]->data() + opt[i]->numel());
    t.push_back(std::move(o));
  }
  t.push_back(scalar("optim.steps", optim.steps()));
  t.push_back(scalar("run.step", s.step));
  t.push_back(scalar("run.epoch", s.epoch));
  t.push_back(scalar("run.in_epoch", s.in_epoch));
  t.push_back(scalar("run.threads", s.threads));
  t.push_back(scalar("run.conv_direct", s.conv_kernels == ConvKernels::kDirect ? 1 : 0));
  t.push_back(scalar("run.key_position", static_cast<int64_t>(s.key_position)));
  t.push_back(bytes32("run.dropout_rng", reinterpret_cast<const uint8_t*>(s.dropout_rng.data())));
  t.push_back(bytes32("run.secret", s.secret.data()));
  t.push_back(scalar("run.counter", static_cast<int64_t>(s.counter)));
  if (s.data_key) t.push_back(bytes32("run.data_key", s.data_key->data()));
  if (s.master_key) {
    t.push_back(bytes32("run.master_pk", s.master_key->pk.data()));
    t.push_back(bytes32("run.master_sk", s.master_key->sk.data()));
  }
  const std::string text = config.dump();
  t.push_back({"run.config", DType::I64, {static_cast<int64_t>(text.size())}, {}, {text.begin(), text.end()}});
  std::vector<uint8_t> plain = serialize_safetensors(t, path);
  for (auto& e : t) {
    sodium_memzero(e.f32.data(), e.f32.size() * sizeof(float));
    sodium_memzero(e.i64.data(), e.i64.size() * sizeof(int64_t));
  }
  write_container(path, ContainerKind::kCheckpoint, key, plain.data(), plain.size());
  sodium_memzero(plain.data(), plain.size());
}

RunState read_checkpoint(const std::string& path, const SymKey& key, const nlohmann::json& config, Model& model,
                         Optimizer& optim) {
  std::vector<uint8_t> plain = read_container(path, ContainerKind::kCheckpoint, &key, nullptr);
  TensorMap m;
  // The decrypted bytes and tensors are wiped on every way out, errors too.
  struct Wipe {
    std::vector<uint8_t>& plain;
    TensorMap& m;
    ~Wipe() {
      sodium_memzero(plain.data(), plain.size());
      for (auto& [name, t] : m) {
        sodium_memzero(t.f32.data(), t.f32.size() * sizeof(float));
        sodium_memzero(t.i64.data(), t.i64.size() * sizeof(int64_t));
      }
    }
  } wipe{plain, m};
  m = parse_safetensors(plain.data(), plain.size(), path + " (decrypted)");
  sodium_memzero(plain.data(), plain.size());
  auto take = [&](const std::string& name, size_t n) -> const std::vector<int64_t>& {
    auto it = m.find(name);
    TEMPO_CHECK(it != m.end() && it->second.dtype == DType::I64 && (n == 0 || it->second.i64.size() == n),
                path + ": checkpoint entry '" + name + "' is missing or malformed");
    return it->second.i64;
  };
  const std::vector<int64_t>& ctext = take("run.config", 0);
  std::string text;
  for (int64_t c : ctext) {
    TEMPO_CHECK(c >= 0 && c < 256, path + ": checkpoint entry 'run.config' is malformed");
    text.push_back(static_cast<char>(c));
  }
  nlohmann::json saved = nlohmann::json::parse(text, nullptr, false);
  TEMPO_CHECK(saved.is_object(), path + ": checkpoint entry 'run.config' is malformed");
  saved.erase("sealed_checkpoints");
  nlohmann::json now = config;
  now.erase("sealed_checkpoints");
  if (saved != now)
    throw Error("--resume " + path + ": the checkpoint was made with other settings: " +
                config_differences(saved, now, "checkpoint", "now") + "; resume with the flags of the original run");
  RunState s;
  s.step = take("run.step", 1)[0];
  s.epoch = static_cast<int>(take("run.epoch", 1)[0]);
  s.in_epoch = take("run.in_epoch", 1)[0];
  s.threads = static_cast<int>(take("run.threads", 1)[0]);
  if (m.count("run.conv_direct"))
    s.conv_kernels = take("run.conv_direct", 1)[0] != 0 ? ConvKernels::kDirect : ConvKernels::kBest;
  s.key_position = static_cast<uint64_t>(take("run.key_position", 1)[0]);
  std::memcpy(s.dropout_rng.data(), take("run.dropout_rng", 4).data(), 32);
  std::memcpy(s.secret.data(), take("run.secret", 4).data(), 32);
  // Checkpoints of versions before the counter count as the first.
  if (m.count("run.counter")) s.counter = static_cast<uint64_t>(take("run.counter", 1)[0]);
  if (m.count("run.data_key")) {
    SymKey k;
    std::memcpy(k.data(), take("run.data_key", 4).data(), 32);
    s.data_key = std::move(k);
  }
  if (m.count("run.master_sk")) {
    BoxKeyPair kp;
    std::memcpy(kp.pk.data(), take("run.master_pk", 4).data(), 32);
    std::memcpy(kp.sk.data(), take("run.master_sk", 4).data(), 32);
    s.master_key = std::move(kp);
  }
  TEMPO_CHECK(s.step >= 0 && s.epoch >= 1 && s.in_epoch >= 0, path + ": checkpoint position is malformed");
  const auto opt = optim.state_tensors();
  for (size_t i = 0; i < opt.size(); ++i) {
    auto it = m.find("optim/" + std::to_string(i));
    TEMPO_CHECK(it != m.end() && it->second.dtype == DType::F32 && it->second.shape == opt[i]->shape(),
                path + ": optimizer state " + std::to_string(i) + " is missing or has the wrong shape");
    std::memcpy(opt[i]->data(), it->second.f32.data(), it->second.f32.size() * sizeof(float));
  }
  TEMPO_CHECK(!m.count("optim/" + std::to_string(opt.size())), path + ": the checkpoint has more optimizer state "
                                                                      "than this optimizer");
  optim.set_steps(take("optim.steps", 1)[0]);
  TensorMap weights;
  for (auto& [name, t] : m)
    if (name.rfind("model/", 0) == 0) {
      NamedTensor w = std::move(t);
      w.name = name.substr(6);
      weights.emplace(w.name, std::move(w));
    }
  model.load_map(std::move(weights), path);
  return s;
}

}  // namespace tempo
