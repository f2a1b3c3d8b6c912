#include "worker/backends.h"

#include "worker/cuda/cuda_backend.h"

namespace tempo {

std::unique_ptr<ComputeBackend> make_backend(const std::string& name, bool tf32) {
  if (name == "cpu") return make_cpu_backend();
  if (name == "cuda") {
    CudaOptions o;
    o.tf32 = tf32;
    return make_cuda_backend(o);
  }
  throw WorkerError("unknown compute backend '" + name + "' (cpu or cuda)");
}

}  // namespace tempo
