// OffloadBackend: batched products (attention's per-head products, both
// operands activations). A batch goes to one worker as one request: block g
// under its own fresh triple, the blocks stacked in an order drawn from the
// key stream, so that a worker does not learn which block is which image and
// head. Unless --row-mix and --col-mix are both 0, every block is also
// mixed (block_mix.h): its m rows by M and its inner dimension k by G, the
// same M and G for a block's forward and backward products:
//   forward: M·A·Gᵀ and W·Gᵀ        → M·C,         undone by Mᵀ·
//   input:   M·dC and W·Gᵀ           → M·dA·Gᵀ,     undone by Mᵀ·(·)·G
//   weight:  M·dC and M·A·Gᵀ         → dW·Gᵀ,       undone by ·G
// Every block is checked. The backward products reuse the forward's
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
bool OffloadBackend::batch_mixing() const { return !obf_->identity() && (cfg_.row_mix > 0 || cfg_.col_mix > 0); }

void OffloadBackend::draw_batch_mixes(BatchMixes& mx, int64_t groups, int64_t m, int64_t k) {
  mx.rows.resize(static_cast<size_t>(groups));
  mx.cols.resize(static_cast<size_t>(groups));
  KeyStream ks = obf_->stream();
  // In a fixed number of pieces, each from its own stretch of the stream:
  // the draws depend on the stream only, not on the threads.
  constexpr int64_t kPieces = 16;
  parallel_for(kPieces, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) {
      KeyStream piece = ks.fork(static_cast<uint32_t>(c));
      for (int64_t g = groups * c / kPieces; g < groups * (c + 1) / kPieces; ++g) {
        mx.rows[static_cast<size_t>(g)].draw(piece, m, cfg_.row_mix);
        mx.cols[static_cast<size_t>(g)].draw(piece, k, cfg_.col_mix);
      }
    }
  });
}

