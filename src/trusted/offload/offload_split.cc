// OffloadBackend: products split across workers by rows or columns, and
// their backward halves under the key shift (DESIGN.md §2).
#include "trusted/offload/offload_backend.h"

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/offload/offload_internal.h"

namespace tempo {

using namespace offload_detail;

bool OffloadBackend::forward_split(const Product& p, float* c, const std::vector<size_t>& ws, Held& h) {
  const int64_t m = p.m, k = p.k, n = p.n;
  const bool by_cols = split_by_cols(m, n, ws.size());
  stats_.column_splits += by_cols;
  auto shares = split_rows(by_cols ? n : m, ws.size());
  h.chunks.clear();
  h.kept.clear();
  h.valid = false;
  {
    PhaseTimer t(phases_.encrypt);
    h.fwd = obf_->draw_triple(m, k, n);
  }
  // The check is begun before the worker runs (its vectors from the same
  // streams, drawn in the same order, as when it ran after): A's side of it
  // is taken row by row while A is read for its encryption, so A is not
  // read again for the check. C·r, for every round, is taken while C is
  // decrypted (one pass over C instead of two).
  const bool verify = sample_verify();
  const int rounds = cfg_.verify.rounds;
  KeyStream ks = obf_->stream();
  RowVisit project;
  RowsVisit project_rows;
  if (verify) {
    PhaseTimer t(phases_.verify);
    verifier_.draw_vectors(ks, n, r_pre_);
    cr_pre_.resize(static_cast<size_t>(rounds * m));
    verifier_.begin(m, n, k, {p.w, true}, ks, nullptr, 0, &h.sums, &r_pre_);
    project = [this](int64_t i, const float* row) { verifier_.project_row(i, row); };
    project_rows = [this](const int64_t* index, const float* const* rows, int64_t n) {
      verifier_.project_rows(index, rows, n);
    };
    stats_.verify_bytes += n * k * 4 * rounds;  // A's rows: read by the encryption
  }
  const RowVisit* visit = verify ? &project : nullptr;
  // A row-mixed A is encrypted as the blinding's pass makes it, every
  // worker's share at once; A itself is not written (operand_a() has it
  // made again, by the same pass, if a retry or a check needs it).
  std::vector<CipherMatrix> a_made;
  if (blind_ && blind_->pending()) {
    PhaseTimer t(phases_.encrypt);
    std::vector<std::pair<int64_t, int64_t>> ranges;
    if (by_cols) ranges.push_back({0, m});
    else ranges.assign(shares.begin(), shares.end());
    a_made = obf_->encrypt_x_from(h.fwd, m, k, ranges, [this](const RowsVisit& sink) { blind_->pass(&sink, false); },
                                  verify ? &project_rows : nullptr);
  }
  std::vector<std::future<Matrix>> futs;
  {
    // Row split: W' whole to every worker, A' by rows. Column split: A'
    // whole, W' by rows (the columns of C).
    CipherMatrix whole = [&] {
      PhaseTimer t(phases_.encrypt);
      if (by_cols && !a_made.empty()) return a_made[0];
      return by_cols ? obf_->encrypt_x(h.fwd, operand_a(p), m, k, 0, -1, 1, visit) : obf_->encrypt_yt(h.fwd, p.w, n, k);
    }();
    if (by_cols) h.kept.push_back(whole);
    for (size_t i = 0; i < shares.size(); ++i) {
      const size_t w = ws[i];
      Chunk ch{w, shares[i].first, shares[i].second, new_handle(), new_handle()};
      CipherMatrix share = [&] {
        PhaseTimer t(phases_.encrypt);
        if (by_cols) return obf_->encrypt_yt(h.fwd, p.w, n, k, 1, ch.r0, ch.r1);
        return a_made.empty() ? obf_->encrypt_x(h.fwd, operand_a(p), m, k, ch.r0, ch.r1, 1, visit) : a_made[i];
      }();
      const CipherMatrix& ac = by_cols ? whole : share;
      const CipherMatrix& wc = by_cols ? share : whole;
      try {
        PhaseTimer t(phases_.transfer);
        slots_[w].api->put(ch.w, wc);
        slots_[w].api->put(ch.a, ac);
        futs.push_back(slots_[w].api->product(ProductOp::kNT, ch.a, ch.w));
      } catch (const std::exception& e) {
        blame(w, p, e.what());
        excluded_[w] = 1;
        return false;
      }
      stats_.bytes_sent += (wc.rows() * wc.cols() + ac.rows() * ac.cols()) * 4;
      h.chunks.push_back(ch);
      if (by_cols) h.kept.push_back(share);
    }
  }
  std::vector<Matrix> parts;
  const float* cp = collect(p, futs, h.chunks, m, n, by_cols, parts);
  if (!cp) return false;
  {
    PhaseTimer t(phases_.decrypt);
    h.fwd.decrypt(cp, m, n, c, 1, verify ? r_pre_.data() : nullptr, verify ? cr_pre_.data() : nullptr, rounds);
  }
  stats_.products += 1;
  h.sums_valid = false;
  if (verify) {
    PhaseTimer t(phases_.verify);
    ++stats_.verified;
    auto bad = verifier_.end(c, cr_pre_.data());
    h.sums_valid = bad.empty();
    if (!bad.empty() && by_cols) {
      // Each worker's columns of C' checked against what it was sent.
      blame_blocks(p, h.chunks, [&](size_t i, KeyStream& ks2) {
        return checked(parts[i].data(), m, h.chunks[i].r1 - h.chunks[i].r0, k, {h.kept[0].matrix().data(), false},
                       {h.kept[1 + i].matrix().data(), true}, ks2).empty();
      });
      return false;
    }
    if (!bad.empty()) {
      // Row i of C came from row perm[i] of C' (decryption's row gather).
      const ScaledPerm linv = h.fwd.left.inverse();
      std::vector<char> seen(slots_.size(), 0);
      for (int64_t row : bad) {
        const int64_t src = linv.perm[static_cast<size_t>(row)];
        for (const Chunk& ch : h.chunks)
          if (src >= ch.r0 && src < ch.r1 && !seen[ch.worker]) {
            seen[ch.worker] = 1;
            blame(ch.worker, p, "Freivalds check failed on " + std::to_string(bad.size()) + " row(s)");
            excluded_[ch.worker] = 1;
          }
      }
      return false;
    }
  }
  h.valid = true;
  return true;
}

// Encrypts a gradient's row share for every chunk and asks the chunk's worker
// for its product with what it holds: W' (kNN, input gradient) or its rows
// of A' (kTN, weight gradient).
bool OffloadBackend::send_gradient(const Product& p, const Held& h, ProductOp op,
                                   std::vector<std::future<Matrix>>& futs,
                                   const std::function<CipherMatrix(const Chunk&)>& encrypt) {
  for (const Chunk& ch : h.chunks) {
    CipherMatrix g = [&] {
      PhaseTimer t(phases_.encrypt);
      return encrypt(ch);
    }();
    const Handle hg = new_handle();
    try {
      PhaseTimer t(phases_.transfer);
      slots_[ch.worker].api->put(hg, g);
      futs.push_back(op == ProductOp::kNN ? slots_[ch.worker].api->product(op, hg, ch.w)
                                          : slots_[ch.worker].api->product(op, hg, ch.a));
    } catch (const std::exception& e) {
      blame(ch.worker, p, e.what());
      return false;
    }
    stats_.bytes_sent += g.rows() * g.cols() * 4;
  }
  return true;
}

// Waits for every share of a split product; share i must be rows_of(i) ×
// cols_of(i). A failed or malformed share is blamed on its worker; false if
// any was.
bool OffloadBackend::await_parts(const Product& p, std::vector<std::future<Matrix>>& futs,
                                 const std::vector<Chunk>& chunks, std::vector<Matrix>& parts,
                                 const std::function<std::pair<int64_t, int64_t>(size_t)>& shape) {
  parts.resize(futs.size());
  bool ok = true;
  for (size_t i = 0; i < futs.size(); ++i) {
    PhaseTimer t(phases_.worker);
    const auto [want_r, want_c] = shape(i);
    try {
      parts[i] = futs[i].get();
      if (parts[i].rows() != want_r || parts[i].cols() != want_c)
        throw WorkerError("result has shape " + std::to_string(parts[i].rows()) + "x" +
                          std::to_string(parts[i].cols()) + ", expected " + std::to_string(want_r) + "x" +
                          std::to_string(want_c));
      stats_.bytes_received += parts[i].size() * 4;
    } catch (const std::exception& e) {
      blame(chunks[i].worker, p, e.what());
      excluded_[chunks[i].worker] = 1;
      ok = false;
    }
  }
  return ok;
}

// The shares of a split product as one rows × cols matrix (no copy with a
// single share): row blocks [r0, r1), or with by_cols column blocks; null if
// any failed.
const float* OffloadBackend::collect(const Product& p, std::vector<std::future<Matrix>>& futs,
                                     const std::vector<Chunk>& chunks, int64_t rows, int64_t cols, bool by_cols,
                                     std::vector<Matrix>& parts) {
  const bool ok = await_parts(p, futs, chunks, parts, [&](size_t i) {
    const int64_t share = chunks[i].r1 - chunks[i].r0;
    return by_cols ? std::make_pair(rows, share) : std::make_pair(share, cols);
  });
  if (!ok) return nullptr;
  if (parts.size() == 1) return parts[0].data();
  if (assembled_.rows() != rows || assembled_.cols() != cols) assembled_ = Matrix(rows, cols);
  if (!by_cols) {
    for (size_t i = 0; i < parts.size(); ++i)
      std::memcpy(assembled_.row(chunks[i].r0), parts[i].data(), sizeof(float) * static_cast<size_t>(parts[i].size()));
  } else {
    parallel_for(rows, [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r)
        for (size_t i = 0; i < parts.size(); ++i)
          std::memcpy(assembled_.row(r) + chunks[i].r0, parts[i].row(r),
                      sizeof(float) * static_cast<size_t>(parts[i].cols()));
    }, 64);
  }
  return assembled_.data();
}

