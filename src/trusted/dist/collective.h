// The masters of a data-parallel job (P12; docs/DESIGN-NOTES.md, "Several
// masters"): this process's rank, the job's size, and the only two
// collectives the masters use, both on public or padded bytes. MPI is the
// engine (mpi.cc); tests substitute their own.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace tempo {

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: data becomes the element-wise sum over the ranks, mod 2^64.
  virtual void sum(uint64_t* data, int64_t n) = 0;
  // all (size() × n bytes) receives every rank's `mine` (n bytes), by rank.
  virtual void gather(const uint8_t* mine, int64_t n, uint8_t* all) = 0;
  // Ends every rank of the job now (this one cannot go on); the message is
  // already printed.
  [[noreturn]] virtual void abort() = 0;
};

// The ranks mpirun (OpenMPI's or another PMI launcher's) says this process
// belongs to, from its environment: 1 when not started by a launcher.
int launched_ranks();

// Whether this build has MPI (TEMPO_HAVE_MPI).
bool mpi_available();

// The MPI world of this process (MPI initialised on the first call and
// finalised at a normal exit). Error when this build has no MPI.
Collective& mpi_world();

}  // namespace tempo
