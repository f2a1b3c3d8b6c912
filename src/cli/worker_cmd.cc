// `tempo worker`: an untrusted compute service for masters' blinded products.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <fstream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/parallel.h"
#include "eval/doubles/faulty_worker.h"
#include "wire/remote_worker.h"
#include "worker/backends.h"
#include "worker/cuda/cuda_backend.h"
#include "worker/grpc_server.h"

namespace tempo::cli {

namespace {

std::atomic<bool> g_worker_stop{false};

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      auto pos = line.find(':');
      if (pos != std::string::npos) return line.substr(line.find_first_not_of(" \t", pos + 1));
    }
  return "cpu";
}
void on_stop_signal(int) { g_worker_stop = true; }

}  // namespace

void add_worker_flags(CLI::App& app, WorkerConfig& c) {
  app.add_option("--listen", c.listen, "HOST:PORT to serve on (port 0: any free port; 0.0.0.0 for all interfaces)")
      ->capture_default_str();
  app.add_option("--backend", c.backend, "Compute backend: cpu | cuda")->capture_default_str();
  app.add_option("--threads", c.threads, "Compute threads (0: all cores)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--quota-mib", c.quota_mib, "Memory each client session may hold, MiB")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--idle-timeout", c.idle_timeout_s, "Drop a client session silent for this many seconds")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--max-sessions", c.max_sessions, "Clients served at once")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--token-file", c.token_file,
                 "Serve only clients that present the token in this file (give masters the same file)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-cert", c.tls_cert, "Serve TLS with this certificate (PEM)")->check(CLI::ExistingFile);
  app.add_option("--tls-key", c.tls_key, "Private key of --tls-cert (PEM)")->check(CLI::ExistingFile);
  app.add_option("--tls-client-ca", c.tls_client_ca,
                 "Mutual TLS: accept only clients with a certificate signed by this CA (PEM)")
      ->check(CLI::ExistingFile);
  app.add_option("--port-file", c.port_file, "Write the port served on to this file once listening");
  app.add_option("--lie-rate", c.lie_rate,
                 "TESTING ONLY: return wrong results for this fraction of products (see --lie-kind)")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--lie-kind", c.lie_kind, "TESTING ONLY: entry | row | zeros | nan | inf | shape")
      ->capture_default_str()
      ->check(CLI::IsMember({"entry", "pair", "row", "zeros", "nan", "inf", "shape"}));
  app.add_option("--lie-seed", c.lie_seed, "TESTING ONLY: seed of the lies")->capture_default_str();
  app.add_option("--record", c.record_dir,
                 "EVALUATION ONLY: write every ciphertext received and returned to DIR/<session>.tempotx "
                 "(input of the privacy measurements)")
      ->check(CLI::ExistingDirectory);
  app.add_flag("--quiet", c.quiet, "No log line per session");
}

int run_worker(const WorkerConfig& c) {
  set_num_threads(c.threads);
  WorkerServerOptions o;
  o.listen = c.listen;
  TEMPO_CHECK(c.backend == "cpu" || c.backend == "cuda", "--backend " + c.backend + ": expected cpu or cuda");
  o.node.backend = c.backend;
  const std::string backend = c.backend;
  o.node.make_backend = [backend](bool tf32) { return make_backend(backend, tf32); };
  if (c.backend == "cuda") {
    make_backend("cuda");  // fails here, with its reason, if there is no usable GPU
    o.node.device = cuda_device_info();
  } else {
    o.node.device = cpu_model() + ", " + std::to_string(num_threads()) + " thread(s)";
  }
  o.node.quota_bytes = static_cast<size_t>(c.quota_mib) << 20;
  o.node.idle_timeout_s = c.idle_timeout_s;
  o.node.max_sessions = c.max_sessions;
  o.node.log = !c.quiet;
  if (c.lie_rate > 0) {
    // A liar is the production worker with its backend wrapped: session n
    // lies from seed lie_seed + n.
    const Tamper how = parse_tamper(c.lie_kind);
    auto sessions = std::make_shared<std::atomic<uint64_t>>(0);
    o.node.make_backend = [backend, how, c, sessions](bool tf32) {
      auto honest = make_backend(backend, tf32);
      return make_tampering_backend(std::move(honest), how, c.lie_rate, c.lie_seed + (*sessions)++);
    };
    std::fprintf(stderr, "tempo worker: WARNING: --lie-rate %.3g: this worker returns WRONG results on purpose "
                         "(testing only)\n", c.lie_rate);
  }
  if (!c.record_dir.empty()) {
    o.node.record_dir = c.record_dir;
    std::fprintf(stderr, "tempo worker: WARNING: --record: every tensor this worker receives and returns is written "
                         "to %s (for privacy measurements only; it fills the disk quickly)\n", c.record_dir.c_str());
  }
  if (!c.token_file.empty()) o.token = read_secret_file(c.token_file, "token");
  o.tls_cert = c.tls_cert;
  o.tls_key = c.tls_key;
  o.tls_client_ca = c.tls_client_ca;

  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGPIPE, SIG_IGN);
  WorkerServer server(o);
  const std::string host = c.listen.substr(0, c.listen.rfind(':'));
  std::fprintf(stderr, "tempo worker: listening on %s:%d (%s backend, %d thread(s), quota %lld MiB per session, %s%s)\n",
               host.c_str(), server.port(), c.backend.c_str(), num_threads(), static_cast<long long>(c.quota_mib),
               o.token.empty() ? "no token" : "token required",
               o.tls_cert.empty() ? ", no TLS" : (o.tls_client_ca.empty() ? ", TLS" : ", mutual TLS"));
  if (o.token.empty() && host != "127.0.0.1" && host != "localhost" && host != "[::1]")
    std::fprintf(stderr, "tempo worker: WARNING: reachable from the network without --token-file: anyone who "
                         "can connect may use this worker\n");
  if (!c.port_file.empty()) {
    const std::string tmp = c.port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << server.port() << "\n";
      TEMPO_CHECK(out.good(), "cannot write --port-file " + c.port_file);
    }
    TEMPO_CHECK(std::rename(tmp.c_str(), c.port_file.c_str()) == 0, "cannot write --port-file " + c.port_file);
  }
  server.wait(&g_worker_stop);
  std::fprintf(stderr, "tempo worker: stopping\n");
  server.shutdown();
  return 0;
}

}  // namespace tempo::cli
