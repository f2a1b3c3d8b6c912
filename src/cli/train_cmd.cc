#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>

#include "cli/commands.h"
#include "common/error.h"
#include "common/parallel.h"
#include "trusted/confidential/confidential.h"
#include "trusted/dist/collective.h"
#include "trusted/io/file_util.h"
#include "trusted/io/safetensors.h"
#include "trusted/onnx_export.h"

#include <fstream>

namespace tempo::cli {

std::string check_mixing_block(const std::string& v) {
  try {
    const int b = std::stoi(v);
    return b == 0 || (b >= 2 && b <= 32) ? std::string() : std::string("must be 0 (off) or 2 to 32");
  } catch (const std::exception&) {
    return std::string("must be an integer");
  }
}

void add_conv_algo_option(CLI::App& app, ConvKernels& kernels, const std::string& help) {
  app.add_option_function<std::string>(
         "--conv-algo", [&kernels](const std::string& s) { kernels = parse_conv_kernels(s); }, help)
      ->default_str(conv_kernels_flag(ConvKernels::kBest))
      ->check(CLI::IsMember({conv_kernels_flag(ConvKernels::kBest), conv_kernels_flag(ConvKernels::kDirect)}));
}

void add_train_flags(CLI::App& app, TrainConfig& c, bool training) {
  std::string models;
  for (const auto& n : model_names()) models += (models.empty() ? "" : " | ") + n;
  app.add_option("--model", c.model,
                 "Model: " + models +
                     " | FILE.onnx (a graph exported from PyTorch with torch.onnx.export(..., "
                     "training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False); its initializers are the "
                     "initial weights)")
      ->capture_default_str();
  app.add_option("--data", c.data,
                 "Data: fashion-mnist[:DIR] | cifar10:DIR | tensors:FILE | synthetic[:N]")
      ->capture_default_str();
  app.add_option("--mode", c.mode,
                 "tempo (obfuscated, verified) | offload (insecure ablation) | tee-only (all in the master)")
      ->capture_default_str();
  app.add_option("--workers", c.workers,
                 "local:N (in-process) and/or HOST:PORT of `tempo worker` processes, comma-separated; each "
                 "product is split across them by rows, or by columns when it has fewer rows than outputs. Under "
                 "mpirun (several masters): one list per master separated by '|' (rank 0's first), or one list "
                 "that every master uses")
      ->capture_default_str();
  app.add_option("--token-file", c.remote.token_file,
                 "File holding the workers' access token (see `tempo worker --token-file`)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-ca", c.remote.tls_ca, "Use TLS to the workers; trust this CA (PEM)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-cert", c.remote.tls_cert, "Client certificate for mutual TLS (PEM)")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", c.remote.tls_key, "Client key for mutual TLS (PEM)")->check(CLI::ExistingFile);
  app.add_option("--local-backend", c.remote.local_backend, "Compute backend of local:N workers: cpu | cuda")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_flag("--tf32", c.remote.tf32,
               "Let workers use TF32 tensor cores for products (faster on GPUs; ~1e-3 relative error per "
               "product). Only with --verify-rounds 0: TF32's rounding would hide lies of percents from the check");
  app.add_option("--worker-timeout", c.remote.call_timeout_s,
                 "Seconds a remote worker may take for one call (plus 1 s per 100 MB) before it counts as failed")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--threads", c.threads, "Threads of the trusted side (0: all cores)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  add_conv_algo_option(
      app, c.conv_kernels,
      "Kernels of the convolutions the master computes (tee-only mode, and the layers it keeps): "
      "winograd: oneDNN's Winograd kernels for 3x3 stride-1 convolutions of 32 channels or more on maps of "
      "8x8 or more, where it has them (AVX-512 CPUs), about twice as fast, with a few times the round-off; "
      "direct: oneDNN's direct kernels everywhere, the ones PyTorch's CPU path runs");
  app.add_option("--seed", c.seed, "Seed of initialisation, shuffling, augmentation and synthetic data")
      ->capture_default_str();
  app.add_option("--batch-size", c.batch_size, training ? "Samples per step" : "Samples per batch")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--init", c.init, "Load weights from this safetensors file (PyTorch state_dict names)")
      ->check(CLI::ExistingFile);
  app.add_flag("--offload-first", c.offload_first, "Offload the first layer too (measurement only: it leaks)");
  app.add_flag("--offload-last", c.offload_last, "Offload the last layer too (measurement only: it leaks)");
  app.add_option("--local-below", c.local_below,
                 "Keep in the master every convolution with fewer output channels than this: blinding a narrow "
                 "layer costs the master more than computing it (resnet18's 64- to 256-channel layers: "
                 "docs/BENCHMARKS.md); with a mask, also every convolution of at most 2·--mask-rank inputs per "
                 "output (in_channels·kernel², a full-rank mask); 0: offload every convolution but the first")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--conv-mode", c.conv_mode,
                 "im2col: convolutions as obfuscated products; channel: faster, weaker (spatial layout "
                 "stays visible), from --channel-from on")
      ->capture_default_str()
      ->check(CLI::IsMember({"im2col", "channel"}));
  app.add_option("--channel-from", c.channel_from,
                 "Channel mode from this offloaded convolution on (1-based; the first layer never)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--key-scale", c.offload.key_scale, "Key scales are log-uniform in [1/σ, σ]")
      ->capture_default_str();
  app.add_flag("--no-key-shift", [&c](int64_t) { c.offload.key_shift = false; },
               "Re-encrypt both operands of backward products with fresh keys (with several workers, a "
               "layer's input and weight gradients then run on two workers at once)");
  app.add_option("--mask-rank", c.offload.mask_rank,
                 "tempo mode: add a fresh secret rank-r mask to the input operand of every offloaded product, so "
                 "that its zeros (post-ReLU) do not reach a worker; the master removes it with thin products "
                 "(0: none, about 20% faster for cnn, but the zeros then leak the feature maps' layout: "
                 "docs/SECURITY.md; at most 512)")
      ->capture_default_str()
      ->check(CLI::Range(0, 512));
  app.add_option_function<std::string>(
         "--mask-kind", [&c](const std::string& s) { c.offload.mask_kind = parse_mask_kind(s); },
         "tempo mode: how the mask is drawn: dense (U·Vᵀ, r multiply-adds per entry) or kron (V's rows Kronecker "
         "products on a secret grid, about √r per entry, but weaker: an oracle FastICA attack separates it better; "
         "docs/SECURITY.md)")
      ->default_str(mask_kind_name(OffloadConfig{}.mask_kind))
      ->check(CLI::IsMember({"dense", "kron"}));
  app.add_option("--row-mix", c.offload.row_mix,
                 "tempo mode: before the mask, mix the rows of the input operand (and of the output gradient) in "
                 "secret groups of B by fresh random orthogonal matrices, so that repeated rows (image background) "
                 "do not reveal the mask's row space and the gradient's zeros do not reach a worker; 0: off "
                 "(docs/SECURITY.md)")
      ->capture_default_str()
      ->check(check_mixing_block);
  app.add_option("--col-mix", c.offload.col_mix,
                 "tempo mode: mix the inner dimension of both operands of every offloaded product (the weight's "
                 "columns, the input's) in secret groups of B by fresh random orthogonal matrices, so that the "
                 "weights' magnitudes and column signs do not reach a worker; 0: off (its cost and effect: "
                 "docs/SECURITY.md)")
      ->capture_default_str()
      ->check(check_mixing_block);
  app.add_option("--verify-rounds", c.offload.verify.rounds, "Freivalds rounds per product (0: none)")
      ->capture_default_str();
  app.add_option("--verify-rate", c.offload.verify.rate, "Fraction of products checked")
      ->capture_default_str();
  app.add_option("--verify-tolerance", c.offload.verify.tolerance, "τ of the Freivalds bound")
      ->capture_default_str();
  app.add_option("--quarantine-after", c.offload.quarantine_after, "Drop a worker after this many failures")
      ->capture_default_str();
  app.add_option("--insecure-key-seed", c.insecure_key_seed,
                 "INSECURE, tests only: derive the keys from this public number so that a run repeats exactly")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--no-fallback", [&c](int64_t) { c.offload.fallback = false; },
               "Stop (instead of continuing in tee-only mode) when no worker is left");
  if (!training) return;
  app.add_option("--epochs", c.epochs, "Epochs (training stops at whichever of epochs/steps ends first)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--steps", c.steps, "Stop after this many steps in all")->check(CLI::PositiveNumber);
  app.add_option("--optimizer", c.optim.kind, "sgd | adam | adamw")
      ->capture_default_str()
      ->check(CLI::IsMember({"sgd", "adam", "adamw"}));
  app.add_option("--lr", c.optim.lr, "Learning rate")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--momentum", c.optim.momentum, "SGD momentum")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--weight-decay", c.optim.weight_decay, "L2 weight decay (decoupled for adamw)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--lr-schedule", c.optim.schedule, "constant | step | cosine (stepped per epoch)")
      ->capture_default_str()
      ->check(CLI::IsMember({"constant", "step", "cosine"}));
  app.add_option("--lr-step-size", c.optim.step_size, "step schedule: epochs between decays")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--lr-gamma", c.optim.gamma, "step schedule: decay factor")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("--no-shuffle", [&c](int64_t) { c.shuffle = false; }, "Take batches in file order");
  app.add_option("--save", c.save,
                 "Write the trained weights to this safetensors file (atomically); under mpirun rank 0 writes it, "
                 "or every master its own if the path has {rank}");
  app.add_option("--metrics", c.metrics, "Write JSON-lines metrics (per step and per epoch) to this file");
  app.add_flag("--no-progress", [&c](int64_t) { c.progress = false; }, "Print no progress");
  // Confidential I/O (docs/CONFIDENTIAL.md).
  app.add_option("--owner-key", c.owner_key,
                 "The data owner's public key (owner.pub): --save is written encrypted to it, and key releases "
                 "for --data encrypted:FILE must come from its owner")
      ->check(CLI::ExistingFile);
  app.add_option("--attest-dir", c.attest_dir,
                 "With --data encrypted:FILE: write the attestation report here and wait for the owner's key "
                 "release (data-key.wrapped) here (under mpirun: one per master, made if missing)")
      ->check([](const std::string& d) {
        // Under mpirun the directory is per master ({rank}, or .rankR) and made then.
        if (d.find("{rank}") != std::string::npos || launched_ranks() > 1) return std::string();
        return CLI::ExistingDirectory(d);
      });
  app.add_option("--attest-timeout", c.attest_timeout_s, "Seconds to wait for the owner's key release")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--checkpoint-every", c.checkpoint_every,
                 "Write a sealed checkpoint every N steps (and when stopped with Ctrl-C)")
      ->check(CLI::PositiveNumber);
  app.add_option("--checkpoint", c.checkpoint, "Sealed checkpoint file (replaced atomically each time)")
      ->capture_default_str();
  app.add_option("--sealing-key", c.sealing_key,
                 "Key file that seals checkpoints (SIMULATED sealing: made on first use; on SGX the enclave's "
                 "sealing key takes its place)");
  app.add_option("--resume", c.resume,
                 "Continue from this sealed checkpoint, exactly as the interrupted run would have (same flags; "
                 "needs its --sealing-key). Under mpirun, --checkpoint, --resume, --sealing-key and --attest-dir "
                 "are per master: {rank} in the path is replaced by the rank, or .rankR is appended");
  app.add_flag("--print-config", c.print_config,
               "Print the training configuration the attestation report measures (for `tempo owner release "
               "--expect-config`) and exit");
}

