// Whole training runs against PyTorch 1.13, through the CLI:
//   tempo train --mode tee-only --threads 1 --init <torch init> --data tensors:<batches>
//               --no-shuffle --steps S --save <final> <flags of the run>
// then every tensor of the saved weights against PyTorch's final state_dict
// (tests/ref/make_references.py: cnn SGD 20 steps, resnet18 SGD 5 steps, mlp
// Adam / AdamW 10 steps). Error measure per tensor: max|tempo − torch| /
// max|torch|. Also: the optimizer rules in isolation, and bitwise
// repeatability of tee-only runs for a given thread count.
//
// Tolerances. DESIGN.md §4 asks for 1e-4 after 20 steps. No float32
// implementation can promise that for every run, PyTorch included: a value
// that lands within rounding of a ReLU kink (or of Adam's eps, for a gradient
// near 1e-8) is decided differently by two correct programs, and the
// difference then grows with every step. For the cnn run, PyTorch float32 and
// PyTorch float64 already differ by 2.5e-2 on 7.bias after 20 steps (a conv1
// pre-activation of 0.0 vs 1.7e-8 at step 2 starts it); for resnet18 by ~0.2 on
// BatchNorm biases after 5 steps. make_references.py measures this spread per
// tensor, as the difference between PyTorch's float32 run and another correct
// execution of it (float64 for cnn and mlp, PyTorch's native convolutions
// instead of oneDNN for resnet18: float64 would take 45 s), in
// run_<run>_spread.txt. So:
//   * cnn_sgd with --threads 1 is held to the fixed 1e-4 (it meets it with
//     ~5e-7: Tempo's single-thread arithmetic happens to track PyTorch's
//     float32 run closely enough that no kink is decided differently). A
//     failure here after a change of summation order is not by itself a bug:
//     compare with the spread-based tests before concluding;
//   * the tempo-mode runs with keys only are held to §4's 1e-4; those with
//     the default blinding to 5e-2 per tensor and 2e-3 for the median over
//     tensors, with fixed keys (kBlindedTol below). Blinding changes the
//     rounding of every product, and which values land on the other side
//     of a kink depends on the keys: with the defaults (mask, row and
//     column mixing) 3 of these 5 runs flip one (7.bias off by 8.7e-3 to
//     2.3e-2, every other tensor near 1e-3 or below), 2 stay at 3e-7. A
//     failure after a change to the blinding is therefore not by itself a
//     bug either: run scripts/parity-keys.sh first;
//   * every other run passes a tensor when its error is at most
//     max(1e-4, kSpreadFactor · spread): Tempo must agree with PyTorch about as
//     well as PyTorch agrees with itself. Wrong semantics give errors far
//     beyond both; the optimizer rules are also checked alone at 1e-6, and
//     every layer (tests/layers_test.cc) at 1e-5.
#include <gtest/gtest.h>

#include "test_util.h"
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <ostream>
#include <set>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "trusted/io/safetensors.h"
#include "trusted/optim/optimizer.h"

