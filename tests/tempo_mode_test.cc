// Tempo mode end to end: training through in-process workers matches
// tee-only training; lying workers are caught every time with no false
// alarms; and no plaintext row reaches a worker. Runs that compare weights
// use fixed secrets (secret_from_seed): keys change the rounding, and a
// rounding difference at a ReLU kink can grow past the tolerance in a small
// fraction of random-key runs; with fixed keys each run repeats exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <unordered_set>

#include "common/error.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/io/safetensors.h"
#include "trusted/offload/offload_backend.h"
#include "trusted/model.h"
#include "trusted/nn/layers.h"
#include "trusted/trainer.h"
#include "eval/doubles/faulty_worker.h"
#include "worker/local_worker.h"
#include "process_util.h"
#include "test_util.h"

namespace tempo {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir() {
  static fs::path dir = [] {
    char tmpl[] = "/tmp/tempo_mode_test.XXXXXX";
    char* d = mkdtemp(tmpl);
    return fs::path(d ? d : "/tmp");
  }();
  return dir;
}

TrainConfig small_run(const std::string& save, int64_t steps = 12) {
  TrainConfig c = testutil::small_cnn_run(save, (temp_dir() / "init.safetensors").string(), steps);
  c.mode = "tee-only";
  return c;
}

std::vector<std::unique_ptr<WorkerApi>> local_workers(int n) {
  std::vector<std::unique_ptr<WorkerApi>> ws;
  for (int i = 0; i < n; ++i)
    ws.push_back(std::make_unique<LocalWorker>("local:" + std::to_string(i), make_cpu_backend()));
  return ws;
}

const std::string& tee_only_reference() {
  static std::string path = [] {
    std::string p = (temp_dir() / "tee.safetensors").string();
    train(small_run(p));
    return p;
  }();
  return path;
}

struct ModeCase {
  int workers;
  bool key_shift;
  int mask_rank = 0;
  int row_mix = 0;
  int col_mix = 0;
};

class TempoParity : public ::testing::TestWithParam<ModeCase> {};

// Key seeds below are fixed numbers (once the line each test was on): the
// errors these tests print are those of these keys, whatever is edited
// around them.

TEST_P(TempoParity, MatchesTeeOnlyTraining) {
  const auto [nw, shift, mask, mix, col] = GetParam();
  std::string out = (temp_dir() / ("tempo_" + std::to_string(nw) + (shift ? "s" : "n") + std::to_string(mask) + "_" +
                                   std::to_string(mix) + "_" + std::to_string(col) + ".safetensors")).string();
  TrainConfig c = small_run(out);
  c.mode = "tempo";
  c.offload.key_shift = shift;
  c.offload.mask_rank = mask;
  c.offload.row_mix = mix;
  c.offload.col_mix = col;
  OffloadBackend be(c.offload, local_workers(nw), secret_from_seed(80));
  train(c, &be);
  EXPECT_EQ(be.stats().rejected, 0) << "false alarm on honest workers";
  EXPECT_EQ(be.stats().local_fallbacks, 0);
  EXPECT_GT(be.stats().products, 0);
  if (mask > 0) EXPECT_GT(be.stats().masked, 0);
  else EXPECT_EQ(be.stats().masked, 0);
  if (mix > 0) EXPECT_GT(be.stats().mixed, 0);
  else EXPECT_EQ(be.stats().mixed, 0);
  if (col > 0) EXPECT_GT(be.stats().col_mixed, 0);
  else EXPECT_EQ(be.stats().col_mixed, 0);
  // With several workers the fully connected layer (batch 32 < 128 outputs)
  // is split by columns, the convolution by rows.
  if (nw > 1) EXPECT_GT(be.stats().column_splits, 0);
  else EXPECT_EQ(be.stats().column_splits, 0);
  // Without the key shift, dW and dA of a layer go to two workers at once.
  if (nw > 1 && !shift) EXPECT_GT(be.stats().apart, 0);
  else EXPECT_EQ(be.stats().apart, 0);
  const double err = testutil::max_rel_error(out, tee_only_reference());
  std::printf("tempo, %d worker(s), key shift %s, mask rank %d, row mix %d, column mix %d: max error %.3g·max|w|\n",
              nw, shift ? "on" : "off", mask, mix, col, err);
  EXPECT_LT(err, 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Workers, TempoParity,
                         // Keys only; the mixing alone; the mask alone; both (the defaults).
                         ::testing::Values(ModeCase{1, true}, ModeCase{1, false}, ModeCase{3, true},
                                           ModeCase{3, false}, ModeCase{1, true, 0, 8}, ModeCase{3, false, 0, 8},
                                           ModeCase{1, true, 64, 0}, ModeCase{1, true, 64, 8},
                                           ModeCase{3, false, 64, 8},
                                           // The column mixing alone, and with everything.
                                           ModeCase{1, true, 0, 0, 8}, ModeCase{3, false, 0, 0, 8},
                                           ModeCase{1, true, 64, 8, 8}, ModeCase{3, false, 64, 8, 8}),
                         [](const ::testing::TestParamInfo<ModeCase>& i) {
                           return std::to_string(i.param.workers) + "workers" + (i.param.key_shift ? "Shift" : "NoShift") +
                                  "Mask" + std::to_string(i.param.mask_rank) + "Mix" + std::to_string(i.param.row_mix) +
                                  (i.param.col_mix ? "Col" + std::to_string(i.param.col_mix) : "");
                         });

// Placement (--local-below): convolutions narrower than the threshold stay
// in the master, the first and last layers as before, everything else is
// offloaded; 0 offloads every convolution but the first. A run with the
// default placement offloads fewer products and still matches tee-only.
TEST(Placement, NarrowConvolutionsStayInTheMaster) {
  auto model = build_model("resnet18", 0);
  for (const int64_t below : {int64_t{0}, int64_t{128}, int64_t{256}, int64_t{512}}) {
    model->set_offload(false, false, below);
    int kept = 0, offloaded = 0;
    const size_t n = model->product_layers.size();
    for (size_t i = 0; i < n; ++i) {
      const Layer* l = model->product_layers[i];
      const auto* conv = dynamic_cast<const Conv2d*>(l);
      const bool narrow = conv && conv->out_channels < below;
      EXPECT_EQ(l->offloaded, i > 0 && i + 1 < n && !narrow) << "product layer " << i << ", --local-below " << below;
      if (i > 0 && i + 1 < n) (l->offloaded ? offloaded : kept) += 1;
    }
    // resnet18: layer1's four 64-channel convolutions, layer2's five of 128,
    // layer3's five of 256.
    EXPECT_EQ(kept, below == 0 ? 0 : below == 128 ? 4 : below == 256 ? 9 : 14) << "--local-below " << below;
    EXPECT_GT(offloaded, 0);
  }
  model->set_offload(true, true, 0);
  for (const Layer* l : model->product_layers) EXPECT_TRUE(l->offloaded);
  // Asked for, the first layer (64 channels) is offloaded whatever its width.
  model->set_offload(true, false, 256, 128);
  EXPECT_TRUE(model->product_layers.front()->offloaded);
  EXPECT_FALSE(model->product_layers.back()->offloaded);
  // A full-rank mask's corrections: 1×1 convolutions from 64 and 128
  // channels stay (resnet18's downsampling from layer1 and layer2), the one
  // from 256 channels goes, whatever the width rule says.
  model->set_offload(false, false, 0, 128);
  for (const Layer* l : model->product_layers)
    if (const auto* conv = dynamic_cast<const Conv2d*>(l); conv && conv->kernel == 1)
      EXPECT_EQ(l->offloaded, conv->in_channels > 128) << "1×1 from " << conv->in_channels;
  TrainConfig t;
  EXPECT_EQ(local_inner(t), 2 * OffloadConfig{}.mask_rank);
  t.offload.mask_rank = 0;
  EXPECT_EQ(local_inner(t), 0);
  t.offload.mask_rank = 8, t.local_below = 0;
  EXPECT_EQ(local_inner(t), 0) << "--local-below 0 offloads every convolution";
  t.local_below = 256, t.mode = "offload";
  EXPECT_EQ(local_inner(t), 0);

  auto run = [](int64_t below, const std::string& out) {
    TrainConfig c = small_run(out, 6);
    c.mode = "tempo";
    c.local_below = below;
    OffloadBackend be(c.offload, local_workers(1), secret_from_seed(81));
    train(c, &be);
    EXPECT_EQ(be.stats().rejected, 0);
    return be.stats().products;
  };
  const std::string placed = (temp_dir() / "placed.safetensors").string();
  const int64_t all = run(0, (temp_dir() / "all_convs.safetensors").string());
  const int64_t fewer = run(kDefaultLocalBelow, placed);
  // cnn: conv2 (64 channels) stays in the master, fc1 is offloaded.
  EXPECT_GT(fewer, 0);
  EXPECT_LT(fewer, all);
  TrainConfig tee = small_run((temp_dir() / "tee6.safetensors").string(), 6);
  train(tee);
  const double err = testutil::max_rel_error(placed, (temp_dir() / "tee6.safetensors").string());
  std::printf("default placement: %lld products against %lld with every convolution offloaded; max error %.3g·max|w|\n",
              static_cast<long long>(fewer), static_cast<long long>(all), err);
  EXPECT_LT(err, 1e-3);
}

// The evaluation after each epoch runs at the training batch size (so that
// it reuses the step's buffers): its result must not depend on the batch
// size (BatchNorm uses its running statistics, partial batches count by
// their size), and through blinded workers it must match the master's own.
TEST(Evaluation, SameResultAtAnyBatchSizeAndThroughWorkers) {
  TrainConfig c = small_run("");
  c.init = tee_only_reference();  // 12 trained steps
  c.mode = "tempo";
  std::unique_ptr<Model> model = prepare_model(c);
  const Dataset data = load_dataset(c.data, model->input_shape, static_cast<uint64_t>(c.seed));
  ASSERT_EQ(data.test_y.size(), 128u);
  TeeOnlyBackend tee;
  const EvalResult ref = evaluate(*model, data, 128, tee);
  EXPECT_EQ(ref.samples, 128);
  for (int64_t b : {1, 17, 50}) {  // 50: two full batches and one of 28
    const EvalResult r = evaluate(*model, data, b, tee);
    EXPECT_EQ(r.samples, 128);
    EXPECT_NEAR(r.loss, ref.loss, 1e-5 * std::fabs(ref.loss)) << "batch " << b;
    EXPECT_LE(std::abs(r.correct - ref.correct), 1) << "batch " << b;
  }
  OffloadBackend be(c.offload, local_workers(2), secret_from_seed(139));
  const EvalResult t = evaluate(*model, data, 32, be);
  EXPECT_GT(be.stats().masked, 0);
  EXPECT_EQ(be.stats().rejected, 0);
  EXPECT_NEAR(t.loss, ref.loss, 1e-4 * std::fabs(ref.loss));
  EXPECT_LE(std::abs(t.correct - ref.correct), 1);
  std::printf("evaluation: loss %.6f, %lld/128 correct at batch 128; through 2 blinded workers at batch 32: %.6f, %lld\n",
              ref.loss, static_cast<long long>(ref.correct), t.loss, static_cast<long long>(t.correct));

  // resnet18 (BatchNorm in eval mode) on CIFAR-shaped synthetic data.
  std::unique_ptr<Model> rn = build_model("resnet18", 5);
  const Dataset cifar = load_dataset("synthetic:160", rn->input_shape, 5);
  const EvalResult r32 = evaluate(*rn, cifar, 32, tee), r7 = evaluate(*rn, cifar, 7, tee);
  EXPECT_EQ(r7.samples, 32);
  EXPECT_NEAR(r7.loss, r32.loss, 1e-5 * std::fabs(r32.loss));
  EXPECT_LE(std::abs(r7.correct - r32.correct), 1);
}

class Tampering : public ::testing::TestWithParam<std::string> {};

TEST_P(Tampering, EveryLieIsCaughtAndTrainingStaysCorrect) {
  std::string out = (temp_dir() / ("tamper_" + GetParam() + ".safetensors")).string();
  TrainConfig c = small_run(out);
  c.mode = "tempo";
  c.offload.quarantine_after = 1 << 20;  // keep the liar in the pool: test every lie
  auto ws = local_workers(2);
  auto* liar = new TamperingWorker(std::move(ws[1]), parse_tamper(GetParam()), 0.3, 42);
  ws[1].reset(liar);
  OffloadBackend be(c.offload, std::move(ws), secret_from_seed(167));
  train(c, &be);
  std::printf("%s: %lld lies, %lld rejected\n", GetParam().c_str(), static_cast<long long>(liar->tampered()),
              static_cast<long long>(be.stats().rejected));
  EXPECT_GT(liar->tampered(), 5);
  EXPECT_EQ(be.stats().rejected, liar->tampered()) << "every lie caught, no false alarm";
  EXPECT_GT(be.stats().column_splits, 0) << "lies in column-split products are traced to the liar too";
  EXPECT_LT(testutil::max_rel_error(out, tee_only_reference()), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Kinds, Tampering, ::testing::Values("entry", "row", "zeros", "nan", "inf", "shape"));

// The same without the key shift: dW and dA of a layer run on different
// workers at once, and a lie in either is traced to its worker.
TEST(Tampering, LiesInBackwardProductsOnTwoWorkersAreCaught) {
  std::string out = (temp_dir() / "tamper_apart.safetensors").string();
  TrainConfig c = small_run(out);
  c.mode = "tempo";
  c.offload.key_shift = false;
  c.offload.quarantine_after = 1 << 20;
  auto ws = local_workers(2);
  auto* liar = new TamperingWorker(std::move(ws[1]), Tamper::kEntry, 0.3, 43);
  ws[1].reset(liar);
  OffloadBackend be(c.offload, std::move(ws), secret_from_seed(190));
  train(c, &be);
  std::printf("no key shift: %lld lies, %lld rejected, %lld backward passes apart\n",
              static_cast<long long>(liar->tampered()), static_cast<long long>(be.stats().rejected),
              static_cast<long long>(be.stats().apart));
  EXPECT_GT(liar->tampered(), 5);
  EXPECT_GT(be.stats().apart, 0);
  EXPECT_EQ(be.stats().rejected, liar->tampered()) << "every lie caught, no false alarm";
  EXPECT_LT(testutil::max_rel_error(out, tee_only_reference()), 1e-3);
}

TEST(Quarantine, LiarIsDroppedAfterConfiguredFailures) {
  std::string out = (temp_dir() / "quarantine.safetensors").string();
  TrainConfig c = small_run(out);
  c.mode = "tempo";
  c.offload.quarantine_after = 2;
  auto ws = local_workers(2);
  auto* liar = new TamperingWorker(std::move(ws[0]), Tamper::kEntry, 1.0, 1);
  ws[0].reset(liar);
  OffloadBackend be(c.offload, std::move(ws), secret_from_seed(209));
  train(c, &be);
  EXPECT_EQ(be.healthy_workers(), 1u);
  EXPECT_EQ(be.stats().rejected, 2);
  EXPECT_LT(testutil::max_rel_error(out, tee_only_reference()), 1e-3);
}

TEST(Fallback, NoWorkerLeftContinuesInMasterOrStops) {
  std::string out = (temp_dir() / "fallback.safetensors").string();
  TrainConfig c = small_run(out);
  c.mode = "tempo";
  c.offload.quarantine_after = 1;
  {
    auto ws = local_workers(1);
    ws[0] = std::make_unique<TamperingWorker>(std::move(ws[0]), Tamper::kZeros, 1.0, 1);
    OffloadBackend be(c.offload, std::move(ws), secret_from_seed(224));
    train(c, &be);
    EXPECT_EQ(be.healthy_workers(), 0u);
    EXPECT_GT(be.stats().local_fallbacks, 0);
    EXPECT_LT(testutil::max_rel_error(out, tee_only_reference()), 1e-3);
  }
  c.offload.fallback = false;
  std::filesystem::remove(out);
  auto ws = local_workers(1);
  auto* liar = new TamperingWorker(std::move(ws[0]), Tamper::kZeros, 1.0, 5, 20);  // lies from the 21st product
  ws[0].reset(liar);
  OffloadBackend be(c.offload, std::move(ws), secret_from_seed(235));
  EXPECT_THROW(train(c, &be), Error);
  // The first lie stops the run; the other backward half, sent beside it,
  // may have been answered (and lied about) too.
  EXPECT_GE(liar->tampered(), 1);
  EXPECT_LE(liar->tampered(), 2);
  // The weights of the last completed step were saved before stopping.
  EXPECT_TRUE(std::filesystem::exists(out));
  EXPECT_NO_THROW(build_model("cnn", 0)->load(out));
}

// ---- What a worker sees ---------------------------------------------------------

// Records the plaintext operands of every product (master side).
class PlaintextTap final : public LinearBackend {
 public:
  explicit PlaintextTap(LinearBackend& inner) : inner_(inner) {}
  const char* name() const override { return "tap"; }
  void forward(const Product& p, float* c) override {
    rows(p.a, p.m, p.k);
    rows(p.w, p.n, p.k);
    inner_.forward(p, c);
  }
  void backward_input(const Product& p, const float* dc, float* da) override {
    rows(dc, p.m, p.n);
    inner_.backward_input(p, dc, da);
  }
  void backward_weight(const Product& p, const float* dc, float* dw) override {
    rows(dc, p.m, p.n);
    inner_.backward_weight(p, dc, dw);
  }
  void end_step() override { inner_.end_step(); }
  std::vector<uint64_t> windows;

 private:
  void rows(const float* x, int64_t r, int64_t c);
  LinearBackend& inner_;
};

// Hash of 8 consecutive values up to a common factor; 0 if any is zero or
// all are equal (such windows say nothing).
uint64_t window_hash(const float* w) {
  bool same = true;
  for (int i = 0; i < 8; ++i) {
    if (w[i] == 0.0f || !std::isfinite(w[i])) return 0;
    same = same && w[i] == w[0];
  }
  if (same) return 0;
  uint64_t h = 1469598103934665603ULL;
  for (int i = 1; i < 8; ++i) {
    const double q = std::round(static_cast<double>(w[i]) / w[0] * 1e4);
    h = (h ^ static_cast<uint64_t>(static_cast<int64_t>(q))) * 1099511628211ULL;
  }
  return h ? h : 1;
}

void collect_windows(const float* x, int64_t r, int64_t c, std::vector<uint64_t>& out) {
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j + 8 <= c; ++j)
      if (uint64_t h = window_hash(x + i * c + j)) out.push_back(h);
}

void PlaintextTap::rows(const float* x, int64_t r, int64_t c) { collect_windows(x, r, c, windows); }

size_t leaked_windows(const std::string& mode, size_t* plaintext_windows) {
  TrainConfig c = small_run("", 3);
  c.batch_size = 8;
  c.mode = mode;
  c.offload.insecure_identity = mode == "offload";
  auto ws = local_workers(1);
  auto* rec = new RecordingWorker(std::move(ws[0]));
  ws[0].reset(rec);
  OffloadBackend be(c.offload, std::move(ws), random_secret());
  PlaintextTap tap(be);
  train(c, &tap);
  std::vector<uint64_t> seen;
  for (const auto& r : rec->records())
    if (r.received) collect_windows(r.data.data(), r.rows, r.cols, seen);
  std::sort(seen.begin(), seen.end());
  std::sort(tap.windows.begin(), tap.windows.end());
  tap.windows.erase(std::unique(tap.windows.begin(), tap.windows.end()), tap.windows.end());
  *plaintext_windows = tap.windows.size();
  size_t hits = 0;
  for (uint64_t h : tap.windows) hits += std::binary_search(seen.begin(), seen.end(), h);
  return hits;
}

TEST(Transcript, NoPlaintextRowReachesAWorker) {
  size_t total = 0;
  const size_t leaks = leaked_windows("tempo", &total);
  std::printf("tempo: %zu of %zu plaintext 8-windows found in the transcript\n", leaks, total);
  EXPECT_GT(total, 10000u);
  EXPECT_EQ(leaks, 0u);
}

TEST(Transcript, DetectorFindsPlaintextInOffloadMode) {
  size_t total = 0;
  const size_t leaks = leaked_windows("offload", &total);
  std::printf("offload: %zu of %zu plaintext 8-windows found in the transcript\n", leaks, total);
  EXPECT_GT(leaks, total / 2);
}

}  // namespace
}  // namespace tempo