int run_train(const TrainConfig& given) {
  if (given.print_config) {
    std::printf("%s\n", run_config(given).dump(2).c_str());
    return 0;
  }
  // Started by mpirun with several ranks: one of several masters (P12).
  TrainConfig cfg = given;
  if (launched_ranks() > 1) cfg.masters = &mpi_world();
  // The master holds plaintext data, weights and keys.
  protect_process();
  TrainResult r;
  if (!cfg.masters) {
    r = train(cfg);
  } else {
    // A master that cannot go on ends the job: the others would wait for it
    // at the next exchange forever.
    try {
      r = train(cfg);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tempo: error on master %d of %d: %s\ntempo: ending the job on every master%s\n",
                   cfg.masters->rank(), cfg.masters->size(), e.what(),
                   cfg.checkpoint_every > 0 ? "; continue from the masters' checkpoints with --resume" : "");
      std::fflush(stderr);
      cfg.masters->abort();
    }
    if (cfg.masters->rank() != 0) return r.interrupted ? 130 : 0;  // rank 0 reports
  }
  const int64_t ran = r.steps - r.resumed_after;
  std::printf("steps %lld%s, %.1f s training (%.1f ms/step), peak memory %.0f MiB%s\n",
              static_cast<long long>(r.steps),
              r.resumed_after ? (" (" + std::to_string(ran) + " after resuming)").c_str() : "", r.seconds,
              ran ? 1e3 * r.seconds / static_cast<double>(ran) : 0.0,
              static_cast<double>(r.peak_rss_bytes) / (1 << 20),
              cfg.mode == "tee-only" || cfg.workers.rfind("local", 0) != 0 ? "" : " (in-process workers included)");
  if (r.evaluated)
    std::printf("test accuracy %.4f (%lld/%lld), test loss %.4f\n", r.test.accuracy,
                static_cast<long long>(r.test.correct), static_cast<long long>(r.test.samples),
                r.test.loss);
  return r.interrupted ? 130 : 0;
}

