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
#include "trusted/confidential.h"
#include "trusted/io/file_util.h"
#include "worker/connect.h"

#include <nlohmann/json.hpp>

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
  // resume_step >= 0: a resumed run; the file keeps the lines of the steps
  // and epochs the checkpoint covers (those after it are redone), then grows.
  MetricsLog(const std::string& path, int64_t resume_step, int resume_epoch) {
    if (path.empty()) return;
    if (resume_step >= 0 && is_regular_file(path)) {
      std::vector<uint8_t> raw = read_file(path, "--metrics file");
      std::string kept, line;
      for (size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] != '\n') {
          line.push_back(static_cast<char>(raw[i]));
          continue;
        }
        const auto j = nlohmann::json::parse(line, nullptr, false);
        const std::string kind = j.is_object() ? j.value("kind", "") : "";
        if ((kind == "step" && j.value("step", int64_t{0}) <= resume_step) ||
            (kind == "epoch" && j.value("epoch", 0) < resume_epoch))
          kept += line + "\n";
        line.clear();
      }
      AtomicFile f(path);
      f.write(kept.data(), kept.size());
      f.commit();
    }
    f_ = std::fopen(path.c_str(), resume_step >= 0 ? "a" : "w");
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

Secret run_secret(const TrainConfig& cfg) {
  if (cfg.insecure_key_seed < 0) return random_secret();
  std::fprintf(stderr, "tempo: WARNING: INSECURE --insecure-key-seed: the keys follow from a public number "
                       "(for tests and reproducible measurements only)\n");
  return secret_from_seed(static_cast<uint64_t>(cfg.insecure_key_seed));
}

std::unique_ptr<LinearBackend> make_backend(const TrainConfig& cfg, const Secret* given) {
  if (cfg.mode == "tee-only") return std::make_unique<TeeOnlyBackend>();
  if (cfg.mode == "tempo" || cfg.mode == "offload") {
    OffloadConfig oc = cfg.offload;
    oc.insecure_identity = cfg.mode == "offload";
    // TF32 keeps 10 bits of mantissa: the check's bound follows its unit round-off.
    if (cfg.remote.tf32) oc.verify.unit_roundoff = 0x1.0p-11;
    const Secret secret = given ? *given : run_secret(cfg);
    return std::make_unique<OffloadBackend>(oc, connect_workers(cfg.workers, cfg.remote), secret);
  }
  throw Error("unknown --mode '" + cfg.mode + "'; choose tempo, offload or tee-only");
}