namespace tempo {
namespace {

// Decrypted worker results against plaintext products, both conv modes.
using testutil::normal_vec;

double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double mx = 1e-30, err = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    mx = std::max(mx, std::fabs(double(b[i])));
    err = std::max(err, std::fabs(double(a[i]) - b[i]));
  }
  return err / mx;
}

TEST(Decryption, Im2colProductsEqualPlaintext) {
  for (int shift = 0; shift < 2; ++shift) {
    OffloadConfig oc;
    oc.key_shift = shift == 1;
    OffloadBackend be(oc, local_workers(2), secret_from_seed(359));
    TeeOnlyBackend tee;
    const int64_t m = 97, k = 61, n = 13;
    auto a = normal_vec(m * k, 1), w = normal_vec(n * k, 2), dc = normal_vec(m * n, 3);
    Product p{0, "test", a.data(), w.data(), m, k, n};
    std::vector<float> c1(m * n), c2(m * n), da1(m * k), da2(m * k), dw1(n * k), dw2(n * k);
    be.forward(p, c1.data());
    tee.forward(p, c2.data());
    be.backward_input(p, dc.data(), da1.data());
    tee.backward_input(p, dc.data(), da2.data());
    be.backward_weight(p, dc.data(), dw1.data());
    tee.backward_weight(p, dc.data(), dw2.data());
    be.end_step();
    EXPECT_LT(rel_diff(c1, c2), 1e-5);
    EXPECT_LT(rel_diff(da1, da2), 1e-5);
    EXPECT_LT(rel_diff(dw1, dw2), 1e-5);
    EXPECT_EQ(be.stats().rejected, 0);
  }
}

