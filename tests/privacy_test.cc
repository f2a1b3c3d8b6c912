// Measurements of P5 on cases whose answer is known: the integrity
// measurement catches every lie of the size DESIGN.md §2 requires and raises
// no false alarm on an honest worker; a remote worker's --record transcript
// holds exactly what the worker was sent and returned.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <tuple>

#include "process_util.h"
#include "test_util.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/offload/offload_backend.h"
#include "trusted/rng.h"
#include "eval/measurements/integrity.h"
#include "eval/attacks/label_attack.h"
#include "eval/measurements/mutual_info.h"
#include "eval/measurements/replay.h"
#include "eval/doubles/faulty_worker.h"
#include "worker/local_worker.h"
#include "worker/transcript.h"

namespace tempo {
namespace {

TEST(Integrity, CatchesRequiredLiesAndAccusesNoHonestWorker) {
  const auto rows = measure_detection({Tamper::kEntry, Tamper::kRow}, {1e-1, 1e-2}, {1}, 25, 16.0, 3);
  ASSERT_EQ(rows.size(), 4u);
  for (const auto& r : rows) {
    EXPECT_EQ(r.trials, 25);
    EXPECT_EQ(r.caught, r.trials) << tamper_name(r.kind) << " of size " << r.size;
  }
  const HonestReport h = measure_false_alarms(2000, 16.0, 5);
  std::printf("2000 honest products: %lld false alarms; smallest sufficient τ %.3f\n",
              static_cast<long long>(h.false_alarms), h.worst_tau);
  EXPECT_GE(h.products, 2000);
  EXPECT_EQ(h.false_alarms, 0);
  EXPECT_GT(h.worst_tau, 0.0);
  EXPECT_LT(h.worst_tau, 16.0);
  // At a τ below what the honest rounding needs, the same products do raise alarms.
  const HonestReport tight = measure_false_alarms(1000, h.worst_tau / 4, 5);
  EXPECT_GT(tight.false_alarms, 0);
}

// P8 item 1, rollback: a host replaying a checkpoint N times gets N
// re-encryptions under fresh keys, masks and mixings. Even granted every
// execution's keys, averaging them does not approach the plaintext under
// the defaults (fresh mixings average to zero); against a mask alone it does
// (1/√N), which shows that the measurement can see a gain.
TEST(Replay, AveragingReencryptionsGivesNothingUnderTheDefaults) {
  const auto rows = measure_replay_averaging(64, 512, 32, {1, 16, 64}, 9);
  ASSERT_EQ(rows.size(), 6u);
  for (const auto& r : rows) std::printf("%s, N = %d: correlation %.3f\n", r.blinding.c_str(), r.executions, r.correlation);
  for (int i = 0; i < 3; ++i) EXPECT_LT(std::fabs(rows[static_cast<size_t>(i)].correlation), 0.05) << "defaults";
  EXPECT_GT(rows[5].correlation, 0.95) << "a mask alone averages away";
  EXPECT_GT(rows[5].correlation, rows[3].correlation + 0.1);
}

// P8 item 5: a lie spread over two entries (+δ, −δ) passes one round
// whenever the check vector's two entries nearly agree. With the default
// rounds, every such lie of 1e-2·max|row| in the sample is caught, and a lie
// that passes leaves its error, after unblinding, where the table says.
TEST(Integrity, TwoEntryLiesAreCaughtAtTheDefaultRounds) {
  const int rounds = VerifyConfig{}.rounds;
  EXPECT_GE(rounds, 2) << "one round passes about 2e-3 of two-entry 1e-2 lies (docs/SECURITY.md)";
  const auto rows = measure_detection({Tamper::kPair}, {1e-2}, {rounds}, 150, 16.0, 21);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].trials, 150);
  EXPECT_EQ(rows[0].caught, rows[0].trials);
  EXPECT_EQ(rows[0].passed_error, 0.0);
  // Lies far below the bound pass, and their error after unblinding is
  // measured (not zero, and not larger than a few times the lie).
  const auto tiny = measure_detection({Tamper::kPair}, {1e-6}, {1}, 10, 16.0, 22);
  EXPECT_EQ(tiny[0].caught, 0);
  EXPECT_GT(tiny[0].passed_error, 0.0);
  EXPECT_LT(tiny[0].passed_error, 1e-4);
}

TEST(Integrity, RowRelativeErrorIsMeasuredPerRow) {
  // a = [[1, 0], [0, 1]], w = [[2, 0], [0, 4]]: a·wᵀ = [[2, 0], [0, 4]].
  const float a[] = {1, 0, 0, 1}, w[] = {2, 0, 0, 4};
  const float exact[] = {2, 0, 0, 4}, off[] = {2, 0.2f, 0, 4};
  EXPECT_EQ(max_row_relative_error(exact, a, w, 2, 2, 2), 0.0);
  EXPECT_NEAR(max_row_relative_error(off, a, w, 2, 2, 2), 0.1, 1e-7);  // 0.2 against row 0's max of 2
}

