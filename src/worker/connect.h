// The master's worker list (`--workers`): a comma-separated list of
// "local:N" (N in-process CPU workers, each on its own thread) and
// "HOST:PORT" (a `tempo worker` process; "[v6addr]:PORT" for IPv6).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "wire/remote_worker.h"
#include "wire/worker_api.h"
#include "worker/worker_service.h"

namespace tempo {

std::vector<std::unique_ptr<WorkerApi>> connect_workers(const std::string& spec, const RemoteOptions& remote = {});

// A compute backend by name: "cpu" or "cuda" (WorkerError if unavailable).
std::unique_ptr<ComputeBackend> make_backend(const std::string& name, bool tf32 = false);

}  // namespace tempo
