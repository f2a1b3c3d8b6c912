#include "trusted/offload/workers.h"

#include <cstdio>

#include "common/error.h"

namespace tempo {

namespace {

LocalWorkerFactory& local_factory() {
  static LocalWorkerFactory f;
  return f;
}

// Strict decimal in [lo, hi], or -1.
long parse_int(const std::string& s, long lo, long hi) {
  if (s.empty() || s.size() > 9 || s.find_first_not_of("0123456789") != std::string::npos) return -1;
  long v = std::stol(s);
  return v >= lo && v <= hi ? v : -1;
}

}  // namespace

void set_local_worker_factory(LocalWorkerFactory factory) { local_factory() = std::move(factory); }
bool have_local_workers() { return static_cast<bool>(local_factory()); }

std::vector<std::unique_ptr<WorkerApi>> connect_workers(const std::string& spec, const RemoteOptions& remote) {
  std::vector<std::unique_ptr<WorkerApi>> out;
  TEMPO_CHECK(!spec.empty(), "--workers is empty: give local:N or HOST:PORT,...");
  size_t pos = 0, local_count = 0;
  while (pos <= spec.size()) {
    size_t comma = spec.find(',', pos);
    if (comma == std::string::npos) comma = spec.size();
    const std::string item = spec.substr(pos, comma - pos);
    pos = comma + 1;
    TEMPO_CHECK(!item.empty(), "--workers '" + spec + "': empty entry");
    if (item == "local" || item.rfind("local:", 0) == 0) {
      const long n = item == "local" ? 1 : parse_int(item.substr(6), 1, 64);
      TEMPO_CHECK(n >= 1, "--workers '" + item + "': expected local:N with N from 1 to 64");
      TEMPO_CHECK(have_local_workers(), "--workers " + item + ": this master-only build has no in-process "
                                        "workers; start `tempo worker` processes and give their HOST:PORT");
      for (long i = 0; i < n; ++i) out.push_back(local_factory()("local:" + std::to_string(local_count++), remote));
      continue;
    }
    const size_t colon = item.rfind(':');
    const bool v6 = !item.empty() && item[0] == '[';
    TEMPO_CHECK(colon != std::string::npos && colon > 0 && (!v6 || item[colon - 1] == ']') &&
                    (v6 || item.find(':') == colon) && parse_int(item.substr(colon + 1), 1, 65535) > 0,
                "--workers '" + item + "': expected local:N or HOST:PORT (port 1-65535; [addr]:PORT for IPv6)");
    for (const auto& w : out)
      TEMPO_CHECK(w->name() != item, "--workers lists " + item + " twice");
    out.push_back(connect_remote_worker(item, remote));
    std::fprintf(stderr, "tempo: worker %s: %s\n", item.c_str(), remote_worker_info(*out.back()).c_str());
  }
  TEMPO_CHECK(out.size() <= 64, "--workers: at most 64 workers");
  return out;
}

}  // namespace tempo
