#include "trusted/dist/collective.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "common/error.h"

#ifdef TEMPO_HAVE_MPI
#include <mpi.h>
#endif

namespace tempo {

int launched_ranks() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"}) {
    const char* v = std::getenv(var);
    if (v && *v) {
      const int n = std::atoi(v);
      if (n >= 1) return n;
    }
  }
  return 1;
}

#ifdef TEMPO_HAVE_MPI

bool mpi_available() { return true; }

namespace {

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(std::string("MPI ") + what + " failed: " + std::string(msg, static_cast<size_t>(len)));
}

class MpiWorld final : public Collective {
 public:
  MpiWorld() {
    int ready = 0;
    MPI_Initialized(&ready);
    if (!ready) {
      int provided = 0;
      // Only the main thread calls MPI; OpenMP threads never do.
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "initialisation");
      std::atexit([] {
        int done = 0;
        MPI_Finalized(&done);
        if (!done) MPI_Finalize();
      });
    }
    // Errors come back as return codes (turned into Error), not as MPI's abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void sum(uint64_t* data, int64_t n) override {
    // MPI counts are ints: large vectors go in pieces.
    constexpr int64_t kPiece = int64_t{1} << 28;
    for (int64_t at = 0; at < n; at += kPiece)
      check(MPI_Allreduce(MPI_IN_PLACE, data + at, static_cast<int>(std::min(kPiece, n - at)), MPI_UINT64_T, MPI_SUM,
                          MPI_COMM_WORLD),
            "all-reduce");
  }
  void gather(const uint8_t* mine, int64_t n, uint8_t* all) override {
    check(MPI_Allgather(mine, static_cast<int>(n), MPI_BYTE, all, static_cast<int>(n), MPI_BYTE, MPI_COMM_WORLD),
          "all-gather");
  }
  [[noreturn]] void abort() override {
    MPI_Abort(MPI_COMM_WORLD, 1);
    std::_Exit(1);
  }

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace

Collective& mpi_world() {
  static MpiWorld world;
  return world;
}

#else

bool mpi_available() { return false; }

Collective& mpi_world() {
  throw Error("this tempo was built without MPI, so it cannot run as one of several masters: install OpenMPI "
              "(bash scripts/setup.sh installs openmpi-bin and libopenmpi-dev) and rebuild (-DTEMPO_MPI=ON)");
}

#endif

}  // namespace tempo
