// `tempo bench`: training-step time of tee-only mode against PyTorch's CPU
// step on the same thread counts, measured in one run, printed side by side.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/parallel.h"
#include "trusted/offload_backend.h"

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
  auto colon = s.find(':');
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
  double trusted_mb = 0;     // trusted-side memory traffic per step (offloading modes)
};

// One configuration's training loop on fixed random data, run in slices so
// that configurations can be interleaved (the machine's speed drifts).
class StepRunner {
 public:
  StepRunner(const Case& c, std::unique_ptr<OffloadBackend> backend)
      : model_(build_model(c.model, 0)),
        opt_(make_optimizer(OptimConfig{}, model_->parameters())),
        backend_(std::move(backend)),
        rng_(1),
        ctx_{backend_ ? static_cast<LinearBackend*>(backend_.get()) : &tee_, &tee_, true, &rng_} {
    Shape xs = {c.batch};
    xs.insert(xs.end(), model_->input_shape.begin(), model_->input_shape.end());
    x_.resize(xs);
    for (int64_t i = 0; i < x_.numel(); ++i) x_[i] = static_cast<float>(rng_.normal());
    y_.resize(static_cast<size_t>(c.batch));
    for (auto& l : y_) l = static_cast<int64_t>(rng_.below(10));
  }
  // Runs `steps` steps; the first `warmup` of the runner's life are not timed.
  void run(int steps, int warmup = 0) {
    for (int i = 0; i < steps; ++i) {
      const int64_t t0b = backend_ ? backend_->stats().trusted_bytes() : 0;
      auto t = std::chrono::steady_clock::now();
      cross_entropy(model_->forward(x_, ctx_), y_, &dlogits_);
      model_->backward(dlogits_, ctx_);
      opt_->step(0.01);
      ctx_.offload->end_step();
      const PhaseSeconds ph = ctx_.offload->take_phase_seconds();
      if (warmed_++ < warmup) continue;
      times_.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
      sum_.encrypt += ph.encrypt;
      sum_.transfer += ph.transfer;
      sum_.worker += ph.worker;
      sum_.decrypt += ph.decrypt;
      sum_.verify += ph.verify;
      if (backend_) bytes_ += backend_->stats().trusted_bytes() - t0b;
    }
  }
  StepTiming result() const {
    StepTiming r;
    const double n = std::max<double>(1, static_cast<double>(times_.size()));
    r.median_ms = median(times_);
    r.phases = {sum_.encrypt / n, sum_.transfer / n, sum_.worker / n, sum_.decrypt / n, sum_.verify / n};
    r.trusted_mb = static_cast<double>(bytes_) / n / 1e6;
    return r;
  }

 private:
  std::unique_ptr<Model> model_;
  std::unique_ptr<Optimizer> opt_;
  std::unique_ptr<OffloadBackend> backend_;
  TeeOnlyBackend tee_;
  Rng rng_;
  Context ctx_;
  Tensor x_, dlogits_;
  std::vector<int64_t> y_;
  std::vector<double> times_;
  PhaseSeconds sum_;
  int64_t bytes_ = 0;
  int warmed_ = 0;
};

double tempo_step_ms(const Case& c, int threads, int steps) {
  set_num_threads(threads);
  StepRunner r(c, nullptr);
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

int run_modes(const BenchConfig& cfg) {
  const int threads = cfg.threads.empty() ? 0 : cfg.threads.back();
  set_num_threads(threads);
  const double bw = memory_bandwidth_gbs();
  std::printf("trusted side: %d threads, memory bandwidth %.1f GB/s (copy, read+write)\n", num_threads(), bw);
  std::printf("%-9s %5s %-26s %9s %7s %8s %8s %8s %8s %8s %9s %9s\n", "model", "batch", "configuration",
              "ms/step", "x tee", "encrypt", "transfer", "worker", "decrypt", "verify", "MB moved", "floor ms");
  struct Config {
    const char* label;
    const char* mode;
    bool key_shift;
    int rounds;
  };
  const Config configs[] = {{"tee-only", "tee-only", true, 1},
                            {"offload (insecure)", "offload", true, 0},
                            {"tempo", "tempo", true, 1},
                            {"tempo, no key shift", "tempo", false, 1},
                            {"tempo, no verification", "tempo", true, 0},
                            {"tempo, no shift, no verif.", "tempo", false, 0}};
  for (const auto& s : cfg.models) {
    Case c = parse_case(s);
    const int steps = cfg.steps > 0 ? cfg.steps : (c.model == "cnn" || c.model == "mlp" ? 30 : 6);
    // All configurations side by side, interleaved in rounds of a few steps.
    std::vector<std::unique_ptr<StepRunner>> runners;
    for (const auto& conf : configs) {
      std::unique_ptr<OffloadBackend> be;
      if (std::string(conf.mode) != "tee-only") {
        OffloadConfig oc;
        oc.insecure_identity = std::string(conf.mode) == "offload";
        oc.key_shift = conf.key_shift;
        oc.verify.rounds = conf.rounds;
        be = std::make_unique<OffloadBackend>(oc, connect_workers(cfg.workers), random_secret());
      }
      runners.push_back(std::make_unique<StepRunner>(c, std::move(be)));
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
      std::printf("%-9s %5lld %-26s %9.1f %7.2f %8.1f %8.1f %8.1f %8.1f %8.1f %9.1f %9.1f\n", c.model.c_str(),
                  static_cast<long long>(c.batch), configs[i].label, t.median_ms, t.median_ms / tee_ms,
                  t.phases.encrypt * ms, t.phases.transfer * ms, t.phases.worker * ms, t.phases.decrypt * ms,
                  t.phases.verify * ms, t.trusted_mb, t.trusted_mb / 1e3 / bw * ms);
      std::fflush(stdout);
    }
  }
  return 0;
}

double torch_step_ms(const BenchConfig& cfg, const Case& c, int threads, int steps) {
  std::ostringstream cmd;
  cmd << cfg.python << " " << TEMPO_SOURCE_DIR << "/bench/torch_step.py --model " << c.model
      << " --batch " << c.batch << " --threads " << threads << " --steps " << steps << " 2>&1";
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
                 "with a per-phase breakdown (threads: the last of --threads)")
      ->capture_default_str()
      ->check(CLI::IsMember({"torch", "modes"}));
  app.add_option("--workers", c.workers, "Workers of the modes suite")->capture_default_str();
}

int run_bench(const BenchConfig& cfg) {
  if (cfg.suite == "modes") return run_modes(cfg);
  std::printf("%-10s %6s %8s %14s %14s %10s\n", "model", "batch", "threads", "tempo ms/step",
              "torch ms/step", "tempo/torch");
  for (const auto& s : cfg.models) {
    Case c = parse_case(s);
    int steps = cfg.steps > 0 ? cfg.steps : (c.model == "cnn" || c.model == "mlp" ? 20 : 5);
    for (int t : cfg.threads) {
      double ours = tempo_step_ms(c, t, steps);
      double theirs = cfg.torch ? torch_step_ms(cfg, c, t, steps) : 0;
      if (cfg.torch)
        std::printf("%-10s %6lld %8d %14.2f %14.2f %10.3f\n", c.model.c_str(),
                    static_cast<long long>(c.batch), t, ours, theirs, ours / theirs);
      else
        std::printf("%-10s %6lld %8d %14.2f %14s %10s\n", c.model.c_str(),
                    static_cast<long long>(c.batch), t, ours, "-", "-");
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace tempo::cli
