#include "trusted/trainer.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/progress.h"
#include "trusted/confidential/confidential.h"
#include "trusted/io/file_util.h"
#include "trusted/train_step.h"
#include "trusted/offload/workers.h"

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

namespace {

// A resumed execution's run secret: fresh (DESIGN.md §4, "Resume").
Secret resumed_secret(const TrainConfig& cfg, const RunState& restored) {
  if (cfg.insecure_key_seed < 0) return random_secret();
  // Reproducible for tests, and still apart from the interrupted
  // execution's streams and from those of a resume at another step.
  return derive_secret(run_secret(cfg), "tempo resumed execution", static_cast<uint64_t>(restored.step));
}

}  // namespace

Secret run_secret(const TrainConfig& cfg) {
  if (cfg.insecure_key_seed < 0) return random_secret();
  std::fprintf(stderr, "tempo: WARNING: INSECURE --insecure-key-seed: the keys follow from a public number "
                       "(for tests and reproducible measurements only)\n");
  return secret_from_seed(static_cast<uint64_t>(cfg.insecure_key_seed));
}

void set_compute(const TrainConfig& cfg) {
  set_num_threads(cfg.threads);
  set_default_conv_kernels(cfg.conv_kernels);
}

std::unique_ptr<LinearBackend> make_backend(const TrainConfig& cfg, const Secret* given) {
  if (cfg.mode == "tee-only") return std::make_unique<TeeOnlyBackend>();
  if (cfg.mode == "tempo" || cfg.mode == "offload") {
    OffloadConfig oc = cfg.offload;
    oc.insecure_identity = cfg.mode == "offload";
    // TF32 keeps 10 bits of mantissa: an honest product term is off by up
    // to 2⁻¹¹ of itself, so a bound that admits honest TF32 results admits
    // far larger lies (Freivalds.Tf32BoundAdmitsLargeLies: 50 of 50
    // single-entry lies of 0.5·max|row| pass at cnn's fc shape).
    TEMPO_CHECK(!cfg.remote.tf32 || oc.verify.rounds == 0 || oc.verify.rate <= 0 || cfg.mode == "offload",
                "--tf32 cannot be checked: TF32's rounding (2^-11 per product term) is larger than the lies "
                "Freivalds' check must catch (1e-2 of a row), so with it a worker could change results unnoticed; "
                "train in FP32 (drop --tf32), or give up the check explicitly with --verify-rounds 0");
    if (cfg.remote.tf32) oc.verify.unit_roundoff = 0x1.0p-11;
    const Secret secret = given ? given->clone() : run_secret(cfg);
    return std::make_unique<OffloadBackend>(oc, connect_workers(cfg.workers, cfg.remote), secret);
  }
  throw Error("unknown --mode '" + cfg.mode + "'; choose tempo, offload or tee-only");
}

