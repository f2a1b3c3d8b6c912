// `tempo bench`: training-step time of tee-only mode against PyTorch's CPU
// step on the same thread counts, measured in one run, printed side by side.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

#include "cli/commands.h"
#include "common/error.h"
#include "common/parallel.h"

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
  check(colon != std::string::npos, "--models entries look like MODEL:BATCH, got '" + s + "'");
  Case c{s.substr(0, colon), 0};
  try {
    c.batch = std::stoll(s.substr(colon + 1));
  } catch (...) {
  }
  check(c.batch > 0, "bad batch size in '" + s + "'");
  return c;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Median seconds of a tee-only training step on random data.
double tempo_step_ms(const Case& c, int threads, int steps) {
  set_num_threads(threads);
  auto model = build_model(c.model, 0);
  auto opt = make_optimizer(OptimConfig{}, model->parameters());
  TeeOnlyBackend backend;
  Rng rng(1);
  Context ctx{&backend, &backend, true, &rng};
  Shape xs = {c.batch};
  xs.insert(xs.end(), model->input_shape.begin(), model->input_shape.end());
  Tensor x(xs), dlogits;
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = static_cast<float>(rng.normal());
  std::vector<int64_t> y(static_cast<size_t>(c.batch));
  for (auto& l : y) l = static_cast<int64_t>(rng.below(10));
  std::vector<double> times;
  for (int i = 0; i < steps + 2; ++i) {
    auto t = std::chrono::steady_clock::now();
    cross_entropy(model->forward(x, ctx), y, &dlogits);
    model->backward(dlogits, ctx);
    opt->step(0.01);
    if (i >= 2) times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count());
  }
  return median(times);
}

double torch_step_ms(const BenchConfig& cfg, const Case& c, int threads, int steps) {
  std::ostringstream cmd;
  cmd << cfg.python << " " << TEMPO_SOURCE_DIR << "/bench/torch_step.py --model " << c.model
      << " --batch " << c.batch << " --threads " << threads << " --steps " << steps << " 2>&1";
  FILE* p = popen(cmd.str().c_str(), "r");
  check(p != nullptr, "cannot run " + cfg.python);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  int rc = pclose(p);
  auto pos = out.find("median_ms ");
  check(rc == 0 && pos != std::string::npos,
        "PyTorch reference failed (" + cmd.str() + "):\n" + out + "install it with scripts/setup.sh or pass --no-torch");
  return std::stod(out.substr(pos + 10));
}

}  // namespace

void add_bench_flags(CLI::App& app, BenchConfig& c) {
  app.add_option("--models", c.models, "MODEL:BATCH cases")->capture_default_str();
  app.add_option("--threads", c.threads, "Thread counts")->capture_default_str();
  app.add_option("--steps", c.steps, "Timed steps per case (0: 20 for small models, 5 for large)");
  app.add_flag("--no-torch", [&c](int64_t) { c.torch = false; }, "Skip the PyTorch baseline");
  app.add_option("--python", c.python, "Python with torch")->capture_default_str();
}

int run_bench(const BenchConfig& cfg) {
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
