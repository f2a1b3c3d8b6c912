// OffloadBackend: batched products (attention's per-head products, both
// operands activations). A batch goes to one worker as one request: block g
// under its own fresh triple, the blocks stacked in an order drawn from the
// key stream, so that a worker does not learn which block is which image and
// head. Every block is checked. The backward products reuse the forward's
// ciphertexts under the key shift (DESIGN.md §2), block by block; a failure
// re-encrypts the batch with fresh keys for another worker, and with no
// worker left the master computes it.
#include "trusted/offload/offload_backend.h"

#include "common/parallel.h"
#include "trusted/offload/offload_internal.h"

namespace tempo {

using namespace offload_detail;

namespace {
using Part = Obfuscator::Part;
}  // namespace

void OffloadBackend::batched_forward(const BatchedProduct& p, float* c) { batched_run(Kind::kForward, p, nullptr, c); }

void OffloadBackend::batched_backward(const BatchedProduct& p, const float* dc, float* dw, float* da) {
  batched_run(Kind::kWeight, p, dc, dw);
  if (da) batched_run(Kind::kInput, p, dc, da);
}

void OffloadBackend::batched_run(Kind kind, const BatchedProduct& p, const float* dc, float* out) {
  HeldBatch& h = held_batches_[&p];
  excluded_.assign(slots_.size(), 0);
  if (kind == Kind::kForward) {
    h.valid = false;
  } else if (cfg_.key_shift && h.valid && !slots_[h.worker].quarantined) {
    if (batched_once(kind, p, dc, out, h.worker, h, true)) return;
    excluded_[h.worker] = 1;
  }
  if (try_workers([&](size_t n) { return batch_turn_++ % n; },
                  [&](size_t w) { return batched_once(kind, p, dc, out, w, h, false); }))
    return;
  fallback_warning(p.name);
  static_assert(static_cast<int>(Kind::kInput) == static_cast<int>(BatchedKind::kInput) &&
                static_cast<int>(Kind::kWeight) == static_cast<int>(BatchedKind::kWeight));
  batched_here(static_cast<BatchedKind>(kind), p, dc, out);
}

// Per kind, block by block (as standalone_send/finish for one product):
//   forward: X = A_g (m×k), Y = W_gᵀ (stored W_g, n×k)  worker: X'·Y'ᵀ     (m×n)
//   input:   X = dC_g (m×n), Y = W_g (n×k)              worker: X'·Y'      (m×k)
//   weight:  G = dC_g (m×n) as Y', Aᵀ (stored A_g) as X'ᵀ  worker: G'ᵀ·X'ᵀ  (n×k, transposed)
// shifted: the backward triples are the forward's shifted, and the worker
// reuses the forward's X' (weight) or Y'ᵀ (input) from h.
bool OffloadBackend::batched_once(Kind kind, const BatchedProduct& p, const float* dc, float* out, size_t w,
                                  HeldBatch& h, bool shifted) {
  const int64_t G = p.groups, m = p.m, k = p.k, n = p.n;
  std::vector<Triple> ts(static_cast<size_t>(G));
  std::vector<int32_t> order;
  std::vector<CipherMatrix> ops;
  ProductOp op;
  int64_t zr, zc;  // one block of the result
  {
    PhaseTimer timer(phases_.encrypt);
    if (shifted) {
      order = h.order;
    } else {
      order = obf_->draw(G).perm;
    }
    for (int64_t g = 0; g < G; ++g) {
      Triple& t = ts[static_cast<size_t>(g)];
      const Triple* f = shifted ? &h.fwd[static_cast<size_t>(g)] : nullptr;
      switch (kind) {
        case Kind::kForward: t = obf_->draw_triple(m, k, n); break;
        case Kind::kInput: t = f ? f->shift_input(obf_->draw(m)) : obf_->draw_triple(m, n, k); break;
        case Kind::kWeight: t = f ? f->shift_weight(obf_->draw(n)) : obf_->draw_triple(k, m, n); break;
      }
    }
    switch (kind) {
      case Kind::kForward:
        ops.push_back(obf_->encrypt_batch(Part::kX, ts, order, p.a, m, k));
        ops.push_back(obf_->encrypt_batch(Part::kYt, ts, order, p.w, n, k));
        op = ProductOp::kNT;
        zr = m;
        zc = n;
        break;
      case Kind::kInput:
        ops.push_back(obf_->encrypt_batch(Part::kX, ts, order, dc, m, n));
        if (!shifted) ops.push_back(obf_->encrypt_batch(Part::kY, ts, order, p.w, n, k));
        op = ProductOp::kNN;
        zr = m;
        zc = k;
        break;
      case Kind::kWeight:
      default:
        ops.push_back(obf_->encrypt_batch(Part::kY, ts, order, dc, m, n));
        if (!shifted) ops.push_back(obf_->encrypt_batch(Part::kXt, ts, order, p.a, m, k));
        op = ProductOp::kTN;
        zr = n;
        zc = k;
        break;
    }
  }
  Product named;  // for blame()'s message
  named.name = p.name;
  Handle hx = new_handle(), hy = 0;
  if (shifted) hy = kind == Kind::kInput ? h.w : h.a;
  else hy = new_handle();
  std::future<Matrix> fut;
  Matrix z;
  try {
    {
      PhaseTimer timer(phases_.transfer);
      slots_[w].api->put(hx, ops[0]);
      if (!shifted) slots_[w].api->put(hy, ops[1]);
      fut = slots_[w].api->product(op, hx, hy, G);
    }
    for (const CipherMatrix& c : ops) stats_.bytes_sent += c.rows() * c.cols() * 4;
    PhaseTimer timer(phases_.worker);
    z = fut.get();
    if (z.rows() != G * zr || z.cols() != zc) throw WorkerError("result has the wrong shape");
    stats_.bytes_received += z.size() * 4;
  } catch (const std::exception& e) {
    blame(w, named, e.what());
    return false;
  }
  {
    PhaseTimer timer(phases_.decrypt);
    parallel_for(G, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        const int64_t g = order[static_cast<size_t>(j)];
        const Triple& t = ts[static_cast<size_t>(g)];
        const float* zj = z.data() + j * zr * zc;
        if (kind == Kind::kWeight) t.decrypt_t(zj, n, k, out + g * n * k);
        else t.decrypt(zj, zr, zc, out + g * zr * zc);
      }
    });
  }
  ++stats_.products;
  if (sample_verify()) {
    PhaseTimer timer(phases_.verify);
    ++stats_.verified;
    KeyStream ks = obf_->stream();
    for (int64_t g = 0; g < G; ++g) {
      const float* a = p.a + g * m * k;
      const float* wg = p.w + g * n * k;
      const float* dcg = dc ? dc + g * m * n : nullptr;
      std::vector<int64_t> bad;
      switch (kind) {
        case Kind::kForward: bad = checked(out + g * m * n, m, n, k, {a, false}, {wg, true}, ks); break;
        case Kind::kInput: bad = checked(out + g * m * k, m, k, n, {dcg, false}, {wg, false}, ks); break;
        case Kind::kWeight: bad = checked(out + g * n * k, n, k, m, {dcg, true}, {a, false}, ks); break;
      }
      if (!bad.empty()) {
        blame(w, named, std::string("Freivalds check failed (") + kind_name(static_cast<int>(kind)) + ", batched)");
        return false;
      }
    }
  }
  if (kind == Kind::kForward) {
    h.valid = true;
    h.worker = w;
    h.a = hx;
    h.w = hy;
    h.fwd = std::move(ts);
    h.order = std::move(order);
  }
  return true;
}

}  // namespace tempo