// The additive mask and the row mixing: results still equal the plaintext
// products (forward, each backward product alone and both at once; with and
// without the key shift, on one and two workers). Without either, every zero
// of a post-ReLU operand and of a sparse output gradient reaches a worker;
// with the mask no zero of A does; with the mixing a zero survives only where
// a whole group of rows has one.
TEST(Decryption, BlindedProductsEqualPlaintextAndHideZeros) {
  const int64_t m = 97, k = 61, n = 13;
  auto a = normal_vec(m * k, 1), w = normal_vec(n * k, 2), dc = normal_vec(m * n, 3);
  int64_t plain_zeros = 0;
  for (auto& x : a) plain_zeros += (x = std::max(x, 0.0f)) == 0.0f;  // post-ReLU: half zeros
  for (auto& x : dc) x = std::max(x, 0.0f);                           // ReLU backward: half zeros
  ASSERT_GT(plain_zeros, m * k / 3);
  TeeOnlyBackend tee;
  Product p{0, "test", a.data(), w.data(), m, k, n};
  std::vector<float> c2(m * n), da2(m * k), dw2(n * k);
  tee.forward(p, c2.data());
  tee.backward_input(p, dc.data(), da2.data());
  tee.backward_weight(p, dc.data(), dw2.data());
  for (int rank : {0, 8}) {
    for (int mix : {0, 8}) {
      for (int shift = 0; shift < 2; ++shift) {
        for (int nw : {1, 2}) {
         for (int col : {0, 8}) {
          OffloadConfig oc;
          oc.key_shift = shift == 1;
          oc.mask_rank = rank;
          oc.row_mix = mix;
          oc.col_mix = col;
          auto ws = local_workers(nw);
          auto* rec = new RecordingWorker(std::move(ws[0]));
          ws[0].reset(rec);
          OffloadBackend be(oc, std::move(ws), secret_from_seed(__LINE__ + 10 * rank + 100 * mix + shift + 1000 * col));
          for (int both = 0; both < 2; ++both) {
            std::vector<float> c1(m * n), da1(m * k), dw1(n * k);
            be.forward(p, c1.data());
            if (both) {
              be.backward(p, dc.data(), dw1.data(), da1.data());
            } else {
              be.backward_input(p, dc.data(), da1.data());
              be.backward_weight(p, dc.data(), dw1.data());
            }
            be.end_step();
            SCOPED_TRACE("rank " + std::to_string(rank) + ", mix " + std::to_string(mix) + ", col " +
                         std::to_string(col) + ", shift " + std::to_string(shift) + ", workers " +
                         std::to_string(nw) + ", both " + std::to_string(both));
            EXPECT_LT(rel_diff(c1, c2), 1e-5);
            EXPECT_LT(rel_diff(da1, da2), 1e-5);
            EXPECT_LT(rel_diff(dw1, dw2), 1e-5);
          }
          EXPECT_EQ(be.stats().rejected, 0);
          EXPECT_EQ(be.stats().masked, rank > 0 ? 2 : 0);
          EXPECT_EQ(be.stats().mixed, mix > 0 ? 2 : 0);
          EXPECT_EQ(be.stats().col_mixed, col > 0 ? 2 : 0);
          // Zeros in what the first worker received: operands of the shape
          // of A', and of the output gradient G' (m×n).
          int64_t zeros = 0, seen = 0, g_zeros = 0, g_seen = 0;
          for (const auto& r : rec->records()) {
            if (!r.received) continue;
            if (r.cols == k && r.rows != n) {
              seen += static_cast<int64_t>(r.data.size());
              for (float x : r.data) zeros += x == 0.0f;
            } else if (r.cols == n && r.rows != k) {
              g_seen += static_cast<int64_t>(r.data.size());
              for (float x : r.data) g_zeros += x == 0.0f;
            }
          }
          ASSERT_GT(seen, 0);
          ASSERT_GT(g_seen, 0);
          SCOPED_TRACE("rank " + std::to_string(rank) + ", mix " + std::to_string(mix) + ", col " +
                       std::to_string(col));
          if (rank > 0) EXPECT_EQ(zeros, 0) << "a zero of the plaintext reached a worker";
          // A zero left needs all 8 rows of a group (or 8 columns) zero: 1 in 256.
          else if (mix > 0 || col > 0) EXPECT_LT(zeros, seen / 50);
          else EXPECT_GT(zeros, seen / 3);
          // The column mixing leaves the output gradient (m×n) as it is.
          if (mix > 0) EXPECT_LT(g_zeros, g_seen / 50);
          else EXPECT_GT(g_zeros, g_seen / 3);
         }
        }
      }
    }
  }
}