int run_eval(const TrainConfig& cfg) {
  protect_process();  // plaintext weights and data
  set_compute(cfg);
  if (cfg.init.empty())
    std::fprintf(stderr, "tempo: warning: no --init given: evaluating freshly initialised weights\n");
  auto model = prepare_model(cfg);
  Dataset data = load_dataset(cfg.data, model->input_shape, cfg.seed);
  TEMPO_CHECK(!data.test_y.empty(), "data set '" + cfg.data + "' has no test split to evaluate on");
  auto backend = make_backend(cfg);
  EvalResult r = evaluate(*model, data, cfg.batch_size, *backend, cfg.progress);
  std::printf("test accuracy %.4f (%lld/%lld), test loss %.4f\n", r.accuracy,
              static_cast<long long>(r.correct), static_cast<long long>(r.samples), r.loss);
  return 0;
}

void add_export_flags(CLI::App& app, ExportConfig& c) {
  app.add_option("--model", c.model,
                 "Model: a zoo name (mlp | cnn | resnet18 | resnet50 | vgg16) or a FILE.onnx, whose graph is kept")
      ->capture_default_str();
  app.add_option("--init", c.init, "Weights to write (safetensors, PyTorch state_dict names, e.g. from --save)")
      ->check(CLI::ExistingFile);
  app.add_option("--output,-o", c.output, "The ONNX file to write (atomically)")->required();
  app.add_option("--seed", c.seed, "Seed of the initialisation when there is no --init")->capture_default_str();
}

