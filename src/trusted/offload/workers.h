// The master's worker list (`--workers`): a comma-separated list of
// "local:N" (N in-process workers, each on its own thread) and "HOST:PORT"
// (a `tempo worker` process; "[v6addr]:PORT" for IPv6).
//
// The master reaches remote workers through wire/ alone. In-process workers
// are worker code, which the master's library does not link: a binary that
// links both sides installs a factory for them (eval/wiring.h); without one
// (the master-only build) "local:N" is refused with a clear message.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "wire/remote_worker.h"
#include "wire/worker_api.h"

namespace tempo {

// Makes the in-process worker called `name` with remote.local_backend.
using LocalWorkerFactory = std::function<std::unique_ptr<WorkerApi>(const std::string& name,
                                                                    const RemoteOptions& remote)>;
void set_local_worker_factory(LocalWorkerFactory factory);
bool have_local_workers();

std::vector<std::unique_ptr<WorkerApi>> connect_workers(const std::string& spec, const RemoteOptions& remote = {});

}  // namespace tempo
