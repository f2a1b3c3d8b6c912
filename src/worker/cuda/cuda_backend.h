// The CUDA compute backend (cuBLAS). Built when CMake finds nvcc and cuBLAS;
// otherwise make_cuda_backend() explains that this build has none. Only the
// worker side links it: the trusted side never includes a CUDA header.
#pragma once

#include <memory>
#include <string>

#include "worker/worker_service.h"

namespace tempo {

struct CudaOptions {
  int device = 0;
  bool tf32 = false;  // TF32 tensor cores for products; only when the master asks
};

// Throws WorkerError with a clear message when there is no usable GPU.
std::unique_ptr<ComputeBackend> make_cuda_backend(const CudaOptions& opts = {});

// "NVIDIA H100 80GB HBM3, 79.1 GiB" for logs, or why there is no GPU.
std::string cuda_device_info(int device = 0);
bool cuda_built();

}  // namespace tempo
