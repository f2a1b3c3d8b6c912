// Encrypted files (P6): the owner's data set, a trained model encrypted to
// its owner, and sealed checkpoints share one authenticated, chunked format.
//
//   "TEMPOENC" | u32 version (1) | u32 kind | u32 wrap | u32 chunk | u64 size |
//   wrap bytes | secretstream header (24)  | ciphertext chunks
//
// little-endian. The payload (`size` bytes) is cut into `chunk`-byte pieces,
// each encrypted with libsodium's crypto_secretstream_xchacha20poly1305
// (XChaCha20-Poly1305 with a nonce that advances per chunk); the last carries
// the FINAL tag and the clear header is authenticated with the first. So a
// flipped bit, a reordered, dropped or truncated chunk, trailing bytes or an
// edited header all fail authentication or the size check, and nothing is
// returned. Chunk lengths follow from `size` and `chunk`: there is no length
// field to lie about.
//
// wrap = 1 (symmetric): the stream key is the caller's key (a data key or a
// sealing key); the wrap bytes are a 16-byte key id (a keyed BLAKE2b hash of
// the key), so a wrong key is reported as such. wrap = 2 (to a public key):
// a fresh stream key, sealed to the recipient's X25519 key (crypto_box_seal,
// 80 bytes); only the recipient's secret key opens it, but anyone who knows
// the public key can make one. wrap = 3 (from a sender to a public key): the
// sender's X25519 public key (32), a nonce (24) and the fresh stream key in
// a crypto_box from the sender's secret key to the recipient's (48): only
// the holder of the sender's secret key can make one. A trained model is
// written this way by the master, with the key its attestation report names.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "trusted/secret.h"

namespace tempo {

enum class ContainerKind : uint32_t { kData = 1, kModel = 2, kCheckpoint = 3 };
const char* container_kind_name(ContainerKind k);  // "data set", "model", "checkpoint"

using SymKey = SecretBytes<32>;  // move-only, wiped when destroyed (trusted/secret.h)
struct BoxKeyPair {  // X25519 (crypto_box); move-only, the secret half wiped with the pair
  std::array<uint8_t, 32> pk{};
  SecretBytes<32> sk;
};

SymKey random_sym_key();
BoxKeyPair random_box_keypair();

// What the clear header says, readable without a key.
struct ContainerInfo {
  ContainerKind kind{};
  bool to_public_key = false;
  bool authenticated_sender = false;      // wrap 3
  std::array<uint8_t, 32> sender_pk{};    // wrap 3: who made it (unverified until opened)
  uint64_t payload_bytes = 0;
  std::array<uint8_t, 32> id{};  // SHA-256 of the clear header: names this encryption
};

// Encrypts `payload` into `path` atomically (temporary file, fsync, rename);
// nothing is left behind on failure.
void write_container(const std::string& path, ContainerKind kind, const SymKey& key, const uint8_t* payload,
                     size_t size);
void write_container_to(const std::string& path, ContainerKind kind, const std::array<uint8_t, 32>& recipient_pk,
                        const uint8_t* payload, size_t size);
// wrap 3: from `sender` (whose public key the recipient knows, from an
// attestation report) to the recipient.
void write_container_from(const std::string& path, ContainerKind kind, const BoxKeyPair& sender,
                          const std::array<uint8_t, 32>& recipient_pk, const uint8_t* payload, size_t size);

// Decrypts a whole file image. Exactly one of key / keypair is given,
// matching how the file was written. Every problem is one tempo::Error naming
// `what` and the chunk: wrong kind, wrong key, corrupt or reordered chunk,
// truncation, trailing bytes. With `sender`, a file to a public key must be
// wrap 3 from exactly that sender: an anonymously sealed one (wrap 2) or one
// from another key is refused.
std::vector<uint8_t> open_container(const uint8_t* data, size_t size, const std::string& what,
                                    ContainerKind expect, const SymKey* key, const BoxKeyPair* keypair,
                                    const std::array<uint8_t, 32>* sender = nullptr);
// read_file + open_container.
std::vector<uint8_t> read_container(const std::string& path, ContainerKind expect, const SymKey* key,
                                    const BoxKeyPair* keypair, const std::array<uint8_t, 32>* sender = nullptr);
// The clear header only (checks magic, version and sizes).
ContainerInfo container_info(const uint8_t* data, size_t size, const std::string& what);
ContainerInfo read_container_info(const std::string& path);

// ---- Key files ---------------------------------------------------------------
// One line of text: a label naming the kind of key, a space, the key in hex.
// Secret keys are written with mode 0600; an existing file is never
// overwritten.
inline constexpr const char* kOwnerSecretLabel = "tempo-owner-secret-key-v1";  // sk ‖ pk
inline constexpr const char* kOwnerPublicLabel = "tempo-owner-public-key-v1";
inline constexpr const char* kDataKeyLabel = "tempo-data-key-v1";
inline constexpr const char* kSealingKeyLabel = "tempo-sealing-key-v1";

void write_key_file(const std::string& path, const char* label, const uint8_t* key, size_t size);
// Reads a key file that must carry `label` and `size` bytes of key; a file of
// another kind is an error saying which kind it is.
std::vector<uint8_t> read_key_file(const std::string& path, const char* label, size_t size);
SymKey read_sym_key(const std::string& path, const char* label);
BoxKeyPair read_owner_secret(const std::string& path);
std::array<uint8_t, 32> read_owner_public(const std::string& path);

std::string to_hex(const uint8_t* p, size_t n);
// Parses exactly n bytes of hex; throws Error naming `what` otherwise.
std::vector<uint8_t> from_hex(const std::string& hex, size_t n, const std::string& what);
std::array<uint8_t, 32> sha256(const uint8_t* p, size_t n);
// SHA-256 of a file, streamed.
std::array<uint8_t, 32> sha256_file(const std::string& path);

}  // namespace tempo
