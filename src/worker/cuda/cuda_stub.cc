// make_cuda_backend() in builds without CUDA.
#include "worker/cuda/cuda_backend.h"

namespace tempo {

std::unique_ptr<ComputeBackend> make_cuda_backend(const CudaOptions&) {
  throw WorkerError("this build of tempo has no CUDA backend (nvcc and cuBLAS were not found when it was "
                    "configured); use --backend cpu, or rebuild on a machine with the CUDA toolkit");
}

std::string cuda_device_info(int) { return "no CUDA support in this build"; }
bool cuda_built() { return false; }

}  // namespace tempo
