// gzip decompression (zlib) with errors that name the file.
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "common/error.h"
#include "trusted/data/dataset.h"
#include "trusted/io/file_util.h"

namespace tempo {

namespace {
// Refuse to inflate beyond this (decompression bombs); far above any dataset
// file this project reads (Fashion-MNIST train images: 47 MB).
constexpr size_t kMaxOut = size_t(4) << 30;
constexpr size_t kChunk = size_t(1) << 30;  // zlib counts in 32-bit uInt

struct Inflater {
  z_stream zs{};
  bool live = false;
  ~Inflater() {
    if (live) inflateEnd(&zs);
  }
};

bool gzip_magic(const uint8_t* p, size_t n) { return n >= 2 && p[0] == 0x1f && p[1] == 0x8b; }
}  // namespace

std::vector<uint8_t> gunzip(const uint8_t* data, size_t size, const std::string& what) {
  if (!gzip_magic(data, size)) return std::vector<uint8_t>(data, data + size);
  const std::string hint = " (re-download or re-create the file)";
  std::vector<uint8_t> out;
  // The last member's trailer holds its size mod 2^32: a good first guess.
  size_t guess = 4096;
  if (size >= 18) {
    uint32_t isize = 0;
    for (int i = 0; i < 4; ++i) isize |= uint32_t(data[size - 4 + i]) << (8 * i);
    // Deflate expands at most ~1032:1; never trust the trailer beyond that.
    guess = std::max<size_t>(guess, std::min<size_t>({isize, size * 1100 + 1024, size_t(1) << 30}));
  }
  out.resize(guess + 1);

  Inflater inf;
  if (inflateInit2(&inf.zs, 16 + MAX_WBITS) != Z_OK) throw Error(what + ": cannot initialise zlib");
  inf.live = true;
  z_stream& zs = inf.zs;
  size_t in_pos = 0, produced = 0;
  for (;;) {
    if (zs.avail_in == 0 && in_pos < size) {
      size_t n = std::min(size - in_pos, kChunk);
      zs.next_in = const_cast<Bytef*>(data + in_pos);
      zs.avail_in = static_cast<uInt>(n);
      in_pos += n;
    }
    if (produced == out.size()) {
      check(out.size() < kMaxOut, what + ": gzip data expands to more than 4 GiB; this is not a dataset file" + hint);
      out.resize(std::min(out.size() * 2, kMaxOut));
    }
    zs.next_out = out.data() + produced;
    zs.avail_out = static_cast<uInt>(std::min(out.size() - produced, kChunk));
    uInt before = zs.avail_out;
    int r = inflate(&zs, Z_NO_FLUSH);
    produced += before - zs.avail_out;
    if (r == Z_STREAM_END) {
      size_t left = zs.avail_in + (size - in_pos);
      if (left == 0) break;
      if (!gzip_magic(data + (size - left), left))
        throw Error(what + ": " + std::to_string(left) + " unexpected bytes after the gzip data" + hint);
      inflateReset(&zs);  // another gzip member follows (next_in/avail_in are kept)
    } else if (r == Z_OK) {
      continue;
    } else if (r == Z_BUF_ERROR && zs.avail_in == 0 && in_pos == size) {
      throw Error(what + ": gzip data is truncated (the file ends before the compressed stream does)" + hint);
    } else if (r == Z_BUF_ERROR) {
      continue;  // needs more output space
    } else if (r == Z_MEM_ERROR) {
      throw std::bad_alloc();
    } else {
      throw Error(what + ": gzip data is corrupt (" + (zs.msg ? zs.msg : "zlib error " + std::to_string(r)) + ")" +
                  hint);
    }
  }
  out.resize(produced);
  return out;
}

std::vector<uint8_t> gunzip_file(const std::string& path) {
  std::vector<uint8_t> raw = read_file(path, "data file");
  return gunzip(raw.data(), raw.size(), path);
}

}  // namespace tempo