int run_export(const ExportConfig& c) {
  protect_process();  // plaintext weights
  auto model = build_model(c.model, c.seed);
  if (!c.init.empty()) model->load(c.init);
  const std::string bytes = export_onnx(*model);
  AtomicFile f(c.output);
  f.write(bytes.data(), bytes.size());
  f.commit();
  std::fprintf(stderr, "tempo: wrote %s (%s, %lld parameters%s)\n", c.output.c_str(), model->name.c_str(),
               static_cast<long long>(model->parameter_count()), c.init.empty() ? ", initial weights" : "");
  return 0;
}

void add_predict_flags(CLI::App& app, PredictConfig& c) {
  add_train_flags(app, c.model, false);
  app.add_option("--output,-o", c.output,
                 "Output file: .safetensors (probabilities N×classes F32, predictions N I64) or .csv")
      ->required();
  app.add_option("--split", c.split, "Which split of the data set to predict")
      ->capture_default_str()
      ->check(CLI::IsMember({"test", "train"}));
}

int run_predict(const PredictConfig& pc) {
  const TrainConfig& cfg = pc.model;
  protect_process();  // plaintext weights and data
  set_compute(cfg);
  TEMPO_CHECK(!cfg.init.empty(), "predict needs the model's weights: pass --init FILE");
  auto model = prepare_model(cfg);
  Dataset data = load_dataset(cfg.data, model->input_shape, cfg.seed);
  const bool train_split = pc.split == "train";
  TEMPO_CHECK(train_split || !data.test_y.empty(),
        "data set '" + cfg.data + "' has no test split; pass --split train");
  auto backend = make_backend(cfg);
  Predictions p = predict(*model, data, train_split, cfg.batch_size, *backend);
  const int64_t n = static_cast<int64_t>(p.labels.size()), classes = p.classes;
  NamedTensor probs{"probabilities", DType::F32, {n, classes}, std::move(p.probabilities), {}};
  NamedTensor preds{"predictions", DType::I64, {n}, {}, std::move(p.labels)};
  const bool csv = pc.output.size() >= 4 && pc.output.compare(pc.output.size() - 4, 4, ".csv") == 0;
  if (csv) {
    const std::string tmp = pc.output + ".tmp";
    {
      std::ofstream f(tmp);
      TEMPO_CHECK(f.good(), "cannot write '" + tmp + "'");
      f << "index,prediction";
      for (int64_t c = 0; c < classes; ++c) f << ",p" << c;
      f << "\n";
      char buf[32];
      for (int64_t i = 0; i < n; ++i) {
        f << i << "," << preds.i64[static_cast<size_t>(i)];
        for (int64_t c = 0; c < classes; ++c) {
          std::snprintf(buf, sizeof buf, ",%.7g", probs.f32[static_cast<size_t>(i * classes + c)]);
          f << buf;
        }
        f << "\n";
      }
      f.flush();
      TEMPO_CHECK(f.good(), "writing '" + tmp + "' failed");
    }
    TEMPO_CHECK(std::rename(tmp.c_str(), pc.output.c_str()) == 0, "cannot rename '" + tmp + "' to '" + pc.output + "'");
  } else {
    write_safetensors(pc.output, {probs, preds});
  }
  std::fprintf(stderr, "tempo: wrote %lld predictions to %s\n", static_cast<long long>(n), pc.output.c_str());
  return 0;
}

}  // namespace tempo::cli