EvalResult evaluate(Model& model, const Dataset& data, int64_t batch_size, LinearBackend& backend,
                    bool progress, DataParallel* masters) {
  EvalResult r;
  if (data.test_y.empty()) return r;
  TeeOnlyBackend local;
  Context ctx{&backend, &local, false, nullptr};
  BatchLoader loader(data, false, batch_size, false, 0);
  if (masters) loader.set_shard(masters->rank(), masters->size());
  loader.start_epoch(1);
  Progress bar("evaluating", loader.num_batches(), progress);
  Tensor x;
  std::vector<int64_t> y;
  double loss_sum = 0;
  int64_t batches = 0;
  while (loader.next(x, y)) {
    if (y.empty()) {  // this master's shard of a short last batch
      bar.update(++batches);
      continue;
    }
    int64_t hits = 0;
    const Tensor& logits = model.forward(x, ctx);
    loss_sum += cross_entropy(logits, y, nullptr, &hits) * static_cast<double>(y.size());
    backend.end_step();  // workers drop this batch's ciphertexts
    r.correct += hits;
    r.samples += static_cast<int64_t>(y.size());
    bar.update(++batches);
  }
  bar.finish();
  if (masters) {
    double v[3] = {loss_sum, static_cast<double>(r.correct), static_cast<double>(r.samples)};
    masters->sum(v, 3);
    loss_sum = v[0];
    r.correct = std::llround(v[1]);
    r.samples = std::llround(v[2]);
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

int64_t local_inner(const TrainConfig& cfg) {
  return cfg.mode == "tempo" && cfg.local_below > 0 ? 2 * int64_t{cfg.offload.mask_rank} : 0;
}

void apply_placement(Model& model, const TrainConfig& cfg) {
  model.set_offload(cfg.offload_first, cfg.offload_last, cfg.mode == "tee-only" ? 0 : cfg.local_below,
                    local_inner(cfg));
}

std::unique_ptr<Model> prepare_model(const TrainConfig& cfg) {
  auto model = build_model(cfg.model, cfg.seed);
  apply_placement(*model, cfg);
  const int channel = model->set_conv_mode(cfg.mode == "tee-only" ? "im2col" : cfg.conv_mode, cfg.channel_from);
  if (cfg.conv_mode == "channel" && cfg.mode != "tee-only" && channel == 0)
    std::fprintf(stderr, "tempo: note: --conv-mode channel applies to no convolution of %s (offloaded "
                 "convolutions from --channel-from %d on)\n", cfg.model.c_str(), cfg.channel_from);
  if (!cfg.init.empty()) model->load(cfg.init);
  return model;
}

namespace {

std::string per_rank(const std::string& path, int rank) {
  if (path.empty()) return path;
  const size_t at = path.find("{rank}");
  if (at == std::string::npos) return path + ".rank" + std::to_string(rank);
  return path.substr(0, at) + std::to_string(rank) + path.substr(at + 6);
}

}  // namespace

TrainConfig rank_config(const TrainConfig& cfg, int rank, int ranks) {
  TrainConfig r = cfg;
  TEMPO_CHECK(cfg.batch_size >= ranks, "--batch-size " + std::to_string(cfg.batch_size) + " is the global batch, "
              "split over the " + std::to_string(ranks) + " masters: it must be at least " + std::to_string(ranks));
  std::vector<std::string> lists;
  for (size_t from = 0;;) {
    const size_t bar = cfg.workers.find('|', from);
    lists.push_back(cfg.workers.substr(from, bar == std::string::npos ? std::string::npos : bar - from));
    if (bar == std::string::npos) break;
    from = bar + 1;
  }
  TEMPO_CHECK(lists.size() == 1 || lists.size() == static_cast<size_t>(ranks),
              "--workers has " + std::to_string(lists.size()) + " lists separated by '|', but the job has " +
                  std::to_string(ranks) + " masters: give one list per master (rank 0's first), or one for all");
  r.workers = lists.size() == 1 ? lists[0] : lists[static_cast<size_t>(rank)];
  r.checkpoint = per_rank(cfg.checkpoint, rank);
  r.resume = per_rank(cfg.resume, rank);
  r.sealing_key = per_rank(cfg.sealing_key, rank);
  r.attest_dir = per_rank(cfg.attest_dir, rank);
  if (!r.attest_dir.empty() && ::mkdir(r.attest_dir.c_str(), 0700) != 0 && errno != EEXIST)
    throw Error("cannot make the attestation directory '" + r.attest_dir + "': " + std::strerror(errno));
  const bool every_rank_saves = cfg.save.find("{rank}") != std::string::npos;
  r.save = every_rank_saves || rank == 0 ? (every_rank_saves ? per_rank(cfg.save, rank) : cfg.save) : "";
  if (rank != 0) {
    r.progress = false;
    r.metrics.clear();
  }
  return r;
}

namespace {

// Fails now, not after hours of training, when an output cannot be written.
void check_outputs_writable(const TrainConfig& cfg) {
  for (const std::string* out : {&cfg.save, cfg.checkpoint_every > 0 ? &cfg.checkpoint : nullptr}) {
    if (!out || out->empty()) continue;
    std::string dir = out->substr(0, out->find_last_of('/') == std::string::npos ? 0 : out->find_last_of('/'));
    if (dir.empty()) dir = (*out)[0] == '/' ? "/" : ".";
    TEMPO_CHECK(access(dir.c_str(), W_OK) == 0,
          "cannot write '" + *out + "': directory '" + dir + "' does not exist or is not writable");
  }
}

// One training job: its model, optimizer, data, backend and sealed state.
class TrainingJob {
 public:
  TrainingJob(const TrainConfig& cfg, LinearBackend* injected);
  TrainResult run();

 private:
  void restore_or_start();
  void load_data();
  // One epoch's steps; false when training stops inside it (Ctrl-C).
  bool run_epoch(int epoch);
  void evaluate_epoch(int epoch);
  void checkpoint(int epoch, int64_t in_epoch);
  void save_after_failure();
  // Several masters: the secret all ranks share (from the owner).
  Secret shared_secret() const;
  bool stop_now() const { return dp_ ? dp_->agreed_stop() : g_stop_requested.load(); }
  bool lead() const { return !cfg_.masters || cfg_.masters->rank() == 0; }

  const TrainConfig& cfg_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Optimizer> optim_;
  const bool sealed_, resumed_;
  const std::string encrypted_;
  nlohmann::json config_;
  SymKey seal_key_;
  RunState st_;
  Dataset data_;
  std::unique_ptr<DataParallel> dp_;  // several masters
  std::unique_ptr<LinearBackend> owned_;
  LinearBackend* backend_ = nullptr;
  TeeOnlyBackend local_;
  OptimConfig ocfg_;
  Rng dropout_rng_;
  TrainResult res_;
  double train_seconds_ = 0;
  MetricsLog* metrics_ = nullptr;  // run()'s
  BatchLoader* loader_ = nullptr;  // run()'s
  Tensor x_;
  std::vector<int64_t> y_;
};

TrainingJob::TrainingJob(const TrainConfig& cfg, LinearBackend* injected)
    : cfg_(cfg),
      model_(prepare_model(cfg)),
      optim_(make_optimizer(cfg.optim, model_->parameters())),
      sealed_(cfg.checkpoint_every > 0 || !cfg.resume.empty()),
      resumed_(!cfg.resume.empty()),
      encrypted_(encrypted_data_path(cfg.data)),
      dropout_rng_(Rng::derive(cfg.seed, 0xd509)) {
  // The measured configuration (hashes --init and reads headers): only what
  // a report or a checkpoint needs.
  config_ = sealed_ || !encrypted_.empty() || !cfg.owner_key.empty() ? run_config(cfg) : nlohmann::json::object();
  seal_key_ = sealed_ ? sealing_key(cfg.sealing_key, cfg.resume.empty()) : SymKey{};
  restore_or_start();
  load_data();
  if (cfg.masters) {
    dp_ = std::make_unique<DataParallel>(*cfg.masters, shared_secret());
    dp_->set_stop_source(&g_stop_requested);
  }
  if (!injected) owned_ = make_backend(cfg, &st_.secret);
  backend_ = injected ? injected : owned_.get();
  ocfg_ = cfg.optim;
  ocfg_.total_epochs = cfg.epochs;
  if (resumed_) dropout_rng_.set_state(st_.dropout_rng);
  res_.steps = st_.step;
  res_.resumed_after = st_.step;
  res_.epochs_completed = st_.epoch - 1;
}

void TrainingJob::restore_or_start() {
  if (resumed_) {
    st_ = read_checkpoint(cfg_.resume, seal_key_, config_, *model_, *optim_);
    check_not_rolled_back(cfg_.resume, st_, counter_path(cfg_.sealing_key));
    if (st_.threads != num_threads())
      std::fprintf(stderr, "tempo: warning: the checkpoint was made with %d threads, this run has %d: the result "
                   "will differ from an uninterrupted run in rounding\n", st_.threads, num_threads());
    if (st_.conv_kernels != default_conv_kernels())
      std::fprintf(stderr, "tempo: warning: the checkpoint was made with --conv-algo %s, this run has %s: the "
                   "result will differ from an uninterrupted run in rounding\n", conv_kernels_flag(st_.conv_kernels),
                   conv_kernels_flag(default_conv_kernels()));
    std::fprintf(stderr, "tempo: resuming %s after step %lld (epoch %d, batch %lld)\n", cfg_.resume.c_str(),
                 static_cast<long long>(st_.step), st_.epoch, static_cast<long long>(st_.in_epoch));
    // No key stream is ever used by two executions: a host that replays
    // this checkpoint, and makes workers fail differently each time, would
    // otherwise get the same keys, masks and mixings on other plaintexts.
    st_.secret = resumed_secret(cfg_, st_);
    st_.key_position = 0;
  } else {
    st_.secret = run_secret(cfg_);
  }
  // Several masters: no two ranks draw the same keys (they would under
  // --insecure-key-seed), nor a rank those of a one-master run.
  if (cfg_.masters) st_.secret = derive_secret(st_.secret, "tempo master rank", static_cast<uint64_t>(cfg_.masters->rank()));
  st_.threads = num_threads();
  st_.conv_kernels = default_conv_kernels();
}

Secret TrainingJob::shared_secret() const {
  constexpr const char* kLabel = "tempo masters' pads";
  if (cfg_.insecure_key_seed >= 0)
    return derive_secret(secret_from_seed(static_cast<uint64_t>(cfg_.insecure_key_seed)), kLabel, 0);
  TEMPO_CHECK(st_.data_key.has_value(),
              "several masters need a secret they all share, which only the data owner can give them (it never "
              "travels over MPI): train on data the owner encrypted (--data encrypted:FILE --owner-key KEY; every "
              "rank attests and receives the data key, docs/CONFIDENTIAL.md), or, for tests only, pass "
              "--insecure-key-seed");
  Secret base;
  std::memcpy(base.data(), st_.data_key->data(), base.size());
  return derive_secret(base, kLabel, 0);
}

void TrainingJob::load_data() {
  TEMPO_CHECK(encrypted_.empty() || !cfg_.owner_key.empty(),
              "--data " + cfg_.data + " is encrypted: pass the owner's public key (--owner-key FILE) so that the "
              "owner's key release can be checked and the model encrypted to the owner");
  // A master with an owner attests once per run: a resumed execution keeps
  // the key of the report the owner accepted (sealed in the checkpoint).
  std::optional<Attestation> attested;
  if (!cfg_.owner_key.empty() && (!encrypted_.empty() || !cfg_.save.empty()) && !st_.master_key)
    attested = attest(cfg_, config_);
  if (!encrypted_.empty()) {
    lock_memory();  // also when train() is called other than from `tempo train`
    if (!st_.data_key) {
      TEMPO_CHECK(attested.has_value(), "--resume " + cfg_.resume + ": the checkpoint has the attested key but "
                                        "not the data key; resume from a checkpoint of this run");
      st_.data_key = await_data_key(cfg_, *attested);
    }
  }
  if (attested) st_.master_key = std::move(attested->master);
  if (encrypted_.empty()) {
    data_ = load_dataset(cfg_.data, model_->input_shape, cfg_.seed);
    return;
  }
  const auto td = Clock::now();
  data_ = load_encrypted_dataset(encrypted_, *st_.data_key, model_->input_shape);
  std::fprintf(stderr, "tempo: decrypted the data set in memory in %.2f s\n", since(td));
}

void TrainingJob::checkpoint(int epoch, int64_t in_epoch) {
  st_.step = res_.steps;
  st_.epoch = epoch;
  st_.in_epoch = in_epoch;
  st_.dropout_rng = dropout_rng_.state();
  st_.key_position = backend_->key_position();
  // Sealed with the next counter value, which is recorded only once the
  // checkpoint is in place: a kill in between leaves a checkpoint that is
  // still accepted.
  const std::string counter = counter_path(cfg_.sealing_key);
  st_.counter = std::max(st_.counter, read_counter(counter)) + 1;
  write_checkpoint(cfg_.checkpoint, seal_key_, config_, *model_, *optim_, st_);
  advance_counter(counter, st_.counter);
}

bool TrainingJob::run_epoch(int epoch) {
  const double lr = lr_for_epoch(ocfg_, epoch);
  Context ctx{backend_, &local_, true, &dropout_rng_};
  TrainStep step(*model_, *optim_, ctx);
  step.set_masters(dp_.get());
  BatchLoader& loader = *loader_;
  loader.start_epoch(epoch);
  int64_t in_epoch = 0;
  if (resumed_ && epoch == st_.epoch) {
    in_epoch = std::min(st_.in_epoch, loader.num_batches());
    loader.skip(in_epoch);
  }
  int64_t total = loader.num_batches();
  if (cfg_.steps > 0) total = std::min(total, in_epoch + cfg_.steps - res_.steps);
  Progress bar("epoch " + std::to_string(epoch) + "/" + std::to_string(cfg_.epochs), total, cfg_.progress);
  if (in_epoch > 0) bar.update(in_epoch, "resumed");
  const auto te = Clock::now();
  while (in_epoch < total && loader.next(x_, y_)) {
    const auto ts = Clock::now();
    const double loss = step.run(x_, y_, lr);
    ++res_.steps;
    ++in_epoch;
    res_.last_loss = loss;
    metrics_->step(res_.steps, epoch, loss, lr, backend_->take_phase_seconds(), since(ts));
    if (cfg_.checkpoint_every > 0 && (res_.steps % cfg_.checkpoint_every == 0 || stop_now()))
      checkpoint(epoch, in_epoch);
    bar.update(in_epoch, "loss " + fmt("%.4f", loss));
    if (stop_now()) break;
  }
  train_seconds_ += since(te);
  bar.finish();
  if (!stop_now()) return true;
  res_.interrupted = true;
  std::fprintf(stderr, "tempo: interrupted after step %lld%s\n", static_cast<long long>(res_.steps),
               cfg_.checkpoint_every > 0 ? ("; continue with --resume " + cfg_.checkpoint).c_str() : "");
  return false;
}

void TrainingJob::evaluate_epoch(int epoch) {
  if (data_.test_y.empty()) {
    metrics_->epoch(epoch, nullptr);
    return;
  }
  // At the training batch size: every buffer of the step (layers, blinding,
  // ciphertexts) is reused as it is, so evaluating adds no memory.
  res_.test = evaluate(*model_, data_, cfg_.batch_size, *backend_, cfg_.progress, dp_.get());
  res_.evaluated = true;
  metrics_->epoch(epoch, &res_.test);
  if (lead()) std::fprintf(stderr, "tempo: epoch %d: test accuracy %.4f (%lld/%lld), test loss %.4f\n", epoch,
               res_.test.accuracy, static_cast<long long>(res_.test.correct),
               static_cast<long long>(res_.test.samples), res_.test.loss);
}

// A step failed (e.g. no worker left with --no-fallback): the weights are
// those of the last completed step; keep them if asked.
void TrainingJob::save_after_failure() {
  if (cfg_.save.empty() || res_.steps == 0) return;
  save_model(cfg_, *model_, st_.master_key ? &*st_.master_key : nullptr);
  std::fprintf(stderr, "tempo: saved %s (after step %lld, the last completed)\n", cfg_.save.c_str(),
               static_cast<long long>(res_.steps));
}

TrainResult TrainingJob::run() {
  MetricsLog metrics(cfg_.metrics, resumed_ ? st_.step : -1, st_.epoch);
  metrics_ = &metrics;
  BatchLoader loader(data_, true, cfg_.batch_size, cfg_.shuffle, cfg_.seed);
  if (dp_) loader.set_shard(dp_->rank(), dp_->size());
  loader_ = &loader;
  if (lead())
    std::fprintf(stderr, "tempo: %s (%lld parameters), %s, mode %s, %d threads, batch %lld%s, %s\n",
                 cfg_.model.c_str(), static_cast<long long>(model_->parameter_count()),
                 data_.description.c_str(), cfg_.mode.c_str(), num_threads(),
                 static_cast<long long>(cfg_.batch_size),
                 dp_ ? (" over " + std::to_string(dp_->size()) + " masters").c_str() : "", cfg_.optim.kind.c_str());
  try {
    for (int epoch = st_.epoch; epoch <= cfg_.epochs; ++epoch) {
      if (!run_epoch(epoch)) break;
      res_.epochs_completed = epoch;
      const bool last = epoch == cfg_.epochs || (cfg_.steps > 0 && res_.steps >= cfg_.steps);
      evaluate_epoch(epoch);
      if (last) break;
    }
  } catch (const Error&) {
    save_after_failure();
    throw;
  }
  res_.seconds = train_seconds_;
  res_.peak_rss_bytes = peak_rss_bytes();
  const int64_t ran = res_.steps - res_.resumed_after;
  if (dp_ && lead() && ran > 0) {
    const DataParallel::Seconds& s = dp_->seconds();
    const double per = 1e3 / static_cast<double>(ran);
    std::fprintf(stderr, "tempo: gradient all-reduce over %d masters: %.2f ms/step (encode %.2f, pads %.2f, MPI %.2f "
                 "including waiting for the slowest master, decode %.2f) of %.1f ms/step\n", dp_->size(),
                 per * (s.encode + s.pads + s.network + s.decode), per * s.encode, per * s.pads, per * s.network,
                 per * s.decode, per * train_seconds_);
  }
  metrics.summary(res_, cfg_.mode);
  if (!cfg_.save.empty()) {
    save_model(cfg_, *model_, st_.master_key ? &*st_.master_key : nullptr);
    std::fprintf(stderr, "tempo: saved %s%s\n", cfg_.save.c_str(),
                 cfg_.owner_key.empty() ? "" : " (encrypted to the owner's key)");
  }
  return res_;
}

}  // namespace

TrainResult train(const TrainConfig& cfg, LinearBackend* injected) {
  TEMPO_CHECK(cfg.batch_size > 0, "--batch-size must be positive");
  TEMPO_CHECK(cfg.epochs > 0, "--epochs must be positive");
  TEMPO_CHECK(cfg.steps == -1 || cfg.steps > 0, "--steps must be positive");
  TEMPO_CHECK(cfg.checkpoint_every >= 0, "--checkpoint-every must be positive");
  const TrainConfig own = cfg.masters ? rank_config(cfg, cfg.masters->rank(), cfg.masters->size()) : cfg;
  check_outputs_writable(own);
  set_compute(own);
  TrainingJob job(own, injected);
  return job.run();
}

}  // namespace tempo
