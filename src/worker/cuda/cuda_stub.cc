// make_cuda_backend() in builds without CUDA.
#include "worker/cuda/cuda_backend.h"

namespace tempo {

std::unique_ptr<ComputeBackend> make_cuda_backend(const CudaOptions&) {
  throw WorkerError("no CUDA backend in this build of tempo (nvcc and cuBLAS were not found when it was "
                    "configured): use the cpu backend (--backend cpu, or --local-backend cpu for train), or "
                    "rebuild on a machine with the CUDA toolkit");
}

std::string cuda_device_info(int) { return "no CUDA support in this build"; }
bool cuda_built() { return false; }

}  // namespace tempo
