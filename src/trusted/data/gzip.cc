// gzip decompression (zlib), whole-image and chunked, with errors that name
// the file.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>

#include "common/error.h"
#include "trusted/data/dataset.h"
#include "trusted/data/gzip_reader.h"

namespace tempo {

namespace {
// Refuse to inflate beyond this (decompression bombs); far above any dataset
// file this project reads (Fashion-MNIST train images: 47 MB).
constexpr uint64_t kMaxOut = uint64_t(4) << 30;
constexpr size_t kChunk = size_t(1) << 30;  // zlib counts in 32-bit uInt
constexpr size_t kFileBuffer = size_t(1) << 20;
}  // namespace

GzipReader::GzipReader(const uint8_t* data, size_t size, std::string what)
    : what_(std::move(what)), in_(data), avail_(size), input_size_(size) {
  start();
}

GzipReader::GzipReader(const std::string& path) : what_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    int e = errno;
    throw Error("cannot open " + path + ": " + std::strerror(e) + (e == ENOENT ? " (check the path)" : ""));
  }
  struct stat st;
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw Error("cannot read " + path + ": not a regular file (check the path)");
  }
  input_size_ = static_cast<uint64_t>(st.st_size);
  buf_.resize(kFileBuffer);
  in_ = buf_.data();
  try {
    start();
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

GzipReader::~GzipReader() {
  if (live_) inflateEnd(&zs_);
  if (fd_ >= 0) ::close(fd_);
}

void GzipReader::fail(const std::string& problem) const {
  throw Error(what_ + ": " + problem + " (re-download or re-create the file)");
}

void GzipReader::start() {
  fill(2);
  gz_ = avail_ >= 2 && in_[0] == 0x1f && in_[1] == 0x8b;
  if (!gz_) return;
  if (inflateInit2(&zs_, 16 + MAX_WBITS) != Z_OK) throw std::bad_alloc();
  live_ = true;
}

bool GzipReader::fill(size_t want) {
  if (avail_ >= want || fd_ < 0) return avail_ >= want;
  if (avail_ && in_ != buf_.data()) std::memmove(buf_.data(), in_, avail_);
  in_ = buf_.data();
  while (avail_ < want) {
    ssize_t r = ::read(fd_, buf_.data() + avail_, buf_.size() - avail_);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int e = errno;
      throw Error("cannot read " + what_ + ": " + std::strerror(e));
    }
    if (r == 0) break;
    avail_ += static_cast<size_t>(r);
  }
  return avail_ >= want;
}

size_t GzipReader::read(uint8_t* dst, size_t n) {
  size_t got = 0;
  if (!gz_) {
    while (got < n && fill(1)) {
      size_t k = std::min(n - got, avail_);
      std::memcpy(dst + got, in_, k);
      in_ += k;
      avail_ -= k;
      got += k;
    }
    return got;
  }
  while (got < n && !done_) {
    if (avail_ == 0) fill(1);
    zs_.next_in = const_cast<Bytef*>(in_);
    zs_.avail_in = static_cast<uInt>(std::min(avail_, kChunk));
    zs_.next_out = dst + got;
    zs_.avail_out = static_cast<uInt>(std::min(n - got, kChunk));
    const uInt ain = zs_.avail_in, aout = zs_.avail_out;
    int r = inflate(&zs_, Z_NO_FLUSH);
    const size_t used = ain - zs_.avail_in, made = aout - zs_.avail_out;
    in_ += used;
    avail_ -= used;
    got += made;
    produced_ += made;
    if (produced_ > kMaxOut) fail("gzip data expands to more than 4 GiB; this is not a dataset file");
    if (r == Z_STREAM_END) {
      if (!fill(1)) {
        done_ = true;
      } else if (fill(2) && in_[0] == 0x1f && in_[1] == 0x8b) {
        inflateReset(&zs_);  // another gzip member follows
      } else {
        fail("unexpected bytes after the end of the gzip data");
      }
    } else if (r == Z_BUF_ERROR && avail_ == 0 && !fill(1)) {
      fail("gzip data is truncated (the file ends before the compressed stream does)");
    } else if (r == Z_MEM_ERROR) {
      throw std::bad_alloc();
    } else if ((r != Z_OK && r != Z_BUF_ERROR) || (used == 0 && made == 0 && avail_ > 0)) {
      fail(std::string("gzip data is corrupt (") + (zs_.msg ? zs_.msg : "zlib error " + std::to_string(r)) + ")");
    }
  }
  return got;
}

namespace {
std::vector<uint8_t> read_all(GzipReader& r, size_t guess) {
  std::vector<uint8_t> out(std::max<size_t>(guess, 4096) + 1);
  size_t have = 0;
  for (;;) {
    size_t got = r.read(out.data() + have, out.size() - have);
    have += got;
    if (have < out.size()) break;
    out.resize(out.size() * 2);
  }
  out.resize(have);
  return out;
}
}  // namespace

std::vector<uint8_t> gunzip(const uint8_t* data, size_t size, const std::string& what) {
  GzipReader r(data, size, what);
  if (!r.is_gzip()) return std::vector<uint8_t>(data, data + size);
  // The last member's trailer holds its size mod 2^32: a good first guess,
  // trusted only up to deflate's maximum ratio (~1032:1).
  size_t guess = 0;
  if (size >= 18) {
    uint32_t isize = 0;
    for (int i = 0; i < 4; ++i) isize |= uint32_t(data[size - 4 + i]) << (8 * i);
    guess = std::min<size_t>({isize, size * 1100 + 1024, size_t(1) << 30});
  }
  return read_all(r, guess);
}

std::vector<uint8_t> gunzip_file(const std::string& path) {
  GzipReader r(path);
  return read_all(r, r.input_size() * (r.is_gzip() ? 2 : 1));
}

}  // namespace tempo