using Key = std::tuple<bool, int64_t, int64_t, std::vector<float>>;

TEST(Transcript, RecordedByARemoteWorkerEqualsWhatItWasSent) {
  testutil::TempDir d("transcript");
  std::filesystem::create_directory(d / "rec");
  TrainConfig c = testutil::small_cnn_run(d / "a.safetensors", d / "init.safetensors", 3);
  c.mode = "tempo";
  c.insecure_key_seed = 21;
  std::vector<Key> remote;
  {
    testutil::WorkerProcess w(d.path(), "w", {"--record", d / "rec"});
    c.workers = w.address();
    train(c);
    EXPECT_NE(w.log().find("WARNING: --record"), std::string::npos);
  }
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(d / "rec")) {
    ++files;
    for (auto& r : read_transcript(e.path().string()))
      remote.emplace_back(r.received, r.rows, r.cols, std::move(r.data));
  }
  EXPECT_EQ(files, 1);
  // The same run through an in-process worker that records what it sees.
  auto rec = std::make_unique<RecordingWorker>(std::make_unique<LocalWorker>("local", make_cpu_backend()));
  RecordingWorker* seen = rec.get();
  std::vector<std::unique_ptr<WorkerApi>> ws;
  ws.push_back(std::move(rec));
  OffloadBackend be(c.offload, std::move(ws), secret_from_seed(21));
  c.save = d / "b.safetensors";
  train(c, &be);
  std::vector<Key> local;
  for (auto& r : seen->records()) local.emplace_back(r.received, r.rows, r.cols, std::move(r.data));
  ASSERT_GT(local.size(), 10u);
  EXPECT_EQ(remote.size(), local.size());
  std::sort(remote.begin(), remote.end());
  std::sort(local.begin(), local.end());
  EXPECT_TRUE(remote == local) << "the transcript differs from what the worker was sent and returned";
  // A truncated transcript is an error, not a shorter transcript.
  const std::string path = std::filesystem::directory_iterator(d / "rec")->path().string();
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 3);
  EXPECT_THROW(read_transcript(path), Error);
}

}  // namespace
}  // namespace tempo

