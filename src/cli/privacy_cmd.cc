// `tempo privacy`: measurements of what the protection achieves (P5). Suites:
//   integrity  Freivalds' check: detection rate against the size of a lie and
//              the number of rounds; false alarms on honest workers, and the
//              smallest τ that would have avoided them.
//   mi         mutual information between plaintext and ciphertext values.
//   labels     label recovery when the last layer is offloaded.
//   stealing   model stealing through the prediction API: a substitute
//              trained on the victim's answers, against the query budget.
//   inputs     input recovery: images rebuilt from what workers receive
//              (first-layer im2col patches, channel-mode feature maps).
//   weights    weight recovery from the weight ciphertexts alone (no keys).
//   replay     averaging the re-encryptions of one operand (rollback).
//   ica        blind source separation (FastICA) inside the row mixing's
//              groups, with the groups and keys given by an oracle.
//   keyshift   what the key shift's shared row key gives: per-row norms
//              free of the row scales.
#include <algorithm>
#include <cstdio>
#include <functional>

#include "cli/commands.h"
#include "common/error.h"
#include "common/parallel.h"
#include "trusted/progress.h"
#include "trusted/io/file_util.h"
#include "trusted/rng.h"
#include "eval/attacks/attention.h"
#include "eval/attacks/ica.h"
#include "eval/attacks/input_recovery.h"
#include "eval/attacks/key_shift.h"
#include "trusted/offload/offload_backend.h"
#include "eval/measurements/integrity.h"
#include "eval/measurements/replay.h"
#include "eval/attacks/label_attack.h"
#include "eval/attacks/model_stealing.h"
#include "eval/measurements/mutual_info.h"
#include "eval/measurements/step_operands.h"
#include "eval/attacks/weight_recovery.h"

#include <cmath>

namespace tempo::cli {

void add_privacy_flags(CLI::App& app, PrivacyConfig& c) {
  app.add_option("--suite", c.suite,
                 "integrity: Freivalds' detection rate against lie size and rounds, and false alarms on an honest "
                 "worker; mi: mutual information between plaintext and ciphertext values; labels: label recovery "
                 "when the last layer is offloaded; stealing: a substitute model trained on the answers of `tempo "
                 "predict`, against the number of queries; inputs: images rebuilt from first-layer im2col patches "
                 "(--offload-first) and from channel-mode feature maps, PSNR and SSIM against a baseline; weights: "
                 "weight recovery from the weight ciphertexts of training, without keys; replay: what averaging the "
                 "re-encryptions of replayed executions gives an attacker granted their keys; ica: FastICA inside "
                 "the row mixing's groups (groups and keys given by an oracle); keyshift: per-row norms the key "
                 "shift frees of the row scales; attention: a vit's Q, K, P and V ciphertexts (mutual "
                 "information) and the attention probabilities rebuilt from P' (--model vit)")
      ->capture_default_str()
      ->check(CLI::IsMember(
          {"integrity", "mi", "labels", "stealing", "inputs", "weights", "replay", "ica", "keyshift", "attention"}));
  app.add_option("--at-steps", c.at_steps,
                 "mi: measure at these steps of one training run (e.g. 5,300,600,900: across an epoch) "
                 "instead of the estimator check and step 5; keyshift: the steps measured (default 5,300); "
                 "attention: the step measured (the first given; default 5)")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option_function<std::string>(
         "--mask-kind", [](const std::string& s) { set_default_mask_kind(parse_mask_kind(s)); },
         "How every mask of the measured runs is drawn: dense or kron (tempo train --mask-kind)")
      ->default_str(mask_kind_name(default_mask_kind()))
      ->check(CLI::IsMember({"dense", "kron"}));
  app.add_option("--mask-ranks", c.mask_ranks,
                 "inputs: the zero-pattern attack on the second convolution's operand with these --mask-rank "
                 "values (0: no mask), comma-separated")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(0, 4096));
  app.add_option("--steps", c.weight_steps,
                 "weights: training steps of the measured run (938: one epoch of Fashion-MNIST at batch 64)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{2}, int64_t{1000000}));
  app.add_option("--window", c.weight_window, "weights: the last steps recorded and attacked (at least 2)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{2}, int64_t{100000}));
  app.add_option("--col-mix", c.col_mix,
                 "mi: the column mixing of the measured run (--col-mix B of tempo train, on by default; 0: the "
                 "defaults without it); attention: the mixed blocks' inner-dimension groups")
      ->capture_default_str()
      ->check(check_mixing_block);
  app.add_option("--row-mix", c.row_mix,
                 "attention: the mixed blocks' row groups (--row-mix B of tempo train; with --col-mix 0 as well, "
                 "only keys only is measured)")
      ->capture_default_str()
      ->check(check_mixing_block);
  app.add_option("--groups", c.ica_groups, "ica: row-mixing groups attacked per product (evenly spread)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1000000}));
  app.add_option("--samples", c.samples, "mi, attention: value pairs per estimate")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{100}, int64_t{1000000}));
  app.add_option("--model", c.model,
                 "mi, labels, inputs, weights, ica, keyshift: model whose training is measured; stealing: the victim; "
                 "attention: a vit (vit, or vit:CxHxW; default vit)")
      ->capture_default_str();
  app.add_option("--data", c.data, "mi, labels, stealing, inputs, weights, ica, keyshift: data of that training")->capture_default_str();
  app.add_option("--budgets", c.budgets,
                 "stealing: query budgets, comma-separated; the largest must leave the victim half the training set")
      ->delimiter(',')
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1000000000}));
  app.add_option("--substitute", c.substitute, "stealing: the attacker's model (default: the victim's)");
  app.add_option("--products", c.products, "Honest products for the false-alarm rate")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--trials", c.trials, "Lies per row of the detection table")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--pair-trials", c.pair_trials,
                 "integrity: lies per row of the two-entry table (rare passes need a large sample)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--verify-tolerance", c.tau, "τ under test")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seed", c.seed, "Seed of keys and operands")->capture_default_str();
  app.add_option("--threads", c.threads, "Threads (0: all cores)")->capture_default_str();
  app.add_option("--table", c.table, "Also write the tables (markdown) to this file");
}

