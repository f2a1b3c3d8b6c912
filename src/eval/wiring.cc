#include "eval/wiring.h"

#include "trusted/offload/workers.h"
#include "worker/backends.h"
#include "worker/local_worker.h"

namespace tempo {

void install_local_workers() {
  set_local_worker_factory([](const std::string& name, const RemoteOptions& remote) -> std::unique_ptr<WorkerApi> {
    return std::make_unique<LocalWorker>(name, make_backend(remote.local_backend, remote.tf32));
  });
}

}  // namespace tempo
