#include "worker/transcript.h"

#include <cstring>

#include "common/error.h"

namespace tempo {

namespace {

struct Header {
  char magic[4];
  uint8_t received;
  uint8_t pad[3];
  uint64_t handle;
  int64_t rows, cols;
};
static_assert(sizeof(Header) == 32, "transcript header layout");

}  // namespace

TranscriptWriter::TranscriptWriter(const std::string& path) : path_(path) {
  f_ = std::fopen(path.c_str(), "wb");
  TEMPO_CHECK(f_ != nullptr, "cannot create transcript '" + path + "' (does the --record directory exist?)");
}

TranscriptWriter::~TranscriptWriter() {
  if (f_) std::fclose(f_);
}

void TranscriptWriter::add(bool received, uint64_t handle, const Matrix& m) {
  Header h{{'T', 'T', 'X', '1'}, static_cast<uint8_t>(received ? 1 : 0), {0, 0, 0}, handle, m.rows(), m.cols()};
  std::lock_guard<std::mutex> lock(mu_);
  const size_t n = static_cast<size_t>(m.size());
  if (std::fwrite(&h, sizeof h, 1, f_) != 1 || std::fwrite(m.data(), sizeof(float), n, f_) != n ||
      std::fflush(f_) != 0)
    throw Error("cannot write transcript '" + path_ + "' (disk full?)");
}

std::vector<TranscriptRecord> read_transcript(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  TEMPO_CHECK(f != nullptr, "cannot read transcript '" + path + "'");
  std::vector<TranscriptRecord> out;
  Header h;
  for (;;) {
    const size_t got = std::fread(&h, 1, sizeof h, f);
    if (got == 0) break;
    const std::string where = "transcript '" + path + "', record " + std::to_string(out.size());
    if (got != sizeof h || std::memcmp(h.magic, "TTX1", 4) != 0 || h.received > 1 || h.rows < 0 || h.cols < 0 ||
        h.rows > (int64_t{1} << 31) || h.cols > (int64_t{1} << 31)) {
      std::fclose(f);
      throw Error(where + ": malformed header");
    }
    TranscriptRecord r{h.received == 1, h.handle, h.rows, h.cols, {}};
    r.data.resize(static_cast<size_t>(h.rows * h.cols));
    if (std::fread(r.data.data(), sizeof(float), r.data.size(), f) != r.data.size()) {
      std::fclose(f);
      throw Error(where + ": truncated");
    }
    out.push_back(std::move(r));
  }
  std::fclose(f);
  return out;
}

}  // namespace tempo