// Sums the partial products of a column split in chunk order (deterministic)
// into a rows × cols matrix; null if any failed.
const float* OffloadBackend::collect_sum(const Product& p, std::vector<std::future<Matrix>>& futs,
                                         const std::vector<Chunk>& chunks, int64_t rows, int64_t cols,
                                         std::vector<Matrix>& parts) {
  if (!await_parts(p, futs, chunks, parts, [&](size_t) { return std::make_pair(rows, cols); })) return nullptr;
  if (parts.size() == 1) return parts[0].data();
  if (assembled_.rows() != rows || assembled_.cols() != cols) assembled_ = Matrix(rows, cols);
  float* dst = assembled_.data();
  parallel_for(rows * cols, [&](int64_t lo, int64_t hi) {
    for (int64_t j = lo; j < hi; ++j) {
      float acc = parts[0].data()[j];
      for (size_t i = 1; i < parts.size(); ++i) acc += parts[i].data()[j];
      dst[j] = acc;
    }
  }, 1 << 14);
  return dst;
}

// After a failed check of a column-split product: checks each worker's
// block in ciphertext space against what it was sent, and blames those that
// fail (all of them if none does, which only a fault of ours could cause).
void OffloadBackend::blame_blocks(const Product& p, const std::vector<Chunk>& chunks,
                                  const std::function<bool(size_t, KeyStream&)>& block_ok) {
  std::vector<size_t> culprits;
  {
    PhaseTimer t(phases_.verify);
    for (size_t i = 0; i < chunks.size(); ++i) {
      KeyStream ks = obf_->stream();
      if (!block_ok(i, ks)) culprits.push_back(i);
    }
  }
  if (culprits.empty())
    for (size_t i = 0; i < chunks.size(); ++i) culprits.push_back(i);
  for (size_t i : culprits) {
    blame(chunks[i].worker, p, "Freivalds check failed on its columns");
    excluded_[chunks[i].worker] = 1;
  }
}

