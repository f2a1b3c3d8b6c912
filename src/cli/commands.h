#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

#include "trusted/trainer.h"

#ifndef TEMPO_VERSION
#define TEMPO_VERSION "0.1.0"
#endif

namespace tempo::cli {

// Flags shared by train and eval (eval takes the model and data flags only).
void add_train_flags(CLI::App& app, TrainConfig& cfg, bool training);
int run_train(const TrainConfig& cfg);
int run_eval(const TrainConfig& cfg);

struct PredictConfig {
  TrainConfig model;          // --model, --data, --mode, --workers, --init, ...
  std::string output;         // .safetensors (probabilities, predictions) or .csv
  std::string split = "test"; // test | train
};
void add_predict_flags(CLI::App& app, PredictConfig& cfg);
int run_predict(const PredictConfig& cfg);

struct BenchConfig {
  std::vector<std::string> models = {"cnn:64", "resnet18:32"};
  std::vector<int> threads = {1, 2};
  int steps = 0;  // 0: per-model default
  bool torch = true;
  std::string python = "/usr/bin/python3";
  std::string suite = "torch";
  std::string workers = "local:1";
};
void add_bench_flags(CLI::App& app, BenchConfig& cfg);
int run_bench(const BenchConfig& cfg);

}  // namespace tempo::cli