namespace tempo {
namespace {

namespace fs = std::filesystem;

constexpr double kTol = 1e-4;
constexpr double kSpreadFactor = 4.0;

using testutil::ref_dir;

struct TempDir : testutil::TempDir {
  TempDir() : testutil::TempDir("tempo_parity") {}
};

std::string read_text(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  return s;
}

// Runs the tempo CLI; returns its exit status, output in *log.
int run_tempo(const std::string& args, const std::string& log_path, std::string* log) {
  const std::string cmd = std::string(TEMPO_BINARY) + " " + args + " > " + log_path + " 2>&1";
  const int rc = std::system(cmd.c_str());
  *log = "$ " + cmd + "\n" + read_text(log_path);
  return rc;
}

// The flags of a reference run (run_<run>.args: --model, --optimizer, --lr,
// ..., --steps) plus the common ones; `steps` > 0 replaces the run's --steps.
// `model` replaces the run's --model ({REF}: the references' directory).
std::string run_args(const std::string& run, int threads, const std::string& save, const std::string& extra = "",
                     int steps = 0, const std::string& mode = "--mode tee-only", const std::string& model = "") {
  const std::string r = ref_dir() + "/run_" + run;
  std::istringstream in(trim(read_text(r + ".args")));
  std::string flags, tok;
  while (in >> tok) {
    if (tok == "--steps" && steps > 0) {
      in >> tok;
      tok = "--steps " + std::to_string(steps);
    }
    if (tok == "--model" && !model.empty()) {
      in >> tok;
      tok = "--model " + model;
    }
    if (const auto at = tok.find("{REF}"); at != std::string::npos) tok.replace(at, 5, ref_dir());
    flags += tok + " ";
  }
  return "train " + mode + " --threads " + std::to_string(threads) + " " + flags + "--init " + r +
         "_init.safetensors --data tensors:" + r + "_data.safetensors --no-shuffle --no-progress --save " + save +
         " " + extra;
}

std::map<std::string, double> read_spread(const std::string& path) {
  std::map<std::string, double> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream s(line);
    std::string name;
    double v;
    s >> name >> v;
    out[name] = v;
  }
  return out;
}

// "loss" of every step line of a metrics file.
std::vector<double> metric_losses(const std::string& path) {
  std::vector<double> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.find("\"kind\":\"step\"") == std::string::npos) continue;
    auto p = line.find("\"loss\":");
    if (p != std::string::npos) out.push_back(std::strtod(line.c_str() + p + 7, nullptr));
  }
  return out;
}

std::vector<double> torch_losses(const std::string& run) {
  std::vector<double> out;
  std::ifstream f(ref_dir() + "/run_" + run + "_losses.txt");
  double v;
  while (f >> v) out.push_back(v);
  return out;
}

// ---- the reference runs ------------------------------------------------------------------------

struct RunCase {
  std::string name, run;
  int threads;
  bool use_spread;  // false: the fixed tolerance below
  std::string mode = "--mode tee-only";
  double tol = 1e-4;  // per tensor; DESIGN.md §4: 1e-4 tee-only and tempo with keys only
  double median_tol = 0;  // > 0: also the median over tensors (default blinding, below)
  // With use_spread: the largest spread of any tensor, not each tensor's own
  // (kVitNote: round-off amplified in one tensor reaches the others through
  // the next steps, so per-tensor spreads of one other execution understate it).
  bool spread_of_run = false;
  std::string model;  // replaces the run's --model ({REF}: the references' directory)
};

// The default blinding (mask, row and column mixing) changes the rounding
// of every product, and which values land on the other side of a ReLU kink
// then depends on the keys: a flipped kink moves one tensor by up to a few
// percent (7.bias, 2.3e-2 with key 1) while the others stay near round-off.
// So these runs are held to 5e-2 per tensor (what a flip gives; a wrong
// unblinding gives errors of order 1 everywhere) and to 2e-3 for the median
// over tensors; the keys-only runs keep §4's 1e-4.
constexpr double kBlindedTol = 5e-2, kBlindedMedianTol = 2e-3;
// Every convolution but the first offloaded (--local-below 0): the tempo
// cases are about offloaded convolutions, narrower than the default keeps.
const std::string kAllConvs = " --local-below 0";
const std::string kKeysOnly = " --mask-rank 0 --row-mix 0 --col-mix 0";
// vit has no ReLU kink (GELU is smooth), so with the default blinding it is
// held to the 5e-3 of DESIGN.md §4 per tensor.
//
// kVitNote: with AdamW, part of in_proj_bias (the keys' bias) has a gradient
// that is zero in exact arithmetic (softmax ignores a constant added to a
// row of scores), so float32 gives it pure round-off, which Adam divides by
// its own square root: those entries move by ±lr each step whatever the
// implementation. PyTorch's float32 and float64 runs differ there by ~1e-2.
constexpr double kVitBlindedTol = 5e-3;

// (For readable test names in ctest, instead of the struct's bytes.)
void PrintTo(const RunCase& c, std::ostream* os) { *os << c.run << " --threads " << c.threads; }

class ReferenceRun : public testing::TestWithParam<RunCase> {};

