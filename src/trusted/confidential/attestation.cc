#include "trusted/confidential/attestation.h"

#include <sodium.h>

#include <cstring>

#include "common/error.h"

namespace tempo {

namespace {

using Bytes32 = std::array<uint8_t, 32>;

Bytes32 hex32(const nlohmann::json& j, const char* field, const std::string& what) {
  TEMPO_CHECK(j.contains(field) && j[field].is_string(), what + ": field '" + field + "' is missing");
  std::vector<uint8_t> b = from_hex(j[field].get<std::string>(), 32, what + ": field '" + field + "'");
  Bytes32 out;
  std::memcpy(out.data(), b.data(), 32);
  return out;
}

Bytes32 measurement(const Bytes32& binary, const Bytes32& config) {
  uint8_t both[64];
  std::memcpy(both, binary.data(), 32);
  std::memcpy(both + 32, config.data(), 32);
  return sha256(both, sizeof both);
}

Bytes32 sha_of(const std::string& s) { return sha256(reinterpret_cast<const uint8_t*>(s.data()), s.size()); }

std::string short_hex(const Bytes32& b) { return to_hex(b.data(), 8) + "…"; }

}  // namespace

std::string config_differences(const nlohmann::json& have, const nlohmann::json& want, const char* have_name,
                               const char* want_name) {
  std::string diff;
  auto add = [&](const std::string& k, const nlohmann::json* h, const nlohmann::json* w) {
    diff += (diff.empty() ? "" : ", ") + k + " (" + have_name + ": " + (h ? h->dump() : "unset") + ", " +
            want_name + ": " + (w ? w->dump() : "unset") + ")";
  };
  for (const auto& [k, v] : want.items())
    if (!have.contains(k) || have[k] != v) add(k, have.contains(k) ? &have[k] : nullptr, &v);
  for (const auto& [k, v] : have.items())
    if (!want.contains(k)) add(k, &v, nullptr);
  return diff;
}

std::array<uint8_t, 32> self_binary_sha256() { return sha256_file("/proc/self/exe"); }

std::string make_report(const Bytes32& binary_sha256, const nlohmann::json& config, const Bytes32& master_pk) {
  TEMPO_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
  const Bytes32 config_sha = sha_of(config.dump());
  nlohmann::json r = {
      {"format", kReportFormat},
      {"platform", "simulated"},
      {"note", "no SGX: this report is signed by a key the master made up; it proves nothing about the machine"},
      {"binary_sha256", to_hex(binary_sha256.data(), 32)},
      {"config", config},
      {"config_sha256", to_hex(config_sha.data(), 32)},
      {"measurement", to_hex(measurement(binary_sha256, config_sha).data(), 32)},
      {"master_public_key", to_hex(master_pk.data(), 32)},
  };
  std::array<uint8_t, crypto_sign_PUBLICKEYBYTES> spk{};
  std::array<uint8_t, crypto_sign_SECRETKEYBYTES> ssk{};
  crypto_sign_keypair(spk.data(), ssk.data());
  r["signer_public_key"] = to_hex(spk.data(), spk.size());
  const std::string body = r.dump();
  std::array<uint8_t, crypto_sign_BYTES> sig{};
  crypto_sign_detached(sig.data(), nullptr, reinterpret_cast<const uint8_t*>(body.data()), body.size(), ssk.data());
  sodium_memzero(ssk.data(), ssk.size());
  r["signature"] = to_hex(sig.data(), sig.size());
  return r.dump(2) + "\n";
}

namespace {

// What every reader of a report checks: the format, the signature, the
// platform, the measurement's consistency with the configuration it states,
// and that the model goes to this owner. Returns the parsed report.
nlohmann::json open_report(const std::string& text, const std::string& what, bool allow_simulated,
                           const char* refusing, const Bytes32& owner_pk) {
  TEMPO_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
  nlohmann::json r = nlohmann::json::parse(text, nullptr, false);
  TEMPO_CHECK(r.is_object() && r.value("format", "") == kReportFormat,
              what + " is not a Tempo attestation report (" + kReportFormat + ")");
  // The signature first: nothing else in an altered report means anything.
  TEMPO_CHECK(r.contains("signature") && r["signature"].is_string(), what + ": the report is not signed");
  std::vector<uint8_t> sig = from_hex(r["signature"].get<std::string>(), crypto_sign_BYTES, what + ": signature");
  const Bytes32 signer = hex32(r, "signer_public_key", what);
  nlohmann::json body = r;
  body.erase("signature");
  const std::string signed_text = body.dump();
  TEMPO_CHECK(crypto_sign_verify_detached(sig.data(), reinterpret_cast<const uint8_t*>(signed_text.data()),
                                          signed_text.size(), signer.data()) == 0,
              what + ": the signature does not verify: the report was altered after it was made");
  const std::string platform = r.value("platform", "");
  TEMPO_CHECK(platform == "simulated", what + ": unknown platform '" + platform +
                                           "' (this tempo checks simulated reports only)");
  TEMPO_CHECK(allow_simulated, what + " is a SIMULATED report (no SGX): it does not prove that the master runs "
                                      "in an enclave. Refusing to " + refusing + "; pass --allow-simulated "
                                      "to accept it anyway (testing and demonstration only)");
  const Bytes32 binary = hex32(r, "binary_sha256", what);
  TEMPO_CHECK(r.contains("config") && r["config"].is_object(), what + ": field 'config' is missing");
  const Bytes32 config_sha = sha_of(r["config"].dump());
  TEMPO_CHECK(hex32(r, "config_sha256", what) == config_sha &&
                  hex32(r, "measurement", what) == measurement(binary, config_sha),
              what + ": the measurement does not match the configuration it states (the report is inconsistent)");
  const std::string owner_hex = to_hex(owner_pk.data(), 32);
  TEMPO_CHECK(r["config"].value("owner_public_key", "") == owner_hex,
              what + ": the master would encrypt the trained model to another owner key, not to yours");
  return r;
}

}  // namespace

CheckedReport check_report(const std::string& text, const std::string& what, bool allow_simulated,
                           const Bytes32& expected_binary, const nlohmann::json& expected_config,
                           const Bytes32& owner_pk) {
  const nlohmann::json r = open_report(text, what, allow_simulated, "release the data key", owner_pk);
  const Bytes32 binary = hex32(r, "binary_sha256", what);
  TEMPO_CHECK(binary == expected_binary,
              what + ": measurement mismatch: the master runs a binary with SHA-256 " + short_hex(binary) +
                  ", the expected binary has " + short_hex(expected_binary) +
                  " (a different or modified tempo; check --expect-binary)");
  if (r["config"] != expected_config)
    throw Error(what + ": measurement mismatch: the master's training configuration differs from the expected one "
                       "in " + config_differences(r["config"], expected_config, "master", "expected"));
  CheckedReport out;
  out.master_pk = hex32(r, "master_public_key", what);
  out.report_sha256 = sha_of(text);
  return out;
}

Bytes32 attested_master_key(const std::string& text, const std::string& what, bool allow_simulated,
                            const Bytes32& owner_pk) {
  const nlohmann::json r = open_report(text, what, allow_simulated, "trust a model sealed under it", owner_pk);
  return hex32(r, "master_public_key", what);
}

std::string wrap_data_key(const SymKey& data_key, const CheckedReport& report, const BoxKeyPair& owner) {
  std::array<uint8_t, crypto_box_NONCEBYTES> nonce{};
  randombytes_buf(nonce.data(), nonce.size());
  std::array<uint8_t, 32 + crypto_box_MACBYTES> box{};
  TEMPO_CHECK(crypto_box_easy(box.data(), data_key.data(), data_key.size(), nonce.data(), report.master_pk.data(),
                              owner.sk.data()) == 0,
              "cannot wrap the data key to the master's public key (is the report's key valid?)");
  nlohmann::json j = {{"format", kReleaseFormat},
                      {"report_sha256", to_hex(report.report_sha256.data(), 32)},
                      {"nonce", to_hex(nonce.data(), nonce.size())},
                      {"box", to_hex(box.data(), box.size())}};
  return j.dump(2) + "\n";
}

SymKey unwrap_data_key(const std::string& text, const std::string& what, const Bytes32& owner_pk,
                       const BoxKeyPair& master, const Bytes32& report_sha256) {
  TEMPO_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
  nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  TEMPO_CHECK(j.is_object() && j.value("format", "") == kReleaseFormat,
              what + " is not a Tempo key release (" + kReleaseFormat + ")");
  TEMPO_CHECK(hex32(j, "report_sha256", what) == report_sha256,
              what + " answers another report, not the one this master made (a stale or foreign key release)");
  TEMPO_CHECK(j.contains("nonce") && j["nonce"].is_string() && j.contains("box") && j["box"].is_string(),
              what + ": fields 'nonce' and 'box' are required");
  std::vector<uint8_t> nonce = from_hex(j["nonce"].get<std::string>(), crypto_box_NONCEBYTES, what + ": nonce");
  std::vector<uint8_t> box = from_hex(j["box"].get<std::string>(), 32 + crypto_box_MACBYTES, what + ": box");
  SymKey key{};
  TEMPO_CHECK(crypto_box_open_easy(key.data(), box.data(), box.size(), nonce.data(), owner_pk.data(),
                                   master.sk.data()) == 0,
              what + " does not open: it was not made by the owner of --owner-key for this master");
  return key;
}

}  // namespace tempo
