// `tempo worker`: the worker protocol (src/wire/proto/worker.proto) served
// over gRPC, on top of a WorkerNode.
#pragma once

#include <memory>
#include <string>

#include "worker/worker_node.h"

namespace tempo {

struct WorkerServerOptions {
  std::string listen = "127.0.0.1:7070";  // HOST:PORT; port 0 picks a free one
  WorkerNodeOptions node;
  std::string token;  // if set, every call must carry "authorization: Bearer <token>"
  // TLS: server certificate and key (PEM files); with client_ca, clients must
  // present a certificate signed by it (mutual TLS).
  std::string tls_cert, tls_key, tls_client_ca;
};

class WorkerServer {
 public:
  explicit WorkerServer(WorkerServerOptions opts);  // binds and starts serving
  ~WorkerServer();
  int port() const;
  // Blocks until shutdown() (from another thread) or `stop` becomes true.
  void wait(const std::atomic<bool>* stop = nullptr);
  void shutdown();
  WorkerNode& node();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tempo
