// Several masters (P12). In process, with the masters as threads joined by
// an interposed communicator that records every buffer handed to it (what
// MPI would carry): the padded fixed-point all-reduce is exact and the same
// bit for bit on every rank, every buffer looks uniform and none is a
// plaintext encoding, a non-finite value or a stop request is acted on by
// every rank together, and ranks that do not share the secret are caught;
// the loader's shards make up the global batch; each rank's configuration.
// Through mpirun (when built with MPI): 2 and 3 masters train cnn as one
// master does, end with identical weights, resume from their checkpoints,
// and a master that fails ends the job.
#include <gtest/gtest.h>

#include <barrier>
#include <chrono>
#include <filesystem>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <thread>

#include "common/error.h"
#include "trusted/data/dataset.h"
#include "trusted/dist/data_parallel.h"
#include "trusted/rng.h"
#include "trusted/trainer.h"
#include "eval/subprocess.h"
#include "test_util.h"

namespace tempo {
namespace {

using testutil::TempDir;

// N masters as threads: sum() and gather() meet at a barrier. Records a
// copy of every buffer handed in (and of every sum handed back).
class ThreadGroup {
 public:
  explicit ThreadGroup(int n) : n_(n), slots_(static_cast<size_t>(n)), sync_(n) {}
  class Member final : public Collective {
   public:
    Member(ThreadGroup& g, int rank) : g_(g), rank_(rank) {}
    int rank() const override { return rank_; }
    int size() const override { return g_.n_; }
    void sum(uint64_t* data, int64_t n) override {
      g_.record(rank_, data, n, true);
      g_.slots_[static_cast<size_t>(rank_)].assign(data, data + n);
      g_.sync_.arrive_and_wait();
      for (int64_t i = 0; i < n; ++i) {
        uint64_t s = 0;
        for (const auto& slot : g_.slots_) s += slot[static_cast<size_t>(i)];
        data[i] = s;
      }
      g_.sync_.arrive_and_wait();
      g_.record(rank_, data, n, false);
    }
    void gather(const uint8_t* mine, int64_t n, uint8_t* all) override {
      auto& slot = g_.slots_[static_cast<size_t>(rank_)];
      slot.assign(static_cast<size_t>((n + 7) / 8), 0);
      std::memcpy(slot.data(), mine, static_cast<size_t>(n));
      g_.sync_.arrive_and_wait();
      for (int r = 0; r < g_.n_; ++r) std::memcpy(all + r * n, g_.slots_[static_cast<size_t>(r)].data(), static_cast<size_t>(n));
      g_.sync_.arrive_and_wait();
    }
    [[noreturn]] void abort() override { std::abort(); }

   private:
    ThreadGroup& g_;
    int rank_;
  };
  // Runs body(member) on n threads; rethrows the first exception.
  void run(const std::function<void(Member&)>& body) {
    std::vector<std::thread> ts;
    std::vector<std::exception_ptr> errs(static_cast<size_t>(n_));
    for (int r = 0; r < n_; ++r)
      ts.emplace_back([&, r] {
        Member m(*this, r);
        try {
          body(m);
        } catch (...) {
          errs[static_cast<size_t>(r)] = std::current_exception();
        }
      });
    for (auto& t : ts) t.join();
    for (auto& e : errs)
      if (e) std::rethrow_exception(e);
  }
  struct Record {
    int rank;
    bool sent;  // handed in (true) or handed back (false)
    std::vector<uint64_t> words;
  };
  std::vector<Record> records;

