// Compute backends by name, as `tempo worker --backend` and `tempo train
// --local-backend` name them.
#pragma once

#include <memory>
#include <string>

#include "worker/worker_service.h"

namespace tempo {

// "cpu" or "cuda" (WorkerError if unavailable, with the reason).
std::unique_ptr<ComputeBackend> make_backend(const std::string& name, bool tf32 = false);

}  // namespace tempo