EvalResult evaluate(Model& model, const Dataset& data, int64_t batch_size, LinearBackend& backend,
                    bool progress) {
  EvalResult r;
  if (data.test_y.empty()) return r;
  TeeOnlyBackend local;
  Context ctx{&backend, &local, false, nullptr};
  BatchLoader loader(data, false, batch_size, false, 0);
  loader.start_epoch(1);
  Progress bar("evaluating", loader.num_batches(), progress);
  Tensor x;
  std::vector<int64_t> y;
  double loss_sum = 0;
  int64_t batches = 0;
  while (loader.next(x, y)) {
    int64_t hits = 0;
    const Tensor& logits = model.forward(x, ctx);
    loss_sum += cross_entropy(logits, y, nullptr, &hits) * static_cast<double>(y.size());
    backend.end_step();  // workers drop this batch's ciphertexts
    r.correct += hits;
    r.samples += static_cast<int64_t>(y.size());
    bar.update(++batches);
  }
  bar.finish();
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
  TEMPO_CHECK(cfg.checkpoint_every >= 0, "--checkpoint-every must be positive");
  for (const std::string* out : {&cfg.save, cfg.checkpoint_every > 0 ? &cfg.checkpoint : nullptr}) {
    if (!out || out->empty()) continue;
    // Fail now, not after hours of training.
    std::string dir = out->substr(0, out->find_last_of('/') == std::string::npos ? 0 : out->find_last_of('/'));
    if (dir.empty()) dir = (*out)[0] == '/' ? "/" : ".";
    TEMPO_CHECK(access(dir.c_str(), W_OK) == 0,
          "cannot write '" + *out + "': directory '" + dir + "' does not exist or is not writable");
  }
  set_num_threads(cfg.threads);

  auto model = prepare_model(cfg);
  auto optim = make_optimizer(cfg.optim, model->parameters());
  const bool sealed = cfg.checkpoint_every > 0 || !cfg.resume.empty();
  const std::string encrypted = encrypted_data_path(cfg.data);
  // The measured configuration (hashes --init and reads headers): only what
  // a report or a checkpoint needs.
  const nlohmann::json config = sealed || !encrypted.empty() ? run_config(cfg) : nlohmann::json::object();
  const SymKey seal_key = sealed ? sealing_key(cfg.sealing_key, cfg.resume.empty()) : SymKey{};
  RunState st;
  const bool resumed = !cfg.resume.empty();
  if (resumed) {
    st = read_checkpoint(cfg.resume, seal_key, config, *model, *optim);
    if (st.threads != num_threads())
      std::fprintf(stderr, "tempo: warning: the checkpoint was made with %d threads, this run has %d: the result "
                   "will differ from an uninterrupted run in rounding\n", st.threads, num_threads());
    std::fprintf(stderr, "tempo: resuming %s after step %lld (epoch %d, batch %lld)\n", cfg.resume.c_str(),
                 static_cast<long long>(st.step), st.epoch, static_cast<long long>(st.in_epoch));
  } else {
    st.secret = run_secret(cfg);
  }
  st.threads = num_threads();

  TEMPO_CHECK(encrypted.empty() || !cfg.owner_key.empty(),
              "--data " + cfg.data + " is encrypted: pass the owner's public key (--owner-key FILE) so that the "
              "owner's key release can be checked and the model encrypted to the owner");
  Dataset data;
  if (encrypted.empty()) {
    data = load_dataset(cfg.data, model->input_shape, cfg.seed);
  } else {
    lock_memory();
    if (!st.data_key) st.data_key = await_data_key(cfg, config);
    const auto td = Clock::now();
    data = load_encrypted_dataset(encrypted, *st.data_key, model->input_shape);
    std::fprintf(stderr, "tempo: decrypted the data set in memory in %.2f s\n", since(td));
  }
  std::unique_ptr<LinearBackend> owned;
  if (!injected) owned = make_backend(cfg, &st.secret);
  LinearBackend* backend = injected ? injected : owned.get();
  if (resumed) backend->set_key_position(st.key_position);
  TeeOnlyBackend local;
  MetricsLog metrics(cfg.metrics, resumed ? st.step : -1, st.epoch);
  OptimConfig ocfg = cfg.optim;
  ocfg.total_epochs = cfg.epochs;

  std::fprintf(stderr, "tempo: %s (%lld parameters), %s, mode %s, %d threads, batch %lld, %s\n",
               cfg.model.c_str(), static_cast<long long>(model->parameter_count()),
               data.description.c_str(), cfg.mode.c_str(), num_threads(),
               static_cast<long long>(cfg.batch_size), cfg.optim.kind.c_str());

  Rng dropout_rng = Rng::derive(cfg.seed, 0xd509);
  if (resumed) dropout_rng.set_state(st.dropout_rng);
  Context ctx{backend, &local, true, &dropout_rng};
  BatchLoader loader(data, true, cfg.batch_size, cfg.shuffle, cfg.seed);
  Tensor x, dlogits;
  std::vector<int64_t> y;
  TrainResult res;
  res.steps = st.step;
  res.resumed_after = st.step;
  res.epochs_completed = st.epoch - 1;
  double train_seconds = 0;
  auto checkpoint = [&](int epoch, int64_t in_epoch) {
    st.step = res.steps;
    st.epoch = epoch;
    st.in_epoch = in_epoch;
    st.dropout_rng = dropout_rng.state();
    st.key_position = backend->key_position();
    write_checkpoint(cfg.checkpoint, seal_key, config, *model, *optim, st);
  };

  try {
    for (int epoch = st.epoch; epoch <= cfg.epochs; ++epoch) {
      const double lr = lr_for_epoch(ocfg, epoch);
      loader.start_epoch(epoch);
      int64_t in_epoch = 0;
      if (resumed && epoch == st.epoch) {
        in_epoch = std::min(st.in_epoch, loader.num_batches());
        loader.skip(in_epoch);
      }
      int64_t total = loader.num_batches();
      if (cfg.steps > 0) total = std::min(total, in_epoch + cfg.steps - res.steps);
      Progress bar("epoch " + std::to_string(epoch) + "/" + std::to_string(cfg.epochs), total,
                   cfg.progress);
      if (in_epoch > 0) bar.update(in_epoch, "resumed");
      const auto te = Clock::now();
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
        if ((cfg.checkpoint_every > 0 && res.steps % cfg.checkpoint_every == 0) ||
            (g_stop_requested && cfg.checkpoint_every > 0))
          checkpoint(epoch, in_epoch);
        bar.update(in_epoch, "loss " + fmt("%.4f", loss));
        if (g_stop_requested) break;
      }
      train_seconds += since(te);
      bar.finish();
      if (g_stop_requested) {
        res.interrupted = true;
        std::fprintf(stderr, "tempo: interrupted after step %lld%s\n", static_cast<long long>(res.steps),
                     cfg.checkpoint_every > 0 ? ("; continue with --resume " + cfg.checkpoint).c_str() : "");
        break;
      }
      res.epochs_completed = epoch;
      const bool last = epoch == cfg.epochs || (cfg.steps > 0 && res.steps >= cfg.steps);
      if (!data.test_y.empty()) {
        // At the training batch size: every buffer of the step (layers, blinding,
        // ciphertexts) is reused as it is, so evaluating adds no memory.
        res.test = evaluate(*model, data, cfg.batch_size, *backend, cfg.progress);
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
      save_model(cfg, *model);
      std::fprintf(stderr, "tempo: saved %s (after step %lld, the last completed)\n", cfg.save.c_str(),
                   static_cast<long long>(res.steps));
    }
    throw;
  }
  res.seconds = train_seconds;
  res.peak_rss_bytes = peak_rss_bytes();
  metrics.summary(res, cfg.mode);
  if (!cfg.save.empty()) {
    save_model(cfg, *model);
    std::fprintf(stderr, "tempo: saved %s%s\n", cfg.save.c_str(),
                 cfg.owner_key.empty() ? "" : " (encrypted to the owner's key)");
  }
  return res;
}

}  // namespace tempo