// `steps` forward and backward passes of one 97×61×13 product through be,
// fresh operands every step in the same buffers (as a layer keeps them),
// each result within 1e-5 of the master's own.
void expect_steps_match_tee_only(OffloadBackend& be, int steps, int seed, bool relu) {
  const int64_t m = 97, k = 61, n = 13;
  TeeOnlyBackend tee;
  std::vector<float> a(m * k), w(n * k), dc(m * n);
  for (int step = 0; step < steps; ++step) {
    for (auto [v, s] : {std::pair{&a, seed}, {&w, seed + 10}, {&dc, seed + 20}}) {
      const auto x = normal_vec(static_cast<int64_t>(v->size()), s + step);
      std::copy(x.begin(), x.end(), v->begin());
    }
    if (relu)
      for (auto& x : a) x = std::max(x, 0.0f);
    Product p{0, "test", a.data(), w.data(), m, k, n};
    std::vector<float> c1(m * n), da1(m * k), dw1(n * k), c2(m * n), da2(m * k), dw2(n * k);
    tee.forward(p, c2.data());
    tee.backward_input(p, dc.data(), da2.data());
    tee.backward_weight(p, dc.data(), dw2.data());
    be.forward(p, c1.data());
    be.backward(p, dc.data(), dw1.data(), da1.data());
    be.end_step();
    EXPECT_LT(rel_diff(c1, c2), 1e-5) << "step " << step;
    EXPECT_LT(rel_diff(da1, da2), 1e-5) << "step " << step;
    EXPECT_LT(rel_diff(dw1, dw2), 1e-5) << "step " << step;
  }
}

