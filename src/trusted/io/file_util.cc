#include "trusted/io/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"

namespace tempo {

namespace {
std::string dir_of(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}
}  // namespace

std::vector<uint8_t> read_file(const std::string& path, const std::string& kind) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    throw Error("cannot open " + kind + " " + path + ": " + std::strerror(e) +
                (e == ENOENT ? " (check the path)" : ""));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error("cannot read " + kind + " " + path + ": not a regular file (check the path)");
  }
  std::vector<uint8_t> buf(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t r = ::read(fd, buf.data() + got, buf.size() - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      int e = errno;
      ::close(fd);
      throw Error("cannot read " + kind + " " + path + ": " +
                  (r == 0 ? std::string("the file shrank while being read") : std::strerror(e)));
    }
    got += static_cast<size_t>(r);
  }
  ::close(fd);
  return buf;
}

bool is_regular_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  std::string tmpl = path + ".tmp.XXXXXX";
  fd_ = ::mkstemp(tmpl.data());
  if (fd_ < 0) {
    int e = errno;
    throw Error("cannot write " + path + ": cannot create a file in " + dir_of(path) + ": " + std::strerror(e) +
                " (check that the directory exists and is writable)");
  }
  tmp_ = tmpl;
}

AtomicFile::~AtomicFile() { discard(); }

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!tmp_.empty()) ::unlink(tmp_.c_str());
  tmp_.clear();
}

void AtomicFile::fail(const std::string& problem) {
  int e = errno;
  discard();
  throw Error("cannot write " + path_ + ": " + problem + ": " + std::strerror(e) +
              " (check free space and permissions)");
}

void AtomicFile::write(const void* data, size_t size) {
  TEMPO_CHECK(fd_ >= 0, "cannot write " + path_ + ": file already closed");
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t r = ::write(fd_, p, size);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) {
      if (r == 0) errno = EIO;
      fail("write failed");
    }
    p += r;
    size -= static_cast<size_t>(r);
  }
}

void AtomicFile::commit() {
  TEMPO_CHECK(fd_ >= 0, "cannot write " + path_ + ": file already closed");
  if (::fsync(fd_) != 0) fail("fsync failed");
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) fail("close failed");
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail("cannot rename " + tmp_ + " over it");
  tmp_.clear();
  // Make the rename itself durable; failure here leaves a complete file.
  int dfd = ::open(dir_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace tempo
