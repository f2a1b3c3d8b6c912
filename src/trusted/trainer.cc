#include "trusted/trainer.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "common/error.h"
#include "common/parallel.h"
#include "common/progress.h"
#include "worker/connect.h"

namespace tempo {

std::atomic<bool> g_stop_requested{false};

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// JSON-lines metrics (DESIGN.md §4). Each line is flushed as written.
class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) {
    if (path.empty()) return;
    f_ = std::fopen(path.c_str(), "w");
    TEMPO_CHECK(f_ != nullptr, "cannot open --metrics file '" + path + "' for writing");
  }
  ~MetricsLog() {
    if (f_) std::fclose(f_);
  }
  void step(int64_t s, int e, double loss, double lr, const PhaseSeconds& ph, double total) {
    if (!f_) return;
    const double other =
        std::max(0.0, total - ph.encrypt - ph.transfer - ph.worker - ph.decrypt - ph.verify);
    std::fprintf(f_,
                 "{\"kind\":\"step\",\"step\":%lld,\"epoch\":%d,\"loss\":%.9g,\"lr\":%.9g,"
                 "\"seconds\":{\"encrypt\":%.6f,\"transfer\":%.6f,\"worker\":%.6f,\"decrypt\":%.6f,"
                 "\"verify\":%.6f,\"trusted_other\":%.6f,\"total\":%.6f}}\n",
                 static_cast<long long>(s), e, loss, lr, ph.encrypt, ph.transfer, ph.worker,
                 ph.decrypt, ph.verify, other, total);
    std::fflush(f_);
  }
  void summary(const TrainResult& r, const std::string& mode) {
    if (!f_) return;
    std::fprintf(f_, "{\"kind\":\"summary\",\"mode\":\"%s\",\"steps\":%lld,\"train_seconds\":%.3f,"
                 "\"peak_rss_bytes\":%lld}\n", mode.c_str(), static_cast<long long>(r.steps), r.seconds,
                 static_cast<long long>(r.peak_rss_bytes));
    std::fflush(f_);
  }
  void epoch(int e, const EvalResult* r) {
    if (!f_) return;
    if (r)
      std::fprintf(f_, "{\"kind\":\"epoch\",\"epoch\":%d,\"test_loss\":%.9g,\"test_accuracy\":%.9g}\n", e,
                   r->loss, r->accuracy);
    else
      std::fprintf(f_, "{\"kind\":\"epoch\",\"epoch\":%d}\n", e);
    std::fflush(f_);
  }

 private:
  std::FILE* f_ = nullptr;
};

}  // namespace

std::unique_ptr<LinearBackend> make_backend(const TrainConfig& cfg) {
  if (cfg.mode == "tee-only") return std::make_unique<TeeOnlyBackend>();
  if (cfg.mode == "tempo" || cfg.mode == "offload") {
    OffloadConfig oc = cfg.offload;
    oc.insecure_identity = cfg.mode == "offload";
    // TF32 keeps 10 bits of mantissa: the check's bound follows its unit round-off.
    if (cfg.remote.tf32) oc.verify.unit_roundoff = 0x1.0p-11;
    Secret secret;
    if (cfg.insecure_key_seed >= 0) {
      std::fprintf(stderr, "tempo: WARNING: INSECURE --insecure-key-seed: the keys follow from a public number "
                           "(for tests and reproducible measurements only)\n");
      secret = secret_from_seed(static_cast<uint64_t>(cfg.insecure_key_seed));
    } else {
      secret = random_secret();
    }
    return std::make_unique<OffloadBackend>(oc, connect_workers(cfg.workers, cfg.remote), secret);
  }
  throw Error("unknown --mode '" + cfg.mode + "'; choose tempo, offload or tee-only");
}