// Training changes the weight (and the input) between steps while the
// blinding's buffers and the key shift's held ciphertexts stay: every step's
// results must be those of that step's operands, for every blinding.
TEST(Decryption, BlindedProductsFollowChangingOperands) {
  for (int rank : {0, 8})
    for (int mix : {0, 8})
      for (int col : {0, 8})
        for (int shift = 0; shift < 2; ++shift) {
          OffloadConfig oc;
          oc.key_shift = shift == 1;
          oc.mask_rank = rank;
          oc.row_mix = mix;
          oc.col_mix = col;
          OffloadBackend be(oc, local_workers(1), secret_from_seed(7 + rank + mix + col + shift));
          SCOPED_TRACE("rank " + std::to_string(rank) + ", mix " + std::to_string(mix) + ", col " +
                       std::to_string(col) + ", shift " + std::to_string(shift));
          expect_steps_match_tee_only(be, 3, 10, true);
          EXPECT_EQ(be.stats().rejected, 0);
        }
}

// A row-mixed A is encrypted straight from the blinding's pass and not
// written (Blinding::pass, write_a false); whatever reads it later (a retry
// after a lie, the fallback to the master, a weight check without the
// forward's row sums) has it made again first. Changing operands every step
// make an A left unwritten (last step's) give wrong results.
TEST(Decryption, BlindedOperandIsMadeAgainWhereverItIsRead) {
  struct Case {
    const char* what;
    int workers;         // the last one lies on every product it answers
    int quarantine;      // failures before a worker is dropped
    double verify_rate;  // < 1: some weight checks run without the forward's row sums
  };
  for (const Case& cs : {Case{"retry after a lie", 2, 1 << 20, 1.0}, Case{"fallback to the master", 1, 1, 1.0},
                         Case{"weight checks without row sums", 1, 1 << 20, 0.5}}) {
    for (int shift = 0; shift < 2; ++shift) {
      OffloadConfig oc;
      oc.key_shift = shift == 1;
      oc.mask_rank = 8;
      oc.row_mix = 8;
      oc.col_mix = 8;
      oc.quarantine_after = cs.quarantine;
      oc.verify.rate = cs.verify_rate;
      oc.log = false;
      auto ws = local_workers(cs.workers);
      TamperingWorker* liar = nullptr;
      if (cs.verify_rate >= 1) {
        liar = new TamperingWorker(std::move(ws.back()), Tamper::kEntry, 1.0, 11, 0, 0.5f);
        ws.back().reset(liar);
      }
      OffloadBackend be(oc, std::move(ws), secret_from_seed(31 + shift));
      SCOPED_TRACE(std::string(cs.what) + ", shift " + std::to_string(shift));
      expect_steps_match_tee_only(be, 8, 40, false);
      if (liar) EXPECT_EQ(be.stats().rejected, liar->tampered()) << "every lie caught, no false alarm";
      if (cs.quarantine == 1) EXPECT_GT(be.stats().local_fallbacks, 0);
      if (cs.verify_rate < 1) EXPECT_EQ(be.stats().rejected, 0);
    }
  }
}

