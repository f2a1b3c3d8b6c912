#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "trusted/trainer.h"

#ifndef TEMPO_SOURCE_DIR
#define TEMPO_SOURCE_DIR "."
#endif

#ifndef TEMPO_VERSION
#define TEMPO_VERSION "0.1.0"
#endif

namespace tempo::cli {

// Flags shared by train and eval (eval takes the model and data flags only).
void add_train_flags(CLI::App& app, TrainConfig& cfg, bool training);
// --conv-algo winograd|direct into `kernels` (train, predict, eval, bench).
void add_conv_algo_option(CLI::App& app, ConvKernels& kernels, const std::string& help);
int run_train(const TrainConfig& cfg);
int run_eval(const TrainConfig& cfg);

struct PredictConfig {
  TrainConfig model;          // --model, --data, --mode, --workers, --init, ...
  std::string output;         // .safetensors (probabilities, predictions) or .csv
  std::string split = "test"; // test | train
};
void add_predict_flags(CLI::App& app, PredictConfig& cfg);
int run_predict(const PredictConfig& cfg);

// `tempo export`: a model and its weights as an ONNX file.
struct ExportConfig {
  std::string model = "cnn";
  std::string init;    // weights (.safetensors, PyTorch names); none: the model's initialisation
  std::string output;  // .onnx
  uint64_t seed = 0;
};
void add_export_flags(CLI::App& app, ExportConfig& cfg);
int run_export(const ExportConfig& cfg);

struct BenchConfig {
  std::vector<std::string> models = {"cnn:64", "resnet18:32"};
  std::vector<int> threads = {1, 2};
  int steps = 0;  // 0: per-model default
  bool torch = true;
  std::string python = "/usr/bin/python3";
  std::string suite = "torch";
  std::string workers = "local:1";
  std::vector<std::string> configs;  // modes/hardening/remote: only these rows (and tee-only); empty: all
  int worker_threads = 1;
  int64_t local_below = kDefaultLocalBelow;  // as tempo train's, for the rows that do not set their own
  ConvKernels conv_kernels = ConvKernels::kBest;  // the master's convolutions (--conv-algo), where a row does not set them
  std::string backend;           // local workers' backend; empty: cuda for the gpu suite, cpu for the others
  std::string table;             // gpu suite: markdown copy of the table
  std::string source_dir = TEMPO_SOURCE_DIR;
};
void add_bench_flags(CLI::App& app, BenchConfig& cfg);
int run_bench(const BenchConfig& cfg);

struct PrivacyConfig {
  std::string suite = "integrity";
  int64_t samples = 4000;
  std::string model = "cnn", data = "fashion-mnist";
  int64_t products = 100000;
  int64_t trials = 200;
  int64_t pair_trials = 3000;
  double tau = 16.0;
  uint64_t seed = 1;
  int threads = 0;
  std::string table;
  std::vector<int64_t> budgets = {100, 300, 1000, 3000, 10000};  // stealing: queries per substitute
  std::string substitute;  // stealing: the attacker's model ("": the victim's)
  std::vector<int64_t> at_steps;  // mi: measure along one run at these steps instead
  std::vector<int> mask_ranks = {0, 1, 8, 32, 64};  // inputs: the zero-pattern table's columns (0: no mask)
  int64_t weight_steps = 938, weight_window = 10;   // weights: training steps; the last ones attacked
  int col_mix = OffloadConfig{}.col_mix;  // mi, labels, ...: the measured run's --col-mix
  int row_mix = OffloadConfig{}.row_mix;  // attention: the mixed blocks' --row-mix
  int64_t ica_groups = 400;  // ica: row-mixing groups attacked per product
};
void add_privacy_flags(CLI::App& app, PrivacyConfig& cfg);
// CLI11 check of a mixing group size (--row-mix, --col-mix): 0 (off) or 2 to 32.
std::string check_mixing_block(const std::string& v);
int run_privacy(const PrivacyConfig& cfg);

struct OwnerConfig {
  std::string dir = "owner";  // keygen
  std::string data = "fashion-mnist", model = "cnn";  // encrypt-data
  uint64_t seed = 0;
  std::string owner_key, data_key, in, out;
  std::string report, expect_config, expect_binary;  // release
  bool allow_simulated = false;
};
// `tempo owner SUB`: the data owner's tools (keygen, encrypt-data, release,
// decrypt-model). Registers the subcommands on `owner`.
void add_owner_commands(CLI::App& owner, OwnerConfig& cfg);
int run_owner(const CLI::App& owner, const OwnerConfig& cfg);

struct WorkerConfig {
  std::string listen = "127.0.0.1:7070";
  std::string backend = "cpu";
  int threads = 0;
  int64_t quota_mib = 8192;
  int idle_timeout_s = 300;
  int max_sessions = 16;
  std::string token_file, tls_cert, tls_key, tls_client_ca, port_file, record_dir;
  double lie_rate = 0;
  std::string lie_kind = "entry";
  uint64_t lie_seed = 1;
  bool quiet = false;
};
void add_worker_flags(CLI::App& app, WorkerConfig& cfg);
int run_worker(const WorkerConfig& cfg);

}  // namespace tempo::cli