// The input gradient under the key shift, in two halves so that another
// product can run in between: input_send encrypts G1 and sends its shares,
// input_finish collects, decrypts and checks.
bool OffloadBackend::input_send(const Product& p, const float* dc, const Held& h, bool to_image, Flight& f) {
  const int64_t m = p.m, n = p.n;
  f.verify = sample_verify();
  {
    PhaseTimer t(phases_.encrypt);
    f.t = h.fwd.shift_input(obf_->draw(m));
  }
  // Row split: each worker gets its rows of G1. Column split: its columns
  // (those of its W' rows), and the partial products are summed.
  if (h.by_cols()) {
    PhaseTimer t(phases_.encrypt);
    f.blocks.push_back(obf_->encrypt_x(f.t, dc, m, n));
  }
  return send_gradient(p, h, ProductOp::kNN, f.futs, [&](const Chunk& ch) {
    if (!h.by_cols()) return obf_->encrypt_x(f.t, dc, m, n, ch.r0, ch.r1);
    f.blocks.push_back(Obfuscator::columns(f.blocks[0], ch.r0, ch.r1));
    return f.blocks.back();
  });
}

bool OffloadBackend::input_finish(const Product& p, const float* dc, float* da, const Held& h,
                                  const ConvGeometry* g, float* dx, Flight& f) {
  const int64_t m = p.m, k = p.k, n = p.n;
  const Triple& t1 = f.t;
  std::vector<Matrix> parts;
  const float* zp = h.by_cols() ? collect_sum(p, f.futs, h.chunks, m, k, parts)
                              : collect(p, f.futs, h.chunks, m, k, false, parts);
  if (!zp) return false;
  KeyStream ks = obf_->stream();
  const int rounds = cfg_.verify.rounds;
  // Row-mixed, the decryption also undoes the mixing (fused_input_).
  const bool fused = !g && fused_input_ && blind_;
  // A checked result's products are taken during decryption (with g,
  // during col2im too: dA is never formed).
  if (f.verify) verifier_.draw_vectors(ks, k, r_pre_), cr_pre_.resize(static_cast<size_t>(rounds * m));
  {
    PhaseTimer t(phases_.decrypt);
    if (g)
      apply_keys_col2im(zp, t1.left.inverse(), t1.right.transpose(), *g, dx, f.verify ? r_pre_.data() : nullptr,
                        f.verify ? cr_pre_.data() : nullptr, rounds);
    else if (fused)
      blind_->decrypt_input(p, zp, t1.left.inverse(), t1.right.transpose(), f.verify ? r_pre_.data() : nullptr,
                            f.verify ? cr_pre_.data() : nullptr, rounds, fused_input_, fused_natural_);
    else
      t1.decrypt(zp, m, k, da, 1, f.verify ? r_pre_.data() : nullptr, f.verify ? cr_pre_.data() : nullptr, rounds);
  }
  stats_.products += 1;
  if (!f.verify) return fused_done_ = fused, true;
  PhaseTimer t(phases_.verify);
  ++stats_.verified;
  // With cr_pre the check reads neither da nor dx.
  auto bad = checked(da, m, k, n, {dc, false}, {p.w, false}, ks, nullptr, 0, nullptr,
                     &r_pre_, cr_pre_.data());
  if (bad.empty()) return fused_done_ = fused, true;
  if (h.by_cols()) {
    blame_blocks(p, h.chunks, [&](size_t i, KeyStream& ks2) {
      return checked(parts[i].data(), m, k, h.chunks[i].r1 - h.chunks[i].r0, {f.blocks[1 + i].matrix().data(), false},
                     {h.kept[1 + i].matrix().data(), false}, ks2).empty();
    });
    return false;
  }
  // Row i of dA came from row perm[i] of the worker's product.
  const ScaledPerm linv = t1.left.inverse();
  for (int64_t row : bad) {
    const int64_t src = linv.perm[static_cast<size_t>(row)];
    for (const Chunk& ch : h.chunks)
      if (src >= ch.r0 && src < ch.r1) {
        blame(ch.worker, p, "Freivalds check failed (input gradient)");
        return false;
      }
  }
  return false;
}

