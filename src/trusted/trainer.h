// The training and evaluation loops of the trusted master.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/conv.h"
#include "trusted/data/dataset.h"
#include "trusted/dist/data_parallel.h"
#include "trusted/model.h"
#include "trusted/offload/offload_backend.h"
#include "wire/remote_worker.h"
#include "trusted/optim/optimizer.h"

namespace tempo {

// TrainConfig::local_below's default (`tempo train --local-below`).
constexpr int64_t kDefaultLocalBelow = 512;

struct TrainConfig {
  std::string model = "cnn";
  std::string data = "fashion-mnist";
  std::string mode = "tempo";  // tempo | offload | tee-only
  std::string workers = "local:1";
  RemoteOptions remote;        // token, TLS, deadlines for HOST:PORT workers
  int threads = 0;             // 0: all cores
  // The master's whole convolutions (--conv-algo): Winograd where oneDNN
  // has it, or direct kernels only (common/conv.h).
  ConvKernels conv_kernels = ConvKernels::kBest;
  uint64_t seed = 0;
  int64_t batch_size = 64;
  int epochs = 1;
  int64_t steps = -1;          // -1: no limit
  bool shuffle = true;
  OptimConfig optim;
  std::string init, save, metrics;
  bool offload_first = false, offload_last = false;
  // tempo and offload modes: convolutions with fewer output channels than
  // this stay in the master (--local-below; 0: every one is offloaded, but
  // the first layer). Blinding a convolution costs the master O(m·k) work
  // per pass over its unfolded input (mixing, mask, keys, check), while
  // computing it costs 3·m·k·n multiply-adds, about half that on Winograd
  // kernels: below about 512 outputs the blinding costs more than the
  // layer, so offloading it only slows the master (docs/BENCHMARKS.md,
  // "Winograd"). So do, with the mask on, the convolutions whose
  // k (in_channels·kernel²) is at most twice the mask's rank, whatever
  // their width: their mask is full rank, and its corrections alone
  // (2·m·n·k) cost two thirds of computing the layer (resnet50's 1×1
  // convolutions from 64 and 128 channels). A worker then sees a subset of
  // what it saw with every convolution offloaded, each product blinded as
  // then.
  int64_t local_below = kDefaultLocalBelow;
  OffloadConfig offload;       // tempo and offload modes
  std::string conv_mode = "im2col";  // im2col | channel (offloading modes)
  int channel_from = 3;        // channel mode from this offloaded convolution on
  bool progress = true;        // progress bar (TTY) or periodic lines
  int64_t insecure_key_seed = -1;  // >= 0: keys from a public seed (tests only)
  // Confidential I/O (P6, docs/CONFIDENTIAL.md).
  std::string owner_key;       // owner's public key: --save is encrypted to it
  std::string attest_dir;      // report out, key release in (encrypted:FILE data)
  double attest_timeout_s = 600;
  int64_t checkpoint_every = 0;  // steps; 0: no checkpoints
  std::string checkpoint = "tempo-checkpoint.tenc";
  std::string sealing_key;     // simulation of the enclave's sealing key
  std::string resume;          // sealed checkpoint to continue from
  bool print_config = false;   // print the measured configuration and stop
  // Several masters (`mpirun -np N tempo train`, P12; not owned): the job's
  // ranks. Null: one master. docs/DESIGN-NOTES.md, "Several masters".
  Collective* masters = nullptr;
};

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  int64_t correct = 0, samples = 0;
};

struct TrainResult {
  int64_t steps = 0;
  int64_t resumed_after = 0;   // steps a resumed run took from its checkpoint
  int epochs_completed = 0;
  double seconds = 0;          // training time, evaluation excluded
  double last_loss = 0;
  bool interrupted = false;
  bool evaluated = false;
  EvalResult test;
  int64_t peak_rss_bytes = 0;  // the process's peak resident memory (VmHWM)
};

// Peak resident set size of this process (0 if unknown).
int64_t peak_rss_bytes();

// Set to true (e.g. from a SIGINT handler) to stop after the current step.
extern std::atomic<bool> g_stop_requested;

// Runs a whole training job as configured: data, model, optimizer, steps,
// per-epoch evaluation, metrics and the final save.
// `backend`, when given (not owned), replaces the one cfg.mode would make
// (tests inject tampering or recording workers this way).
TrainResult train(const TrainConfig& cfg, LinearBackend* backend = nullptr);

// Builds cfg.model, applies the offload and convolution-mode flags, loads
// cfg.init if given.
std::unique_ptr<Model> prepare_model(const TrainConfig& cfg);
// The k at or below which prepare_model keeps a convolution in the master
// (TrainConfig::local_below): twice the mask's rank in tempo mode with a
// mask and local_below > 0, else 0.
int64_t local_inner(const TrainConfig& cfg);
// Marks which of model's products go to workers under cfg (its mode,
// offload_first/last, local_below and mask rank), as prepare_model does.
void apply_placement(Model& model, const TrainConfig& cfg);

// Evaluates `model` on the test split (eval mode: running BatchNorm stats);
// with `progress`, shows its progress on stderr (trusted/progress.h).
// With `masters`, each rank evaluates its shard of every batch and the
// counts and losses are summed over the ranks (every rank gets the total).
EvalResult evaluate(Model& model, const Dataset& data, int64_t batch_size, LinearBackend& backend,
                    bool progress = false, DataParallel* masters = nullptr);

// One rank's configuration of a job with several masters: its own list of
// --workers (the rank-th of lists separated by '|', or the one list), its
// own --checkpoint, --resume, --sealing-key and --attest-dir (`{rank}`
// replaced by the rank, or `.rankR` appended), and, except on rank 0, no
// progress display, --metrics or --save (unless --save has `{rank}`).
TrainConfig rank_config(const TrainConfig& cfg, int rank, int ranks);

// What `tempo predict` answers for every sample of a split: the class
// probabilities (softmax of the logits, N×classes, row-major) and the
// predicted classes (argmax of the logits).
struct Predictions {
  int64_t classes = 0;
  std::vector<float> probabilities;
  std::vector<int64_t> labels;
};

// Runs `model` (eval mode) over the test split, or the training split when
// train_split, in file order, batch_size samples at a time. Training batches
// come through the loader as in training (augmented, for CIFAR-10).
Predictions predict(Model& model, const Dataset& data, bool train_split, int64_t batch_size, LinearBackend& backend);

// The trusted side's threads and convolution kernels (--threads,
// --conv-algo), for the whole process: call before any backend is made.
void set_compute(const TrainConfig& cfg);
// Makes the linear backend of cfg.mode (connecting cfg.workers for tempo and
// offload); throws Error naming the mode if it is unknown.
// `secret`, when given, is the run secret of the keys (a resumed run's);
// otherwise one is drawn (or derived from --insecure-key-seed).
std::unique_ptr<LinearBackend> make_backend(const TrainConfig& cfg, const Secret* secret = nullptr);
// The run secret cfg asks for: from --insecure-key-seed, else random.
Secret run_secret(const TrainConfig& cfg);

}  // namespace tempo