 private:
  void record(int rank, const uint64_t* data, int64_t n, bool sent) {
    std::lock_guard<std::mutex> lock(mu_);
    records.push_back({rank, sent, std::vector<uint64_t>(data, data + n)});
  }
  int n_;
  std::vector<std::vector<uint64_t>> slots_;
  std::barrier<> sync_;
  std::mutex mu_;
};

// One rank's gradients: tensors of very different scales.
struct Grads {
  std::vector<Tensor> t;
  std::vector<StateEntry> entries;
  Grads(uint64_t seed) {
    Rng rng(seed);
    for (const double scale : {1e-8, 3e-3, 1.0, 700.0}) {
      Tensor g({17, 5});
      for (int64_t i = 0; i < g.numel(); ++i) g[i] = static_cast<float>(scale * rng.normal());
      t.push_back(std::move(g));
    }
    for (Tensor& g : t) entries.push_back({"g", nullptr, &g, nullptr});
  }
};

TEST(Masters, GradientSumIsExactAndIdenticalOnEveryRank) {
  const int n = 3;
  const int64_t samples[n] = {21, 21, 22};
  std::vector<Grads> grads;
  for (int r = 0; r < n; ++r) grads.emplace_back(100 + r);
  // The exact answer, in double, from copies.
  std::vector<std::vector<double>> want(grads[0].t.size());
  for (size_t k = 0; k < want.size(); ++k) {
    want[k].assign(static_cast<size_t>(grads[0].t[k].numel()), 0.0);
    for (int r = 0; r < n; ++r)
      for (size_t i = 0; i < want[k].size(); ++i) want[k][i] += double(grads[r].t[k][int64_t(i)]) * samples[r] / 64.0;
  }
  const double losses[n] = {2.0, 2.5, 1.0};
  double got_loss[n];
  ThreadGroup g(n);
  g.run([&](ThreadGroup::Member& m) {
    DataParallel dp(m, secret_from_seed(9));
    got_loss[m.rank()] = dp.reduce_gradients(grads[m.rank()].entries, losses[m.rank()], samples[m.rank()], 1);
  });
  const double want_loss = (2.0 * 21 + 2.5 * 21 + 1.0 * 22) / 64.0;
  for (int r = 0; r < n; ++r) EXPECT_NEAR(got_loss[r], want_loss, 1e-12);
  for (size_t k = 0; k < want.size(); ++k) {
    double mx = 0;
    for (double v : want[k]) mx = std::max(mx, std::fabs(v));
    for (size_t i = 0; i < want[k].size(); ++i) {
      // float rounding of the exact mean (fixed point is far finer), also for the 1e-8 tensor
      EXPECT_NEAR(grads[0].t[k][int64_t(i)], want[k][i], 1e-6 * std::fabs(want[k][i]) + 1e-30) << k << " " << i;
      for (int r = 1; r < n; ++r) EXPECT_EQ(grads[r].t[k][int64_t(i)], grads[0].t[k][int64_t(i)]);  // bitwise
    }
  }
}

// Every buffer handed to the network, and every sum handed back: bytes
// uniform (χ² over 256 values), and no word the plaintext's encoding.
TEST(Masters, EveryBufferTheNetworkSeesLooksUniform) {
  const int n = 2;
  std::vector<Grads> grads;
  for (int r = 0; r < n; ++r) grads.emplace_back(200 + r);
  std::vector<std::vector<float>> plain(n);
  for (int r = 0; r < n; ++r)
    for (const Tensor& t : grads[r].t) plain[r].insert(plain[r].end(), t.data(), t.data() + t.numel());
  ThreadGroup g(n);
  g.run([&](ThreadGroup::Member& m) {
    DataParallel dp(m, secret_from_seed(10));
    for (int step = 1; step <= 3; ++step) dp.reduce_gradients(grads[m.rank()].entries, 1.0, 32, step);
  });
  ASSERT_EQ(g.records.size(), size_t{n * 3 * 2 * 2});  // ranks × steps × (header, body) × (in, out)
  std::vector<double> counts(256, 0.0);
  double bytes = 0;
  int bodies = 0;
  for (const auto& rec : g.records) {
    // Every rank gets the same sum back: counted once (rank 0's), so that
    // the bytes pooled are independent.
    if (!rec.sent && rec.rank != 0) continue;
    for (uint64_t w : rec.words)
      for (int b = 0; b < 8; ++b) {
        counts[(w >> (8 * b)) & 0xff] += 1;
        bytes += 1;
      }
    if (!rec.sent || rec.words.size() != 2 + plain[0].size()) continue;  // the bodies handed in
    ++bodies;
    // Against the plaintext encodings at any scale 2^f: the padded word is
    // not round(g·32·2^f) for any f a sender could have used.
    const std::vector<float>& p = plain[static_cast<size_t>(rec.rank)];
    int64_t equal = 0;
    for (size_t i = 0; i < p.size(); ++i)
      for (int f = 0; f <= 80; ++f)
        equal += rec.words[i + 2] == static_cast<uint64_t>(std::llrint(std::ldexp(double(p[i]) * 32, f)));
    EXPECT_EQ(equal, 0);
  }
  EXPECT_EQ(bodies, n * 3);
  double chi2 = 0;
  for (double c : counts) chi2 += (c - bytes / 256) * (c - bytes / 256) / (bytes / 256);
  EXPECT_LT(chi2, 255 + 6 * std::sqrt(2.0 * 255)) << "bytes " << bytes;  // df 255: mean 255, sd 22.6
  EXPECT_GT(chi2, 255 - 6 * std::sqrt(2.0 * 255));
}

TEST(Masters, NonFiniteOnOneRankStopsEveryRankAlike) {
  ThreadGroup g(3);
  std::vector<Grads> grads;
  for (int r = 0; r < 3; ++r) grads.emplace_back(300 + r);
  grads[1].t[2][7] = std::nanf("");
  std::vector<std::string> errors(3);
  g.run([&](ThreadGroup::Member& m) {
    DataParallel dp(m, secret_from_seed(11));
    try {
      dp.reduce_gradients(grads[m.rank()].entries, 1.0, 8, 5);
    } catch (const Error& e) {
      errors[static_cast<size_t>(m.rank())] = e.what();
    }
  });
  for (const std::string& e : errors) {
    EXPECT_NE(e.find("diverged at step 5"), std::string::npos) << e;
    EXPECT_EQ(e, errors[0]);
  }
}

TEST(Masters, StopRequestsAreAgreedAndOtherSecretsCaught) {
  ThreadGroup g(2);
  std::vector<Grads> grads;
  for (int r = 0; r < 2; ++r) grads.emplace_back(400 + r);
  std::atomic<bool> flags[2] = {false, true};  // only rank 1 was asked to stop
  bool agreed[2] = {false, false};
  g.run([&](ThreadGroup::Member& m) {
    DataParallel dp(m, secret_from_seed(12));
    dp.set_stop_source(&flags[m.rank()]);
    EXPECT_FALSE(dp.agreed_stop());
    dp.reduce_gradients(grads[m.rank()].entries, 1.0, 8, 1);
    agreed[m.rank()] = dp.agreed_stop();
  });
  EXPECT_TRUE(agreed[0]);
  EXPECT_TRUE(agreed[1]);
  // A rank with another secret: its pads do not cancel, and every rank says so.
  ThreadGroup h(2);
  std::vector<std::string> errors(2);
  h.run([&](ThreadGroup::Member& m) {
    DataParallel dp(m, secret_from_seed(m.rank() == 0 ? 13 : 14));
    try {
      dp.reduce_gradients(grads[m.rank()].entries, 1.0, 8, 1);
    } catch (const Error& e) {
      errors[static_cast<size_t>(m.rank())] = e.what();
    }
  });
  for (const std::string& e : errors) EXPECT_NE(e.find("did not cancel its pads"), std::string::npos) << e;
}

TEST(Masters, ShardsMakeUpTheGlobalBatch) {
  const Dataset d = load_dataset("synthetic:200", {1, 28, 28}, 3);
  for (const int ranks : {1, 2, 3, 7}) {
    BatchLoader whole(d, true, 64, true, 5);
    std::vector<BatchLoader> parts;
    for (int r = 0; r < ranks; ++r) {
      parts.emplace_back(d, true, 64, true, 5);
      parts.back().set_shard(r, ranks);
    }
    Tensor x, xs;
    std::vector<int64_t> y, ys;
    int batches = 0;
    while (whole.next(x, y)) {
      ++batches;
      std::vector<float> cat;
      std::vector<int64_t> cy;
      for (int r = 0; r < ranks; ++r) {
        ASSERT_TRUE(parts[static_cast<size_t>(r)].next(xs, ys));
        EXPECT_EQ(static_cast<int64_t>(ys.size()), static_cast<int64_t>(y.size()) * (r + 1) / ranks -
                                                       static_cast<int64_t>(y.size()) * r / ranks);
        cat.insert(cat.end(), xs.data(), xs.data() + xs.numel());
        cy.insert(cy.end(), ys.begin(), ys.end());
      }
      EXPECT_EQ(cy, y);
      EXPECT_TRUE(std::equal(cat.begin(), cat.end(), x.data()));
    }
    EXPECT_EQ(batches, 4);  // 200 samples: 64, 64, 64, 8
  }
}

TEST(Masters, EachRankHasItsOwnConfiguration) {
  TrainConfig c;
  c.workers = "local:1|10.0.0.1:5000,10.0.0.2:5000|local:2";
  c.checkpoint = "ck-{rank}.tenc";
  c.resume = "old.tenc";
  c.sealing_key = "seal.key";
  c.save = "final.safetensors";
  c.metrics = "m.jsonl";
  const TrainConfig r1 = rank_config(c, 1, 3);
  EXPECT_EQ(r1.workers, "10.0.0.1:5000,10.0.0.2:5000");
  EXPECT_EQ(r1.checkpoint, "ck-1.tenc");
  EXPECT_EQ(r1.resume, "old.tenc.rank1");
  EXPECT_EQ(r1.sealing_key, "seal.key.rank1");
  EXPECT_EQ(r1.save, "");
  EXPECT_EQ(r1.metrics, "");
  EXPECT_FALSE(r1.progress);
  const TrainConfig r0 = rank_config(c, 0, 3);
  EXPECT_EQ(r0.workers, "local:1");
  EXPECT_EQ(r0.save, "final.safetensors");
  EXPECT_EQ(r0.metrics, "m.jsonl");
  c.save = "w{rank}.safetensors";
  EXPECT_EQ(rank_config(c, 2, 3).save, "w2.safetensors");
  EXPECT_THROW(rank_config(c, 0, 2), Error);  // three lists for two masters
  c.workers = "local:1";
  EXPECT_EQ(rank_config(c, 1, 2).workers, "local:1");
  c.batch_size = 2;
  EXPECT_THROW(rank_config(c, 0, 3), Error);  // a global batch smaller than the job
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

int run_cmd(const std::string& cmd, const std::string& log, std::string* out) {
  const int rc = std::system((cmd + " > " + log + " 2>&1").c_str());
  *out = "$ " + cmd + "\n" + slurp(log);
  return rc;
}

// Fashion-MNIST, not synthetic data: synthetic images have exact ties in
// max-pooling, which turn rounding differences into different routes.
const std::string kRun = std::string(TEMPO_BINARY) +
                         " train --model cnn --data fashion-mnist --batch-size 64 --mode tempo --workers local:1 "
                         "--mask-rank 0 --row-mix 0 --col-mix 0 --insecure-key-seed 3 --threads 1 --no-progress";

#ifdef TEMPO_HAVE_MPI
const std::string kMpirun = "timeout 300 mpirun --allow-run-as-root --oversubscribe -np ";

// Five steps, to 1e-5: the shards' sums differ from one master's in their
// rounding only (about 1e-7 after 1 and after 5 steps), but a rounding
// difference can flip a ReLU or a max-pool decision at some step and the
// runs then drift apart as any two orders of summation do (on an AMD EPYC
// with 3 masters: 2.5e-3 after 15 steps, 1.1e-2 after 30; on the Xeons
// not within 30). A wrong weighting of the uneven shards (22, 21, 21
// images) shows from the first step, far above 1e-5.
TEST(MastersMpi, TrainAsOneMasterDoesAndEndIdentical) {
  TempDir dir;
  std::string log;
  ASSERT_EQ(run_cmd(kRun + " --steps 5 --save " + dir / "one.safetensors", dir / "log", &log), 0) << log;
  for (const int n : {2, 3}) {
    SCOPED_TRACE(std::to_string(n) + " masters");
    const std::string save = dir / ("n" + std::to_string(n) + "_{rank}.safetensors");
    ASSERT_EQ(run_cmd(kMpirun + std::to_string(n) + " " + kRun + " --steps 5 --save '" + save + "'", dir / "log",
                      &log),
              0)
        << log;
    EXPECT_NE(log.find("batch 64 over " + std::to_string(n) + " masters"), std::string::npos) << log;
    const std::string first = slurp(dir / ("n" + std::to_string(n) + "_0.safetensors"));
    ASSERT_FALSE(first.empty());
    for (int r = 1; r < n; ++r)
      EXPECT_TRUE(slurp(dir / ("n" + std::to_string(n) + "_" + std::to_string(r) + ".safetensors")) == first)
          << "rank " << r << "'s weights differ from rank 0's";
    const double err = testutil::max_rel_error(dir / ("n" + std::to_string(n) + "_0.safetensors"), dir / "one.safetensors");
    std::printf("  %d masters against one: max relative error %.3g\n", n, err);
    EXPECT_LE(err, 1e-5);
  }
}

// A master killed mid-run ends the job; every master resumes from its own
// sealed checkpoint, and the job ends where an uninterrupted one does.
TEST(MastersMpi, AKilledMasterEndsTheJobWhichResumes) {
  TempDir dir;
  std::string log;
  const std::string run = kRun + " --steps 60 --checkpoint-every 10 --checkpoint " + dir / "ck-{rank}.tenc" +
                          " --sealing-key " + dir / "seal-{rank}.key";
  ASSERT_EQ(run_cmd(kMpirun + "2 " + kRun + " --steps 60 --save " + dir / "straight.safetensors", dir / "log", &log), 0)
      << log;
  const pid_t job = spawn({"/bin/sh", "-c", kMpirun + "2 " + run}, dir / "killed.log");
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!std::filesystem::exists(dir / "ck-1.tenc") && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(std::filesystem::exists(dir / "ck-1.tenc")) << read_text(dir / "killed.log");
  // Kill the newest master process of this job (not mpirun).
  std::system(("pkill -KILL -n -f '^" + std::string(TEMPO_BINARY) + " train.*" + dir.path() + "/ck-'").c_str());
  const int rc = wait_exit(job, 120);
  const std::string killed = read_text(dir / "killed.log");
  EXPECT_NE(rc, 0) << killed;
  EXPECT_EQ(killed.find("steps 60"), std::string::npos) << "the job finished before a master was killed:\n" << killed;
  ASSERT_EQ(run_cmd(kMpirun + "2 " + run + " --resume " + dir / "ck-{rank}.tenc" + " --save " +
                        dir / "resumed.safetensors",
                    dir / "log", &log),
            0)
      << log;
  EXPECT_NE(log.find("resuming"), std::string::npos) << log;
  EXPECT_NE(log.find("steps 60 ("), std::string::npos) << log;
  EXPECT_LE(testutil::max_rel_error(dir / "resumed.safetensors", dir / "straight.safetensors"), 1e-4);
}

TEST(MastersMpi, AFailingMasterEndsTheJob) {
  TempDir dir;
  std::string log;
  const int rc = run_cmd(kMpirun + "2 " + std::string(TEMPO_BINARY) +
                             " train --model cnn --data synthetic:256 --steps 5 --mode tempo --insecure-key-seed 1 "
                             "--threads 1 --no-progress --workers 'local:1|nonsense'",
                         dir / "log", &log);
  EXPECT_NE(rc, 0) << log;
  EXPECT_NE(log.find("error on master 1 of 2"), std::string::npos) << log;
  // Without a shared secret from the owner (or the test seed), no job.
  const int rc2 = run_cmd(kMpirun + "2 " + std::string(TEMPO_BINARY) +
                              " train --model cnn --data synthetic:256 --steps 5 --mode tee-only --threads 1 --no-progress",
                          dir / "log", &log);
  EXPECT_NE(rc2, 0);
  EXPECT_NE(log.find("several masters need a secret they all share"), std::string::npos) << log;
}
#else
TEST(MastersMpi, WithoutMpiALaunchedRankSaysSo) {
  TempDir dir;
  std::string log;
  EXPECT_NE(run_cmd("OMPI_COMM_WORLD_SIZE=2 " + kRun + " --steps 2", dir / "log", &log), 0);
  EXPECT_NE(log.find("built without MPI"), std::string::npos) << log;
}
#endif

}  // namespace
}  // namespace tempo
