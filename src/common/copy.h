// A large memory copy spread over this process's threads (--threads, either side):
// one core's memcpy does not saturate the memory bus, and for copies into
// pinned staging memory (the CUDA worker) it is what limits the transfer.
// Pieces of 256 KiB; a copy of at most one piece stays on the calling thread.
#pragma once

#include <cstddef>

namespace tempo {

void parallel_copy(void* dst, const void* src, size_t bytes);

}  // namespace tempo