INSTANTIATE_TEST_SUITE_P(PyTorch, ReferenceRun,
                         testing::Values(RunCase{"cnn_sgd", "cnn_sgd", 1, false},
                                         RunCase{"cnn_sgd_threads2", "cnn_sgd", 2, false},
                                         RunCase{"resnet18_sgd", "resnet18_sgd", 1, true},
                                         RunCase{"mlp_adam", "mlp_adam", 1, true},
                                         RunCase{"mlp_adamw", "mlp_adamw", 1, true},
                                         RunCase{"mlp_adamw_threads2", "mlp_adamw", 2, true},
                                         // Tempo mode: obfuscated products on in-process workers.
                                         RunCase{"cnn_tempo_1worker", "cnn_sgd", 1, false,
                                                 "--mode tempo --workers local:1 --insecure-key-seed 1" + kAllConvs, kBlindedTol,
                                                 kBlindedMedianTol},
                                         RunCase{"cnn_tempo_1worker_noshift", "cnn_sgd", 1, false,
                                                 "--mode tempo --workers local:1 --no-key-shift --insecure-key-seed 2" + kAllConvs,
                                                 kBlindedTol, kBlindedMedianTol},
                                         RunCase{"cnn_tempo_3workers", "cnn_sgd", 1, false,
                                                 "--mode tempo --workers local:3 --insecure-key-seed 3" + kAllConvs, kBlindedTol,
                                                 kBlindedMedianTol},
                                         RunCase{"cnn_tempo_3workers_noshift", "cnn_sgd", 1, false,
                                                 "--mode tempo --workers local:3 --no-key-shift --insecure-key-seed 4" + kAllConvs,
                                                 kBlindedTol, kBlindedMedianTol},
                                         RunCase{"cnn_tempo_channel", "cnn_sgd", 1, false,
                                                 "--mode tempo --workers local:2 --conv-mode channel --channel-from 1 --insecure-key-seed 5" + kAllConvs,
                                                 kBlindedTol, kBlindedMedianTol},
                                         // The default placement: cnn's convolutions (32 and 64
                                         // channels) stay in the master, its fc1 is offloaded.
                                         RunCase{"cnn_tempo_default_placement", "cnn_sgd", 1, false,
                                                 "--mode tempo --workers local:1 --insecure-key-seed 10", kBlindedTol,
                                                 kBlindedMedianTol},
                                         // Keys only: §4's 1e-4.
                                         RunCase{"cnn_tempo_keys_only", "cnn_sgd", 1, false,
                                                 "--mode tempo --workers local:1 --insecure-key-seed 1" + kAllConvs + kKeysOnly},
                                         RunCase{"cnn_tempo_keys_only_3workers_noshift", "cnn_sgd", 1, false,
                                                 "--mode tempo --workers local:3 --no-key-shift --insecure-key-seed 4" + kAllConvs +
                                                     kKeysOnly},
                                         // vit on Fashion-MNIST: SGD at the fixed 1e-4 (PyTorch's own
                                         // float32/float64 spread is 2e-6), AdamW against the spread
                                         // (1e-2 on in_proj_bias: see kVitNote).
                                         RunCase{"vit_sgd", "vit_sgd", 1, false},
                                         RunCase{"vit_sgd_threads2", "vit_sgd", 2, false},
                                         RunCase{"vit_adamw", "vit_adamw", 2, true, "--mode tee-only", kTol, 1e-4,
                                                 true},
                                         RunCase{"vit_tempo_keys_only", "vit_sgd", 2, false,
                                                 "--mode tempo --workers local:2 --insecure-key-seed 6" + kKeysOnly},
                                         RunCase{"vit_tempo", "vit_sgd", 2, false,
                                                 "--mode tempo --workers local:2 --insecure-key-seed 7", kVitBlindedTol,
                                                 kBlindedMedianTol},
                                         // Models read from ONNX (--model FILE.onnx). odd_resnet is no zoo
                                         // model (tests/py/onnx_models.py: residual blocks with BatchNorm,
                                         // odd widths, a strided convolution, average pooling, a Linear
                                         // head, GELU); it is smooth, so §4's 1e-4 holds without luck.
                                         RunCase{"onnx_odd_resnet", "odd_resnet_sgd", 1, false},
                                         RunCase{"onnx_odd_resnet_threads2", "odd_resnet_sgd", 2, false},
                                         RunCase{"onnx_odd_resnet_tempo_keys_only", "odd_resnet_sgd", 2, false,
                                                 "--mode tempo --workers local:2 --insecure-key-seed 8" + kAllConvs + kKeysOnly},
                                         RunCase{"onnx_odd_resnet_tempo", "odd_resnet_sgd", 2, false,
                                                 "--mode tempo --workers local:2 --insecure-key-seed 9" + kAllConvs, kVitBlindedTol,
                                                 kBlindedMedianTol},
                                         // The zoo's models exported by PyTorch train as --model NAME
                                         // does (the same tolerances as those runs).
                                         RunCase{"onnx_cnn", "cnn_sgd", 1, false, "--mode tee-only", kTol, 0, false,
                                                 "{REF}/run_cnn_sgd.onnx"},
                                         RunCase{"onnx_cnn_tempo_keys_only", "cnn_sgd", 1, false,
                                                 "--mode tempo --workers local:1 --insecure-key-seed 1" + kAllConvs + kKeysOnly, kTol,
                                                 0, false, "{REF}/run_cnn_sgd.onnx"},
                                         RunCase{"onnx_resnet18", "resnet18_sgd", 1, true, "--mode tee-only", kTol, 0,
                                                 false, "{REF}/run_resnet18_sgd.onnx"},
                                         // vit's export: attention as Shape arithmetic, Reshape, Transpose
                                         // and MatMul of activations (batched products in tempo mode),
                                         // LayerNorm as ReduceMean, Pow and Sqrt.
                                         RunCase{"onnx_vit", "vit_sgd", 2, false, "--mode tee-only", kTol, 0, false,
                                                 "{REF}/run_vit_sgd.onnx"},
                                         RunCase{"onnx_vit_tempo_keys_only", "vit_sgd", 2, false,
                                                 "--mode tempo --workers local:2 --insecure-key-seed 6" + kKeysOnly, kTol,
                                                 0, false, "{REF}/run_vit_sgd.onnx"},
                                         RunCase{"onnx_vit_tempo", "vit_sgd", 2, false,
                                                 "--mode tempo --workers local:2 --insecure-key-seed 7", kVitBlindedTol,
                                                 kBlindedMedianTol, false, "{REF}/run_vit_sgd.onnx"}),
                         [](const testing::TestParamInfo<RunCase>& i) { return i.param.name; });

