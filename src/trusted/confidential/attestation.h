// Attestation and key release (P6), simulated. The master makes a report:
// a measurement (SHA-256 of its binary and of its training configuration)
// and an ephemeral X25519 public key whose secret half never leaves its
// memory. The owner checks the measurement against what it expects and only
// then wraps the data key to that public key (crypto_box: authenticated with
// the owner's own key, so the master knows the key comes from the owner).
//
// On SGX under Gramine the report would be a quote signed by the platform.
// Here there is no SGX: the report says "platform": "simulated" and is signed
// with a key the master makes up, which shows only that the report was not
// altered after it was made, not where it was made. The owner refuses such a
// report unless told --allow-simulated.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "trusted/confidential/container.h"

namespace tempo {

inline constexpr const char* kReportFormat = "tempo-attestation-v1";
inline constexpr const char* kReleaseFormat = "tempo-key-release-v1";

// A simulated report for `config` (canonical JSON), this binary's hash and
// the master's ephemeral public key; signed. Returns the report's text.
std::string make_report(const std::array<uint8_t, 32>& binary_sha256, const nlohmann::json& config,
                        const std::array<uint8_t, 32>& master_pk);

struct CheckedReport {
  std::array<uint8_t, 32> master_pk{};
  std::array<uint8_t, 32> report_sha256{};
};

// The owner's check. Throws one tempo::Error naming the first problem:
// not a report, altered (bad signature), simulated without allow_simulated,
// another binary, another configuration (naming the differing settings), or
// a configuration that would encrypt the model to another owner.
CheckedReport check_report(const std::string& report_text, const std::string& what, bool allow_simulated,
                           const std::array<uint8_t, 32>& expected_binary, const nlohmann::json& expected_config,
                           const std::array<uint8_t, 32>& owner_pk);

// The owner's check of a trained model's origin: a report it accepted at
// release time (signature, platform, consistency, its own key in the
// configuration). Returns the master's public key, the only key whose sealed
// model the owner then accepts.
std::array<uint8_t, 32> attested_master_key(const std::string& report_text, const std::string& what,
                                            bool allow_simulated, const std::array<uint8_t, 32>& owner_pk);

// The owner wraps the data key for the master of a checked report.
std::string wrap_data_key(const SymKey& data_key, const CheckedReport& report, const BoxKeyPair& owner);
// The master opens it: it must come from the owner (owner_pk) and answer the
// report it made (report_sha256).
SymKey unwrap_data_key(const std::string& release_text, const std::string& what,
                       const std::array<uint8_t, 32>& owner_pk, const BoxKeyPair& master,
                       const std::array<uint8_t, 32>& report_sha256);

// The settings in which two configurations differ, as
// "lr (HAVE: 0.1, WANT: 0.01), ..." with the given names for the two sides.
std::string config_differences(const nlohmann::json& have, const nlohmann::json& want, const char* have_name,
                               const char* want_name);

// The SHA-256 of this process's executable (/proc/self/exe).
std::array<uint8_t, 32> self_binary_sha256();

}  // namespace tempo