// Per kind, block by block (as standalone_send/finish for one product):
//   forward: X = A_g (m×k), Y = W_gᵀ (stored W_g, n×k)  worker: X'·Y'ᵀ     (m×n)
//   input:   X = dC_g (m×n), Y = W_g (n×k)              worker: X'·Y'      (m×k)
//   weight:  G = dC_g (m×n) as Y', Aᵀ (stored A_g) as X'ᵀ  worker: G'ᵀ·X'ᵀ  (n×k, transposed)
// (each operand mixed first, see the top). shifted: the backward triples
// and mixings are the forward's, and the worker reuses the forward's X'
// (weight) or Y'ᵀ (input) from h.
bool OffloadBackend::batched_once(Kind kind, const BatchedProduct& p, const float* dc, float* out, size_t w,
                                  HeldBatch& h, bool shifted) {
  const int64_t G = p.groups, m = p.m, k = p.k, n = p.n;
  const bool mixing = batch_mixing();
  BatchMixes& mx = shifted ? h.mix : batch_mix_;
  std::vector<Triple> ts(static_cast<size_t>(G));
  std::vector<int32_t> order;
  std::vector<CipherMatrix> ops;
  ProductOp op;
  int64_t zr, zc;  // one block of the result
  const float *sent_x = nullptr, *sent_y = nullptr;
  {
    PhaseTimer timer(phases_.encrypt);
    if (shifted) {
      order = h.order;
    } else {
      order = obf_->draw(G).perm;
      if (mixing) draw_batch_mixes(mx, G, m, k);
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
    // Block g of src (r×c) mixed: by M over its rows and/or by G over its columns.
    auto mixed = [&](std::vector<float>& buf, const float* src, int64_t r, int64_t c, bool by_rows,
                     bool by_cols) -> const float* {
      if (!mixing) return src;
      float* dst = scratch(buf, G * r * c);
      parallel_for(G, [&](int64_t lo, int64_t hi) {
        for (int64_t g = lo; g < hi; ++g) {
          const float* sg = src + g * r * c;
          float* dg = dst + g * r * c;
          if (by_rows) mx.rows[static_cast<size_t>(g)].rows(sg, c, dg, false);
          if (by_cols) mx.cols[static_cast<size_t>(g)].cols(by_rows ? dg : sg, r, dg, false);
        }
      });
      return dst;
    };
    // The plaintext operands as sent (mixed), kept for the check; under the
    // key shift the forward's reused operand is mixed again, not sent.
    const float *xs, *ys;  // block g at + g·(its size)
    switch (kind) {
      case Kind::kForward:
        xs = mixed(batch_x_, p.a, m, k, true, true);  // M·A·Gᵀ
        ys = mixed(batch_y_, p.w, n, k, false, true);  // W·Gᵀ
        ops.push_back(obf_->encrypt_batch(Part::kX, ts, order, xs, m, k));
        ops.push_back(obf_->encrypt_batch(Part::kYt, ts, order, ys, n, k));
        op = ProductOp::kNT;
        zr = m;
        zc = n;
        break;
      case Kind::kInput:
        xs = mixed(batch_x_, dc, m, n, true, false);   // M·dC
        ys = mixed(batch_y_, p.w, n, k, false, true);  // W·Gᵀ
        ops.push_back(obf_->encrypt_batch(Part::kX, ts, order, xs, m, n));
        if (!shifted) ops.push_back(obf_->encrypt_batch(Part::kY, ts, order, ys, n, k));
        op = ProductOp::kNN;
        zr = m;
        zc = k;
        break;
      case Kind::kWeight:
      default:
        ys = mixed(batch_y_, dc, m, n, true, false);  // M·dC
        xs = mixed(batch_x_, p.a, m, k, true, true);  // M·A·Gᵀ
        ops.push_back(obf_->encrypt_batch(Part::kY, ts, order, ys, m, n));
        if (!shifted) ops.push_back(obf_->encrypt_batch(Part::kXt, ts, order, xs, m, k));
        op = ProductOp::kTN;
        zr = n;
        zc = k;
        break;
    }
    sent_x = xs;
    sent_y = ys;
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
  // The result as sent (M·C, M·dA·Gᵀ or dW·Gᵀ), checked against the
  // operands as sent, then unmixed: the worker's rounding is that of the
  // mixed product, so the check's bound must be too (as for single products).
  float* res = mixing ? scratch(batch_res_, G * zr * zc) : out;
  {
    PhaseTimer timer(phases_.decrypt);
    parallel_for(G, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        const int64_t g = order[static_cast<size_t>(j)];
        const Triple& t = ts[static_cast<size_t>(g)];
        const float* zj = z.data() + j * zr * zc;
        if (kind == Kind::kWeight) t.decrypt_t(zj, n, k, res + g * n * k);
        else t.decrypt(zj, zr, zc, res + g * zr * zc);
      }
    });
  }
  ++stats_.products;
  if (sample_verify()) {
    PhaseTimer timer(phases_.verify);
    ++stats_.verified;
    KeyStream ks = obf_->stream();
    for (int64_t g = 0; g < G; ++g) {
      std::vector<int64_t> bad;
      switch (kind) {
        case Kind::kForward:
          bad = checked(res + g * m * n, m, n, k, {sent_x + g * m * k, false}, {sent_y + g * n * k, true}, ks);
          break;
        case Kind::kInput:
          bad = checked(res + g * m * k, m, k, n, {sent_x + g * m * n, false}, {sent_y + g * n * k, false}, ks);
          break;
        case Kind::kWeight:
          bad = checked(res + g * n * k, n, k, m, {sent_y + g * m * n, true}, {sent_x + g * m * k, false}, ks);
          break;
      }
      if (!bad.empty()) {
        blame(w, named, std::string("Freivalds check failed (") + kind_name(static_cast<int>(kind)) + ", batched)");
        return false;
      }
    }
  }
  if (mixing) {
    PhaseTimer timer(phases_.decrypt);
    parallel_for(G, [&](int64_t lo, int64_t hi) {
      for (int64_t g = lo; g < hi; ++g) {
        const float* rg = res + g * zr * zc;
        float* og = out + g * zr * zc;
        const BlockMix& rows = mx.rows[static_cast<size_t>(g)];
        const BlockMix& cols = mx.cols[static_cast<size_t>(g)];
        switch (kind) {
          case Kind::kForward: rows.rows(rg, zc, og, true); break;  // Mᵀ·(M·C)
          case Kind::kInput:                                        // Mᵀ·(M·dA·Gᵀ)·G
            rows.rows(rg, zc, og, true);
            cols.cols(og, zr, og, true);
            break;
          case Kind::kWeight: cols.cols(rg, zr, og, true); break;  // (dW·Gᵀ)·G
        }
      }
    });
  }
  if (kind == Kind::kForward) {
    h.valid = true;
    h.worker = w;
    h.a = hx;
    h.w = hy;
    h.fwd = std::move(ts);
    h.order = std::move(order);
    if (mixing) std::swap(h.mix, batch_mix_);
  }
  return true;
}

}  // namespace tempo