namespace tempo {
namespace {

TEST(MutualInformation, EstimatorMatchesKnownValues) {
  Rng rng(4);
  for (double rho : {0.0, 0.6, 0.9}) {
    std::vector<double> x, y;
    for (int i = 0; i < 3000; ++i) {
      const double a = rng.normal(), b = rng.normal();
      x.push_back(a);
      y.push_back(rho * a + std::sqrt(1 - rho * rho) * b);
    }
    const double truth = -0.5 * std::log(1 - rho * rho), est = ksg_mutual_information(x, y);
    std::printf("rho %.1f: true %.3f, estimated %.3f nats\n", rho, truth, est);
    EXPECT_NEAR(est, truth, 0.05);
  }
}

TEST(MutualInformation, ObfuscationRemovesWhatOffloadShows) {
  testutil::TempDir d("mi");
  TrainConfig c = testutil::small_cnn_run("", d / "init.safetensors", 3);
  c.offload.col_mix = 0;  // first without the column mixing (on by default), which also mixes the weights
  const auto keyed = measure_mutual_information(c, 3, 1500, 9);
  const auto plain = measure_mutual_information(c, 3, 1500, 9, true);
  ASSERT_EQ(keyed.size(), plain.size());
  ASSERT_GE(keyed.size(), 6u);  // input, weight, gradient of at least two layers
  for (size_t i = 0; i < keyed.size(); ++i) {
    std::printf("%s %s: tempo %.3f (key-aligned %.3f), offload %.3f nats\n", keyed[i].layer.c_str(),
                keyed[i].operand.c_str(), keyed[i].position_aligned, keyed[i].key_aligned, plain[i].position_aligned);
    // Unobfuscated, a value is its own ciphertext (the estimate is finite:
    // exact zeros from ReLU and max-pooling carry no pairing information).
    EXPECT_GT(plain[i].position_aligned, 1.0) << keyed[i].layer << " " << keyed[i].operand;
    EXPECT_LT(keyed[i].position_aligned, 0.2) << keyed[i].layer << " " << keyed[i].operand;
    EXPECT_GT(plain[i].position_aligned, 10 * keyed[i].position_aligned);
    // Mixed and masked inputs and gradients (the defaults without --col-mix): a
    // worker that knew the permutations no longer holds the values either.
    std::printf("  default: position-aligned %.3f, key-aligned %.3f nats\n", keyed[i].blinded_position,
                keyed[i].blinded_key);
    EXPECT_LT(keyed[i].blinded_position, 0.2) << keyed[i].layer << " " << keyed[i].operand;
    if (keyed[i].operand == "weight") {
      EXPECT_EQ(keyed[i].blinded_key, keyed[i].key_aligned);  // weights are sent unblinded
    } else {
      EXPECT_GT(keyed[i].key_aligned, 0.2) << keyed[i].layer << " " << keyed[i].operand;
      EXPECT_LT(keyed[i].blinded_key, 0.5 * keyed[i].key_aligned) << keyed[i].layer << " " << keyed[i].operand;
    }
  }
  // With the column mixing the weights are mixed too: a worker that knew
  // the permutations no longer holds their values.
  c.offload.col_mix = 8;
  const auto mixed = measure_mutual_information(c, 3, 1500, 9);
  ASSERT_EQ(mixed.size(), keyed.size());
  int weights = 0;
  for (const auto& r : mixed) {
    if (r.operand != "weight") continue;
    ++weights;
    std::printf("--col-mix 8: %s weight: keys only key-aligned %.3f, blinded key-aligned %.3f nats\n",
                r.layer.c_str(), r.key_aligned, r.blinded_key);
    EXPECT_GT(r.key_aligned, 0.1) << r.layer;
    EXPECT_LT(r.blinded_key, 0.25 * r.key_aligned) << r.layer;
  }
  EXPECT_EQ(weights, 2);
}

// Along one run: the rows of each step are those of a run measured at that
// step alone (same operands, same measurement keys for the first step).
TEST(MutualInformation, AlongOneRunMatchesSingleSteps) {
  testutil::TempDir d("mi_along");
  TrainConfig c = testutil::small_cnn_run("", d / "init.safetensors", 4);
  const auto along = measure_mutual_information(c, std::vector<int64_t>{2, 4}, 800, 9);
  const auto first = measure_mutual_information(c, 2, 800, 9);
  ASSERT_EQ(along.size(), 2 * first.size());
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_EQ(along[i].step, 2);
    EXPECT_EQ(along[first.size() + i].step, 4);
    EXPECT_EQ(along[first.size() + i].layer, first[i].layer);
    EXPECT_EQ(along[first.size() + i].operand, first[i].operand);
    EXPECT_DOUBLE_EQ(along[i].position_aligned, first[i].position_aligned);
    EXPECT_DOUBLE_EQ(along[i].key_aligned, first[i].key_aligned);
    EXPECT_LT(along[first.size() + i].position_aligned, 0.2);
  }
  EXPECT_THROW(measure_mutual_information(c, std::vector<int64_t>{4, 2}, 800, 9), Error);
}

}  // namespace
}  // namespace tempo

namespace tempo {
namespace {

TEST(LabelAttack, RecoversLabelsWhenTheLastLayerIsOffloaded) {
  testutil::TempDir d("labels");
  TrainConfig c = testutil::small_cnn_run("", d / "init.safetensors", 5);
  const LabelAttackResult plain = label_attack(c, 5, 3, true);
  const LabelAttackResult keyed = label_attack(c, 5, 3, false);
  std::printf("labels recovered: offload %lld/%lld, tempo %lld/%lld (chance %.2f)\n",
              static_cast<long long>(plain.correct), static_cast<long long>(plain.rows),
              static_cast<long long>(keyed.correct), static_cast<long long>(keyed.rows), keyed.chance);
  ASSERT_EQ(plain.rows, 5 * 32);
  EXPECT_EQ(plain.correct, plain.rows) << "the attack must fully recover an unobfuscated transcript";
  EXPECT_GT(static_cast<double>(keyed.correct), 0.9 * static_cast<double>(keyed.rows))
      << "the keys do not hide the labels in this gradient: that is why the last layer stays in the master";
}

TEST(LabelAttack, ZeroSumRowsGiveTheOddSignColumn) {
  // Two rows of (softmax − onehot), columns permuted and scaled by hand.
  const float g[] = {0.2f * 3, -0.7f * -2, 0.5f * 0.5f,    // label in column 1
                     -0.9f * 3, 0.4f * -2, 0.5f * 0.5f,    // label in column 0
                     0.1f * 3, 0.3f * -2, -0.4f * 0.5f};   // label in column 2
  const auto cols = recover_label_columns(g, 3, 3);
  EXPECT_EQ(cols, (std::vector<int64_t>{1, 0, 2}));
}

}  // namespace
}  // namespace tempo
