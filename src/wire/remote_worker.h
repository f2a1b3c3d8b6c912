// The master's side of the worker protocol: a WorkerApi that talks gRPC to a
// `tempo worker` process. Each product is one `Run` call that carries the
// operands put since the last product (and any release or end of step).
// Calls run in order on one thread per worker, so the master encrypts the
// next operand while the previous call is on the wire or being multiplied. Every call has a deadline; a dead, hung or restarted
// worker, or bytes that do not match what was asked for, surface as a
// WorkerError from the result's future (the scheduler then re-encrypts the
// product for another worker).
#pragma once

#include <memory>
#include <string>

#include "wire/worker_api.h"

namespace tempo {

struct RemoteOptions {
  std::string token;                       // sent as "authorization: Bearer <token>"
  std::string token_file;                  // or read from this file
  std::string tls_ca, tls_cert, tls_key;   // PEM; tls_ca turns TLS on, cert+key make it mutual
  double call_timeout_s = 60;              // deadline of each call (plus 1 s per 100 MB moved)
  double connect_timeout_s = 10;           // to reach the worker at start
  std::string client = "tempo master";     // shown in the worker's log
  bool tf32 = false;                       // allow TF32 products (the verifier must allow for it)
  std::string local_backend = "cpu";       // backend of local:N workers: cpu | cuda
};

// Connects and opens a session (Error naming the address if unreachable,
// refused, or of another protocol version).
std::unique_ptr<WorkerApi> connect_remote_worker(const std::string& address, const RemoteOptions& opts);

// Reads a token or PEM file whole, without trailing newlines (Error naming
// the file if it cannot, or if it is empty).
std::string read_secret_file(const std::string& path, const char* what);

// The worker's self-description from the session handshake, for logs.
std::string remote_worker_info(const WorkerApi& w);

}  // namespace tempo
