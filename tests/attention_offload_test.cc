// Attention's activation × activation products through workers: batched
// products (every block under its own keys, the blocks in a secret order,
// one request per batch) decrypt to the plaintext products, forward and
// both backward products, with and without the key shift; what a worker
// receives is not the plaintext; lies in any block are caught and the batch
// is recomputed elsewhere (or in the master); and a whole attention layer
// through a worker equals the same layer computed in the master.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "eval/doubles/faulty_worker.h"
#include "trusted/nn/layers.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/offload/offload_backend.h"
#include "worker/local_worker.h"
#include "test_util.h"

namespace tempo {
namespace {

using testutil::normal_vec;

std::vector<std::unique_ptr<WorkerApi>> workers(int n) {
  std::vector<std::unique_ptr<WorkerApi>> ws;
  for (int i = 0; i < n; ++i)
    ws.push_back(std::make_unique<LocalWorker>("local:" + std::to_string(i), make_cpu_backend()));
  return ws;
}

double rel_diff(const float* a, const float* b, size_t n) {
  double mx = 1e-30, err = 0;
  for (size_t i = 0; i < n; ++i) {
    mx = std::max(mx, std::fabs(double(b[i])));
    err = std::max(err, std::fabs(double(a[i]) - b[i]));
  }
  return err / mx;
}

struct Batch {
  static constexpr int64_t G = 6, m = 19, k = 18, n = 7;  // two mixing groups of rows and of k
  std::vector<float> a = normal_vec(G * m * k, 1), w = normal_vec(G * n * k, 2), dc = normal_vec(G * m * n, 3);
  BatchedProduct p{"test.scores", a.data(), w.data(), G, m, k, n};
  std::vector<float> c = std::vector<float>(G * m * n), dw = std::vector<float>(G * n * k),
                     da = std::vector<float>(G * m * k);
  // As in a vit's last layer, where only the class token's row has a
  // gradient: in half of the blocks every other row of dC is zero. A check
  // bounded by the plaintext rows would reject the mixed product's honest
  // rounding there, spread over each mixed group.
  Batch() {
    for (int64_t g = 0; g < G; g += 2)
      std::fill(dc.begin() + g * m * n + n, dc.begin() + (g + 1) * m * n, 0.0f);
  }
  void run(LinearBackend& be) {
    be.batched_forward(p, c.data());
    be.batched_backward(p, dc.data(), dw.data(), da.data());
    be.end_step();
  }
};

void expect_equal(const Batch& got, const Batch& want) {
  EXPECT_LT(rel_diff(got.c.data(), want.c.data(), got.c.size()), 1e-5);
  EXPECT_LT(rel_diff(got.dw.data(), want.dw.data(), got.dw.size()), 1e-5);
  EXPECT_LT(rel_diff(got.da.data(), want.da.data(), got.da.size()), 1e-5);
}

TEST(BatchedProducts, EqualPlaintextProductsAndHidePlaintext) {
  Batch want;
  TeeOnlyBackend tee;
  want.run(tee);
  for (int shift = 0; shift < 2; ++shift) {
    for (int nw : {1, 2, 3}) {  // 3: one worker, keys only (no mixing)
      SCOPED_TRACE("key shift " + std::to_string(shift) + ", workers " + std::to_string(nw));
      OffloadConfig oc;
      oc.key_shift = shift == 1;
      if (nw == 3) {
        nw = 1;
        oc.row_mix = oc.col_mix = 0;
      }
      auto ws = workers(nw);
      auto* rec = new RecordingWorker(std::move(ws[0]));
      ws[0].reset(rec);
      OffloadBackend be(oc, std::move(ws), secret_from_seed(71 + shift + 10 * nw));
      Batch got;
      got.run(be);
      expect_equal(got, want);
      EXPECT_EQ(be.stats().products, 3);  // one request per batch: forward, dW, dA
      EXPECT_EQ(be.stats().verified, 3);
      EXPECT_EQ(be.stats().rejected, 0);
      // The worker got whole batches (G stacked blocks), never a plaintext
      // block in any position.
      int received = 0;
      for (const auto& r : rec->records()) {
        if (!r.received) continue;
        ++received;
        EXPECT_EQ(r.rows % Batch::G, 0) << r.rows << "×" << r.cols;
        const int64_t block = r.rows / Batch::G * r.cols;
        for (const std::vector<float>* plain : {&want.a, &want.w, &want.dc}) {
          if (static_cast<int64_t>(plain->size()) != r.rows * r.cols) continue;
          for (int64_t j = 0; j < Batch::G; ++j)
            for (int64_t g = 0; g < Batch::G; ++g)
              EXPECT_FALSE(std::equal(r.data.begin() + j * block, r.data.begin() + (j + 1) * block,
                                      plain->begin() + g * block))
                  << "block " << g << " reached the worker as it is";
        }
      }
      // Forward: A', Wᵀ'; backward under the key shift: only the two
      // gradients; without it, both operands again.
      if (nw == 1) EXPECT_EQ(received, shift ? 4 : 6);
    }
  }
  // The ablation sends the blocks as they are, in their order: the check
  // above would see them.
  auto ws = workers(1);
  auto* rec = new RecordingWorker(std::move(ws[0]));
  ws[0].reset(rec);
  OffloadConfig oc;
  oc.insecure_identity = true;
  OffloadBackend plain(oc, std::move(ws), secret_from_seed(5));
  Batch got;
  got.run(plain);
  expect_equal(got, want);
  ASSERT_FALSE(rec->records().empty());
  EXPECT_TRUE(std::equal(want.a.begin(), want.a.end(), rec->records()[0].data.begin()));
}

// Every kind of lie, in every request: each is caught by the check of its
// block, the batch is recomputed with fresh keys on the honest worker, and
// the liar is quarantined; with only liars the master computes the batch.
TEST(BatchedProducts, LiesAreCaughtRetriedAndQuarantined) {
  Batch want;
  TeeOnlyBackend tee;
  want.run(tee);
  for (const Tamper how : {Tamper::kEntry, Tamper::kRow, Tamper::kZeros, Tamper::kNaN, Tamper::kShape}) {
    SCOPED_TRACE("tamper " + std::to_string(static_cast<int>(how)));
    auto ws = workers(2);
    ws[0] = std::make_unique<TamperingWorker>(std::move(ws[0]), how, 1.0, 9);
    OffloadConfig oc;
    oc.log = false;
    OffloadBackend be(oc, std::move(ws), secret_from_seed(17));
    Batch got;
    for (int step = 0; step < 3; ++step) {
      got.run(be);
      expect_equal(got, want);
    }
    EXPECT_GE(be.stats().rejected, 1);
    EXPECT_EQ(be.healthy_workers(), 1u);
    EXPECT_EQ(be.stats().local_fallbacks, 0);
  }
  auto ws = workers(1);
  ws[0] = std::make_unique<TamperingWorker>(std::move(ws[0]), Tamper::kEntry, 1.0, 3);
  OffloadConfig oc;
  oc.log = false;
  OffloadBackend be(oc, std::move(ws), secret_from_seed(19));
  Batch got;
  got.run(be);
  expect_equal(got, want);
  EXPECT_EQ(be.stats().local_fallbacks, 3);
  oc.fallback = false;
  auto ws2 = workers(1);
  ws2[0] = std::make_unique<TamperingWorker>(std::move(ws2[0]), Tamper::kEntry, 1.0, 3);
  OffloadBackend stop(oc, std::move(ws2), secret_from_seed(23));
  EXPECT_THROW(got.run(stop), Error);
}

// A whole multi-head attention layer, its projections and both batched
// products on a worker, equals the layer in the master.
TEST(BatchedProducts, AttentionLayerThroughAWorkerEqualsTheMaster) {
  const int64_t B = 3, T = 6, D = 12, H = 3;
  MultiheadAttention local(D, H), remote(D, H);
  Rng rng(4);
  std::vector<StateEntry> sl, sr;
  local.state(sl, "");
  remote.state(sr, "");
  for (size_t i = 0; i < sl.size(); ++i) {
    for (int64_t j = 0; j < sl[i].value->numel(); ++j) (*sl[i].value)[j] = static_cast<float>(0.3 * rng.normal());
    *sr[i].value = *sl[i].value;
  }
  remote.in_proj.product()->id = 0;  // as a model numbers its products
  remote.out_proj.product()->id = 1;
  Tensor x({B, T, D}), dy({B, T, D});
  for (int64_t j = 0; j < x.numel(); ++j) x[j] = static_cast<float>(rng.normal());
  for (int64_t j = 0; j < dy.numel(); ++j) dy[j] = static_cast<float>(rng.normal());
  TeeOnlyBackend tee;
  Context lctx{&tee, &tee, true, nullptr};
  OffloadConfig oc;
  OffloadBackend be(oc, workers(1), secret_from_seed(29));
  Context rctx{&be, &tee, true, nullptr};
  for (int step = 0; step < 2; ++step) {
    const Tensor& yl = local.forward(x, lctx);
    const Tensor& yr = remote.forward(x, rctx);
    EXPECT_LT(rel_diff(yr.data(), yl.data(), static_cast<size_t>(yl.numel())), 1e-5);
    const Tensor& dl = local.backward(dy, lctx);
    const Tensor& dr = remote.backward(dy, rctx);
    EXPECT_LT(rel_diff(dr.data(), dl.data(), static_cast<size_t>(dl.numel())), 1e-5);
    for (size_t i = 0; i < sl.size(); ++i)
      EXPECT_LT(rel_diff(sr[i].grad->data(), sl[i].grad->data(), static_cast<size_t>(sl[i].grad->numel())), 1e-5)
          << sl[i].name;
    be.end_step();
  }
  // Per step: 2 projections × 3 products and 2 batches × 3 requests.
  EXPECT_EQ(be.stats().products, 2 * 12);
  EXPECT_EQ(be.stats().rejected, 0);
}

}  // namespace
}  // namespace tempo