TEST(Decryption, ChannelModeConvolutionsEqualPlaintext) {
  for (int shift = 0; shift < 2; ++shift) {
    OffloadConfig oc;
    oc.key_shift = shift == 1;
    OffloadBackend be(oc, local_workers(1), secret_from_seed(510));
    TeeOnlyBackend tee;
    ConvGeometry g = ConvGeometry::make(5, 7, 11, 9, 6, 3, 2, 1);
    auto x = normal_vec(g.n * g.c * g.h * g.w, 4), w = normal_vec(g.o * g.c * 9, 5);
    auto dy = normal_vec(g.n * g.o * g.oh * g.ow, 6);
    ConvProduct p{0, "conv", x.data(), w.data(), g};
    std::vector<float> y1(dy.size()), y2(dy.size()), dx1(x.size()), dx2(x.size()), dw1(w.size()), dw2(w.size());
    be.conv_forward(p, y1.data());
    tee.conv_forward(p, y2.data());
    be.conv_backward_input(p, dy.data(), dx1.data());
    tee.conv_backward_input(p, dy.data(), dx2.data());
    be.conv_backward_weight(p, dy.data(), dw1.data());
    tee.conv_backward_weight(p, dy.data(), dw2.data());
    be.end_step();
    EXPECT_LT(rel_diff(y1, y2), 1e-5);
    EXPECT_LT(rel_diff(dx1, dx2), 1e-5);
    EXPECT_LT(rel_diff(dw1, dw2), 1e-5);
    EXPECT_EQ(be.stats().rejected, 0) << "false alarm in channel mode";
  }
}