namespace {

std::string fmt_sci(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1e", v);
  return b;
}

// Prints the tables as they are made and keeps them for --table.
struct Report {
  std::string md;
  void emit(const std::string& line) {
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    md += line + "\n";
  }
  void write(const std::string& path) const {
    if (path.empty()) return;
    AtomicFile f(path);
    f.write(md.data(), md.size());
    f.commit();
  }
};

// The training run whose products a measurement looks at.
TrainConfig measured_run(const PrivacyConfig& c) {
  TrainConfig t;
  t.model = c.model;
  t.data = c.data;
  t.seed = c.seed;
  t.progress = false;
  t.offload.col_mix = c.col_mix;
  // Every convolution but the first offloaded, as before --local-below: the
  // products a worker sees under the default are a subset of these.
  t.local_below = 0;
  return t;
}

int run_labels(const PrivacyConfig& c) {
  Report rep;
  const TrainConfig t = measured_run(c);
  const int64_t steps = 30;
  rep.emit("### Labels from the gradient of the logits (last layer offloaded with --offload-last)");
  rep.emit("");
  rep.emit("`" + c.model + "` on " + c.data + ", " + std::to_string(steps) +
       " training steps of batch 64; each step's gradient of the logits encrypted under fresh keys and "
       "attacked from the ciphertext alone; a row counts when the recovered label entry maps back to the true label.");
  rep.emit("");
  rep.emit("| keys | rows attacked | labels recovered | rate | chance |");
  rep.emit("|---|---:|---:|---:|---:|");
  char buf[256];
  for (bool identity : {false, true}) {
    const LabelAttackResult r = label_attack(t, steps, c.seed, identity);
    std::snprintf(buf, sizeof buf, "| %s | %lld | %lld | %.3f | %.3f |",
                  identity ? "none (offload mode)" : "tempo (fresh keys per product)", static_cast<long long>(r.rows),
                  static_cast<long long>(r.correct), r.rows ? double(r.correct) / double(r.rows) : 0.0, r.chance);
    rep.emit(buf);
  }
  rep.emit("");
  rep.emit("By default (without --offload-last) the last layer and the loss stay in the master: this gradient never "
       "reaches a worker.");
  rep.write(c.table);
  return 0;
}

int run_stealing(const PrivacyConfig& c) {
  StealingConfig sc;
  sc.model = c.model;
  sc.substitute = c.substitute;
  sc.data = c.data;
  sc.seed = c.seed;
  sc.budgets = c.budgets;
  const StealingReport r =
      measure_model_stealing(sc, [](const std::string& line) { std::fprintf(stderr, "tempo: %s\n", line.c_str()); });
  Report rep;
  char buf[1024];
  const std::string sub = c.substitute.empty() ? c.model : c.substitute;
  rep.emit("### Model stealing through the prediction API");
  rep.emit("");
  std::snprintf(buf, sizeof buf,
                "Victim: `%s` trained for %d epoch%s on the first %lld training images of %s; test accuracy %.4f "
                "(chance %.2f). Attacker: the other %lld training images, unlabelled, answered by the victim as "
                "`tempo predict` answers; one `%s` substitute per budget N, from its own initialisation, trained "
                "on the first N answers (%d passes over them, at least %lld and at most %lld steps of batch %lld, "
                "SGD lr %.2g). Scored on the %lld test images.",
                c.model.c_str(), sc.victim_epochs, sc.victim_epochs == 1 ? "" : "s",
                static_cast<long long>(r.victim_train), c.data.c_str(), r.victim_accuracy, r.chance,
                static_cast<long long>(r.pool), sub.c_str(), sc.substitute_epochs,
                static_cast<long long>(sc.min_steps), static_cast<long long>(sc.max_steps),
                static_cast<long long>(sc.batch_size), sc.optim.lr, static_cast<long long>(r.test));
  rep.emit(buf);
  rep.emit("");
  rep.emit("| queries | answers | steps | substitute accuracy | agreement with victim | victim accuracy | chance |");
  rep.emit("|---:|---|---:|---:|---:|---:|---:|");
  for (const auto& row : r.rows) {
    std::snprintf(buf, sizeof buf, "| %lld | %s | %lld | %.3f | %.3f | %.3f | %.3f |",
                  static_cast<long long>(row.budget), row.soft ? "probabilities" : "class only",
                  static_cast<long long>(row.steps), row.accuracy, row.agreement, r.victim_accuracy, r.chance);
    rep.emit(buf);
  }
  rep.write(c.table);
  return 0;
}

// A value with three decimals, as the tables print it.
std::string f3(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3f", v);
  return std::string(b);
}

// An integer, as the tables print it.
std::string i64(int64_t v) { return std::to_string(v); }

// The first inputs table: images rebuilt from first-layer patches and feature maps, with and without keys.
void emit_input_recovery(Report& rep, const PrivacyConfig& c, const TrainConfig& t, int64_t step) {
  rep.emit("### Input recovery from what a worker receives");
  rep.emit("");
  rep.emit("`" + c.model + "` on " + c.data + ", the batch of training step " + std::to_string(step) +
           " (64 images), each operand encrypted under fresh keys as the pipeline does and attacked from the "
           "ciphertext alone. PSNR (dB, capped at 100: exact) and SSIM (11×11 Gaussian window, σ = 1.5) are means "
           "over images in [0, 1], after the least-squares brightness/contrast fit of each reconstruction to its "
           "image (a ciphertext hides one scale). Baseline: the mean test image, fitted the same way. Placed: "
           "non-zero rows (maps) put in the right image at the right place relative to their fragment; images: "
           "those given a reconstruction of their own (the others get the baseline).");
  rep.emit("");
  rep.emit("| keys | worker receives | PSNR | SSIM | baseline PSNR | baseline SSIM | rows placed | images placed | images ≥ 40 dB | notes |");
  rep.emit("|---|---|---:|---:|---:|---:|---:|---:|---:|---|");
  char buf[4096];
  for (bool identity : {false, true}) {
    for (const InputRecoveryRow& r : measure_input_recovery(t, step, c.seed, identity)) {
      if (!r.attempted) {
        std::snprintf(buf, sizeof buf, "| %s | %s | — | — | — | — | — | — | — | %s |",
                      identity ? "none (offload)" : "tempo", r.setting.c_str(), r.note.c_str());
      } else {
        auto num = [](double v, const char* fmt) {
          char b[32];
          if (std::isnan(v)) return std::string("—");
          std::snprintf(b, sizeof b, fmt, v);
          return std::string(b);
        };
        std::snprintf(buf, sizeof buf, "| %s | %s | %s | %s | %s | %s | %.3f | %.3f | %s | %s |",
                      identity ? "none (offload)" : "tempo", r.setting.c_str(), num(r.psnr, "%.1f").c_str(),
                      num(r.ssim, "%.3f").c_str(), num(r.base_psnr, "%.1f").c_str(), num(r.base_ssim, "%.3f").c_str(),
                      r.rows_placed, r.images_placed, num(r.images_exact, "%.3f").c_str(), r.note.c_str());
      }
      rep.emit(buf);
    }
  }
  rep.emit("");
  rep.emit("By default the first layer stays in the master: its patches never reach a worker. Channel mode never "
           "applies to the first layer and in `cnn` applies to no layer unless --channel-from is 1.");
  rep.emit("");
}

// The zero-pattern table: what the zeros of the second convolution's operand give away, by mask rank.
void emit_zero_jigsaw(Report& rep, const PrivacyConfig& c, const TrainConfig& t, int64_t step) {
  char buf[4096];
  // The default configuration's first offloaded product: what its zeros give away.
  const std::vector<ZeroJigsawResult> zs = measure_zero_jigsaw(t, step, c.seed, c.mask_ranks);
  const ZeroJigsawResult& z = zs.front();
  rep.emit("#### The default configuration: zeros of the second convolution's patches");
  rep.emit("");
  std::snprintf(buf, sizeof buf,
                "The same step's first offloaded product in the default configuration: the im2col operand of the "
                "second convolution (%lld × %lld: patches of %lld post-ReLU, max-pooled feature maps), under tempo "
                "keys. %.1f%% of its entries are exact zeros, and a zero stays a zero under any scale, so without a "
                "mask the worker holds the plaintext's zero pattern with rows and columns permuted. With "
                "`--mask-rank r` (and, in this table, `--row-mix 0`: mixing is measured in the next one) the "
                "worker receives (A + U·Vᵀ)' instead, and first guesses the zeros: where the "
                "sparse part of a robust-PCA split (principal component pursuit, 30 iterations, standard λ) of the "
                "ciphertext is zero. Columns: of each column's 8 (resp. %lld) columns with the most correlated zero "
                "indicators (phi over all rows), the fraction of its own channel (resp. kernel offset). Rows, given "
                "the column structure: a row's right (lower) part must equal its neighbour's left (upper) part bit "
                "for bit; joins are made where that match is unique both ways (exact), or where the two are each "
                "other's unique nearest in Hamming distance (nearest).",
                static_cast<long long>(z.rows), static_cast<long long>(z.cols), static_cast<long long>(z.channels),
                100 * z.zero_fraction, static_cast<long long>(z.channels - 1));
  rep.emit(buf);
  rep.emit("");
  std::string head = "| measurement |", rule = "|---|";
  for (const auto& x : zs) {
    head += x.mask_rank ? " --mask-rank " + std::to_string(x.mask_rank) + " |" : " no mask |";
    rule += "---:|";
  }
  rep.emit(head + " chance or total |");
  rep.emit(rule + "---:|");
  // One row: a label, one cell per mask rank, and the chance column.
  auto row = [&](const std::string& label, const std::function<std::string(const ZeroJigsawResult&)>& cell,
                 const std::string& chance) {
    std::string line = "| " + label + " |";
    for (const auto& x : zs) line += " " + cell(x) + " |";
    rep.emit(line + " " + chance + " |");
  };
  row("zeros: fraction of entries the worker takes for zeros", [&](const auto& x) { return f3(x.pattern_fraction); },
      f3(z.zero_fraction) + " are");
  row("zeros: precision, recall of that guess", [&](const auto& x) {
        return f3(x.pattern_precision) + ", " + f3(x.pattern_recall);
      }, "1, 1: exact");
  row("zeros: AUC of the worker's zero detector", [&](const auto& x) { return f3(x.zero_auc); }, "0.5");
  row("rows of A entirely zero (each shows a worker one row of the mask alone)",
      [&](const auto& x) { return i64(x.zero_rows); }, i64(z.rows) + " rows");
  row("columns: nearest 8 of the same channel", [&](const auto& x) { return f3(x.channel_purity); },
      f3(z.channel_chance));
  row("columns: nearest 8 by count of zeros, of the same channel",
      [&](const auto& x) { return f3(x.count_channel_purity); }, f3(z.channel_chance));
  row("columns with no zero at all (the centre of a map without zeros)",
      [&](const auto& x) { return i64(x.no_zero_columns); }, i64(z.cols) + " columns");
  row("columns with exactly images × side zeros; of them, zeros exactly one image border",
      [&](const auto& x) { return i64(x.border_columns) + "; " + i64(x.border_columns_exact); }, "");
  row("columns: nearest " + i64(z.channels - 1) + " of the same offset",
      [&](const auto& x) { return f3(x.offset_purity); }, f3(z.offset_chance));
  for (int d = 0; d < 4; ++d) {
    auto pick = [d](const ZeroJigsawResult& x) -> const ZeroJigsawResult::Joins& {
      return d == 0 ? x.right : d == 1 ? x.down : d == 2 ? x.right_nearest : x.down_nearest;
    };
    const std::string name = std::string(d % 2 ? "vertical" : "horizontal") + (d < 2 ? " exact" : " nearest");
    row("rows: " + name + " joins made", [&](const auto& x) { return i64(pick(x).unique); },
        i64(pick(z).adjacencies) + " adjacencies");
    row("rows: " + name + " joins correct (of joins; of adjacencies)", [&](const auto& x) {
          const auto& j = pick(x);
          return i64(j.correct) + " (" + f3(j.unique ? double(j.correct) / double(j.unique) : 0.0) + "; " +
                 f3(j.adjacencies ? double(j.correct) / double(j.adjacencies) : 0.0) + ")";
        }, "");
  }
  row("images: largest fragment assembled by correct exact joins, mean",
      [&](const auto& x) { return f3(x.largest_fragment); }, "1 (whole image)");
  row("positions in fragments of 10 or more", [&](const auto& x) { return f3(x.in_fragments_10); }, "1");
  rep.emit("");
}

// The mask-subspace table's description and header: one column per blinding case.
void emit_mask_subspace_head(Report& rep, const std::vector<MaskSubspaceResult>& ms, const OffloadConfig& dflt) {
  char buf[4096];
  rep.emit("#### The mask's row space, from repeated rows; and row mixing");
  rep.emit("");
  std::snprintf(buf, sizeof buf,
                "The same operand. %lld of its %lld rows repeat exactly (at least 20 copies: patches of the image "
                "background, where every pixel is 0 and the first layer gives a constant). Under the mask each "
                "such row arrives as s·(c + U_i·Vᵀ)': all of them in one subspace of dimension r plus the number "
                "of distinct repeated rows, which holds the mask's row space. The worker finds it by trimmed PCA "
                "(the r + 8 leading directions of the unit rows; keep the 8%% of rows nearest to them; "
                "recompute from those; 30 rounds; privacy/low_rank.h) and projects it off every other row, which "
                "leaves that row of A with the mask gone, minus A's own part in the subspace. To read zeros from "
                "that, the worker also needs the sign of each column's key: an oracle gives them (an upper "
                "bound), or the worker reads them from the leading eigenvector of the ciphertext's column Gram "
                "matrix (A ≥ 0 makes AᵀA non-negative); alternating projections onto the signs' orthant and the row's "
                "affine set, then a least-squares polish, decode %lld rows outside the subspace. With "
                "`--row-mix B` (default %d) the master first replaces each secret group of B rows by a random "
                "orthogonal combination of them (fresh for every product and step; the output gradient's rows "
                "too, which the key shift requires): a row then repeats only if its whole group does. The last "
                "column adds `--col-mix 8` (on by default since 2026-12-03): the operand's columns are also mixed, in secret "
                "groups of 8, before the mask; its zeros are then those of whole blocks of 8 rows by 8 columns.",
                static_cast<long long>(ms[0].repeated_rows), static_cast<long long>(ms[0].rows),
                static_cast<long long>(ms[0].decoded_rows), dflt.row_mix);
  rep.emit(buf);
  rep.emit("");
  std::string mhead = "| measurement |", mrule = "|---|";
  for (const auto& x : ms) {
    const bool is_default = x.mask_rank == dflt.mask_rank && x.row_mix == dflt.row_mix && x.col_mix == dflt.col_mix;
    mhead += " --mask-rank " + std::to_string(x.mask_rank) + ", --row-mix " + std::to_string(x.row_mix) +
             (x.col_mix ? ", --col-mix " + std::to_string(x.col_mix) : "") + (is_default ? " (default)" : "") + " |";
    mrule += "---:|";
  }
  rep.emit(mhead);
  rep.emit(mrule);
}

// The mask-subspace table's rows, one cell per blinding case.
void emit_mask_subspace_rows(Report& rep, const std::vector<MaskSubspaceResult>& ms) {
  auto mrow = [&](const std::string& label, const std::function<std::string(const MaskSubspaceResult&)>& cell) {
    std::string line = "| " + label + " |";
    for (const auto& x : ms) line += " " + cell(x) + " |";
    rep.emit(line);
  };
  auto opt3 = [&](double v) { return v < 0 ? std::string("—") : f3(v); };
  mrow("exact zeros in the operand before the mask (fraction of entries)",
       [&](const auto& x) { return f3(x.zeros_sent); });
  mrow("dimension of the subspace found", [&](const auto& x) { return i64(x.subspace_dim); });
  mrow("rows of the ciphertext in it (distance < 1e-4 as unit rows)", [&](const auto& x) {
    return i64(x.rows_in) + (x.row_mix ? "" : " (" + i64(x.rows_in_repeated) + " repeated in A)");
  });
  mrow("fraction of the mask's row space inside it", [&](const auto& x) { return opt3(x.mask_captured); });
  mrow("zeros: AUC of −\\|entry\\| after projecting it off (0.5 = chance)",
       [&](const auto& x) { return opt3(x.auc_projected); });
  mrow("zeros: AUC after decoding with the true signs (oracle)", [&](const auto& x) { return opt3(x.auc_signs); });
  mrow("zeros: precision, recall of that decode (\\|z\\| < 0.01·max)",
       [&](const auto& x) { return opt3(x.precision_signs) + ", " + opt3(x.recall_signs); });
  mrow("columns' key signs read from the ciphertext's column Gram matrix (right, up to one sign)",
       [&](const auto& x) { return opt3(x.col_signs_right); });
  mrow("zeros: AUC after decoding with those signs (no oracle)", [&](const auto& x) { return opt3(x.auc_gram); });
  mrow("zeros: precision, recall of that decode",
       [&](const auto& x) { return opt3(x.precision_gram) + ", " + opt3(x.recall_gram); });
  mrow("rows decoded with every zero right (oracle signs)", [&](const auto& x) {
    return i64(x.exact_rows) + " of " + i64(x.decoded_rows);
  });
  mrow("the mixing's secret groups: of each row's nearest rows by their small entries (as many as a group has "
       "partners), the share in its own group (chance in brackets)",
       [&](const auto& x) {
         return x.group_precision < 0 ? std::string("—")
                                      : f3(x.group_precision) + " (" + f3(x.group_chance) + ")";
       });
  mrow("given the groups (oracle): groups where the sparsest vector of their span plus the subspace is exactly a row "
       "of A (of groups tried)",
       [&](const auto& x) {
         return x.sparse_groups ? i64(x.sparse_exact) + " of " + i64(x.sparse_groups) : std::string("—");
       });
  mrow("zeros of single rows of A from that vector: AUC", [&](const auto& x) { return opt3(x.sparse_auc); });
  mrow("the same from the group's rows with the subspace projected off (reference)",
       [&](const auto& x) { return opt3(x.sparse_auc_projected); });
  rep.emit("");
  rep.emit("Without mixing the subspace is exact, the signs the decode needs are the keys' (A is non-negative), "
           "which the Gram matrix gives, and the zeros it yields are those of single rows of A, each one image "
           "position. With mixing no row lies in it, the mixed operand's entries have signs of their own, which the "
           "keys' signs fit only in part, the subspace found is the mask's row space only "
           "approximately (its energy dominates the leading directions), and a zero left in the mixed operand is "
           "one where all rows of a secret group of positions, from different images, are zero at once.");
  rep.emit("");
  rep.emit("The last rows attack the mixing itself. First its secret groups: the rows of one group share the group's "
           "zero columns, so the worker ranks rows by the cosine of their −log|entry| profiles (after projecting the "
           "subspace off) and takes each row's nearest as its partners. Then, given the groups by an oracle, the "
           "rows of A: they lie in the span of the group's ciphertext rows plus the subspace (d dimensions), and a "
           "vector of that span that is zero in d − 1 chosen columns is fixed up to scale, so the worker tries 300 "
           "random sets of d − 1 columns per group and keeps the vector with the most further zeros. The column "
           "without a mask shows what the mixing alone leaves: d is the group's size, and the exact rows of A come "
           "out. With a mask, d − 1 is the group's size plus the subspace's dimension, more zeros than a random "
           "choice of columns ever hits in one row.");
}

// The mask-subspace table: the mask's row space from repeated rows, and the row mixing.
void emit_mask_subspace(Report& rep, const TrainConfig& t, int64_t step, uint64_t seed) {
  // The mask's row space, from the image background; and the row mixing.
  const OffloadConfig dflt;
  const std::vector<MaskSubspaceResult> ms =
      measure_mask_subspace(t, step, seed,
                            {{dflt.mask_rank, 0}, {0, dflt.row_mix}, {16, dflt.row_mix}, {32, dflt.row_mix},
                             {dflt.mask_rank, dflt.row_mix}, {dflt.mask_rank, dflt.row_mix, 8}});
  emit_mask_subspace_head(rep, ms, dflt);
  emit_mask_subspace_rows(rep, ms);
}

int run_inputs(const PrivacyConfig& c) {
  Report rep;
  const TrainConfig t = measured_run(c);
  const int64_t step = 5;
  emit_input_recovery(rep, c, t, step);
  emit_zero_jigsaw(rep, c, t, step);
  emit_mask_subspace(rep, t, step, c.seed);
  rep.write(c.table);
  return 0;
}

// The weights tables: recovery per layer and key set, and the test accuracy of the assembled models.
void emit_weight_recovery(Report& rep, const PrivacyConfig& c, const WeightRecoveryConfig& w,
                          const WeightRecoveryReport& r) {
  char buf[4096];
  rep.emit("### Weight recovery from the weight ciphertexts (no keys)");
  rep.emit("");
  std::snprintf(buf, sizeof buf,
                "`%s` on %s, %lld training steps of batch 64 (SGD lr 0.01, momentum 0.9); the weight, the input "
                "and the weight gradient of every offloaded product of the last %lld steps encrypted under fresh "
                "keys as the pipeline does (key shift on, and, except for the keyless rows, the input and the "
                "gradient row-mixed and the input masked as the defaults do: --row-mix %d, --mask-rank %d). The "
                "attack sees ciphertexts only: it "
                "double-centres log|W'| (removes the scales), takes column signs from the sign pattern of the ReLU "
                "operand A' (same column key), unit (row) signs from the ReLU zeros of the weight gradient lined "
                "up with the worker's own result C', and matches rows and columns of consecutive steps to chain "
                "one order through the window. Scored with the keys. *Chained*: fraction of rows / columns of the "
                "last step traced back to their source at the first step. Errors ‖Ŵ−W‖/‖W‖ at the last step, with "
                "the true placement (which the attack does not find) and the best positive scale per row: with "
                "the attacker's signs; with the best sign per row; with no sign recovered. The `--col-mix` rows "
                "add the column mixing to the defaults: the weight sent is then W·Gᵀ, a fresh secret orthogonal "
                "mixing of groups of its columns, and the attack is scored against W as before; these rows are the defaults since 2026-12-03.",
                c.model.c_str(), c.data.c_str(), static_cast<long long>(r.steps), static_cast<long long>(r.window),
                w.train.offload.row_mix, w.train.offload.mask_rank);
  rep.emit(buf);
  rep.emit("");
  rep.emit("| keys | layer | W | rows / cols chained | cols signed | units signed (right) | entry signs right | "
           "corr \\|w\\| | error, attacker's signs | error, best unit signs | error, no signs | centring residual |");
  rep.emit("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  const std::string col_label = "tempo, defaults (--col-mix " + std::to_string(r.col_mix) + ")";
  for (const auto* set : {&r.layers, &r.unshifted_layers, &r.col_mixed_layers, &r.offload_layers})
    for (const auto& L : *set) {
      std::snprintf(buf, sizeof buf,
                    "| %s | %s | %lldx%lld | %.3f / %.3f | %.3f | %.3f (%.3f) | %.3f | %.3f | %.3f | %.3f | %.3f | "
                    "%.0e |",
                    set == &r.layers               ? "tempo, without --col-mix"
                    : set == &r.offload_layers     ? "none (offload)"
                    : set == &r.col_mixed_layers   ? col_label.c_str()
                                                   : "tempo, without --col-mix, --no-key-shift",
                    L.layer.c_str(), static_cast<long long>(L.rows),
                    static_cast<long long>(L.cols), L.rows_chained, L.cols_chained, L.cols_signed, L.units_signed,
                    L.units_right, L.sign_agreement, L.abs_correlation, L.rel_error_attacker, L.rel_error,
                    L.rel_error_no_signs, L.centring_residual);
      rep.emit(buf);
    }
  rep.emit("");
  rep.emit("Test accuracy of assembled models (tempo keys): the offloaded layers' weights replaced by the "
           "recovered ones; the layers kept in the master and every bias are the true ones (the worker never "
           "sees them).");
  rep.emit("");
  rep.emit("| weights of the offloaded layers | test accuracy |");
  rep.emit("|---|---:|");
  for (const auto& m : r.models) {
    std::snprintf(buf, sizeof buf, "| %s | %.4f |", m.name.c_str(), m.accuracy);
    rep.emit(buf);
  }
  std::snprintf(buf, sizeof buf, "| chance | %.4f |", r.chance);
  rep.emit(buf);
}

// The hardening's cost table: ms per tempo-mode step with and without the key shift (and with --col-mix).
void emit_hardening_cost(Report& rep, const PrivacyConfig& c, int col_mix) {
  char buf[4096];
  TrainConfig t = measured_run(c);
  t.mode = "tempo";
  t.workers = "local:1";
  t.data = "synthetic:1920";
  t.steps = 30;
  t.offload.log = false;
  // Configurations: 0 the default, 1 --no-key-shift, 2 --col-mix.
  std::vector<double> ms[3];
  for (int round = 0; round < 3; ++round)
    for (int conf = 0; conf < 3; ++conf) {
      t.offload.key_shift = conf != 1;
      t.offload.col_mix = conf == 2 ? col_mix : 0;
      if (conf == 2 && col_mix == 0) continue;
      const TrainResult tr = train(t);
      ms[conf].push_back(1e3 * tr.seconds / static_cast<double>(tr.steps));
    }
  auto med = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  rep.emit("");
  rep.emit("Cost of the hardening: `" + c.model + "` in tempo mode through one in-process worker, " +
           std::to_string(num_threads()) + " threads, 30 steps of batch 64 per run, the median of 3 runs "
           "each, alternated.");
  rep.emit("");
  rep.emit("| configuration | ms/step | × default |");
  rep.emit("|---|---:|---:|");
  std::snprintf(buf, sizeof buf, "| default (key shift) | %.1f | 1.00 |", med(ms[0]));
  rep.emit(buf);
  std::snprintf(buf, sizeof buf, "| --no-key-shift | %.1f | %.2f |", med(ms[1]), med(ms[1]) / med(ms[0]));
  rep.emit(buf);
  if (!ms[2].empty()) {
    std::snprintf(buf, sizeof buf, "| --col-mix %d | %.1f | %.2f |", col_mix, med(ms[2]), med(ms[2]) / med(ms[0]));
    rep.emit(buf);
  }
}

int run_weights(const PrivacyConfig& c) {
  Report rep;
  WeightRecoveryConfig w;
  w.train = measured_run(c);
  w.seed = c.seed;
  w.steps = c.weight_steps;
  w.window = c.weight_window;
  if (w.window > w.steps) throw Error("--window (" + std::to_string(w.window) + ") must not exceed --steps (" +
                                      std::to_string(w.steps) + ")");
  const WeightRecoveryReport r = measure_weight_recovery(w);
  emit_weight_recovery(rep, c, w, r);
  // The hardening's cost, measured here: tempo-mode steps through one
  // in-process worker with and without the key shift, alternated (this
  // machine's speed drifts), on synthetic data of the model's shape; for
  // `cnn` only (other models' steps are measured by `tempo bench`).
  if (c.model == "cnn") emit_hardening_cost(rep, c, r.col_mix);
  rep.write(c.table);
  return 0;
}

// The blinding of a row, as the tables name it.
std::string blinding_name(int row_mix, int mask_rank, int col_mix) {
  std::string s;
  auto add = [&](const std::string& part) { s += (s.empty() ? "" : ", ") + part; };
  if (row_mix > 0) add("--row-mix " + std::to_string(row_mix));
  if (mask_rank > 0) add("--mask-rank " + std::to_string(mask_rank));
  if (col_mix > 0) add("--col-mix " + std::to_string(col_mix));
  if (row_mix == 8 && mask_rank == 64 && col_mix == 8) s += " (defaults)";
  return s.empty() ? "none (keys only)" : s;
}

// The offloaded products of the measured step that the two suites below
// attack: every product but the first and the last (they stay in the master).
std::vector<int> offloaded_ids(const StepOperands& ops) {
  std::vector<int> ids;
  for (const auto& [id, p] : ops.products)
    if (id != ops.products.begin()->first && id != ops.products.rbegin()->first) ids.push_back(id);
  TEMPO_CHECK(!ids.empty(), "the model has no offloaded product between its first and last layer");
  return ids;
}

int run_ica(const PrivacyConfig& c) {
  Report rep;
  const int64_t step = 5;
  const TrainConfig t = measured_run(c);
  const StepOperands ops = capture_step(t, step);
  const std::vector<IcaCase> cases = {{8, 0, 0}, {8, 64, 0}, {8, 0, 8}, {8, 64, 8}};
  const std::vector<int> ids = offloaded_ids(ops);
  rep.emit("### Blind source separation inside the row mixing's groups (FastICA)");
  rep.emit("");
  rep.emit("`" + c.model + "` on " + c.data + ", the data operand of every offloaded product at training step " +
           std::to_string(step) + " (batch " + std::to_string(t.batch_size) +
           "), blinded by the master's own Blinding. Oracle: the attacker is given each group's rows and the keys "
           "undone (it holds exactly the group's rows of M·A·Gᵀ + U·Vᵀ, or what the configuration sends), not Q, G, "
           "U, V. FastICA (symmetric, logcosh, at most 200 iterations, tolerance 1e-6) on the group's rows with the "
           "k columns as samples. Score: for each plaintext row of the group, the best |Pearson correlation| with "
           "any recovered component, averaged over the group and then over the groups attacked (at most " +
           std::to_string(c.ica_groups) + " per product, evenly spread); in brackets the fraction of rows above "
           "0.9. Baselines: the mixed rows as received, and as many rows of Gaussian noise. Orthogonal: FastICA told "
           "that the mixing is orthogonal (one global scale instead of whitening; the unmixing searched is "
           "orthogonal). Column key kept: the oracle undoes the row key only. Not converged: groups where FastICA "
           "(whitened) stopped at 200 iterations.");
  rep.emit("");
  rep.emit("| layer (m × k) | blinding | groups | received, no attack | FastICA | FastICA, orthogonal | Gaussian "
           "noise | FastICA, column key kept | FastICA vs rows of A·Gᵀ | not converged |");
  rep.emit("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
  Progress bar("ica", static_cast<int64_t>(ids.size() * cases.size()), true);
  int64_t done = 0;
  for (int id : ids) {
    const StepOperands::Product& p = ops.products.at(id);
    for (const IcaCase& ic : cases) {
      const IcaRow r = ica_attack(p.name, id, p.a.data(), p.w.data(), p.m, p.k, p.n, ic, c.seed,
                                  t.offload.key_scale, c.ica_groups);
      bar.update(++done, p.name);
      rep.emit("| layer " + p.name + " (" + i64(p.m) + " × " + i64(p.k) + ") | " +
               blinding_name(ic.row_mix, ic.mask_rank, ic.col_mix) + " | " + i64(r.groups) + " | " + f3(r.received) +
               " (" + f3(r.received_recovered) + ") | " + f3(r.ica) + " (" + f3(r.ica_recovered) + ") | " +
               f3(r.orthogonal) + " (" + f3(r.orthogonal_recovered) + ") | " + f3(r.noise) + " | " +
               f3(r.ica_column_key) + " | " + (r.ica_vs_col_mixed < 0 ? std::string("—")
                                         : f3(r.ica_vs_col_mixed) + " (received " + f3(r.received_vs_col_mixed) + ")") +
               " | " + i64(r.not_converged) + " |");
    }
  }
  bar.finish();
  rep.write(c.table);
  return 0;
}

int run_keyshift(const PrivacyConfig& c) {
  Report rep;
  const std::vector<int64_t> steps = c.at_steps.empty() ? std::vector<int64_t>{5, 300} : c.at_steps;
  const TrainConfig t = measured_run(c);
  std::string list;
  for (int64_t s : steps) list += (list.empty() ? "" : ", ") + std::to_string(s);
  rep.emit("### Per-row norms through the key shift's shared row key");
  rep.emit("");
  rep.emit("`" + c.model + "` on " + c.data + ", training steps " + list + " (batch " + std::to_string(t.batch_size) +
           "; one run per step). For each offloaded product the worker holds A' (forward) and G2 (the output "
           "gradient sent for the weight gradient). With the key shift G2 = L⁻ᵀ·dC_s·R2 carries A''s row key "
           "inverted, so ‖A'_i‖·‖G2_i‖ is free of the row scales (the column keys weight every row's columns alike). "
           "Spearman correlation over the rows of that estimate with: the same product for the blinded rows under "
           "the keys; each sample's weight-gradient norm ‖A_s‖·‖dC_s‖ (row-mixed: the mean over the row's group); "
           "‖dC_s‖; and, where rows are samples, ‖softmax − onehot‖ of the sample (its loss's gradient). "
           "Baselines: ‖A'_i‖ alone against ‖A_s‖·‖dC_s‖ and against ‖A_s‖. Over m rows, chance gives "
           "|ρ| of about 1/√m (0.13 for 64 rows, 0.01 for 12544).");
  rep.emit("");
  rep.emit("| step | layer (rows) | blinding | key shift | vs blinded rows | vs ‖A_s‖·‖dC_s‖ | vs ‖dC_s‖ | vs "
           "per-sample error | ‖A'_i‖ alone vs ‖A_s‖·‖dC_s‖ | ‖A'_i‖ alone vs ‖A_s‖ |");
  rep.emit("|---:|---|---|---|---:|---:|---:|---:|---:|---:|");
  const std::vector<KeyShiftCase> blindings = {{true, 0, 0, 0}, {true, 8, 0, 0}, {true, 8, 64, 0}, {true, 8, 64, 8}};
  for (int64_t step : steps) {
    const StepOperands ops = capture_step(t, step);
    const std::vector<int> ids = offloaded_ids(ops);
    // The last product's output gradient (softmax − onehot, per sample):
    // its row norm grows with each sample's loss.
    const StepOperands::Product& last = ops.products.rbegin()->second;
    std::vector<float> error(static_cast<size_t>(last.m));
    for (int64_t i = 0; i < last.m; ++i) {
      double s = 0;
      for (int64_t j = 0; j < last.n; ++j) s += double(last.dc[i * last.n + j]) * last.dc[i * last.n + j];
      error[static_cast<size_t>(i)] = static_cast<float>(std::sqrt(s));
    }
    Progress bar("keyshift, step " + std::to_string(step), static_cast<int64_t>(ids.size() * blindings.size() * 2),
                 true);
    int64_t done = 0;
    for (int id : ids) {
      const StepOperands::Product& p = ops.products.at(id);
      TEMPO_CHECK(!p.dc.empty(), "keyshift: no weight gradient for layer " + p.name);
      const bool samples = p.m == last.m;  // rows are the batch's samples
      for (KeyShiftCase kc : blindings)
        for (bool shift : {true, false}) {
          kc.shift = shift;
          const KeyShiftRow r = key_shift_attack(p.name, id, p.a.data(), p.w.data(), p.dc.data(), p.m, p.k, p.n,
                                                 samples ? error.data() : nullptr, kc, c.seed, t.offload.key_scale);
          bar.update(++done, "layer " + p.name);
          rep.emit("| " + i64(step) + " | layer " + p.name + " (" + i64(p.m) + ") | " +
                   blinding_name(kc.row_mix, kc.mask_rank, kc.col_mix) + " | " + (shift ? "on" : "off") + " | " +
                   f3(r.sent) + " | " + f3(r.sample) + " | " + f3(r.gradient) + " | " +
                   (r.error < -1 ? std::string("—") : f3(r.error)) + " | " + f3(r.a_alone) + " | " +
                   f3(r.a_alone_norm) + " |");
        }
    }
    bar.finish();
  }
  rep.write(c.table);
  return 0;
}

// The same measurement at several steps of one run.
int run_mi_along(const PrivacyConfig& c) {
  Report rep;
  char buf[512];
  std::vector<int64_t> steps = c.at_steps;
  std::sort(steps.begin(), steps.end());
  steps.erase(std::unique(steps.begin(), steps.end()), steps.end());
  TrainConfig t = measured_run(c);
  t.epochs = 1 + steps.back() / 100;  // never the limit: the steps are
  const auto rows = measure_mutual_information(t, steps, c.samples, c.seed);
  std::string list;
  for (int64_t s : steps) list += (list.empty() ? "" : ", ") + std::to_string(s);
  rep.emit("### Mutual information along one training run (nats; KSG, k = 3)");
  rep.emit("");
  rep.emit("`" + c.model + "` on " + c.data + " (batch 64), operands of training steps " + list +
           " of one run, each encrypted under fresh keys as the pipeline does; " + std::to_string(c.samples) +
           " pairs per estimate. Each cell: position-aligned / key-aligned, keys only / default (as in the "
           "table above).");
  rep.emit("");
  std::string head = "| layer | operand |", rule = "|---|---|";
  for (int64_t s : steps) head += " step " + std::to_string(s) + " |", rule += "---:|";
  rep.emit(head);
  rep.emit(rule);
  for (size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].step != steps.front()) continue;
    std::string line = "| " + rows[i].layer + " | " + rows[i].operand + " |";
    for (int64_t s : steps)
      for (const MiRow& r : rows)
        if (r.step == s && r.layer == rows[i].layer && r.operand == rows[i].operand) {
          std::snprintf(buf, sizeof buf, " %.3f / %.3f, %.3f / %.3f |", r.position_aligned, r.key_aligned,
                        r.blinded_position, r.blinded_key);
          line += buf;
        }
    rep.emit(line);
  }
  rep.write(c.table);
  return 0;
}

int run_mi(const PrivacyConfig& c) {
  if (!c.at_steps.empty()) return run_mi_along(c);
  Report rep;
  char buf[512];
  // The estimator first, on pairs whose answer is known.
  Rng rng(c.seed);
  rep.emit("### Mutual information, plaintext vs ciphertext values (nats; KSG estimator, k = 3)");
  rep.emit("");
  rep.emit("Estimator check on correlated Gaussian pairs (n = " + std::to_string(c.samples) + "):");
  rep.emit("");
  rep.emit("| ρ | true MI | estimated |");
  rep.emit("|---:|---:|---:|");
  for (double rho : {0.0, 0.5, 0.9, 0.99}) {
    std::vector<double> x, y;
    for (int64_t i = 0; i < c.samples; ++i) {
      const double a = rng.normal(), b = rng.normal();
      x.push_back(a);
      y.push_back(rho * a + std::sqrt(1 - rho * rho) * b);
    }
    std::snprintf(buf, sizeof buf, "| %.2f | %.3f | %.3f |", rho, -0.5 * std::log(1 - rho * rho),
                  ksg_mutual_information(x, y));
    rep.emit(buf);
  }
  rep.emit("");
  const TrainConfig t = measured_run(c);
  const int64_t step = 5;
  rep.emit("Operands of training step " + std::to_string(step) + " of `" + c.model + "` on " + c.data +
       " (batch 64), each encrypted under fresh keys as the pipeline does; " + std::to_string(c.samples) +
       " pairs per estimate. Position-aligned: the value at the same index (what a worker can pair up). "
       "Key-aligned: the value each ciphertext entry was made from (a worker that knew the permutations). "
       "Keys only: the obfuscation without the mask and the row mixing (--mask-rank 0 --row-mix 0). Default: "
       "inputs and gradients mixed (" + std::to_string(t.offload.row_mix) + ") and masked (rank " +
       std::to_string(t.offload.mask_rank) + ") before the keys, key-aligned to the position each value was "
       "encrypted from (" +
       (t.offload.col_mix > 0 ? "with --col-mix " + std::to_string(t.offload.col_mix) +
                                    ": both operands' inner dimension mixed, the weights included"
                              : std::string("weights are not blinded")) +
       "). Offload: no obfuscation.");
  rep.emit("");
  rep.emit("| layer | operand | shape | keys only, position-aligned | keys only, key-aligned | default, "
           "position-aligned | default, key-aligned | offload (no keys) |");
  rep.emit("|---|---|---|---:|---:|---:|---:|---:|");
  const auto rows = measure_mutual_information(t, step, c.samples, c.seed);
  const auto plain = measure_mutual_information(t, step, c.samples, c.seed, true);
  for (size_t i = 0; i < rows.size(); ++i) {
    std::snprintf(buf, sizeof buf, "| %s | %s | %lldx%lld | %.3f | %.3f | %.3f | %.3f | %.3f |",
                  rows[i].layer.c_str(), rows[i].operand.c_str(), static_cast<long long>(rows[i].rows),
                  static_cast<long long>(rows[i].cols), rows[i].position_aligned, rows[i].key_aligned,
                  rows[i].blinded_position, rows[i].blinded_key, plain[i].position_aligned);
    rep.emit(buf);
  }
  rep.write(c.table);
  return 0;
}

// Rollback: averaging re-encryptions of one plaintext (replayed executions).
int run_replay(const PrivacyConfig& c) {
  Report rep;
  char buf[256];
  rep.emit("### Averaging re-encryptions of one operand (replayed checkpoints)");
  rep.emit("");
  rep.emit("Post-ReLU operand 64×3136 (cnn's fc input shape), weight 128×3136; N executions, each with a fresh "
           "secret; the attacker is granted every execution's keys and averages the N blinded operands. "
           "Pearson correlation of the average with the plaintext operand, entry by entry.");
  rep.emit("");
  rep.emit("| blinding the attacker faces | N = executions averaged | correlation with the plaintext |");
  rep.emit("|---|---:|---:|");
  for (const ReplayRow& r : measure_replay_averaging(64, 3136, 128, {1, 2, 4, 16, 64, 256}, c.seed)) {
    std::snprintf(buf, sizeof buf, "| %s | %d | %.3f |", r.blinding.c_str(), r.executions, r.correlation);
    rep.emit(buf);
  }
  rep.write(c.table);
  return 0;
}

}  // namespace