TEST_P(ReferenceRun, FinalWeightsMatchPyTorch) {
  const RunCase rc = GetParam();
  REF_FILE_OR_FAIL(torch_path, "run_" + rc.run + "_final.safetensors");
  TempDir dir;
  const std::string saved = dir / "final.safetensors", metrics = dir / "metrics.jsonl";
  std::string log;
  ASSERT_EQ(run_tempo(run_args(rc.run, rc.threads, saved, "--metrics " + metrics, 0, rc.mode, rc.model), dir / "log",
                      &log),
            0)
      << log;
  if (rc.mode.find("--mode tempo") != std::string::npos) {  // honest workers: every result accepted
    EXPECT_EQ(log.find("rejected"), std::string::npos) << log;
    EXPECT_EQ(log.find("no usable worker left"), std::string::npos) << log;
  }
  const TensorMap got = read_safetensors(saved);
  const TensorMap want = read_safetensors(torch_path);
  std::map<std::string, double> spread;
  if (rc.use_spread) {
    spread = read_spread(ref_dir() + "/run_" + rc.run + "_spread.txt");
    ASSERT_FALSE(spread.empty()) << "run_" << rc.run << "_spread.txt is missing or empty";
    if (rc.spread_of_run) {
      double mx = 0;
      for (const auto& [name, v] : spread) mx = std::max(mx, v);
      for (auto& [name, v] : spread) v = mx;
    }
  }

  // Step losses: the first is a forward pass from identical weights.
  const auto tl = torch_losses(rc.run), ml = metric_losses(metrics);
  ASSERT_EQ(ml.size(), tl.size()) << "steps run";
  std::printf("  %s step losses (tempo / torch):", rc.name.c_str());
  for (size_t i = 0; i < tl.size(); ++i) std::printf(" %.7g/%.7g", ml[i], tl[i]);
  std::printf("\n");
  EXPECT_NEAR(ml[0], tl[0], 1e-5 * std::fabs(tl[0])) << "loss of step 1";

  ASSERT_EQ(got.size(), want.size()) << "number of tensors";
  double worst = 0, worst_spread = 0;
  std::string worst_name;
  std::vector<double> errors;
  std::printf("  %-44s %12s %12s %12s %10s\n", "tensor", "max|torch|", "max|diff|", "rel err", "tolerance");
  for (const auto& [name, w] : want) {
    SCOPED_TRACE(name);
    auto it = got.find(name);
    ASSERT_NE(it, got.end()) << "tempo did not save " << name;
    const NamedTensor& g = it->second;
    ASSERT_EQ(g.dtype, w.dtype);
    ASSERT_EQ(g.shape, w.shape);
    if (w.dtype == DType::I64) {  // num_batches_tracked: exact
      EXPECT_EQ(g.i64, w.i64);
      std::printf("  %-44s %12lld %12lld %12s\n", name.c_str(), static_cast<long long>(w.i64.at(0)),
                  static_cast<long long>(g.i64.at(0) - w.i64.at(0)), "exact");
      continue;
    }
    double num = 0, den = 0;
    for (size_t i = 0; i < w.f32.size(); ++i) {
      num = std::max(num, std::fabs(static_cast<double>(g.f32[i]) - w.f32[i]));
      den = std::max(den, std::fabs(static_cast<double>(w.f32[i])));
    }
    const double rel = den > 0 ? num / den : num;
    double tol = rc.tol;
    if (rc.use_spread) {
      ASSERT_TRUE(spread.count(name)) << "no spread for " << name;
      tol = std::max(kTol, kSpreadFactor * spread[name]);
    }
    std::printf("  %-44s %12.5g %12.5g %12.5g %10.3g\n", name.c_str(), den, num, rel, tol);
    EXPECT_LE(rel, tol) << name << ": max|tempo - torch| = " << num << ", max|torch| = " << den;
    errors.push_back(rel);
    if (rel > worst) {
      worst = rel;
      worst_name = name;
    }
    if (rc.use_spread) worst_spread = std::max(worst_spread, spread[name]);
  }
  std::sort(errors.begin(), errors.end());
  const double median = errors.empty() ? 0 : errors[errors.size() / 2];
  std::printf("  %s (--threads %d): max relative error %.3g (%s), median %.3g over %zu float tensors",
              rc.name.c_str(), rc.threads, worst,
              worst_name.c_str(), median, errors.size());
  if (rc.use_spread) std::printf("; PyTorch's own spread: max %.3g", worst_spread);
  std::printf("\n");
  if (rc.median_tol > 0) EXPECT_LE(median, rc.median_tol) << "median over tensors";
  RecordProperty("max_rel_error", std::to_string(worst));
  RecordProperty("max_rel_error_tensor", worst_name);
  RecordProperty("median_rel_error", std::to_string(median));
  if (rc.use_spread) RecordProperty("torch_spread_max", std::to_string(worst_spread));
}