TEST(ChannelMode, TrainingMatchesTeeOnly) {
  std::string out = (temp_dir() / "channel.safetensors").string();
  TrainConfig c = small_run(out);
  c.mode = "tempo";
  c.conv_mode = "channel";
  c.channel_from = 1;
  OffloadBackend be(c.offload, local_workers(2), secret_from_seed(537));
  train(c, &be);
  EXPECT_EQ(be.stats().rejected, 0);
  const double err = testutil::max_rel_error(out, tee_only_reference());
  std::printf("channel mode: max error %.3g·max|w|\n", err);
  EXPECT_LT(err, 1e-3);
}

TEST(ChannelMode, EveryLieIsCaught) {
  std::string out = (temp_dir() / "channel_tamper.safetensors").string();
  TrainConfig c = small_run(out);
  c.mode = "tempo";
  c.conv_mode = "channel";
  c.channel_from = 1;
  c.offload.quarantine_after = 1 << 20;
  auto ws = local_workers(1);
  // Lies of 10% of their row's largest entry: a channel-mode weight
  // gradient sums 6272 products per entry, and where they cancel, 1% of a
  // row's largest entry can fall under the check's round-off bound (a lie
  // of that size is then harmless, and undetectable by design; the
  // integrity suite measures detection against lie size).
  auto* liar = new TamperingWorker(std::move(ws[0]), Tamper::kEntry, 0.3, 9, 0, 0.1f);
  ws[0].reset(liar);
  OffloadBackend be(c.offload, std::move(ws), secret_from_seed(434));
  train(c, &be);
  EXPECT_GT(liar->tampered(), 5);
  EXPECT_EQ(be.stats().rejected, liar->tampered());
  EXPECT_LT(testutil::max_rel_error(out, tee_only_reference()), 1e-3);
}

