// `tempo owner`: the data owner's side of confidential training (P6), run on
// the owner's own machine:
//   keygen         owner key pair (X25519) and a data key
//   encrypt-data   any --data source into one authenticated, chunked file
//   release        check a master's attestation report; wrap the data key to it
//   decrypt-model  open a model the master encrypted to the owner
#include <sodium.h>
#include <sys/prctl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "cli/commands.h"
#include "common/error.h"
#include "trusted/confidential/confidential.h"
#include "trusted/confidential/attestation.h"
#include "trusted/confidential/container.h"
#include "trusted/io/file_util.h"
#include "trusted/io/safetensors.h"

namespace tempo::cli {

namespace {

std::string text_of(const std::string& path, const std::string& kind) {
  std::vector<uint8_t> raw = read_file(path, kind);
  return std::string(raw.begin(), raw.end());
}

void write_text(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

int keygen(const OwnerConfig& c) {
  if (::mkdir(c.dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw Error("cannot create " + c.dir + ": " + std::strerror(errno));
  const std::string sk_path = c.dir + "/owner.key", pk_path = c.dir + "/owner.pub", dk_path = c.dir + "/data.key";
  for (const std::string& p : {sk_path, pk_path, dk_path}) {
    struct stat st;
    TEMPO_CHECK(::lstat(p.c_str(), &st) != 0, p + " already exists; refusing to overwrite a key (move it away "
                                                  "first, or use another --dir)");
  }
  BoxKeyPair kp = random_box_keypair();
  uint8_t both[64];
  std::memcpy(both, kp.sk.data(), 32);
  std::memcpy(both + 32, kp.pk.data(), 32);
  write_key_file(sk_path, kOwnerSecretLabel, both, sizeof both);
  sodium_memzero(both, sizeof both);
  sodium_memzero(kp.sk.data(), kp.sk.size());
  write_key_file(pk_path, kOwnerPublicLabel, kp.pk.data(), kp.pk.size());
  SymKey dk = random_sym_key();
  write_key_file(dk_path, kDataKeyLabel, dk.data(), dk.size());
  sodium_memzero(dk.data(), dk.size());
  std::fprintf(stderr,
               "tempo: wrote %s (secret: keep it), %s (public: give it to the master), %s (secret data key)\n",
               sk_path.c_str(), pk_path.c_str(), dk_path.c_str());
  return 0;
}

int encrypt_data(const OwnerConfig& c) {
  SymKey key = read_sym_key(c.data_key, kDataKeyLabel);
  auto model = build_model(c.model, c.seed);
  Dataset d = load_dataset(c.data, model->input_shape, c.seed);
  std::vector<uint8_t> plain = serialize_safetensors(dataset_tensors(d), c.out);
  write_container(c.out, ContainerKind::kData, key, plain.data(), plain.size());
  sodium_memzero(plain.data(), plain.size());
  sodium_memzero(key.data(), key.size());
  std::fprintf(stderr, "tempo: encrypted %s (%.1f MiB) into %s\n", d.description.c_str(),
               static_cast<double>(plain.size()) / (1 << 20), c.out.c_str());
  return 0;
}

int release(const OwnerConfig& c) {
  const BoxKeyPair owner = read_owner_secret(c.owner_key);
  SymKey key = read_sym_key(c.data_key, kDataKeyLabel);
  const nlohmann::json expected = nlohmann::json::parse(text_of(c.expect_config, "expected configuration"), nullptr,
                                                        false);
  TEMPO_CHECK(expected.is_object(), c.expect_config + " is not a JSON configuration (make it with `tempo train "
                                                      "--print-config` and the master's flags)");
  const std::string binary = c.expect_binary.empty() ? "/proc/self/exe" : c.expect_binary;
  const CheckedReport report = check_report(text_of(c.report, "attestation report"), c.report, c.allow_simulated,
                                            sha256_file(binary), expected, owner.pk);
  write_text(c.out, wrap_data_key(key, report, owner));
  sodium_memzero(key.data(), key.size());
  std::fprintf(stderr, "tempo: report %s checked (SIMULATED platform accepted by --allow-simulated); data key "
                       "released to that master in %s\n", c.report.c_str(), c.out.c_str());
  return 0;
}

int decrypt_model(const OwnerConfig& c) {
  const BoxKeyPair owner = read_owner_secret(c.owner_key);
  // Only a model sealed by the master of a report this owner accepts.
  const std::array<uint8_t, 32> master =
      attested_master_key(text_of(c.report, "attestation report"), c.report, c.allow_simulated, owner.pk);
  std::vector<uint8_t> plain = read_container(c.in, ContainerKind::kModel, nullptr, &owner, &master);
  // Only a complete, valid model is written.
  const TensorMap m = parse_safetensors(plain.data(), plain.size(), c.in + " (decrypted)");
  AtomicFile f(c.out);
  f.write(plain.data(), plain.size());
  f.commit();
  sodium_memzero(plain.data(), plain.size());
  std::fprintf(stderr, "tempo: decrypted %s (%zu tensors) into %s\n", c.in.c_str(), m.size(), c.out.c_str());
  return 0;
}

}  // namespace

void add_owner_commands(CLI::App& owner, OwnerConfig& c) {
  owner.require_subcommand(1);
  CLI::App* kg = owner.add_subcommand("keygen", "Make the owner's key pair (owner.key, owner.pub) and a data key "
                                                "(data.key) in --dir; never overwrites a key");
  kg->add_option("--dir", c.dir, "Directory for the keys (made with mode 0700 if missing)")->capture_default_str();

  CLI::App* enc = owner.add_subcommand(
      "encrypt-data", "Encrypt a data set (any --data source of `tempo train`) into one authenticated file");
  enc->add_option("--data", c.data, "Data: fashion-mnist[:DIR] | cifar10:DIR | tensors:FILE | synthetic[:N]")
      ->capture_default_str();
  enc->add_option("--model", c.model, "Model the data is for (its input shape is checked; synthetic data takes it)")
      ->capture_default_str();
  enc->add_option("--seed", c.seed, "Seed of synthetic data")->capture_default_str();
  enc->add_option("--data-key", c.data_key, "The data key (data.key from keygen)")
      ->required()
      ->check(CLI::ExistingFile);
  enc->add_option("--out,-o", c.out, "Encrypted data file to write (train with --data encrypted:FILE)")->required();

  CLI::App* rel = owner.add_subcommand(
      "release", "Check a master's attestation report and, if it measures what you expect, wrap the data key to it");
  rel->add_option("--report", c.report, "The master's report (ATTEST_DIR/report.json)")
      ->required()
      ->check(CLI::ExistingFile);
  rel->add_option("--owner-key", c.owner_key, "Your secret key (owner.key)")->required()->check(CLI::ExistingFile);
  rel->add_option("--data-key", c.data_key, "The data key the data set was encrypted with (data.key)")
      ->required()
      ->check(CLI::ExistingFile);
  rel->add_option("--expect-config", c.expect_config,
                  "The configuration you expect the master to run: the output of `tempo train --print-config` "
                  "with the master's flags")
      ->required()
      ->check(CLI::ExistingFile);
  rel->add_option("--expect-binary", c.expect_binary,
                  "The tempo binary you expect the master to run (default: this one)")
      ->check(CLI::ExistingFile);
  rel->add_flag("--allow-simulated", c.allow_simulated,
                "Accept a simulated report (no SGX: it proves nothing about the machine; testing only)");
  rel->add_option("--out,-o", c.out, "Key release to write (ATTEST_DIR/data-key.wrapped)")->required();

  CLI::App* dec = owner.add_subcommand("decrypt-model",
                                       "Decrypt a model saved with --owner-key into a plain safetensors file, "
                                       "after checking that the attested master sealed it");
  dec->add_option("--owner-key", c.owner_key, "Your secret key (owner.key)")->required()->check(CLI::ExistingFile);
  dec->add_option("--in", c.in, "The encrypted model (the master's --save)")->required()->check(CLI::ExistingFile);
  dec->add_option("--report", c.report,
                  "The attestation report of the run that made the model (ATTEST_DIR/report.json, the one you "
                  "checked with `owner release`): only a model sealed with its master's key is accepted")
      ->required()
      ->check(CLI::ExistingFile);
  dec->add_flag("--allow-simulated", c.allow_simulated,
                "Accept a simulated report (no SGX: it proves nothing about the machine; testing only)");
  dec->add_option("--out,-o", c.out, "Plain safetensors file to write (PyTorch state_dict names)")->required();
}

int run_owner(const CLI::App& owner, const OwnerConfig& c) {
  prctl(PR_SET_DUMPABLE, 0);
  if (owner.got_subcommand("keygen")) return keygen(c);
  if (owner.got_subcommand("encrypt-data")) return encrypt_data(c);
  if (owner.got_subcommand("release")) return release(c);
  if (owner.got_subcommand("decrypt-model")) return decrypt_model(c);
  return 1;
}

}  // namespace tempo::cli