// ---- optimizer rules in isolation ----------------------------------------------------------------

double f64_from_bits(int64_t bits) {
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

TEST(OptimizerRules, MatchTorchOptimOnGivenGradients) {
  REF_FILE_OR_FAIL(path, "layers.safetensors");
  const TensorMap refs = read_safetensors(path);
  std::set<std::string> names;
  for (const auto& [k, v] : refs)
    if (k.rfind("optim/", 0) == 0) names.insert(k.substr(6, k.find('/', 6) - 6));
  ASSERT_GE(names.size(), 6u);
  for (const auto& c : names) {
    SCOPED_TRACE("optim/" + c);
    auto f = [&](const std::string& field) -> const NamedTensor& { return refs.at("optim/" + c + "/" + field); };
    const auto& hyper = f("hyper").i64;
    OptimConfig cfg;
    cfg.kind = c.substr(0, c.find('_'));
    cfg.lr = f64_from_bits(hyper.at(0));
    cfg.momentum = f64_from_bits(hyper.at(1));
    cfg.weight_decay = f64_from_bits(hyper.at(2));
    const NamedTensor &a0 = f("a0"), &b0 = f("b0"), &ga = f("ga"), &gb = f("gb"), &ha = f("a"), &hb = f("b");
    Tensor a(a0.shape), b(b0.shape), da(a0.shape), db(b0.shape);
    std::copy(a0.f32.begin(), a0.f32.end(), a.data());
    std::copy(b0.f32.begin(), b0.f32.end(), b.data());
    std::vector<StateEntry> params = {{"a", &a, &da, nullptr}, {"b", &b, &db, nullptr}};
    auto opt = make_optimizer(cfg, params);
    const int64_t steps = ga.shape[0], na = a.numel(), nb = b.numel();
    double worst = 0;
    for (int64_t s = 0; s < steps; ++s) {
      std::copy(ga.f32.begin() + s * na, ga.f32.begin() + (s + 1) * na, da.data());
      std::copy(gb.f32.begin() + s * nb, gb.f32.begin() + (s + 1) * nb, db.data());
      opt->step(cfg.lr);
      for (auto [t, h, n] : {std::tuple{&a, &ha, na}, std::tuple{&b, &hb, nb}}) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < n; ++i) {
          const double want = h->f32[static_cast<size_t>(s * n + i)];
          num = std::max(num, std::fabs((*t)[i] - want));
          den = std::max(den, std::fabs(want));
        }
        EXPECT_LE(num / den, 1e-6) << "step " << s + 1;
        worst = std::max(worst, num / den);
      }
    }
    EXPECT_EQ(opt->steps(), steps);
    std::printf("  optim/%-32s %lld steps, max relative error %.3g\n", c.c_str(), static_cast<long long>(steps),
                worst);
  }
}

