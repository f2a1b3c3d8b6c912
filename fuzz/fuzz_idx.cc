// Fuzzes gunzip (whole-image and chunked) and parse_idx.
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "common/error.h"
#include "trusted/data/dataset.h"
#include "trusted/data/gzip_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> whole;
  bool whole_ok = true;
  try {
    whole = tempo::gunzip(data, size, "fuzz.gz");
  } catch (const tempo::Error&) {
    whole_ok = false;
  }
  // The chunked reader (used for real dataset files) must agree with it,
  // whatever the chunk size.
  for (size_t chunk : {size_t(1), size_t(7), size_t(4096)}) {
    std::vector<uint8_t> parts, buf(chunk);
    bool ok = true;
    try {
      tempo::GzipReader r(data, size, "fuzz.gz");
      for (size_t got; (got = r.read(buf.data(), chunk)) > 0;) parts.insert(parts.end(), buf.begin(), buf.begin() + got);
    } catch (const tempo::Error&) {
      ok = false;
    }
    if (ok != whole_ok || (ok && parts != whole)) std::abort();
    if (size > 512) break;  // byte-at-a-time is slow on big inputs
  }
  if (!whole_ok) return 0;
  try {
    tempo::IdxArray a = tempo::parse_idx(whole.data(), whole.size(), "fuzz.idx");
    uint64_t n = 1;
    for (int64_t d : a.dims) n *= static_cast<uint64_t>(d);
    if ((a.dims.size() != 1 && a.dims.size() != 3) || n != a.bytes.size()) std::abort();
  } catch (const tempo::Error&) {
  }
  return 0;
}