EvalResult evaluate(Model& model, const Dataset& data, int64_t batch_size, LinearBackend& backend) {
  EvalResult r;
  if (data.test_y.empty()) return r;
  TeeOnlyBackend local;
  Context ctx{&backend, &local, false, nullptr};
  BatchLoader loader(data, false, batch_size, false, 0);
  loader.start_epoch(1);
  Tensor x;
  std::vector<int64_t> y;
  double loss_sum = 0;
  while (loader.next(x, y)) {
    int64_t hits = 0;
    const Tensor& logits = model.forward(x, ctx);
    loss_sum += cross_entropy(logits, y, nullptr, &hits) * static_cast<double>(y.size());
    backend.end_step();  // workers drop this batch's ciphertexts
    r.correct += hits;
    r.samples += static_cast<int64_t>(y.size());
  }
  r.loss = loss_sum / static_cast<double>(r.samples);
  r.accuracy = static_cast<double>(r.correct) / static_cast<double>(r.samples);
  return r;
}

Predictions predict(Model& model, const Dataset& data, bool train_split, int64_t batch_size, LinearBackend& backend) {
  TeeOnlyBackend local;
  Context ctx{&backend, &local, false, nullptr};
  BatchLoader loader(data, train_split, batch_size, false, 0);
  loader.start_epoch(1);
  Predictions p;
  p.classes = model.num_classes;
  const int64_t n = loader.num_samples(), classes = p.classes;
  p.probabilities.resize(static_cast<size_t>(n * classes));
  p.labels.reserve(static_cast<size_t>(n));
  Tensor x;
  std::vector<int64_t> y;
  while (loader.next(x, y)) {
    const Tensor& logits = model.forward(x, ctx);
    backend.end_step();
    const int64_t rows = logits.dim(0), done = static_cast<int64_t>(p.labels.size());
    softmax_rows(logits.data(), rows, classes, p.probabilities.data() + done * classes);
    for (int64_t i = 0; i < rows; ++i) {
      const float* z = logits.data() + i * classes;
      p.labels.push_back(std::max_element(z, z + classes) - z);
    }
  }
  return p;
}

int64_t peak_rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  long long kb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "VmHWM: %lld kB", &kb) == 1) break;
  std::fclose(f);
  return static_cast<int64_t>(kb) * 1024;
}

std::unique_ptr<Model> prepare_model(const TrainConfig& cfg) {
  auto model = build_model(cfg.model, cfg.seed);
  model->set_offload(cfg.offload_first, cfg.offload_last);
  const int channel = model->set_conv_mode(cfg.mode == "tee-only" ? "im2col" : cfg.conv_mode, cfg.channel_from);
  if (cfg.conv_mode == "channel" && cfg.mode != "tee-only" && channel == 0)
    std::fprintf(stderr, "tempo: note: --conv-mode channel applies to no convolution of %s (offloaded "
                 "convolutions from --channel-from %d on)\n", cfg.model.c_str(), cfg.channel_from);
  if (!cfg.init.empty()) model->load(cfg.init);
  return model;
}