// Settings that weaken the protection are said on stderr as loudly as
// offload mode; the defaults say nothing of the kind.
TEST(Weakening, IsSaidLoudly) {
  testutil::TempDir d("weak");
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{}, ""},
      {{"--key-scale", "1"}, "WARNING: WEAKENED --key-scale 1"},
      {{"--verify-rounds", "0"}, "WARNING: UNCHECKED --verify-rounds 0"},
      {{"--verify-rate", "0"}, "WARNING: UNCHECKED --verify-rate 0"},
      {{"--verify-rate", "0.5"}, "warning: --verify-rate 0.5"}};
  for (const auto& [flags, said] : cases) {
    std::vector<std::string> args = {TEMPO_BINARY, "train", "--data", "synthetic:64", "--steps", "1",
                                     "--batch-size", "32", "--threads", "1", "--no-progress"};
    args.insert(args.end(), flags.begin(), flags.end());
    const std::string log = d / "out.log";
    ASSERT_EQ(wait_exit(spawn(args, log), 120), 0) << read_text(log);
    const std::string out = read_text(log);
    if (said.empty())
      EXPECT_EQ(out.find("WARNING"), std::string::npos) << out;
    else
      EXPECT_NE(out.find(said), std::string::npos) << out;
  }
}

// TF32 products cannot be checked (tests/obfuscation_test.cc,
// Freivalds.Tf32BoundAdmitsLargeLies): --tf32 is refused while results are,
// and runs, loudly unchecked, with --verify-rounds 0.
TEST(Weakening, Tf32IsRefusedWhileResultsAreChecked) {
  testutil::TempDir d("tf32");
  const std::vector<std::string> base = {TEMPO_BINARY, "train", "--data", "synthetic:64", "--steps", "1",
                                         "--batch-size", "32", "--threads", "1", "--no-progress", "--tf32"};
  const std::string log = d / "out.log";
  EXPECT_EQ(wait_exit(spawn(base, log), 120), 1) << read_text(log);
  EXPECT_NE(read_text(log).find("tempo: error: --tf32 cannot be checked"), std::string::npos) << read_text(log);
  std::vector<std::string> unchecked = base;
  unchecked.insert(unchecked.end(), {"--verify-rounds", "0"});
  EXPECT_EQ(wait_exit(spawn(unchecked, log), 120), 0) << read_text(log);
  EXPECT_NE(read_text(log).find("WARNING: UNCHECKED"), std::string::npos) << read_text(log);
}

// Records the handles a worker is given.
class HandleSpy final : public WorkerApi {
 public:
  HandleSpy(std::unique_ptr<WorkerApi> inner, std::vector<Handle>* seen) : inner_(std::move(inner)), seen_(seen) {}
  std::string name() const override { return inner_->name(); }
  void put(Handle h, const CipherMatrix& m) override {
    seen_->push_back(h);
    inner_->put(h, m);
  }
  std::future<Matrix> product(ProductOp op, Handle x, Handle y, int64_t groups) override {
    return inner_->product(op, x, y, groups);
  }
  std::future<Matrix> conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) override {
    return inner_->conv(op, a, b, g);
  }
  void release(Handle h) override { inner_->release(h); }
  void end_step() override { inner_->end_step(); }

 private:
  std::unique_ptr<WorkerApi> inner_;
  std::vector<Handle>* seen_;
};

// Handles are random: they do not count the products, workers and retries
// of a run for the workers (a counter shared by all workers did).
TEST(Handles, AreRandomPerWorker) {
  std::vector<Handle> seen[2];
  std::vector<std::unique_ptr<WorkerApi>> ws;
  for (int i = 0; i < 2; ++i)
    ws.push_back(std::make_unique<HandleSpy>(std::make_unique<LocalWorker>("local:" + std::to_string(i),
                                                                           make_cpu_backend()),
                                             &seen[i]));
  TrainConfig c = small_run((temp_dir() / "handles.safetensors").string(), 3);
  c.mode = "tempo";
  OffloadBackend be(c.offload, std::move(ws), secret_from_seed(640));
  train(c, &be);
  std::unordered_set<Handle> all;
  size_t count = 0, close = 0;
  for (const auto& s : seen) {
    ASSERT_GT(s.size(), 4u);
    for (size_t i = 0; i < s.size(); ++i) {
      EXPECT_NE(s[i], 0u);
      all.insert(s[i]);
      ++count;
      if (i > 0 && (s[i] > s[i - 1] ? s[i] - s[i - 1] : s[i - 1] - s[i]) < (Handle{1} << 32)) ++close;
    }
  }
  EXPECT_EQ(all.size(), count) << "a handle was given twice";
  EXPECT_EQ(close, 0u) << "successive handles are near each other: a counter";
}

// `tempo bench --suite hardening` as a user runs it, on the machine at
// hand: its in-process workers compute on the CPU unless --backend says
// otherwise, and under the table it prints the blinding's parts for a
// hardened configuration.
TEST(Bench, HardeningSuiteRunsOnTheCpuAndPrintsTheBlindingsParts) {
  testutil::TempDir d("bench_hardening");
  const std::string log = d / "out.log";
  const int rc = wait_exit(spawn({TEMPO_BINARY, "bench", "--suite", "hardening", "--models", "cnn:2", "--threads", "1",
                                  "--steps", "1", "--no-torch", "--configs", "tempo, all three"},
                                 log),
                           120);
  const std::string out = read_text(log);
  ASSERT_EQ(rc, 0) << out;
  const size_t parts = out.find("the blinding's parts, ms/step");
  ASSERT_NE(parts, std::string::npos) << out;
  EXPECT_NE(out.find("tempo, all three", parts), std::string::npos) << out;
}

}  // namespace
}  // namespace tempo
