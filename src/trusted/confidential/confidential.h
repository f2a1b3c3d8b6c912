// The master's confidential I/O (P6): the measured training configuration,
// the key release that opens an owner's encrypted data set, the trained
// model encrypted to its owner, and sealed checkpoints. docs/CONFIDENTIAL.md
// describes the flow.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/conv.h"
#include "trusted/rng.h"
#include "trusted/confidential/container.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/model.h"
#include "trusted/optim/optimizer.h"
#include "trusted/trainer.h"

namespace tempo {

// The training configuration that the attestation report measures and a
// checkpoint must match: everything that decides what is computed and what
// leaves the master (model, data identity, optimizer, offload and key
// settings, the owner's key). Not measured: paths, thread count, progress,
// and the worker addresses (workers are untrusted by design; they only ever
// see ciphertext). Canonical: keys sorted, so dump() is stable.
nlohmann::json run_config(const TrainConfig& cfg);

// "encrypted:FILE" -> FILE; empty if spec is another kind of data.
std::string encrypted_data_path(const std::string& spec);

// A master with an owner (--owner-key) attests: it makes a key pair, writes
// the report that binds its public key to the binary and `config` to
// cfg.attest_dir/report.json, and keeps the secret half. The owner releases
// the data key to that key, and accepts only a model sealed with it.
struct Attestation {
  BoxKeyPair master;
  std::array<uint8_t, 32> report_sha256{};
};
Attestation attest(const TrainConfig& cfg, const nlohmann::json& config);

// The key release of an encrypted data set: waits (up to
// cfg.attest_timeout_s, or until g_stop_requested) for the owner's
// cfg.attest_dir/data-key.wrapped answering `a`'s report, and returns the
// data key it opens.
SymKey await_data_key(const TrainConfig& cfg, const Attestation& a);

// Locks this process's memory, present and future, into RAM (pages as they
// are touched), so that decrypted data, weights and keys are never swapped to
// disk; warns once if the system does not allow it (RLIMIT_MEMLOCK).
void lock_memory();

// For every command that holds plaintext or keys (train, eval, predict):
// no core dumps, no ptrace by the user's other processes, memory locked.
void protect_process();

// Decrypts an encrypted data set in memory (nothing plaintext touches disk).
Dataset load_encrypted_dataset(const std::string& path, const SymKey& key, const Shape& input_shape);

// --save: plain safetensors, or, with cfg.owner_key, encrypted to the owner
// and authenticated with the attested master's key (`master`).
void save_model(const TrainConfig& cfg, const Model& model, const BoxKeyPair* master);

// ---- Sealed checkpoints --------------------------------------------------------

// Everything besides the model and optimizer state that a resumed run needs
// to continue exactly as the original would have.
struct RunState {
  int64_t step = 0;       // steps completed
  int epoch = 1;          // the epoch in progress
  int64_t in_epoch = 0;   // its batches completed
  std::array<uint64_t, 4> dropout_rng{};
  Secret secret{};        // the run secret of the keys
  uint64_t key_position = 0;
  std::optional<SymKey> data_key;  // an encrypted data set's key
  std::optional<BoxKeyPair> master_key;  // the attested key that seals the model to its owner
  int threads = 0;
  // The master's convolution kernels (--conv-algo); checkpoints from before
  // the flag ran direct kernels.
  ConvKernels conv_kernels = ConvKernels::kDirect;
  uint64_t counter = 0;   // the monotonic counter's value when it was sealed
  // Move-only: the secret, the data key and the master's key wipe themselves.
};

// The monotonic counter that stops a host from rolling the master back to an
// older checkpoint. SIMULATED: a file beside the sealing key
// (<sealing key>.counter), standing in for SGX's or a TPM's counter, which a
// host could not reset. 0 when the file does not exist yet.
std::string counter_path(const std::string& sealing_key_path);
uint64_t read_counter(const std::string& path);
// Records that checkpoint `value` was written (atomically; never lowers it).
void advance_counter(const std::string& path, uint64_t value);
// Refuses a checkpoint sealed before the last one this master wrote.
void check_not_rolled_back(const std::string& checkpoint, const RunState& s, const std::string& counter_file);

// The sealing key (simulation: a key file, made on first use; on SGX it
// would be the enclave's sealing key).
SymKey sealing_key(const std::string& path, bool create);

// Writes atomically: a kill at any moment leaves the previous checkpoint.
void write_checkpoint(const std::string& path, const SymKey& key, const nlohmann::json& config, const Model& model,
                      Optimizer& optim, const RunState& state);
// Restores model and optimizer; the checkpoint's configuration must equal
// `config` (an Error names the settings that differ).
RunState read_checkpoint(const std::string& path, const SymKey& key, const nlohmann::json& config, Model& model,
                         Optimizer& optim);

}  // namespace tempo