int run_attention(const PrivacyConfig& c) {
  Report rep;
  char buf[512];
  PrivacyConfig pc = c;
  if (pc.model.rfind("vit", 0) != 0) pc.model = "vit";  // the suite's default model
  const int64_t step = c.at_steps.empty() ? 5 : c.at_steps.front();
  TrainConfig run = measured_run(pc);
  run.offload.row_mix = c.row_mix;
  const AttentionReport r = measure_attention(run, step, c.samples, c.seed);
  auto how = [&](bool mixed) {
    if (!mixed) return std::string("keys only");
    return "mixed (row " + std::to_string(r.row_mix) + ", col " + std::to_string(r.col_mix) + ")";
  };
  rep.emit("### Attention's ciphertexts (mutual information, nats; KSG, k = 3)");
  rep.emit("");
  rep.emit("Q/√E, K, P and V of every head and image at training step " + std::to_string(step) + " of `" +
           pc.model + "` on " + pc.data + " (batch 64), each block encrypted under its own fresh keys as the "
           "batched products send them: with keys only (`--row-mix 0 --col-mix 0`), and mixed first as by default "
           "(Q and P by a secret orthogonal mixing of their rows, all four by one of the inner dimension; no mask on "
           "these products); " + std::to_string(c.samples) + " pairs per estimate, pooled over blocks. A pair is a "
           "plaintext value and the ciphertext value at the same cell (position-aligned) or at the cell the keys' "
           "permutations moved that cell to (key-aligned: an upper bound for a worker that had found them).");
  rep.emit("");
  rep.emit("| layer | operand | sent | blocks × shape | position-aligned | key-aligned |");
  rep.emit("|---|---|---|---|---:|---:|");
  for (const AttentionMiRow& m : r.mi) {
    std::snprintf(buf, sizeof buf, "| %s | %s | %s | %lld × %lldx%lld | %.3f | %.3f |", m.layer.c_str(),
                  m.operand.c_str(), how(m.mixed).c_str(), static_cast<long long>(m.blocks),
                  static_cast<long long>(m.rows), static_cast<long long>(m.cols), m.position_aligned, m.key_aligned);
    rep.emit(buf);
  }
  rep.emit("");
  rep.emit("### Attention probabilities rebuilt from P'");
  rep.emit("");
  rep.emit("P' = L·P·I⁻¹ per block (mixed: L·M·P·Gᵀ·I⁻¹); the attacker takes |P'| and either balances it "
           "(Sinkhorn, 50 rounds: rows and columns normalised to sum 1 in turn) or normalises its rows. Each "
           "estimate is put back in P's order through the keys' permutations (granted: the attacker does not know "
           "them) and scored against P: Pearson correlation, and mean absolute error relative to that of the "
           "uninformed guess 1/T (1.0: no better than it). Means over the blocks attacked.");
  rep.emit("");
  rep.emit("| layer | sent | blocks | T | correlation, balanced | correlation, rows normalised | error / uninformed, "
           "balanced | error / uninformed, rows normalised |");
  rep.emit("|---|---|---:|---:|---:|---:|---:|---:|");
  for (const AttentionRecoveryRow& a : r.recovery) {
    std::snprintf(buf, sizeof buf, "| %s | %s | %lld | %lld | %.3f | %.3f | %.3f | %.3f |", a.layer.c_str(),
                  how(a.mixed).c_str(), static_cast<long long>(a.blocks), static_cast<long long>(a.tokens),
                  a.corr_balanced, a.corr_rows, a.err_balanced, a.err_rows);
    rep.emit(buf);
  }
  rep.write(c.table);
  return 0;
}