// ---- bitwise repeatability ---------------------------------------------------------------------

// The same tee-only run twice gives byte-identical weights.
void expect_repeatable(const std::string& run, int threads, int steps = 0) {
  TempDir dir;
  std::string log;
  const std::string a = dir / "a.safetensors", b = dir / "b.safetensors";
  ASSERT_EQ(run_tempo(run_args(run, threads, a, "", steps), dir / "log", &log), 0) << log;
  ASSERT_EQ(run_tempo(run_args(run, threads, b, "", steps), dir / "log", &log), 0) << log;
  const std::string ta = read_text(a), tb = read_text(b);
  ASSERT_FALSE(ta.empty());
  EXPECT_TRUE(ta == tb) << run << " with --threads " << threads << ": the two saved files differ";
  std::printf("  %s --threads %d (%s steps): %zu bytes, identical: %s\n", run.c_str(), threads,
              steps > 0 ? std::to_string(steps).c_str() : "all", ta.size(),
              ta == tb ? "yes" : "NO");
}

TEST(Repeatability, CnnTeeOnlyOneThreadBitwise) {
  REF_FILE_OR_FAIL(p, "run_cnn_sgd.args");
  expect_repeatable("cnn_sgd", 1);
}

TEST(Repeatability, CnnTeeOnlyTwoThreadsBitwise) {
  REF_FILE_OR_FAIL(p, "run_cnn_sgd.args");
  expect_repeatable("cnn_sgd", 2);
}

TEST(Repeatability, Resnet18TeeOnlyTwoThreadsBitwise) {
  REF_FILE_OR_FAIL(p, "run_resnet18_sgd.args");
  expect_repeatable("resnet18_sgd", 2, 2);
}

TEST(Repeatability, MlpAdamwTeeOnlyTwoThreadsBitwise) {
  REF_FILE_OR_FAIL(p, "run_mlp_adamw.args");
  expect_repeatable("mlp_adamw", 2);
}

}  // namespace
}  // namespace tempo
