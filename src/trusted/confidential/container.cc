#include "trusted/confidential/container.h"

#include <sodium.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>

#include "common/error.h"
#include "trusted/io/file_util.h"

namespace tempo {

namespace {

constexpr char kMagic[8] = {'T', 'E', 'M', 'P', 'O', 'E', 'N', 'C'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kWrapSymmetric = 1, kWrapPublic = 2, kWrapFromTo = 3;
constexpr size_t kKeyIdBytes = 16;
constexpr size_t kSealedKeyBytes = crypto_box_SEALBYTES + 32;
// sender's public key | nonce | crypto_box of the stream key
constexpr size_t kBoxedKeyBytes = 32 + crypto_box_NONCEBYTES + crypto_box_MACBYTES + 32;
constexpr size_t kMaxWrapBytes = kBoxedKeyBytes;
constexpr size_t kFixedHeader = 8 + 4 * 4 + 8;
constexpr uint32_t kChunkBytes = 1u << 20;
constexpr uint32_t kMaxChunkBytes = 64u << 20;
constexpr size_t kStreamHeader = crypto_secretstream_xchacha20poly1305_HEADERBYTES;
constexpr size_t kTagBytes = crypto_secretstream_xchacha20poly1305_ABYTES;
static_assert(sizeof(SymKey) == crypto_secretstream_xchacha20poly1305_KEYBYTES);

void init_sodium() { TEMPO_CHECK(sodium_init() >= 0, "libsodium failed to initialise"); }

void put32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put64(std::vector<uint8_t>& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
uint32_t get32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint64_t get64(const uint8_t* p) { return uint64_t(get32(p)) | uint64_t(get32(p + 4)) << 32; }

std::array<uint8_t, kKeyIdBytes> key_id(const SymKey& key) {
  static const char kContext[] = "tempo key id v1";
  std::array<uint8_t, kKeyIdBytes> id{};
  crypto_generichash(id.data(), id.size(), reinterpret_cast<const uint8_t*>(kContext), sizeof kContext - 1,
                     key.data(), key.size());
  return id;
}

uint64_t chunk_count(uint64_t payload, uint32_t chunk) { return payload == 0 ? 1 : (payload + chunk - 1) / chunk; }

// Everything of a parsed clear header.
struct Header {
  ContainerInfo info;
  uint32_t wrap = 0, chunk = 0;
  const uint8_t* wrap_bytes = nullptr;
  size_t wrap_size = 0;
  const uint8_t* stream_header = nullptr;
  size_t size = 0;  // bytes of clear header, stream header included
};

// `data` holds at least the clear header (avail bytes) of a file of `size` bytes.
Header parse_header(const uint8_t* data, size_t avail, size_t size, const std::string& what) {
  const std::string bad = what + " is not a Tempo encrypted file";
  TEMPO_CHECK(avail >= 8 && std::memcmp(data, kMagic, 8) == 0, bad + " (no TEMPOENC signature)");
  TEMPO_CHECK(avail >= kFixedHeader, what + " is truncated (the header is incomplete)");
  Header h;
  const uint32_t version = get32(data + 8), kind = get32(data + 12);
  h.wrap = get32(data + 16);
  h.chunk = get32(data + 20);
  h.info.payload_bytes = get64(data + 24);
  TEMPO_CHECK(version == kVersion, what + " has format version " + std::to_string(version) +
                                       "; this tempo reads version 1 (use a matching tempo)");
  TEMPO_CHECK(kind >= 1 && kind <= 3, bad + " (unknown kind " + std::to_string(kind) + ")");
  h.info.kind = static_cast<ContainerKind>(kind);
  TEMPO_CHECK(h.wrap == kWrapSymmetric || h.wrap == kWrapPublic || h.wrap == kWrapFromTo,
              bad + " (unknown key wrapping " + std::to_string(h.wrap) + ")");
  TEMPO_CHECK(h.chunk >= 1 && h.chunk <= kMaxChunkBytes, bad + " (chunk size " + std::to_string(h.chunk) + ")");
  h.info.to_public_key = h.wrap != kWrapSymmetric;
  h.info.authenticated_sender = h.wrap == kWrapFromTo;
  h.wrap_size = h.wrap == kWrapSymmetric ? kKeyIdBytes : h.wrap == kWrapPublic ? kSealedKeyBytes : kBoxedKeyBytes;
  h.size = kFixedHeader + h.wrap_size + kStreamHeader;
  TEMPO_CHECK(avail >= h.size, what + " is truncated (the header is incomplete)");
  h.wrap_bytes = data + kFixedHeader;
  if (h.info.authenticated_sender) std::memcpy(h.info.sender_pk.data(), h.wrap_bytes, 32);
  h.stream_header = h.wrap_bytes + h.wrap_size;
  // The ciphertext is the payload plus one tag per chunk: check before any
  // allocation that the file can hold what the header claims.
  const uint64_t chunks = chunk_count(h.info.payload_bytes, h.chunk);
  const uint64_t body = size - h.size;
  TEMPO_CHECK(h.info.payload_bytes <= body && chunks <= body / kTagBytes &&
                  h.info.payload_bytes + chunks * kTagBytes <= body,
              what + " is truncated: its header announces " + std::to_string(h.info.payload_bytes) +
                  " bytes in " + std::to_string(chunks) + " chunks, but only " + std::to_string(body) +
                  " bytes follow");
  TEMPO_CHECK(h.info.payload_bytes + chunks * kTagBytes == body,
              what + " has " + std::to_string(body - h.info.payload_bytes - chunks * kTagBytes) +
                  " bytes after its last chunk (the file was altered)");
  crypto_hash_sha256(h.info.id.data(), data, h.size);
  return h;
}

void encrypt_to(const std::string& path, ContainerKind kind, uint32_t wrap, const uint8_t* wrap_bytes,
                size_t wrap_size, const SymKey& key, const uint8_t* payload, size_t size) {
  std::vector<uint8_t> head;
  head.insert(head.end(), kMagic, kMagic + 8);
  put32(head, kVersion);
  put32(head, static_cast<uint32_t>(kind));
  put32(head, wrap);
  put32(head, kChunkBytes);
  put64(head, size);
  head.insert(head.end(), wrap_bytes, wrap_bytes + wrap_size);
  crypto_secretstream_xchacha20poly1305_state st;
  head.resize(head.size() + kStreamHeader);
  crypto_secretstream_xchacha20poly1305_init_push(&st, head.data() + head.size() - kStreamHeader, key.data());
  AtomicFile f(path);
  f.write(head.data(), head.size());
  std::vector<uint8_t> buf(std::min<size_t>(size, kChunkBytes) + kTagBytes);
  const uint64_t chunks = chunk_count(size, kChunkBytes);
  for (uint64_t i = 0; i < chunks; ++i) {
    const size_t off = static_cast<size_t>(i) * kChunkBytes;
    const size_t n = std::min<size_t>(kChunkBytes, size - off);
    const bool last = i + 1 == chunks;
    unsigned long long clen = 0;
    crypto_secretstream_xchacha20poly1305_push(
        &st, buf.data(), &clen, payload + off, n, i == 0 ? head.data() : nullptr, i == 0 ? head.size() : 0,
        last ? crypto_secretstream_xchacha20poly1305_TAG_FINAL : crypto_secretstream_xchacha20poly1305_TAG_MESSAGE);
    f.write(buf.data(), static_cast<size_t>(clen));
  }
  sodium_memzero(&st, sizeof st);
  f.commit();
}

}  // namespace

const char* container_kind_name(ContainerKind k) {
  switch (k) {
    case ContainerKind::kData: return "data set";
    case ContainerKind::kModel: return "model";
    case ContainerKind::kCheckpoint: return "checkpoint";
  }
  return "?";
}

SymKey random_sym_key() {
  init_sodium();
  SymKey k;
  crypto_secretstream_xchacha20poly1305_keygen(k.data());
  return k;
}

BoxKeyPair random_box_keypair() {
  init_sodium();
  BoxKeyPair kp;
  crypto_box_keypair(kp.pk.data(), kp.sk.data());
  return kp;
}

void write_container(const std::string& path, ContainerKind kind, const SymKey& key, const uint8_t* payload,
                     size_t size) {
  init_sodium();
  const auto id = key_id(key);
  encrypt_to(path, kind, kWrapSymmetric, id.data(), id.size(), key, payload, size);
}

void write_container_to(const std::string& path, ContainerKind kind, const std::array<uint8_t, 32>& recipient_pk,
                        const uint8_t* payload, size_t size) {
  init_sodium();
  SymKey key = random_sym_key();
  std::array<uint8_t, kSealedKeyBytes> sealed{};
  TEMPO_CHECK(crypto_box_seal(sealed.data(), key.data(), key.size(), recipient_pk.data()) == 0,
              "cannot encrypt " + path + " to the owner's public key (is it a valid X25519 key?)");
  encrypt_to(path, kind, kWrapPublic, sealed.data(), sealed.size(), key, payload, size);
  sodium_memzero(key.data(), key.size());
}

void write_container_from(const std::string& path, ContainerKind kind, const BoxKeyPair& sender,
                          const std::array<uint8_t, 32>& recipient_pk, const uint8_t* payload, size_t size) {
  init_sodium();
  SymKey key = random_sym_key();
  std::array<uint8_t, kBoxedKeyBytes> wrap{};
  std::memcpy(wrap.data(), sender.pk.data(), 32);
  uint8_t* nonce = wrap.data() + 32;
  randombytes_buf(nonce, crypto_box_NONCEBYTES);
  const bool ok = crypto_box_easy(nonce + crypto_box_NONCEBYTES, key.data(), key.size(), nonce, recipient_pk.data(),
                                  sender.sk.data()) == 0;
  if (!ok) sodium_memzero(key.data(), key.size());
  TEMPO_CHECK(ok, "cannot encrypt " + path + " to the owner's public key (is it a valid X25519 key?)");
  encrypt_to(path, kind, kWrapFromTo, wrap.data(), wrap.size(), key, payload, size);
  sodium_memzero(key.data(), key.size());
}

ContainerInfo container_info(const uint8_t* data, size_t size, const std::string& what) {
  return parse_header(data, size, size, what).info;
}

ContainerInfo read_container_info(const std::string& path) {
  // The header is small: read only that, and check sizes against the
  // file's length.
  std::ifstream f(path, std::ios::binary);
  struct stat st;
  TEMPO_CHECK(f.good() && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode),
              "cannot open encrypted file " + path + " (check the path)");
  std::vector<uint8_t> head(kFixedHeader + kMaxWrapBytes + kStreamHeader);
  f.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
  return parse_header(head.data(), static_cast<size_t>(f.gcount()), static_cast<size_t>(st.st_size), path).info;
}

std::vector<uint8_t> open_container(const uint8_t* data, size_t size, const std::string& what,
                                    ContainerKind expect, const SymKey* key, const BoxKeyPair* keypair,
                                    const std::array<uint8_t, 32>* sender) {
  init_sodium();
  const Header h = parse_header(data, size, size, what);
  TEMPO_CHECK(h.info.kind == expect, what + " is an encrypted " + container_kind_name(h.info.kind) + ", not a " +
                                         container_kind_name(expect));
  SymKey k{};
  if (h.info.to_public_key) {
    TEMPO_CHECK(keypair != nullptr, what + " is encrypted to an owner's public key: open it with the owner's "
                                           "secret key (tempo owner decrypt-model --owner-key FILE)");
    if (sender != nullptr) {
      TEMPO_CHECK(h.info.authenticated_sender,
                  what + " is sealed anonymously: anyone who knows your public key could have made it, not "
                         "necessarily the attested master. Refused (a master seals its model with the key of "
                         "its attestation report)");
      TEMPO_CHECK(sodium_memcmp(h.info.sender_pk.data(), sender->data(), 32) == 0,
                  what + " was not sealed by the attested master: its sender key " + to_hex(h.info.sender_pk.data(), 8) +
                      "... is not the report's master key " + to_hex(sender->data(), 8) +
                      "... (a substituted model, or another run's report)");
    }
    const bool opened =
        h.info.authenticated_sender
            ? crypto_box_open_easy(k.data(), h.wrap_bytes + 32 + crypto_box_NONCEBYTES,
                                   h.wrap_size - 32 - crypto_box_NONCEBYTES, h.wrap_bytes + 32,
                                   h.info.sender_pk.data(), keypair->sk.data()) == 0
            : crypto_box_seal_open(k.data(), h.wrap_bytes, h.wrap_size, keypair->pk.data(), keypair->sk.data()) == 0;
    TEMPO_CHECK(opened, what + (h.info.authenticated_sender
                                    ? " does not open with this owner key and its sender's key (wrong --owner-key, "
                                      "or the file was forged)"
                                    : " was not encrypted to this owner key (wrong --owner-key?)"));
  } else {
    TEMPO_CHECK(key != nullptr, what + " is encrypted with a symmetric key, not to an owner's public key");
    const auto id = key_id(*key);
    TEMPO_CHECK(sodium_memcmp(id.data(), h.wrap_bytes, id.size()) == 0,
                what + " was encrypted with a different key (wrong key file?)");
    k = key->clone();
  }
  crypto_secretstream_xchacha20poly1305_state st;
  if (crypto_secretstream_xchacha20poly1305_init_pull(&st, h.stream_header, k.data()) != 0) {
    sodium_memzero(k.data(), k.size());
    throw Error(what + " has a corrupt stream header");
  }
  sodium_memzero(k.data(), k.size());
  std::vector<uint8_t> out(static_cast<size_t>(h.info.payload_bytes));
  const uint64_t chunks = chunk_count(h.info.payload_bytes, h.chunk);
  const uint8_t* c = data + h.size;
  for (uint64_t i = 0; i < chunks; ++i) {
    const size_t off = static_cast<size_t>(i) * h.chunk;
    const size_t n = std::min<size_t>(h.chunk, out.size() - off);
    unsigned long long mlen = 0;
    unsigned char tag = 0;
    const bool ok = crypto_secretstream_xchacha20poly1305_pull(&st, out.data() + off, &mlen, &tag, c, n + kTagBytes,
                                                               i == 0 ? data : nullptr, i == 0 ? h.size : 0) == 0;
    const bool last = i + 1 == chunks;
    if (!ok || mlen != n || (tag == crypto_secretstream_xchacha20poly1305_TAG_FINAL) != last) {
      sodium_memzero(out.data(), out.size());
      sodium_memzero(&st, sizeof st);
      if (!ok)
        throw Error(what + ": chunk " + std::to_string(i + 1) + " of " + std::to_string(chunks) +
                    " fails authentication (the file was altered, reordered or damaged)");
      throw Error(what + ": chunk " + std::to_string(i + 1) + " of " + std::to_string(chunks) +
                  (last ? " should end the stream but does not (the file was truncated)"
                        : " ends the stream early (the file was altered)"));
    }
    c += n + kTagBytes;
  }
  sodium_memzero(&st, sizeof st);
  return out;
}

std::vector<uint8_t> read_container(const std::string& path, ContainerKind expect, const SymKey* key,
                                    const BoxKeyPair* keypair, const std::array<uint8_t, 32>* sender) {
  std::vector<uint8_t> file = read_file(path, std::string("encrypted ") + container_kind_name(expect));
  return open_container(file.data(), file.size(), path, expect, key, keypair, sender);
}

// ---- Key files ----------------------------------------------------------------

std::string to_hex(const uint8_t* p, size_t n) {
  std::string s(2 * n + 1, '\0');
  sodium_bin2hex(s.data(), s.size(), p, n);
  s.pop_back();
  return s;
}

std::vector<uint8_t> from_hex(const std::string& hex, size_t n, const std::string& what) {
  std::vector<uint8_t> out(n);
  size_t got = 0;
  const char* end = nullptr;
  const bool ok = hex.size() == 2 * n &&
                  sodium_hex2bin(out.data(), n, hex.data(), hex.size(), nullptr, &got, &end) == 0 && got == n;
  TEMPO_CHECK(ok, what + ": expected " + std::to_string(n) + " bytes of hex (" + std::to_string(2 * n) +
                      " digits)");
  return out;
}

void write_key_file(const std::string& path, const char* label, const uint8_t* key, size_t size) {
  struct stat st;
  TEMPO_CHECK(::lstat(path.c_str(), &st) != 0,
              path + " already exists; refusing to overwrite a key (move it away first)");
  const std::string line = std::string(label) + " " + to_hex(key, size) + "\n";
  AtomicFile f(path);
  f.write(line.data(), line.size());
  f.commit();
}

std::vector<uint8_t> read_key_file(const std::string& path, const char* label, size_t size) {
  std::vector<uint8_t> raw = read_file(path, "key file");
  TEMPO_CHECK(raw.size() < 4096, path + " is not a Tempo key file (too long)");
  std::string text(raw.begin(), raw.end());
  sodium_memzero(raw.data(), raw.size());
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  const size_t sp = text.find(' ');
  const std::string found = text.substr(0, sp);
  if (found != label) {
    sodium_memzero(text.data(), text.size());
    const bool known = found == kOwnerSecretLabel || found == kOwnerPublicLabel || found == kDataKeyLabel ||
                       found == kSealingKeyLabel;
    throw Error(path + (known ? " holds a " + found + ", but a " + std::string(label) + " is needed here"
                              : " is not a Tempo key file (expected a " + std::string(label) + ")"));
  }
  std::vector<uint8_t> key = from_hex(sp == std::string::npos ? "" : text.substr(sp + 1), size, path);
  sodium_memzero(text.data(), text.size());
  return key;
}

SymKey read_sym_key(const std::string& path, const char* label) {
  std::vector<uint8_t> b = read_key_file(path, label, 32);
  SymKey k;
  std::memcpy(k.data(), b.data(), 32);
  sodium_memzero(b.data(), b.size());
  return k;
}

BoxKeyPair read_owner_secret(const std::string& path) {
  init_sodium();
  std::vector<uint8_t> b = read_key_file(path, kOwnerSecretLabel, 64);
  BoxKeyPair kp;
  std::memcpy(kp.sk.data(), b.data(), 32);
  std::memcpy(kp.pk.data(), b.data() + 32, 32);
  sodium_memzero(b.data(), b.size());
  std::array<uint8_t, 32> derived{};
  crypto_scalarmult_base(derived.data(), kp.sk.data());
  TEMPO_CHECK(derived == kp.pk, path + " is damaged: its public half does not match its secret half");
  return kp;
}

std::array<uint8_t, 32> read_owner_public(const std::string& path) {
  std::vector<uint8_t> b = read_key_file(path, kOwnerPublicLabel, 32);
  std::array<uint8_t, 32> pk;
  std::memcpy(pk.data(), b.data(), 32);
  return pk;
}

std::array<uint8_t, 32> sha256(const uint8_t* p, size_t n) {
  init_sodium();
  std::array<uint8_t, 32> h;
  crypto_hash_sha256(h.data(), p, n);
  return h;
}

std::array<uint8_t, 32> sha256_file(const std::string& path) {
  init_sodium();
  std::ifstream f(path, std::ios::binary);
  TEMPO_CHECK(f.good(), "cannot read " + path + " to measure it");
  crypto_hash_sha256_state st;
  crypto_hash_sha256_init(&st);
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    crypto_hash_sha256_update(&st, reinterpret_cast<const uint8_t*>(buf.data()), static_cast<size_t>(f.gcount()));
  }
  TEMPO_CHECK(f.eof(), "cannot read " + path + " to measure it");
  std::array<uint8_t, 32> h;
  crypto_hash_sha256_final(&st, h.data());
  return h;
}

}  // namespace tempo