int run_privacy(const PrivacyConfig& c) {
  set_num_threads(c.threads);
  if (c.suite == "attention") return run_attention(c);
  if (c.suite == "mi") return run_mi(c);
  if (c.suite == "labels") return run_labels(c);
  if (c.suite == "stealing") return run_stealing(c);
  if (c.suite == "inputs") return run_inputs(c);
  if (c.suite == "weights") return run_weights(c);
  if (c.suite == "replay") return run_replay(c);
  if (c.suite == "ica") return run_ica(c);
  if (c.suite == "keyshift") return run_keyshift(c);
  Report rep;
  char buf[512];
  rep.emit("### Detection of wrong results (Freivalds' check, τ = " + std::to_string(c.tau).substr(0, 4) + ")");
  rep.emit("");
  auto table = [&](const std::vector<DetectionRow>& rows) {
    rep.emit("| lie | size (× max \\|row\\|) | rounds | lies | caught | rate | passed | largest error passed, after unblinding (× max \\|row\\|) |");
    rep.emit("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (const auto& r : rows) {
      const int64_t passed = r.trials - r.caught;
      std::snprintf(buf, sizeof buf, "| %s | %.0e | %d | %lld | %lld | %.4f | %.2e | %s |", tamper_name(r.kind).c_str(),
                    r.size, r.rounds, static_cast<long long>(r.trials), static_cast<long long>(r.caught),
                    r.trials ? static_cast<double>(r.caught) / static_cast<double>(r.trials) : 0.0,
                    r.trials ? static_cast<double>(passed) / static_cast<double>(r.trials) : 0.0,
                    passed > 0 ? fmt_sci(r.passed_error).c_str() : "–");
      rep.emit(buf);
    }
    rep.emit("");
  };
  table(measure_detection({Tamper::kEntry, Tamper::kPair, Tamper::kRow}, {1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7},
                          {1, 2}, c.trials, c.tau, c.seed));
  rep.emit("### Two-entry lies, large sample (the rare passes of several rounds)");
  rep.emit("");
  table(measure_detection({Tamper::kPair}, {1e-2}, {1, 2}, c.pair_trials, c.tau, c.seed + 11));
  Progress bar("honest products", c.products, true);
  const HonestReport h = measure_false_alarms(c.products, c.tau, c.seed + 7, [&](int64_t n) { bar.update(n); });
  bar.finish();
  rep.emit("### False alarms on an honest worker");
  rep.emit("");
  rep.emit("| products | false alarms | τ in force | smallest τ with no false alarm |");
  rep.emit("|---:|---:|---:|---:|");
  std::snprintf(buf, sizeof buf, "| %lld | %lld | %.1f | %.3f |", static_cast<long long>(h.products),
                static_cast<long long>(h.false_alarms), h.tau, h.worst_tau);
  rep.emit(buf);
  rep.write(c.table);
  return h.false_alarms == 0 ? 0 : 3;
}

}  // namespace tempo::cli
