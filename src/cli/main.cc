// `tempo`: the one binary. Subcommands: train, eval, predict, export, worker, privacy, owner, bench.
// Built with TEMPO_MASTER_ONLY it is `tempo-master`, the master-only build:
// train, eval, predict, export and owner, with no worker, evaluation or CUDA code.
#include <CLI/CLI.hpp>

#include <malloc.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <unistd.h>

#include "cli/commands.h"
#include "common/error.h"
#include "common/parallel.h"
#include "trusted/trainer.h"
#ifndef TEMPO_MASTER_ONLY
#include "eval/wiring.h"
#endif

namespace {

void on_sigint(int) {
  if (tempo::g_stop_requested.exchange(true)) std::_Exit(130);  // second Ctrl-C: leave now
  const char msg[] = "\ntempo: stopping after this step (Ctrl-C again to abort)\n";
  ssize_t r = write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)r;
}

}  // namespace

int main(int argc, char** argv) {
  // Tensors of many MiB come and go every step (gRPC messages, results):
  // keep freed memory in the heap for reuse instead of unmapping it, since
  // every freshly mapped page costs a fault (dear in virtual machines).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{
      "Tempo: confidential deep-learning training. A trusted master keeps data, weights and\n"
      "keys; untrusted workers see only blinded matrix products, each result is checked.\n"
#ifdef TEMPO_MASTER_ONLY
      "This is tempo-master, the master-only build (what an enclave runs): no workers of its\n"
      "own (--workers HOST:PORT,... of `tempo worker` processes), no evaluation suites.\n"
#endif
  };
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("tempo ") + TEMPO_VERSION);

  tempo::TrainConfig train_cfg;
  CLI::App* train = app.add_subcommand("train", "Train a model (then evaluate it on the test split)");
  tempo::cli::add_train_flags(*train, train_cfg, true);

  tempo::TrainConfig eval_cfg;
  CLI::App* eval = app.add_subcommand("eval", "Evaluate a saved model on a data set's test split");
  tempo::cli::add_train_flags(*eval, eval_cfg, false);

  tempo::cli::PredictConfig predict_cfg;
  CLI::App* predict = app.add_subcommand(
      "predict", "Write class probabilities of a saved model for a data set (secure inference)");
  tempo::cli::add_predict_flags(*predict, predict_cfg);

#ifndef TEMPO_MASTER_ONLY
  tempo::cli::WorkerConfig worker_cfg;
  CLI::App* worker = app.add_subcommand(
      "worker", "Serve as an untrusted worker: multiply the blinded matrices masters send (gRPC)");
  tempo::cli::add_worker_flags(*worker, worker_cfg);

  tempo::cli::PrivacyConfig privacy_cfg;
  CLI::App* privacy = app.add_subcommand(
      "privacy",
      "Measure what the protection achieves, attack by attack (--suite integrity | mi | labels | stealing | inputs "
      "| weights)");
  tempo::cli::add_privacy_flags(*privacy, privacy_cfg);
#endif

  tempo::cli::ExportConfig export_cfg;
  CLI::App* export_cmd = app.add_subcommand(
      "export", "Write a model and its weights as an ONNX file (for any ONNX runtime, or to train again)");
  tempo::cli::add_export_flags(*export_cmd, export_cfg);

  tempo::cli::OwnerConfig owner_cfg;
  CLI::App* owner = app.add_subcommand(
      "owner", "The data owner's tools: keys, encrypted data, key release to an attested master, model decryption");
  tempo::cli::add_owner_commands(*owner, owner_cfg);

#ifndef TEMPO_MASTER_ONLY
  tempo::cli::BenchConfig bench_cfg;
  CLI::App* bench = app.add_subcommand(
      "bench", "Time training steps: tee-only against PyTorch, tempo's phases, the hardenings' cost, remote and GPU "
      "workers (--suite)");
  tempo::cli::add_bench_flags(*bench, bench_cfg);
  tempo::install_local_workers();
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  std::signal(SIGINT, on_sigint);
  try {
    if (*train) return tempo::cli::run_train(train_cfg);
    if (*eval) return tempo::cli::run_eval(eval_cfg);
    if (*predict) return tempo::cli::run_predict(predict_cfg);
#ifndef TEMPO_MASTER_ONLY
    if (*bench) return tempo::cli::run_bench(bench_cfg);
    if (*worker) return tempo::cli::run_worker(worker_cfg);
    if (*privacy) return tempo::cli::run_privacy(privacy_cfg);
#endif
    if (*owner) return tempo::cli::run_owner(*owner, owner_cfg);
    if (*export_cmd) return tempo::cli::run_export(export_cfg);
  } catch (const tempo::Error& e) {
    std::fprintf(stderr, "tempo: error: %s\n", e.what());
    return 1;
  } catch (const tempo::WorkerError& e) {
    std::fprintf(stderr, "tempo: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "tempo: error: out of memory (try a smaller --batch-size)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tempo: internal error: %s\n", e.what());
    return 2;
  }
  return 0;
}
