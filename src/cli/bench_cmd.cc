// `tempo bench`: training-step time of tee-only mode against PyTorch's CPU
// step on the same thread counts, measured in one run, printed side by side.
#include <algorithm>
#include <optional>
#include <stdexcept>
#include <chrono>
#include <filesystem>
#include <cstdio>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "common/error.h"
#include "common/exact_low_rank.h"
#include "common/parallel.h"
#include "eval/subprocess.h"
#include "trusted/confidential/confidential.h"
#include "trusted/io/file_util.h"
#include "trusted/offload/offload_backend.h"
#include "trusted/offload/workers.h"
#include "trusted/train_step.h"
#include "worker/backends.h"
#include "worker/cuda/cuda_backend.h"

#include <cstring>

#ifndef TEMPO_SOURCE_DIR
#define TEMPO_SOURCE_DIR "."
#endif

namespace tempo::cli {

namespace {

struct Case {
  std::string model;
  int64_t batch;
};

Case parse_case(const std::string& s) {
  auto colon = s.rfind(':');  // the model may have colons of its own (vit:3x32x32:64, onnx:odd_resnet:1)
  TEMPO_CHECK(colon != std::string::npos, "--models entries look like MODEL:BATCH, got '" + s + "'");
  Case c{s.substr(0, colon), 0};
  try {
    c.batch = std::stoll(s.substr(colon + 1));
  } catch (...) {
  }
  TEMPO_CHECK(c.batch > 0, "bad batch size in '" + s + "'");
  return c;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

struct StepTiming {
  double median_ms = 0;
  PhaseSeconds phases;       // mean per step
  BlindingSeconds blinding;  // mean per step
  double trusted_mb = 0;     // trusted-side memory traffic per step (offloading modes)
  double moved_mb = 0;       // bytes to and from workers per step
  // The master's share: the step minus the worker's compute and the
  // transfers it waits for (what an infinitely fast worker and link leave).
  double master_ms() const { return std::max(0.0, median_ms - (phases.worker + phases.transfer) * 1e3); }
};

// One configuration's training loop on fixed random data, run in slices so
// that configurations can be interleaved (the machine's speed drifts).
// The flags of a bench row that decide, as in tempo train, which products
// go to its workers.
TrainConfig placement(const std::string& mode, int64_t local_below, int mask_rank) {
  TrainConfig t;
  t.mode = mode;
  t.local_below = local_below;
  t.offload.mask_rank = mask_rank;
  return t;
}

class StepRunner {
 public:
  // threads: set for each slice of steps (0: leave as is); conv_mode as
  // Model::set_conv_mode (channel mode from the third offloaded convolution);
  // placement: the flags whose products go to the backend (its mode,
  // local_below and mask rank; apply_placement).
  StepRunner(const Case& c, std::unique_ptr<OffloadBackend> backend, int threads = 0,
             const std::string& conv_mode = "im2col", const TrainConfig& placement = TrainConfig{})
      : model_(build_model(c.model, 0)),
        opt_(make_optimizer(OptimConfig{}, model_->parameters())),
        backend_(std::move(backend)),
        rng_(1),
        ctx_{backend_ ? static_cast<LinearBackend*>(backend_.get()) : &tee_, &tee_, true, &rng_},
        step_(*model_, *opt_, ctx_) {
    Shape xs = {c.batch};
    xs.insert(xs.end(), model_->input_shape.begin(), model_->input_shape.end());
    x_.resize(xs);
    for (int64_t i = 0; i < x_.numel(); ++i) x_[i] = static_cast<float>(rng_.normal());
    y_.resize(static_cast<size_t>(c.batch));
    for (auto& l : y_) l = static_cast<int64_t>(rng_.below(10));
    if (backend_) apply_placement(*model_, placement);
    model_->set_conv_mode(backend_ ? conv_mode : "im2col", 3);
    threads_ = threads;
  }
  // Runs `steps` steps; the first `warmup` of the runner's life are not timed.
  void run(int steps, int warmup = 0) {
    if (threads_ > 0) set_num_threads(threads_);
    for (int i = 0; i < steps; ++i) {
      const int64_t t0b = backend_ ? backend_->stats().trusted_bytes() : 0;
      const int64_t t0m = backend_ ? backend_->stats().bytes_sent + backend_->stats().bytes_received : 0;
      auto t = std::chrono::steady_clock::now();
      step_.run(x_, y_, 0.01);
      const PhaseSeconds ph = ctx_.offload->take_phase_seconds();
      const BlindingSeconds bl = backend_ ? backend_->take_blinding_seconds() : BlindingSeconds{};
      if (warmed_++ < warmup) continue;
      times_.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
      blind_ += bl;
      sum_.encrypt += ph.encrypt;
      sum_.transfer += ph.transfer;
      sum_.worker += ph.worker;
      sum_.decrypt += ph.decrypt;
      sum_.verify += ph.verify;
      if (backend_) {
        bytes_ += backend_->stats().trusted_bytes() - t0b;
        moved_ += backend_->stats().bytes_sent + backend_->stats().bytes_received - t0m;
      }
    }
  }
  StepTiming result() const {
    StepTiming r;
    const double n = std::max<double>(1, static_cast<double>(times_.size()));
    r.median_ms = median(times_);
    r.phases = {sum_.encrypt / n, sum_.transfer / n, sum_.worker / n, sum_.decrypt / n, sum_.verify / n};
    r.blinding = blind_ / n;
    r.trusted_mb = static_cast<double>(bytes_) / n / 1e6;
    r.moved_mb = static_cast<double>(moved_) / n / 1e6;
    return r;
  }

 private:
  std::unique_ptr<Model> model_;
  std::unique_ptr<Optimizer> opt_;
  std::unique_ptr<OffloadBackend> backend_;
  TeeOnlyBackend tee_;
  Rng rng_;
  Context ctx_;
  TrainStep step_;
  Tensor x_;
  std::vector<int64_t> y_;
  std::vector<double> times_;
  PhaseSeconds sum_;
  BlindingSeconds blind_;
  int64_t bytes_ = 0, moved_ = 0;
  int warmed_ = 0, threads_ = 0;
};

// The tee-only step on the given convolution kernels (the bench's own are
// restored after).
double tempo_step_ms(const Case& c, int threads, int steps, ConvKernels kernels) {
  set_num_threads(threads);
  const ConvKernels was = default_conv_kernels();
  set_default_conv_kernels(kernels);
  StepRunner r(c, nullptr);
  set_default_conv_kernels(was);
  r.run(steps + 2, 2);
  return r.result().median_ms;
}

// Best-of-5 copy bandwidth of a 64 MiB buffer, in GB/s of traffic (read +
// write): the floor for passes that stream through memory.
double memory_bandwidth_gbs() {
  const size_t n = size_t{16} << 20;
  Tensor a({static_cast<int64_t>(n)}), b({static_cast<int64_t>(n)});
  a.fill(1.0f);
  double best = 1e30;
  for (int i = 0; i < 5; ++i) {
    auto t = std::chrono::steady_clock::now();
    parallel_for(static_cast<int64_t>(n), [&](int64_t lo, int64_t hi) {
      std::memcpy(b.data() + lo, a.data() + lo, sizeof(float) * static_cast<size_t>(hi - lo));
    }, 1 << 16);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
  }
  return 2.0 * sizeof(float) * static_cast<double>(n) / best / 1e9;
}

// The default Freivalds rounds, for the bench rows that run the defaults.
const int kR = VerifyConfig{}.rounds;

struct Config {
  std::string label;
  std::string mode;
  bool key_shift = true;
  int rounds = VerifyConfig{}.rounds;
  std::string workers;
  int mask_rank = OffloadConfig{}.mask_rank;
  int row_mix = OffloadConfig{}.row_mix;
  int col_mix = OffloadConfig{}.col_mix;
  MaskKind mask_kind = OffloadConfig{}.mask_kind;
  int64_t local_below = -1;  // -1: the bench's --local-below
  std::optional<ConvKernels> conv = std::nullopt;  // the master's convolutions; none: the bench's --conv-algo
};

// PyTorch's step (or with extra "--inference", its prediction), median ms.
double torch_step_ms(const BenchConfig& cfg, const Case& c, int threads, int steps,
                     const std::string& device = "cpu", const std::string& extra = "");

// Every configuration on every model, interleaved, as one table. With
// --configs, only the rows named there, after tee-only (the baseline of the
// ratios): all runners are alive at once, and on large models a full table
// does not fit in memory.
int run_configs(const BenchConfig& cfg, const std::vector<Config>& all) {
  std::vector<Config> configs;
  for (size_t i = 0; i < all.size(); ++i)
    if (i == 0 || cfg.configs.empty() ||
        std::find(cfg.configs.begin(), cfg.configs.end(), all[i].label) != cfg.configs.end())
      configs.push_back(all[i]);
  for (const auto& want : cfg.configs) {
    bool found = std::any_of(all.begin(), all.end(), [&](const Config& c) { return c.label == want; });
    if (!found) {
      std::string names;
      for (const auto& c : all) names += "\n  " + c.label;
      throw std::runtime_error("--configs: no row \"" + want + "\" in suite " + cfg.suite + "; its rows:" + names);
    }
  }
  const double bw = memory_bandwidth_gbs();
  std::printf("trusted side: %d threads, memory bandwidth %.1f GB/s (copy, read+write), the mask's product on %s\n",
              num_threads(), bw, low_rank_path_name(low_rank_path()));
  // master ms: the step minus the worker's compute and the transfers the
  // master waits for (what an infinitely fast GPU and network would leave);
  // ideal GPU x: the tee-only step over that (the speed-up such a worker
  // would give).
  std::printf("%-9s %5s %-26s %9s %7s %8s %8s %8s %8s %8s %9s %9s %9s %8s\n", "model", "batch", "configuration",
              "ms/step", "x tee", "encrypt", "transfer", "worker", "decrypt", "verify", "MB moved", "floor ms",
              "master ms", "ideal x");
  for (const auto& s : cfg.models) {
    Case c = parse_case(s);
    const int steps = cfg.steps > 0 ? cfg.steps : (c.model == "cnn" || c.model == "mlp" ? 30 : 6);
    // All configurations side by side, interleaved in rounds of a few steps.
    std::vector<std::unique_ptr<StepRunner>> runners;
    for (const auto& conf : configs) {
      set_default_conv_kernels(conf.conv.value_or(cfg.conv_kernels));  // for the backends made here
      std::unique_ptr<OffloadBackend> be;
      if (conf.mode != "tee-only") {
        OffloadConfig oc;
        oc.insecure_identity = conf.mode == "offload";
        oc.key_shift = conf.key_shift;
        oc.verify.rounds = conf.rounds;
        oc.mask_rank = conf.mask_rank;
        oc.row_mix = conf.row_mix;
        oc.col_mix = conf.col_mix;
        oc.mask_kind = conf.mask_kind;
        RemoteOptions ro;
        ro.local_backend = cfg.backend;  // what "local:N" workers compute on
        be = std::make_unique<OffloadBackend>(oc, connect_workers(conf.workers, ro), random_secret());
      }
      runners.push_back(std::make_unique<StepRunner>(
          c, std::move(be), 0, "im2col",
          placement(conf.mode, conf.local_below < 0 ? cfg.local_below : conf.local_below, conf.mask_rank)));
      set_default_conv_kernels(cfg.conv_kernels);
      runners.back()->run(2, 2);
    }
    const int rounds = std::max(1, steps / 3);
    for (int r = 0; r < rounds; ++r)
      for (auto& run : runners) run->run((steps + rounds - 1) / rounds);
    double tee_ms = 0;
    for (size_t i = 0; i < runners.size(); ++i) {
      const StepTiming t = runners[i]->result();
      if (i == 0) tee_ms = t.median_ms;
      const double ms = 1e3;
      const double master = t.master_ms();
      std::printf("%-9s %5lld %-26s %9.1f %7.2f %8.1f %8.1f %8.1f %8.1f %8.1f %9.1f %9.1f %9.1f %8.2f\n",
                  c.model.c_str(), static_cast<long long>(c.batch), configs[i].label.c_str(), t.median_ms,
                  t.median_ms / tee_ms, t.phases.encrypt * ms, t.phases.transfer * ms, t.phases.worker * ms,
                  t.phases.decrypt * ms, t.phases.verify * ms, t.trusted_mb, t.trusted_mb / 1e3 / bw * ms, master,
                  master > 0 ? tee_ms / master : 0.0);
      std::fflush(stdout);
    }
    if (cfg.torch) {  // PyTorch's whole CPU step on the same threads
      const double torch_ms = torch_step_ms(cfg, c, num_threads(), steps, "cpu");
      std::printf("%-9s %5lld %-26s %9.1f %7.2f %8s %8s %8s %8s %8s %9s %9s %9.1f %8s\n", c.model.c_str(),
                  static_cast<long long>(c.batch), "pytorch (cpu, same threads)", torch_ms, torch_ms / tee_ms, "-",
                  "-", "-", "-", "-", "-", "-", torch_ms, "-");
      std::fflush(stdout);
    }
    // Where the hardenings' share of the master goes (within encrypt and decrypt above).
    bool header = false;
    for (size_t i = 0; i < runners.size(); ++i) {
      const BlindingSeconds b = runners[i]->result().blinding;
      const double total = b.total();
      if (total <= 0) continue;
      if (!header) {
        std::printf("the blinding's parts, ms/step (forward: mixing and masking A, of which drawing U and V and "
                    "adding U·Vᵀ; result, weight: undoing them on C and dW; gradient: mixing dC; input: undoing "
                    "them on dA)\n%-9s %5s %-26s %9s %9s %9s %9s %9s %9s %9s %9s\n",
                    "model", "batch", "configuration", "forward", "draw", "add mask", "result", "weight",
                    "gradient", "input", "total");
        header = true;
      }
      std::printf("%-9s %5lld %-26s %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f\n", c.model.c_str(),
                  static_cast<long long>(c.batch), configs[i].label.c_str(), b.forward * 1e3, b.mask_draw * 1e3,
                  b.mask_product * 1e3, b.result * 1e3, b.weight * 1e3, b.gradient * 1e3, b.input * 1e3, total * 1e3);
    }
    std::fflush(stdout);
  }
  return 0;
}

// ---- inference (predict): latency at batch 1, throughput at larger batches ----

// A model in eval mode answering requests: forward, softmax, the backend's
// per-request state freed (every request draws fresh keys: the weights stay
// the same between requests, but no key is reused, so the security argument
// of training holds unchanged).
class InferenceRunner {
 public:
  InferenceRunner(const std::string& model, int64_t batch, std::unique_ptr<OffloadBackend> backend)
      : model_(build_model(model, 0)), backend_(std::move(backend)), rng_(2),
        ctx_{backend_ ? static_cast<LinearBackend*>(backend_.get()) : &tee_, &tee_, false, nullptr} {
    Shape xs = {batch};
    xs.insert(xs.end(), model_->input_shape.begin(), model_->input_shape.end());
    x_.resize(xs);
    for (int64_t i = 0; i < x_.numel(); ++i) x_[i] = static_cast<float>(rng_.normal());
    probs_.resize(static_cast<size_t>(batch * model_->num_classes));
  }
  void run(int requests, int warmup = 0) {
    for (int i = 0; i < requests; ++i) {
      auto t = std::chrono::steady_clock::now();
      const Tensor& logits = model_->forward(x_, ctx_);
      ctx_.offload->end_step();
      softmax_rows(logits.data(), logits.dim(0), model_->num_classes, probs_.data());
      const PhaseSeconds ph = ctx_.offload->take_phase_seconds();
      if (warmed_++ < warmup) continue;
      times_.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
      waits_.push_back((ph.worker + ph.transfer) * 1e3);
    }
  }
  double median_ms() const { return median(times_); }
  // The request minus the worker's compute and the transfers (the master's share).
  double master_ms() const {
    std::vector<double> m;
    for (size_t i = 0; i < times_.size(); ++i) m.push_back(std::max(0.0, times_[i] - waits_[i]));
    return median(m);
  }

 private:
  std::unique_ptr<Model> model_;
  std::unique_ptr<OffloadBackend> backend_;
  TeeOnlyBackend tee_;
  Rng rng_;
  Context ctx_;
  Tensor x_;
  std::vector<float> probs_;
  std::vector<double> times_, waits_;
  int warmed_ = 0;
};

double torch_inference_ms(const BenchConfig& cfg, const std::string& model, int64_t batch, int threads, int requests) {
  return torch_step_ms(cfg, Case{model, batch}, threads, requests, "cpu", "--inference");
}

// "onnx:NAME": tests/py/onnx_models.py's NAME, exported by PyTorch to a
// temporary file that Tempo reads (--model FILE.onnx); other names: the zoo.
std::string inference_model(const BenchConfig& cfg, const std::string& name, const std::string& dir) {
  if (name.rfind("onnx:", 0) != 0) return name;
  const std::string torch_name = name.substr(5), path = dir + "/" + torch_name + ".onnx";
  if (std::filesystem::exists(path)) return path;
  const std::string cmd = cfg.python + " " + cfg.source_dir + "/tests/py/onnx_models.py " + torch_name + " " + path +
                          " > " + dir + "/export.log 2>&1";
  TEMPO_CHECK(std::system(cmd.c_str()) == 0 && std::filesystem::exists(path),
              "could not export " + torch_name + " with PyTorch (" + cmd + ")");
  return path;
}

int run_inference(const BenchConfig& cfg) {
  set_num_threads(cfg.threads.empty() ? 0 : cfg.threads.back());
  std::string dir = std::filesystem::temp_directory_path() / "tempo_bench_XXXXXX";
  TEMPO_CHECK(mkdtemp(dir.data()) != nullptr, "cannot make a temporary directory");
  struct Cleanup {
    std::string d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};
  std::printf("inference (predict), %d threads, workers %s; ms per request (median), images/s = batch / ms\n",
              num_threads(), cfg.workers.c_str());
  std::printf("%-18s %5s %11s %11s %11s %11s %10s %10s %10s %9s %9s\n", "model", "batch", "tee-only ms",
              "tempo ms", "master ms", "pytorch ms", "tee img/s", "tempo img/s", "torch img/s", "tempo/tee",
              "tee/torch");
  for (const auto& s : cfg.models) {
    const Case c = parse_case(s);
    const std::string model = inference_model(cfg, c.model, dir);
    const int requests = cfg.steps > 0 ? cfg.steps : c.batch == 1 ? 20 : c.batch <= 64 ? 5 : 3;
    auto tee = std::make_unique<InferenceRunner>(model, c.batch, nullptr);
    auto make_tempo = [&] {
      return std::make_unique<InferenceRunner>(
          model, c.batch, std::make_unique<OffloadBackend>(OffloadConfig{}, connect_workers(cfg.workers), random_secret()));
    };
    std::unique_ptr<InferenceRunner> tempo;
    double t1 = 0;
    if (c.batch < 128) {  // interleaved: the machine's speed drifts
      tempo = make_tempo();
      tee->run(1, 1);
      tempo->run(1, 1);
      for (int r = 0; r < requests; ++r) {
        tee->run(1);
        tempo->run(1);
      }
      t1 = tee->median_ms();
    } else {  // one after the other: both at once may not fit in memory (resnet50 at 256: 22 GB)
      tee->run(requests + 1, 1);
      t1 = tee->median_ms();
      tee.reset();
      tempo = make_tempo();
      tempo->run(requests + 1, 1);
    }
    const double torch_ms = cfg.torch ? torch_inference_ms(cfg, c.model.rfind("onnx:", 0) == 0 ? c.model.substr(5)
                                                                                           : c.model,
                                                           c.batch, num_threads(), requests)
                                      : 0;
    const double b = static_cast<double>(c.batch), t2 = tempo->median_ms();
    std::printf("%-18s %5lld %11.2f %11.2f %11.2f %11.2f %10.1f %10.1f %10.1f %9.2f %9.2f\n", c.model.c_str(),
                static_cast<long long>(c.batch), t1, t2, tempo->master_ms(), torch_ms, 1e3 * b / t1, 1e3 * b / t2,
                torch_ms > 0 ? 1e3 * b / torch_ms : 0.0, t2 / t1, torch_ms > 0 ? t1 / torch_ms : 0.0);
    std::fflush(stdout);
  }
  return 0;
}

int run_modes(const BenchConfig& cfg) {
  set_num_threads(cfg.threads.empty() ? 0 : cfg.threads.back());
  const std::string& w = cfg.workers;
  return run_configs(cfg, {{"tee-only", "tee-only", true, 1, ""},
                           {"offload (insecure)", "offload", true, 0, w},
                           {"tempo", "tempo", true, kR, w},
                           {"tempo, all convs offloaded", "tempo", true, kR, w, OffloadConfig{}.mask_rank,
                            OffloadConfig{}.row_mix, OffloadConfig{}.col_mix, OffloadConfig{}.mask_kind, 0},
                           {"tee-only, direct convs", "tee-only", true, 1, "", OffloadConfig{}.mask_rank,
                            OffloadConfig{}.row_mix, OffloadConfig{}.col_mix, OffloadConfig{}.mask_kind, -1,
                            ConvKernels::kDirect},
                           {"tempo, direct convs", "tempo", true, kR, w, OffloadConfig{}.mask_rank,
                            OffloadConfig{}.row_mix, OffloadConfig{}.col_mix, OffloadConfig{}.mask_kind, -1,
                            ConvKernels::kDirect},
                           {"tempo, 1 verify round", "tempo", true, kR, w},
                           {"tempo, no row mix", "tempo", true, kR, w, OffloadConfig{}.mask_rank, 0},
                           {"tempo, mask rank 32", "tempo", true, kR, w, 32},
                           {"tempo, dense mask", "tempo", true, kR, w, OffloadConfig{}.mask_rank, OffloadConfig{}.row_mix,
                            OffloadConfig{}.col_mix, MaskKind::kDense},
                           {"tempo, kron mask", "tempo", true, kR, w, OffloadConfig{}.mask_rank, OffloadConfig{}.row_mix,
                            OffloadConfig{}.col_mix, MaskKind::kKron},
                           {"tempo, no mask, no mix", "tempo", true, kR, w, 0, 0},
                           {"tempo, no key shift", "tempo", false, kR, w},
                           {"tempo, no verification", "tempo", true, 0, w},
                           {"tempo, no shift, no verif.", "tempo", false, 0, w}});
}

// What each hardening of docs/SECURITY.md costs, against the unhardened
// step: the mask, the row mixing and the column mixing, alone and together.
int run_hardening(const BenchConfig& cfg) {
  set_num_threads(cfg.threads.empty() ? 0 : cfg.threads.back());
  const std::string& w = cfg.workers;
  const int r = OffloadConfig{}.mask_rank, b = 8;
  return run_configs(cfg, {{"tee-only", "tee-only", true, 1, ""},
                           {"tempo, unhardened", "tempo", true, kR, w, 0, 0, 0},
                           {"tempo, mask only", "tempo", true, kR, w, r, 0, 0},
                           {"tempo, row mix only", "tempo", true, kR, w, 0, b, 0},
                           {"tempo, col mix only", "tempo", true, kR, w, 0, 0, b},
                           {"tempo, mask + row mix", "tempo", true, kR, w, r, b, 0},
                           {"tempo, row + col mix", "tempo", true, kR, w, 0, b, b},
                           {"tempo, all three", "tempo", true, kR, w, r, b, b},
                           {"tempo, all three, kron mask", "tempo", true, kR, w, r, b, b, MaskKind::kKron},
                           {"tempo, unhardened, all convs", "tempo", true, kR, w, 0, 0, 0, MaskKind::kDense, 0},
                           {"tempo, all three, all convs", "tempo", true, kR, w, r, b, b, MaskKind::kDense, 0}});
}

// Worker processes of this binary on loopback, for the remote suites.
struct BenchWorkers {
  explicit BenchWorkers(int n, int threads) {
    char tmpl[] = "/tmp/tempo-bench.XXXXXX";
    TEMPO_CHECK(mkdtemp(tmpl) != nullptr, "cannot make a temporary directory");
    dir = tmpl;
    for (int i = 0; i < n; ++i)
      procs.push_back(std::make_unique<WorkerProcess>("/proc/self/exe", dir, "worker" + std::to_string(i),
                                                      std::vector<std::string>{"--quiet", "--threads",
                                                                               std::to_string(threads)}));
  }
  ~BenchWorkers() {
    procs.clear();
    std::filesystem::remove_all(dir);
  }
  std::string list(size_t n) const {
    std::string s;
    for (size_t i = 0; i < n && i < procs.size(); ++i) {
      if (!s.empty()) s += ',';
      s += procs[i]->address();
    }
    return s;
  }
  std::string dir;
  std::vector<std::unique_ptr<WorkerProcess>> procs;
};

// Step time through worker processes on this machine against in-process
// workers and tee-only.
int run_remote(const BenchConfig& cfg) {
  set_num_threads(cfg.threads.empty() ? 0 : cfg.threads.back());
  BenchWorkers ws(2, cfg.worker_threads);
  std::printf("remote workers: processes on 127.0.0.1, %d compute thread(s) each\n", cfg.worker_threads);
  return run_configs(cfg, {{"tee-only", "tee-only", true, 1, ""},
                           {"tempo, local:1", "tempo", true, kR, "local:1"},
                           {"tempo, 1 remote", "tempo", true, kR, ws.list(1)},
                           {"tempo, 2 remote", "tempo", true, kR, ws.list(2)}});
}

struct Rates {
  double up_gbs, down_gbs;
};

// Throughput of one worker for a tensor of `mib` MiB. Upload: the tensor in,
// a one-column product out; download: two thin tensors in, their outer
// product (the tensor) out. Medians of several round trips.
Rates transfer_rates(WorkerApi& w, Obfuscator& obf, int mib) {
  const int64_t cols = 1024, rows = (int64_t{mib} << 20) / 4 / cols;
  std::vector<float> data(static_cast<size_t>(rows * cols), 0.5f), col(static_cast<size_t>(rows), 1.0f),
      ones(static_cast<size_t>(cols), 1.0f);
  const CipherMatrix big = obf.encrypt_x(obf.draw_triple(rows, cols, 1), data.data(), rows, cols);
  const CipherMatrix row = obf.encrypt_x(obf.draw_triple(1, cols, 1), ones.data(), 1, cols);
  const CipherMatrix tall = obf.encrypt_x(obf.draw_triple(rows, 1, 1), col.data(), rows, 1);
  const CipherMatrix wide = obf.encrypt_x(obf.draw_triple(cols, 1, 1), ones.data(), cols, 1);
  std::vector<double> up, down;
  const int reps = mib >= 256 ? 4 : mib >= 64 ? 8 : 20;
  for (int r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    w.put(1, big);
    w.put(2, row);
    Matrix z = w.product(ProductOp::kNT, 1, 2).get();
    up.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    w.end_step();
    t0 = std::chrono::steady_clock::now();
    w.put(3, tall);
    w.put(4, wide);
    Matrix y = w.product(ProductOp::kNT, 3, 4).get();
    down.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    w.end_step();
  }
  const double bytes = static_cast<double>(rows * cols) * 4;
  return {bytes / median(up) / 1e9, bytes / median(down) / 1e9};
}

// The latency floor: one call with a 4 KiB operand and a 4-byte result.
double round_trip_us(WorkerApi& w, Obfuscator& obf) {
  std::vector<float> ones(1024, 1.0f);
  const CipherMatrix a = obf.encrypt_x(obf.draw_triple(1, 1024, 1), ones.data(), 1, 1024);
  std::vector<double> t;
  for (int r = 0; r < 200; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    w.put(1, a);
    Matrix z = w.product(ProductOp::kNT, 1, 1).get();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    w.end_step();
  }
  return median(t) * 1e6;
}

// Loopback throughput of tensors to a worker process and back.
int run_transfer(const BenchConfig& cfg) {
  set_num_threads(cfg.threads.empty() ? 0 : cfg.threads.back());
  BenchWorkers ws(1, cfg.worker_threads);
  auto workers = connect_workers(ws.list(1));
  Obfuscator obf(random_secret(), 4.0);
  const double bw = memory_bandwidth_gbs();
  std::printf("loopback to one worker process; this process's memory copy bandwidth %.1f GB/s\n", bw);
  std::printf("round trip of a 4 KiB product (median of 200): %.0f us\n", round_trip_us(*workers[0], obf));
  std::printf("%10s %14s %14s %14s %14s\n", "MiB", "upload GB/s", "download GB/s", "upload/copy", "download/copy");
  for (int mib : {1, 4, 16, 64, 256}) {
    const Rates r = transfer_rates(*workers[0], obf, mib);
    std::printf("%10d %14.2f %14.2f %14.3f %14.3f\n", mib, r.up_gbs, r.down_gbs, r.up_gbs / bw * 2,
                r.down_gbs / bw * 2);
    std::fflush(stdout);
  }
  return 0;
}

// What confidential I/O costs: encrypting and decrypting files against
// writing and reading them in clear (same sizes, same disk, fsync both), and
// a sealed checkpoint against a training step.
int run_confidential(const BenchConfig& cfg) {
  const int threads = cfg.threads.empty() ? 0 : cfg.threads.back();
  set_num_threads(threads);
  char tmpl[] = "/tmp/tempo-bench-XXXXXX";
  TEMPO_CHECK(mkdtemp(tmpl) != nullptr, "cannot make a temporary directory in /tmp");
  const std::string dir = tmpl;
  struct Cleanup {
    std::string d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};
  auto time_s = [](const std::function<void()>& f) {
    std::vector<double> t;
    for (int i = 0; i < 3; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return median(t);
  };
  const SymKey key = random_sym_key();
  std::printf("encrypted files (XChaCha20-Poly1305 secretstream, 1 MiB chunks) against plain files; median of 3\n");
  std::printf("%8s %12s %12s %10s %12s %12s %10s %14s\n", "MiB", "write GB/s", "encrypt GB/s", "ratio", "read GB/s",
              "decrypt GB/s", "ratio", "in memory GB/s");
  for (int mib : {16, 64, 256}) {
    std::vector<uint8_t> payload(size_t(mib) << 20);
    Rng r(static_cast<uint64_t>(mib));
    for (size_t i = 0; i < payload.size(); i += 8) {
      const uint64_t v = r.next();
      std::memcpy(payload.data() + i, &v, std::min<size_t>(8, payload.size() - i));
    }
    const std::string plain = dir + "/plain", enc = dir + "/enc";
    const double w = time_s([&] {
      AtomicFile f(plain);
      f.write(payload.data(), payload.size());
      f.commit();
    });
    const double we = time_s([&] { write_container(enc, ContainerKind::kData, key, payload.data(), payload.size()); });
    const double rd = time_s([&] { (void)read_file(plain, "bench file"); });
    const double rde = time_s([&] { (void)read_container(enc, ContainerKind::kData, &key, nullptr); });
    const std::vector<uint8_t> image = read_file(enc, "bench file");
    const double mem = time_s([&] { (void)open_container(image.data(), image.size(), enc, ContainerKind::kData, &key, nullptr); });
    const double gb = static_cast<double>(payload.size()) / 1e9;
    std::printf("%8d %12.2f %12.2f %10.2f %12.2f %12.2f %10.2f %14.2f\n", mib, gb / w, gb / we, we / w, gb / rd,
                gb / rde, rde / rd, gb / mem);
    std::fflush(stdout);
  }
  std::printf("\nsealed checkpoint (weights, SGD momentum, run state) against one tee-only training step, %d threads\n",
              num_threads());
  std::printf("%-10s %6s %10s %12s %12s %14s %12s\n", "model", "batch", "MiB", "write ms", "read ms", "step ms",
              "write/step");
  for (const auto& s : cfg.models) {
    const Case c = parse_case(s);
    auto model = build_model(c.model, 1);
    OptimConfig oc;
    auto optim = make_optimizer(oc, model->parameters());
    TrainConfig tc;
    tc.model = c.model;
    tc.data = "synthetic";
    const nlohmann::json config = run_config(tc);
    RunState st;
    st.secret = random_secret();
    const std::string ck = dir + "/ck.tenc";
    const double w = time_s([&] { write_checkpoint(ck, key, config, *model, *optim, st); });
    const double rd = time_s([&] { (void)read_checkpoint(ck, key, config, *model, *optim); });
    const double mb = static_cast<double>(std::filesystem::file_size(ck)) / (1 << 20);
    const double step =
        tempo_step_ms(c, threads, cfg.steps > 0 ? cfg.steps : (c.model == "cnn" ? 10 : 3), cfg.conv_kernels);
    std::printf("%-10s %6lld %10.1f %12.1f %12.1f %14.1f %12.3f\n", c.model.c_str(), static_cast<long long>(c.batch),
                mb, 1e3 * w, 1e3 * rd, step, 1e3 * w / step);
    std::fflush(stdout);
  }
  return 0;
}

// One configuration of the GPU table.
struct GpuRow {
  std::string label, mode, conv;
  int threads;
  bool hardened = true;  // the mask, row and column mixing (the defaults); false: key shift and checks only
  bool mix = true;       // with hardened: the row mixing too
  int64_t local_below = -1;  // -1: the bench's --local-below
};

// A runner per row for case c, each warmed up by one step; tempo and offload
// rows get one in-process worker on ro.local_backend.
std::vector<std::unique_ptr<StepRunner>> gpu_runners(const Case& c, const std::vector<GpuRow>& rows,
                                                     const RemoteOptions& ro, int64_t local_below) {
  std::vector<std::unique_ptr<StepRunner>> runners;
  for (const auto& r : rows) {
    std::unique_ptr<OffloadBackend> be;
    if (r.mode != "tee-only") {
      OffloadConfig oc;
      oc.insecure_identity = r.mode == "offload";
      oc.verify.rounds = r.mode == "offload" ? 0 : VerifyConfig{}.rounds;
      if (!r.hardened) oc.mask_rank = oc.row_mix = oc.col_mix = 0;
      if (!r.mix) oc.row_mix = 0;
      be = std::make_unique<OffloadBackend>(oc, connect_workers("local:1", ro), random_secret());
    }
    runners.push_back(std::make_unique<StepRunner>(
        c, std::move(be), r.threads, r.conv,
        placement(r.mode, r.local_below < 0 ? local_below : r.local_below, r.hardened ? OffloadConfig{}.mask_rank : 0)));
    runners.back()->run(1, 1);
  }
  return runners;
}

// The GPU table (scripts/gpu-check.sh): tempo with a worker on cfg.backend,
// in-process, against tee-only on one core and on all cores, offload, and
// PyTorch's own training on the same device; with the floors that bound
// each configuration.
int run_gpu(const BenchConfig& cfg) {
  const int all = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  set_num_threads(all);
  RemoteOptions ro;
  ro.local_backend = cfg.backend;
  auto probe = connect_workers("local:1", ro);
  Obfuscator obf(random_secret(), 4.0);
  const Rates link = transfer_rates(*probe[0], obf, 64);
  probe.clear();
  const double bw = memory_bandwidth_gbs();
  const std::string device = cfg.backend == "cuda" ? cuda_device_info() : "CPU standing in for the GPU";
  std::string out;
  auto emit = [&](const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    out += line + "\n";
  };
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "Worker backend: %s (%s). Master: %d cores, memory copy %.1f GB/s. Master-to-worker link "
                "(64 MiB tensors): %.2f GB/s up, %.2f GB/s down.",
                cfg.backend.c_str(), device.c_str(), all, bw, link.up_gbs, link.down_gbs);
  emit(buf);
  emit("");
  emit("| model | batch | configuration | ms/step | × tee-only 1 core | × tee-only all cores | trusted floor ms | "
       "transfer floor ms | worker ms | master ms |");
  emit("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
  const std::vector<GpuRow> rows = {{"tee-only, 1 core", "tee-only", "im2col", 1},
                                 {"tee-only, all cores", "tee-only", "im2col", all},
                                 {"offload (insecure), im2col", "offload", "im2col", all},
                                 {"tempo, im2col, unhardened", "tempo", "im2col", all, false},
                                 {"tempo, im2col, no row mix", "tempo", "im2col", all, true, false},
                                 {"tempo, im2col", "tempo", "im2col", all},
                                 {"tempo, im2col, all convs offloaded", "tempo", "im2col", all, true, true, 0},
                                 {"tempo, channel", "tempo", "channel", all}};
  for (const auto& m : cfg.models) {
    Case c = parse_case(m);
    const int steps = cfg.steps > 0 ? cfg.steps : 4;
    std::vector<std::unique_ptr<StepRunner>> runners = gpu_runners(c, rows, ro, cfg.local_below);
    for (int s = 0; s < steps; ++s)
      for (auto& run : runners) run->run(1);
    const double tee1 = runners[0]->result().median_ms, teeall = runners[1]->result().median_ms;
    double im2col_ms = 0, channel_ms = 0, bare_ms = 0, im2col_master_ms = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      const StepTiming t = runners[i]->result();
      const double master_ms = t.master_ms();
      if (rows[i].label == "tempo, im2col") im2col_ms = t.median_ms, im2col_master_ms = master_ms;
      if (!rows[i].hardened) bare_ms = t.median_ms;
      if (rows[i].label == "tempo, channel") channel_ms = t.median_ms;
      const double link_gbs = std::min(link.up_gbs, link.down_gbs);
      std::snprintf(buf, sizeof buf, "| %s | %lld | %s | %.1f | %.2f | %.2f | %.1f | %.1f | %.1f | %.1f |",
                    c.model.c_str(), static_cast<long long>(c.batch), rows[i].label.c_str(), t.median_ms,
                    tee1 / t.median_ms, teeall / t.median_ms, t.trusted_mb / 1e3 / bw * 1e3,
                    t.moved_mb / 1e3 / link_gbs * 1e3, t.phases.worker * 1e3, master_ms);
      emit(buf);
    }
    double torch_ms = 0;
    if (cfg.torch) {
      torch_ms = torch_step_ms(cfg, c, all, steps, cfg.backend == "cuda" ? "cuda" : "cpu");
      std::snprintf(buf, sizeof buf, "| %s | %lld | PyTorch on the %s (not private) | %.1f | %.2f | %.2f | | | | |",
                    c.model.c_str(), static_cast<long long>(c.batch), cfg.backend == "cuda" ? "GPU" : "CPU",
                    torch_ms, tee1 / torch_ms, teeall / torch_ms);
      emit(buf);
    }
    std::snprintf(buf, sizeof buf,
                  "%s: the hardenings (mask, row and column mixing) cost %.2fx tempo's step without them (im2col)",
                  c.model.c_str(), im2col_ms / bare_ms);
    emit(buf);
    // P9: against PyTorch's CPU step on all of this host's cores (what a
    // user with only the enclave's machine would run instead).
    double torch_cpu_ms = cfg.backend == "cuda" ? 0 : torch_ms;
    if (cfg.torch && cfg.backend == "cuda") {
      torch_cpu_ms = torch_step_ms(cfg, c, all, steps, "cpu");
      std::snprintf(buf, sizeof buf, "| %s | %lld | PyTorch on the CPU, %d cores (not private) | %.1f | %.2f | %.2f | | | | |",
                    c.model.c_str(), static_cast<long long>(c.batch), all, torch_cpu_ms, tee1 / torch_cpu_ms,
                    teeall / torch_cpu_ms);
      emit(buf);
    }
    if (c.model == "resnet18" && torch_cpu_ms > 0) {
      std::snprintf(buf, sizeof buf,
                    "resnet18 P9 targets: default tempo %.2fx faster than PyTorch's CPU step on all %d cores "
                    "(target >= 3: %s); the hardenings %.2fx the unhardened step (target <= 1.2: %s); "
                    "the master's share %.2fx PyTorch's CPU step",
                    torch_cpu_ms / im2col_ms, all, torch_cpu_ms / im2col_ms >= 3 ? "met" : "missed",
                    im2col_ms / bare_ms, im2col_ms / bare_ms <= 1.2 ? "met" : "missed", im2col_master_ms / torch_cpu_ms);
      emit(buf);
    }
    if (c.model == "resnet18") {
      std::snprintf(buf, sizeof buf,
                    "resnet18 targets: im2col %.2fx over tee-only 1 core (target >= 10: %s), %.2fx over all cores "
                    "(target > 1: %s); channel %.2fx PyTorch's step (target <= 5: %s)",
                    tee1 / im2col_ms, tee1 / im2col_ms >= 10 ? "met" : "missed", teeall / im2col_ms,
                    teeall / im2col_ms > 1 ? "met" : "missed", torch_ms > 0 ? channel_ms / torch_ms : 0.0,
                    torch_ms > 0 && channel_ms / torch_ms <= 5 ? "met" : "missed");
      emit(buf);
    }
    emit("");
  }
  if (!cfg.table.empty()) {
    AtomicFile f(cfg.table);
    f.write(out.data(), out.size());
    f.commit();
  }
  return 0;
}

double torch_step_ms(const BenchConfig& cfg, const Case& c, int threads, int steps, const std::string& device,
                     const std::string& extra) {
  std::ostringstream cmd;
  cmd << cfg.python << " " << cfg.source_dir << "/bench/torch_step.py " << extra << " --model " << c.model
      << " --batch " << c.batch << " --threads " << threads << " --steps " << steps << " --device " << device
      << " 2>&1";
  FILE* p = popen(cmd.str().c_str(), "r");
  TEMPO_CHECK(p != nullptr, "cannot run " + cfg.python);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  int rc = pclose(p);
  auto pos = out.find("median_ms ");
  TEMPO_CHECK(rc == 0 && pos != std::string::npos,
        "PyTorch reference failed (" + cmd.str() + "):\n" + out + "install it with scripts/setup.sh or pass --no-torch");
  return std::stod(out.substr(pos + 10));
}

}  // namespace

void add_bench_flags(CLI::App& app, BenchConfig& c) {
  app.add_option("--models", c.models, "MODEL:BATCH cases")->capture_default_str()->delimiter(',');
  app.add_option("--threads", c.threads, "Thread counts")->capture_default_str()->delimiter(',');
  app.add_option("--steps", c.steps, "Timed steps per case (0: 20 for small models, 5 for large)");
  app.add_flag("--no-torch", [&c](int64_t) { c.torch = false; }, "Skip the PyTorch baseline");
  app.add_option("--python", c.python, "Python with torch")->capture_default_str();
  app.add_option("--suite", c.suite,
                 "torch: tee-only against PyTorch per thread count; modes: tempo vs tee-only vs offload "
                 "with a per-phase breakdown (threads: the last of --threads); hardening: the mask, row and column "
                 "mixing alone and together against the unhardened tempo step (same breakdown); remote: worker processes on "
                 "loopback vs in-process workers vs tee-only; transfer: loopback tensor throughput; gpu: a worker "
                 "on a GPU; confidential: encrypted files and sealed checkpoints against plain I/O and a step; "
                 "inference: predict's latency (batch 1) and throughput (larger batches), tee-only, tempo and PyTorch "
                 "(--models entries may be onnx:NAME:BATCH for a model of tests/py/onnx_models.py read from ONNX)")
      ->capture_default_str()
      ->check(CLI::IsMember({"torch", "modes", "hardening", "remote", "transfer", "gpu", "confidential", "inference"}));
  app.add_option("--backend", c.backend,
                 "Backend of the in-process (local:N) workers: cuda | cpu. gpu suite: the worker under test, "
                 "cuda by default (cpu stands in for tests); modes and hardening: where their workers compute, "
                 "cpu by default")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--table", c.table, "gpu suite: also write the table (markdown) to this file");
  app.add_option("--source-dir", c.source_dir, "Where bench/torch_step.py lies")->capture_default_str();
  app.add_option("--workers", c.workers, "Workers of the modes suite")->capture_default_str();
  app.add_option("--configs", c.configs,
                 "modes, hardening, remote: only these rows, by label (one argument each, e.g. "
                 "--configs tempo 'tempo, 1 verify round'), after tee-only; default all (a large model's full "
                 "table may not fit in memory)");
  app.add_option("--local-below", c.local_below,
                 "modes, hardening, remote, gpu: the offloading rows keep convolutions with fewer output channels "
                 "than this in the master, as `tempo train --local-below` does (rows labelled \"all convs\" "
                 "offload every one but the first)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  add_conv_algo_option(app, c.conv_kernels,
                       "The master's convolutions, as `tempo train --conv-algo` (rows labelled \"direct convs\" "
                       "use direct; the torch suite also times tee-only on direct kernels)");
  app.add_option("--worker-threads", c.worker_threads,
                 "Compute threads of each worker process (remote and transfer suites)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
}

int run_bench(const BenchConfig& given) {
  BenchConfig cfg = given;
  if (cfg.backend.empty()) cfg.backend = cfg.suite == "gpu" ? "cuda" : "cpu";
  set_default_conv_kernels(cfg.conv_kernels);
  if (cfg.suite == "modes") return run_modes(cfg);
  if (cfg.suite == "hardening") return run_hardening(cfg);
  if (cfg.suite == "remote") return run_remote(cfg);
  if (cfg.suite == "transfer") return run_transfer(cfg);
  if (cfg.suite == "gpu") return run_gpu(cfg);
  if (cfg.suite == "confidential") return run_confidential(cfg);
  if (cfg.suite == "inference") return run_inference(cfg);
  // tempo: tee-only on the --conv-algo kernels; direct: tee-only on
  // oneDNN's direct kernels (PyTorch's), in the same run.
  std::printf("%-10s %6s %8s %14s %14s %10s %14s %12s\n", "model", "batch", "threads", "tempo ms/step",
              "torch ms/step", "tempo/torch", "direct ms/step", "direct/torch");
  for (const auto& s : cfg.models) {
    Case c = parse_case(s);
    int steps = cfg.steps > 0 ? cfg.steps : (c.model == "cnn" || c.model == "mlp" ? 20 : 5);
    for (int t : cfg.threads) {
      const double ours = tempo_step_ms(c, t, steps, cfg.conv_kernels);
      const double direct = tempo_step_ms(c, t, steps, ConvKernels::kDirect);
      const double theirs = cfg.torch ? torch_step_ms(cfg, c, t, steps) : 0;
      if (cfg.torch)
        std::printf("%-10s %6lld %8d %14.2f %14.2f %10.3f %14.2f %12.3f\n", c.model.c_str(),
                    static_cast<long long>(c.batch), t, ours, theirs, ours / theirs, direct, direct / theirs);
      else
        std::printf("%-10s %6lld %8d %14.2f %14s %10s %14.2f %12s\n", c.model.c_str(),
                    static_cast<long long>(c.batch), t, ours, "-", "-", direct, "-");
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace tempo::cli