TrainResult train(const TrainConfig& cfg, LinearBackend* injected) {
  TEMPO_CHECK(cfg.batch_size > 0, "--batch-size must be positive");
  TEMPO_CHECK(cfg.epochs > 0, "--epochs must be positive");
  TEMPO_CHECK(cfg.steps == -1 || cfg.steps > 0, "--steps must be positive");
  if (!cfg.save.empty()) {
    // Fail now, not after hours of training.
    std::string dir = cfg.save.substr(0, cfg.save.find_last_of('/') == std::string::npos ? 0 : cfg.save.find_last_of('/'));
    if (dir.empty()) dir = cfg.save[0] == '/' ? "/" : ".";
    TEMPO_CHECK(access(dir.c_str(), W_OK) == 0,
          "cannot write --save '" + cfg.save + "': directory '" + dir + "' does not exist or is not writable");
  }
  set_num_threads(cfg.threads);

  auto model = prepare_model(cfg);
  Dataset data = load_dataset(cfg.data, model->input_shape, cfg.seed);
  std::unique_ptr<LinearBackend> owned;
  if (!injected) owned = make_backend(cfg);
  LinearBackend* backend = injected ? injected : owned.get();
  TeeOnlyBackend local;
  MetricsLog metrics(cfg.metrics);
  auto optim = make_optimizer(cfg.optim, model->parameters());
  OptimConfig ocfg = cfg.optim;
  ocfg.total_epochs = cfg.epochs;

  std::fprintf(stderr, "tempo: %s (%lld parameters), %s, mode %s, %d threads, batch %lld, %s\n",
               cfg.model.c_str(), static_cast<long long>(model->parameter_count()),
               data.description.c_str(), cfg.mode.c_str(), num_threads(),
               static_cast<long long>(cfg.batch_size), cfg.optim.kind.c_str());

  Rng dropout_rng = Rng::derive(cfg.seed, 0xd509);
  Context ctx{backend, &local, true, &dropout_rng};
  BatchLoader loader(data, true, cfg.batch_size, cfg.shuffle, cfg.seed);
  Tensor x, dlogits;
  std::vector<int64_t> y;
  TrainResult res;
  const auto t0 = Clock::now();
  double train_seconds = 0;

  try {
    for (int epoch = 1; epoch <= cfg.epochs; ++epoch) {
      const double lr = lr_for_epoch(ocfg, epoch);
      loader.start_epoch(epoch);
      int64_t total = loader.num_batches();
      if (cfg.steps > 0) total = std::min(total, cfg.steps - res.steps);
      Progress bar("epoch " + std::to_string(epoch) + "/" + std::to_string(cfg.epochs), total,
                   cfg.progress);
      const auto te = Clock::now();
      int64_t in_epoch = 0;
      while (in_epoch < total && loader.next(x, y)) {
        const auto ts = Clock::now();
        ctx.training = true;
        const Tensor& logits = model->forward(x, ctx);
        const double loss = cross_entropy(logits, y, &dlogits);
        TEMPO_CHECK(std::isfinite(loss), "training diverged: the loss is " + fmt("%g", loss) +
                                       " at step " + std::to_string(res.steps + 1) +
                                       "; lower --lr");
        model->backward(dlogits, ctx);
        optim->step(lr);
        backend->end_step();
        ++res.steps;
        ++in_epoch;
        res.last_loss = loss;
        metrics.step(res.steps, epoch, loss, lr, backend->take_phase_seconds(), since(ts));
        bar.update(in_epoch, "loss " + fmt("%.4f", loss));
        if (g_stop_requested) break;
      }
      train_seconds += since(te);
      bar.finish();
      if (g_stop_requested) {
        res.interrupted = true;
        std::fprintf(stderr, "tempo: interrupted after step %lld\n", static_cast<long long>(res.steps));
        break;
      }
      res.epochs_completed = epoch;
      const bool last = epoch == cfg.epochs || (cfg.steps > 0 && res.steps >= cfg.steps);
      if (!data.test_y.empty()) {
        res.test = evaluate(*model, data, std::max<int64_t>(cfg.batch_size, 256), *backend);
        res.evaluated = true;
        metrics.epoch(epoch, &res.test);
        std::fprintf(stderr, "tempo: epoch %d: test accuracy %.4f (%lld/%lld), test loss %.4f\n", epoch,
                     res.test.accuracy, static_cast<long long>(res.test.correct),
                     static_cast<long long>(res.test.samples), res.test.loss);
      } else {
        metrics.epoch(epoch, nullptr);
      }
      if (last) break;
    }
  } catch (const Error&) {
    // A step failed (e.g. no worker left with --no-fallback): the weights are
    // those of the last completed step; keep them if asked, then report.
    if (!cfg.save.empty() && res.steps > 0) {
      model->save(cfg.save);
      std::fprintf(stderr, "tempo: saved %s (after step %lld, the last completed)\n", cfg.save.c_str(),
                   static_cast<long long>(res.steps));
    }
    throw;
  }
  res.seconds = train_seconds;
  res.peak_rss_bytes = peak_rss_bytes();
  metrics.summary(res, cfg.mode);
  (void)t0;
  if (!cfg.save.empty()) {
    model->save(cfg.save);
    std::fprintf(stderr, "tempo: saved %s\n", cfg.save.c_str());
  }
  return res;
}

}  // namespace tempo