bool OffloadBackend::input_shifted(const Product& p, const float* dc, float* da, const Held& h,
                                   const ConvGeometry* g, float* dx) {
  Flight f;
  return input_send(p, dc, h, g != nullptr, f) && input_finish(p, dc, da, h, g, dx, f);
}

// The weight gradient under the key shift, in the same two halves. Row
// split: each worker's partial dW over its rows S = L.perm[r0, r1) is
// decrypted and checked on its own, then summed in chunk order. Column
// split: every worker holds all of A', so each computes the rows of dW' for
// its block of G2's columns; the blocks are assembled, decrypted and checked
// as one.
bool OffloadBackend::weight_send(const Product& p, const float* dc, const Held& h, Flight& f) {
  const int64_t m = p.m, n = p.n;
  {
    PhaseTimer t(phases_.encrypt);
    f.t = h.fwd.shift_weight(obf_->draw(n));
    if (h.by_cols()) f.blocks.push_back(obf_->encrypt_y(f.t, dc, m, n));
  }
  const bool sent = send_gradient(p, h, ProductOp::kTN, f.futs, [&](const Chunk& ch) {
    if (!h.by_cols()) return obf_->encrypt_y(f.t, dc, m, n, ch.r0, ch.r1);
    f.blocks.push_back(Obfuscator::columns(f.blocks[0], ch.r0, ch.r1));
    return f.blocks.back();
  });
  f.verify = sample_verify();
  return sent;
}

bool OffloadBackend::weight_finish(const Product& p, const float* dc, float* dw, const Held& h, Flight& f) {
  const int64_t m = p.m, k = p.k, n = p.n;
  const Triple& t2 = f.t;
  if (h.by_cols()) {
    std::vector<Matrix> parts;
    const float* zp = collect(p, f.futs, h.chunks, n, k, false, parts);
    if (!zp) return false;
    {
      PhaseTimer t(phases_.decrypt);
      t2.decrypt_t(zp, n, k, dw);
    }
    stats_.products += 1;
    if (!f.verify) return true;
    PhaseTimer t(phases_.verify);
    ++stats_.verified;
    const int32_t* rows = h.fwd.left.perm.data();
    bool ok;
    if (h.sums_valid) {
      stats_.verify_bytes += (m * n + n * k) * 4 * cfg_.verify.rounds;
      ok = verifier_.check_weight(dw, n, k, dc, h.sums, rows, m);
    } else {
      KeyStream ks = obf_->stream();
      ok = checked(dw, n, k, m, {dc, true}, {operand_a(p), false}, ks, rows, m).empty();
    }
    if (ok) return true;
    blame_blocks(p, h.chunks, [&](size_t i, KeyStream& ks2) {
      return checked(parts[i].data(), h.chunks[i].r1 - h.chunks[i].r0, k, m, {f.blocks[1 + i].matrix().data(), true},
                     {h.kept[0].matrix().data(), false}, ks2).empty();
    });
    return false;
  }
  bool ok = true;
  for (size_t i = 0; i < f.futs.size(); ++i) {
    const Chunk& ch = h.chunks[i];
    Matrix z;
    {
      PhaseTimer t(phases_.worker);
      try {
        z = f.futs[i].get();
        if (z.rows() != n || z.cols() != k) throw WorkerError("result has the wrong shape");
        stats_.bytes_received += z.size() * 4;
      } catch (const std::exception& e) {
        blame(ch.worker, p, e.what());
        ok = false;
        continue;
      }
    }
    float* dst = dw;
    if (i > 0) {
      if (partial_.rows() != n || partial_.cols() != k) partial_ = Matrix(n, k);
      dst = partial_.data();
    }
    {
      PhaseTimer t(phases_.decrypt);
      t2.decrypt_t(z.data(), n, k, dst);
    }
    if (f.verify) {
      PhaseTimer t(phases_.verify);
      bool ok_part;
      if (h.sums_valid) {
        // A's row sums were taken in the forward check: read only dC and dW.
        stats_.verify_bytes += ((ch.r1 - ch.r0) * n + n * k) * 4 * cfg_.verify.rounds;
        ok_part = verifier_.check_weight(dst, n, k, dc, h.sums, h.fwd.left.perm.data() + ch.r0, ch.r1 - ch.r0);
      } else {
        KeyStream ks = obf_->stream();
        ok_part = checked(dst, n, k, ch.r1 - ch.r0, {dc, true}, {operand_a(p), false}, ks,
                          h.fwd.left.perm.data() + ch.r0, m).empty();
      }
      if (!ok_part) {
        blame(ch.worker, p, "Freivalds check failed (weight gradient)");
        ok = false;
        continue;
      }
    }
    if (i > 0) {
      PhaseTimer t(phases_.decrypt);
      const float* src = partial_.data();
      parallel_for(n * k, [&](int64_t lo, int64_t hi) {
        for (int64_t j = lo; j < hi; ++j) dw[j] += src[j];
      }, 1 << 14);
    }
  }
  if (!ok) return false;
  stats_.products += 1;
  if (f.verify) ++stats_.verified;
  return true;
}

bool OffloadBackend::weight_shifted(const Product& p, const float* dc, float* dw, const Held& h) {
  Flight f;
  return weight_send(p, dc, h, f) && weight_finish(p, dc, dw, h, f);
}

}  // namespace tempo
