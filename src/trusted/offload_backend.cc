#include "trusted/offload_backend.h"

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>

#include "common/error.h"
#include "common/parallel.h"

namespace tempo {

namespace {

using Clock = std::chrono::steady_clock;

// Adds the seconds of its lifetime to a phase counter.
class PhaseTimer {
 public:
  explicit PhaseTimer(double& acc) : acc_(acc), t0_(Clock::now()) {}
  ~PhaseTimer() { acc_ += std::chrono::duration<double>(Clock::now() - t0_).count(); }

 private:
  double& acc_;
  Clock::time_point t0_;
};

// Equal contiguous row shares, a function of m and the worker count only.
std::vector<std::pair<int64_t, int64_t>> split_rows(int64_t m, size_t parts) {
  std::vector<std::pair<int64_t, int64_t>> out;
  const int64_t n = std::max<int64_t>(1, std::min<int64_t>(m, static_cast<int64_t>(parts)));
  for (int64_t i = 0; i < n; ++i) out.emplace_back(m * i / n, m * (i + 1) / n);
  return out;
}

// Column split (tensor parallel) when it sends fewer bytes: a row split
// sends m·k + P·n·k floats (W' to every worker), a column split P·m·k + n·k
// (A' to every worker). A function of the shape and worker count only.
bool split_by_cols(int64_t m, int64_t n, size_t parts) { return parts > 1 && n > m; }

const char* kind_name(int k) {
  static const char* names[] = {"forward", "input gradient", "weight gradient"};
  return names[k];
}

}  // namespace

OffloadBackend::OffloadBackend(OffloadConfig cfg, std::vector<std::unique_ptr<WorkerApi>> workers,
                               const Secret& secret)
    : cfg_(cfg), verifier_(cfg.verify) {
  TEMPO_CHECK(!workers.empty(), "no workers given");
  TEMPO_CHECK(cfg.quarantine_after >= 1, "--quarantine-after must be at least 1");
  TEMPO_CHECK(cfg.verify.rounds >= 0 && cfg.verify.rounds <= 64, "--verify-rounds must be from 0 to 64");
  TEMPO_CHECK(cfg.verify.rate >= 0 && cfg.verify.rate <= 1, "--verify-rate must be in [0, 1]");
  TEMPO_CHECK(cfg.verify.tolerance > 0, "--verify-tolerance must be positive");
  for (auto& w : workers) slots_.push_back({std::move(w), 0, false});
  obf_ = cfg.insecure_identity ? Obfuscator::insecure_identity(secret)
                               : std::make_unique<Obfuscator>(secret, cfg.key_scale);
  TEMPO_CHECK(cfg.mask_rank >= 0, "--mask-rank must not be negative");
  TEMPO_CHECK(cfg.row_mix == 0 || (cfg.row_mix >= 2 && cfg.row_mix <= 32), "--row-mix must be 0 (off) or 2 to 32");
  TEMPO_CHECK(cfg.col_mix == 0 || (cfg.col_mix >= 2 && cfg.col_mix <= 32), "--col-mix must be 0 (off) or 2 to 32");
  if ((cfg.mask_rank > 0 || cfg.row_mix > 0 || cfg.col_mix > 0) && !cfg.insecure_identity)
    blind_ = std::make_unique<Blinding>(cfg.row_mix, cfg.mask_rank, cfg.mask_magnitude, cfg.col_mix);
}

size_t OffloadBackend::healthy_workers() const {
  size_t n = 0;
  for (const auto& s : slots_) n += !s.quarantined;
  return n;
}

std::vector<size_t> OffloadBackend::usable(const std::vector<char>& excluded) const {
  std::vector<size_t> out;
  for (size_t i = 0; i < slots_.size(); ++i)
    if (!slots_[i].quarantined && !excluded[i]) out.push_back(i);
  return out;
}

OffloadBackend::Held& OffloadBackend::held(int id) {
  if (id >= static_cast<int>(held_.size())) held_.resize(static_cast<size_t>(id) + 1);
  return held_[static_cast<size_t>(id)];
}

void OffloadBackend::blame(size_t w, const Product& p, const std::string& why) {
  Slot& s = slots_[w];
  ++s.failures;
  ++stats_.rejected;
  const bool quarantine = !s.quarantined && s.failures >= cfg_.quarantine_after;
  if (quarantine) s.quarantined = true;
  if (!cfg_.log) return;
  char when[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof when, "%H:%M:%S", std::localtime(&now));
  const long long step = static_cast<long long>(steps_done_ + 1);
  std::fprintf(stderr, "tempo: %s step %lld: worker %s: rejected its result for %s (%s); re-encrypting with fresh keys\n",
               when, step, s.api->name().c_str(), p.name.c_str(), why.c_str());
  if (quarantine)
    std::fprintf(stderr, "tempo: %s step %lld: WARNING: worker %s quarantined after %d failures; %zu worker(s) left\n",
                 when, step, s.api->name().c_str(), s.failures, healthy_workers());
}

std::vector<int64_t> OffloadBackend::checked(const float* c, int64_t m, int64_t n, int64_t k, Operand a,
                                             Operand b, KeyStream& ks, const int32_t* rows_k,
                                             int64_t k_full, RowSums* sums, const std::vector<double>* r_pre,
                                             const double* cr_pre) {
  // c is read only when its row products were not taken during decryption.
  stats_.verify_bytes += ((cr_pre ? 0 : m * n) + m * k + k * n) * 4 * cfg_.verify.rounds;
  return verifier_.check(c, m, n, k, a, b, ks, rows_k, k_full, sums, r_pre, cr_pre);
}

bool OffloadBackend::sample_verify() {
  if (cfg_.verify.rounds == 0 || cfg_.verify.rate <= 0) return false;
  if (cfg_.verify.rate >= 1) return true;
  KeyStream ks = obf_->stream();
  return ks.uniform() < cfg_.verify.rate;
}

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
  std::vector<std::future<Matrix>> futs;
  {
    // Row split: W' whole to every worker, A' by rows. Column split: A'
    // whole, W' by rows (the columns of C).
    CipherMatrix whole = [&] {
      PhaseTimer t(phases_.encrypt);
      return by_cols ? obf_->encrypt_x(h.fwd, p.a, m, k) : obf_->encrypt_yt(h.fwd, p.w, n, k);
    }();
    if (by_cols) h.kept.push_back(whole);
    for (size_t i = 0; i < shares.size(); ++i) {
      const size_t w = ws[i];
      Chunk ch{w, shares[i].first, shares[i].second, next_handle_++, next_handle_++};
      CipherMatrix share = [&] {
        PhaseTimer t(phases_.encrypt);
        return by_cols ? obf_->encrypt_yt(h.fwd, p.w, n, k, 1, ch.r0, ch.r1)
                         : obf_->encrypt_x(h.fwd, p.a, m, k, ch.r0, ch.r1);
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
  const bool verify = sample_verify();
  const bool fuse = verify && cfg_.verify.rounds == 1;
  KeyStream ks = obf_->stream();
  if (fuse) verifier_.draw_vector(ks, n, r_pre_), cr_pre_.resize(static_cast<size_t>(m));
  {
    PhaseTimer t(phases_.decrypt);
    h.fwd.decrypt(cp, m, n, c, 1, fuse ? r_pre_.data() : nullptr, fuse ? cr_pre_.data() : nullptr);
  }
  stats_.products += 1;
  h.sums_valid = false;
  if (verify) {
    PhaseTimer t(phases_.verify);
    ++stats_.verified;
    auto bad = checked(c, m, n, k, {p.a, false}, {p.w, true}, ks, nullptr, 0, &h.sums,
                       fuse ? &r_pre_ : nullptr, fuse ? cr_pre_.data() : nullptr);
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
    const Handle hg = next_handle_++;
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
  f.fuse = f.verify && cfg_.verify.rounds == 1;
  if (to_image && f.verify && !f.fuse) return false;  // the check would need dA itself
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
  const bool fuse = f.fuse;
  std::vector<Matrix> parts;
  const float* zp = h.by_cols() ? collect_sum(p, f.futs, h.chunks, m, k, parts)
                              : collect(p, f.futs, h.chunks, m, k, false, parts);
  if (!zp) return false;
  KeyStream ks = obf_->stream();
  if (fuse) verifier_.draw_vector(ks, k, r_pre_), cr_pre_.resize(static_cast<size_t>(m));
  {
    PhaseTimer t(phases_.decrypt);
    if (g)
      apply_keys_col2im(zp, t1.left.inverse(), t1.right.transpose(), *g, dx, fuse ? r_pre_.data() : nullptr,
                        fuse ? cr_pre_.data() : nullptr);
    else
      t1.decrypt(zp, m, k, da, 1, fuse ? r_pre_.data() : nullptr, fuse ? cr_pre_.data() : nullptr);
  }
  stats_.products += 1;
  if (!f.verify) return true;
  PhaseTimer t(phases_.verify);
  ++stats_.verified;
  auto bad = checked(da, m, k, n, {dc, false}, {p.w, false}, ks, nullptr, 0, nullptr,
                     fuse ? &r_pre_ : nullptr, fuse ? cr_pre_.data() : nullptr);
  if (bad.empty()) return true;
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
      ok = checked(dw, n, k, m, {dc, true}, {p.a, false}, ks, rows, m).empty();
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
        ok_part = checked(dst, n, k, ch.r1 - ch.r0, {dc, true}, {p.a, false}, ks,
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

// One product under a fresh, unshifted triple on worker w (a retry, or
// --no-key-shift). Z = X·Y with, per kind:
//   forward: X = A (m×k),  Y = Wᵀ (stored W, n×k)  worker: X'·(Y'ᵀ)ᵀ
//   input:   X = dC (m×n), Y = W (n×k)              worker: X'·Y'
//   weight:  X = Aᵀ (stored A, m×k), Y = dC (m×n)   worker: Y'ᵀ·X'ᵀ = Z'ᵀ
bool OffloadBackend::standalone(Kind kind, const Product& p, const float* dc, float* out, size_t w) {
  Solo s;
  return standalone_send(kind, p, dc, w, s) && standalone_finish(kind, p, dc, out, s);
}

bool OffloadBackend::standalone_send(Kind kind, const Product& p, const float* dc, size_t w, Solo& s) {
  const int64_t m = p.m, k = p.k, n = p.n;
  Triple& t = s.t;
  ProductOp op;
  int64_t& zr = s.zr;
  int64_t& zc = s.zc;
  s.w = w;
  std::vector<CipherMatrix> ops;
  {
    PhaseTimer timer(phases_.encrypt);
    switch (kind) {
      case Kind::kForward:
        t = obf_->draw_triple(m, k, n);
        ops.push_back(obf_->encrypt_x(t, p.a, m, k));
        ops.push_back(obf_->encrypt_yt(t, p.w, n, k));
        op = ProductOp::kNT;
        zr = m;
        zc = n;
        break;
      case Kind::kInput:
        t = obf_->draw_triple(m, n, k);
        ops.push_back(obf_->encrypt_x(t, dc, m, n));
        ops.push_back(obf_->encrypt_y(t, p.w, n, k));
        op = ProductOp::kNN;
        zr = m;
        zc = k;
        break;
      case Kind::kWeight:
      default:
        t = obf_->draw_triple(k, m, n);
        ops.push_back(obf_->encrypt_y(t, dc, m, n));   // Y' = G
        ops.push_back(obf_->encrypt_xt(t, p.a, m, k)); // X'ᵀ
        op = ProductOp::kTN;
        zr = n;
        zc = k;
        break;
    }
  }
  s.h0 = next_handle_++;
  s.h1 = next_handle_++;
  try {
    PhaseTimer timer(phases_.transfer);
    slots_[w].api->put(s.h0, ops[0]);
    slots_[w].api->put(s.h1, ops[1]);
    s.f = slots_[w].api->product(op, s.h0, s.h1);
  } catch (const std::exception& e) {
    blame(w, p, e.what());
    return false;
  }
  stats_.bytes_sent += (ops[0].rows() * ops[0].cols() + ops[1].rows() * ops[1].cols()) * 4;
  return true;
}

bool OffloadBackend::standalone_finish(Kind kind, const Product& p, const float* dc, float* out, Solo& s) {
  const int64_t m = p.m, k = p.k, n = p.n;
  const size_t w = s.w;
  Triple& t = s.t;
  const int64_t zr = s.zr, zc = s.zc;
  Matrix z;
  try {
    PhaseTimer timer(phases_.worker);
    z = s.f.get();
    if (z.rows() != zr || z.cols() != zc) throw WorkerError("result has the wrong shape");
    stats_.bytes_received += z.size() * 4;
  } catch (const std::exception& e) {
    blame(w, p, e.what());
    return false;
  }
  {
    PhaseTimer timer(phases_.decrypt);
    if (kind == Kind::kWeight)
      t.decrypt_t(z.data(), n, k, out);
    else
      t.decrypt(z.data(), zr, zc, out);
  }
  stats_.products += 1;
  if (kind == Kind::kForward) held(p).sums_valid = false;
  if (sample_verify()) {
    PhaseTimer timer(phases_.verify);
    ++stats_.verified;
    KeyStream ks = obf_->stream();
    std::vector<int64_t> bad;
    switch (kind) {
      case Kind::kForward: {
        Held& h = held(p);
        bad = checked(out, m, n, k, {p.a, false}, {p.w, true}, ks, nullptr, 0, &h.sums);
        h.sums_valid = bad.empty();
        break;
      }
      case Kind::kInput: bad = checked(out, m, k, n, {dc, false}, {p.w, false}, ks); break;
      case Kind::kWeight: bad = checked(out, n, k, m, {dc, true}, {p.a, false}, ks); break;
    }
    if (!bad.empty()) {
      blame(w, p, std::string("Freivalds check failed (") + kind_name(static_cast<int>(kind)) + ")");
      return false;
    }
  }
  if (kind == Kind::kForward) {
    Held& h = held(p);
    h.valid = true;
    h.fwd = std::move(t);
    h.chunks = {Chunk{w, 0, m, s.h0, s.h1}};
    h.kept.clear();
  }
  return true;
}

void OffloadBackend::fallback_warning(const std::string& what) {
  if (!cfg_.fallback)
    throw Error("no usable worker left for " + what +
                " and --no-fallback is set: stopping (the weights of the last completed step are kept)");
  if (!warned_fallback_ && cfg_.log) {
    warned_fallback_ = true;
    std::fprintf(stderr,
                 "tempo: WARNING: no usable worker left: continuing in TEE-ONLY mode (every product "
                 "computed in the master); pass --no-fallback to stop instead\n");
  }
  ++stats_.local_fallbacks;
}

void OffloadBackend::local(Kind kind, const Product& p, const float* dc, float* out) {
  fallback_warning(p.name);
  switch (kind) {
    case Kind::kForward: local_.forward(p, out); break;
    case Kind::kInput: local_.backward_input(p, dc, out); break;
    case Kind::kWeight: local_.backward_weight(p, dc, out); break;
  }
}

void OffloadBackend::run(Kind kind, const Product& p, const float* dc, float* out) {
  excluded_.assign(slots_.size(), 0);
  Held& h = held(p);
  if (kind == Kind::kForward) {
    auto ws = usable(excluded_);
    if (!ws.empty() && forward_split(p, out, ws, h)) return;
    h.valid = false;
  } else if (cfg_.key_shift && h.valid) {
    bool ok = kind == Kind::kInput ? input_shifted(p, dc, out, h) : weight_shifted(p, dc, out, h);
    if (ok) return;
    for (const Chunk& ch : h.chunks) excluded_[ch.worker] = 1;
  }
  retry(kind, p, dc, out);
}

// Retries (and --no-key-shift): fresh keys, one worker at a time, workers
// not in excluded_ first. Every failure counts towards quarantine; and after
// two tries per worker the master computes the product itself.
void OffloadBackend::retry(Kind kind, const Product& p, const float* dc, float* out) {
  for (size_t attempt = 0; attempt < 2 * slots_.size() + 1; ++attempt) {
    auto ws = usable(excluded_);
    if (ws.empty()) {
      excluded_.assign(slots_.size(), 0);
      ws = usable(excluded_);
      if (ws.empty()) break;
    }
    const size_t w = ws[static_cast<size_t>(p.id) % ws.size()];
    if (standalone(kind, p, dc, out, w)) return;
    excluded_[w] = 1;
  }
  local(kind, p, dc, out);
}

float* OffloadBackend::scratch(std::vector<float>& buf, int64_t n) {
  if (buf.size() < static_cast<size_t>(n)) buf.resize(static_cast<size_t>(n));
  return buf.data();
}

const Product& OffloadBackend::as_sent(const Product& p) const { return blind_ ? blind_->sent(p) : p; }

const float* OffloadBackend::sent_gradient(const Product& plain, const Product& q, const float* dc) {
  if (!mixed(plain, q)) return dc;
  PhaseTimer t(phases_.encrypt);
  return blind_->gradient(q, dc);
}

// Blinding (mix, then mask; trusted/crypto/blinding.h) happens in the
// master's plaintext space, before the keys: every check below sees the
// product exactly as sent, and the corrections run after it has passed.
void OffloadBackend::forward(const Product& p, float* c) {
  if (!blind_) {
    run(Kind::kForward, p, nullptr, c);
    return;
  }
  const Product* q = nullptr;
  {
    PhaseTimer t(phases_.encrypt);
    q = &blind_->apply(p, *obf_);
  }
  stats_.mixed += blind_->mixes();
  stats_.col_mixed += blind_->mixes_cols();
  stats_.masked += blind_->masks();
  float* out = blind_->mixes() ? scratch(mix_out_, p.m * p.n) : c;
  run(Kind::kForward, *q, nullptr, out);
  PhaseTimer t(phases_.decrypt);
  blind_->finish_forward(*q, out, c);
}

void OffloadBackend::backward_input(const Product& p, const float* dc, float* da) {
  const Product& q = as_sent(p);
  if (!mixed(p, q)) {
    run(Kind::kInput, q, dc, da);
    return;
  }
  const float* g = sent_gradient(p, q, dc);
  float* out = scratch(mix_out_, q.m * q.k);
  run(Kind::kInput, q, g, out);
  PhaseTimer t(phases_.decrypt);
  blind_->finish_input(q, out, da);
}

void OffloadBackend::backward_weight(const Product& p, const float* dc, float* dw) {
  const Product& q = as_sent(p);
  const float* g = sent_gradient(p, q, dc);  // (M·dC)ᵀ·(M·A) = dCᵀ·A: nothing to unmix
  run(Kind::kWeight, q, g, dw);
  if (&q == &p) return;
  PhaseTimer t(phases_.decrypt);
  blind_->finish_weight(q, g, dw);
}

// ---- Channel mode ----------------------------------------------------------
// The triple's dimensions are images (N), input channels (C) and output
// channels (O); each "element" is a feature map or a kernel (block).

bool OffloadBackend::conv_verified(Kind kind, const ConvProduct& p, const float* dy, const float* out) {
  if (!sample_verify()) return true;
  PhaseTimer t(phases_.verify);
  ++stats_.verified;
  const ConvGeometry& g = p.g;
  stats_.verify_bytes += (g.n * g.c * g.h * g.w + g.o * g.c * g.k * g.k + g.n * g.o * g.oh * g.ow) * 4 *
                         cfg_.verify.rounds;
  KeyStream ks = obf_->stream();
  switch (kind) {
    case Kind::kForward: return verifier_.check_conv_forward(out, p.x, p.w, g, ks);
    case Kind::kInput: return verifier_.check_conv_input(out, dy, p.w, g, ks);
    case Kind::kWeight:
    default: return verifier_.check_conv_weight(out, p.x, dy, g, ks);
  }
}

// One channel-mode convolution on worker w: under the forward triple's key
// shift when `shifted` is given (backward), else under a fresh triple.
bool OffloadBackend::conv_once(Kind kind, const ConvProduct& p, const float* dy, float* out, size_t w,
                               Held* shifted) {
  const ConvGeometry& g = p.g;
  const int64_t HW = g.h * g.w, P = g.oh * g.ow, kk = g.k * g.k;
  Triple t;
  std::vector<CipherMatrix> ops;
  Handle ha = 0, hb = 0;
  ConvOp op = ConvOp::kForward;
  {
    PhaseTimer timer(phases_.encrypt);
    if (shifted && kind == Kind::kInput) {
      t = shifted->fwd.shift_input(obf_->draw(g.n));
      ops.push_back(obf_->encrypt_x(t, dy, g.n, g.o, 0, -1, P));  // G1; W' is on the worker
      hb = shifted->chunks[0].w;
      op = ConvOp::kBackwardInput;
    } else if (shifted) {
      t = shifted->fwd.shift_weight(obf_->draw(g.o));
      ops.push_back(obf_->encrypt_y(t, dy, g.n, g.o, 0, -1, P));  // G2; X' is on the worker
      ha = shifted->chunks[0].a;
      op = ConvOp::kBackwardWeight;
    } else if (kind == Kind::kForward) {
      t = obf_->draw_triple(g.n, g.c, g.o);
      ops.push_back(obf_->encrypt_x(t, p.x, g.n, g.c, 0, -1, HW));
      ops.push_back(obf_->encrypt_yt(t, p.w, g.o, g.c, kk));
    } else if (kind == Kind::kInput) {
      t = obf_->draw_triple(g.n, g.o, g.c);
      ops.push_back(obf_->encrypt_x(t, dy, g.n, g.o, 0, -1, P));
      ops.push_back(obf_->encrypt_y(t, p.w, g.o, g.c, 0, -1, kk));
      op = ConvOp::kBackwardInput;
    } else {
      t = obf_->draw_triple(g.c, g.n, g.o);
      ops.push_back(obf_->encrypt_xt(t, p.x, g.n, g.c, HW));
      ops.push_back(obf_->encrypt_y(t, dy, g.n, g.o, 0, -1, P));
      op = ConvOp::kBackwardWeight;
    }
  }
  Matrix z;
  try {
    std::future<Matrix> f;
    {
      PhaseTimer timer(phases_.transfer);
      if (shifted && kind == Kind::kInput) {
        ha = next_handle_++;
        slots_[w].api->put(ha, ops[0]);
      } else if (shifted) {
        hb = next_handle_++;
        slots_[w].api->put(hb, ops[0]);
      } else {
        ha = next_handle_++;
        hb = next_handle_++;
        slots_[w].api->put(ha, ops[0]);
        slots_[w].api->put(hb, ops[1]);
      }
      f = slots_[w].api->conv(op, ha, hb, g);
    }
    for (const auto& c : ops) stats_.bytes_sent += c.rows() * c.cols() * 4;
    PhaseTimer timer(phases_.worker);
    z = f.get();
    const int64_t zr = kind == Kind::kWeight ? g.o : g.n;
    const int64_t zc = kind == Kind::kForward ? g.o * P : kind == Kind::kInput ? g.c * HW : g.c * kk;
    if (z.rows() != zr || z.cols() != zc) throw WorkerError("result has the wrong shape");
    stats_.bytes_received += z.size() * 4;
  } catch (const std::exception& e) {
    blame(w, Product{p.id, p.name}, e.what());
    return false;
  }
  {
    PhaseTimer timer(phases_.decrypt);
    if (kind == Kind::kForward) t.decrypt(z.data(), g.n, g.o, out, P);
    else if (kind == Kind::kInput) t.decrypt(z.data(), g.n, g.c, out, HW);
    else t.decrypt_t(z.data(), g.o, g.c, out, kk);
  }
  stats_.products += 1;
  if (!conv_verified(kind, p, dy, out)) {
    blame(w, Product{p.id, p.name}, "Freivalds check failed (channel-mode convolution)");
    return false;
  }
  if (kind == Kind::kForward) {
    Held& h = held(p.id);
    h.valid = true;
    h.fwd = std::move(t);
    h.chunks = {Chunk{w, 0, g.n, ha, hb}};
    h.kept.clear();
  }
  return true;
}

void OffloadBackend::conv_run(Kind kind, const ConvProduct& p, const float* dy, float* out) {
  excluded_.assign(slots_.size(), 0);
  Held& h = held(p.id);
  if (kind == Kind::kForward) {
    h.valid = false;
  } else if (cfg_.key_shift && h.valid) {
    const size_t w = h.chunks[0].worker;
    if (!slots_[w].quarantined && conv_once(kind, p, dy, out, w, &h)) return;
    excluded_[w] = 1;
  }
  for (;;) {
    auto ws = usable(excluded_);
    if (ws.empty()) {
      excluded_.assign(slots_.size(), 0);
      ws = usable(excluded_);
      if (ws.empty()) break;
    }
    const size_t w = ws[static_cast<size_t>(p.id) % ws.size()];
    if (conv_once(kind, p, dy, out, w, nullptr)) return;
    excluded_[w] = 1;
  }
  fallback_warning(p.name);
  switch (kind) {
    case Kind::kForward: local_.conv_forward(p, out); break;
    case Kind::kInput: local_.conv_backward_input(p, dy, out); break;
    case Kind::kWeight: local_.conv_backward_weight(p, dy, out); break;
  }
}

void OffloadBackend::conv_forward(const ConvProduct& p, float* y) { conv_run(Kind::kForward, p, nullptr, y); }

void OffloadBackend::conv_backward_input(const ConvProduct& p, const float* dy, float* dx) {
  conv_run(Kind::kInput, p, dy, dx);
}

void OffloadBackend::conv_backward_weight(const ConvProduct& p, const float* dy, float* dw) {
  conv_run(Kind::kWeight, p, dy, dw);
}

void OffloadBackend::backward_input_col2im(const Product& plain, const float* dc, const ConvGeometry& g,
                                           float* dx) {
  const Product& p = as_sent(plain);
  if (mixed(plain, p)) {  // dA must be unmixed before its columns are summed into the image
    float* da = scratch(mix_da_, p.m * p.k);
    backward_input(plain, dc, da);
    col2im(g, da, dx);
    return;
  }
  Held& h = held(p);
  // Fused only with at most one verification round (whose products are
  // taken in the same pass); otherwise the check needs dA itself.
  if (cfg_.key_shift && h.valid && cfg_.verify.rounds <= 1) {
    if (input_shifted(p, dc, nullptr, h, &g, dx)) return;
    h.valid = false;  // retries below use fresh, unshifted keys
  }
  if (dcols_.size() < static_cast<size_t>(p.m * p.k)) dcols_.resize(static_cast<size_t>(p.m * p.k));
  run(Kind::kInput, p, dc, dcols_.data());
  col2im(g, dcols_.data(), dx);
}

void OffloadBackend::backward(const Product& plain, const float* dc, float* dw, float* da, const ConvGeometry* g,
                              float* dx) {
  const Product& p = as_sent(plain);
  const bool mix = mixed(plain, p);
  const float* gs = sent_gradient(plain, p, dc);
  // Mixed, dA must be unmixed before its columns are summed into the image.
  float* das = mix && (da || g) ? scratch(mix_out_, p.m * p.k) : nullptr;
  if (mix) backward_plain(p, gs, dw, das, nullptr, nullptr);
  else backward_plain(p, dc, dw, da, g, dx);
  if (&p == &plain) return;
  PhaseTimer t(phases_.decrypt);
  if (dw) blind_->finish_weight(p, gs, dw);
  if (!das) return;
  float* out = g ? scratch(mix_da_, p.m * p.k) : da;
  blind_->finish_input(p, das, out);
  if (g) col2im(*g, out, dx);
}

// backward() on the product as sent (dw is still masked when it returns).
void OffloadBackend::backward_plain(const Product& p, const float* dc, float* dw, float* da, const ConvGeometry* g,
                                    float* dx) {
  Held& h = held(p);
  const bool input = g || da;
  if (!cfg_.key_shift && input) {
    excluded_.assign(slots_.size(), 0);
    const auto ws = usable(excluded_);
    if (ws.size() >= 2) {
      backward_apart(p, dc, dw, da, g, dx, ws);
      return;
    }
  }
  if (!cfg_.key_shift || !h.valid || !input || (g && cfg_.verify.rounds > 1)) {
    LinearBackend::backward(p, dc, dw, da, g, dx);
    return;
  }
  excluded_.assign(slots_.size(), 0);
  Flight fw, fi;
  const bool w_sent = weight_send(p, dc, h, fw);
  const bool i_sent = input_send(p, dc, h, g != nullptr, fi);
  const bool w_ok = w_sent && weight_finish(p, dc, dw, h, fw);
  const bool i_ok = i_sent && input_finish(p, dc, da, h, g, dx, fi);
  if (w_ok && i_ok) return;
  // A failed half is re-encrypted with fresh keys, other workers first.
  auto retry_after = [&](Kind kind, float* out) {
    excluded_.assign(slots_.size(), 0);
    for (const Chunk& ch : h.chunks) excluded_[ch.worker] = 1;
    retry(kind, p, dc, out);
  };
  if (!w_ok) retry_after(Kind::kWeight, dw);
  if (i_ok) return;
  if (!g) {
    retry_after(Kind::kInput, da);
    return;
  }
  if (dcols_.size() < static_cast<size_t>(p.m * p.k)) dcols_.resize(static_cast<size_t>(p.m * p.k));
  retry_after(Kind::kInput, dcols_.data());
  col2im(*g, dcols_.data(), dx);
}

// Without the key shift each backward product is encrypted whole under fresh
// keys, so dW and dA go to two different workers and run at once.
void OffloadBackend::backward_apart(const Product& p, const float* dc, float* dw, float* da, const ConvGeometry* g,
                                    float* dx, const std::vector<size_t>& ws) {
  const size_t wi = ws[static_cast<size_t>(p.id) % ws.size()], ww = ws[static_cast<size_t>(p.id + 1) % ws.size()];
  float* in_out = da;
  if (g) {
    if (dcols_.size() < static_cast<size_t>(p.m * p.k)) dcols_.resize(static_cast<size_t>(p.m * p.k));
    in_out = dcols_.data();
  }
  Solo sw, si;
  const bool w_sent = standalone_send(Kind::kWeight, p, dc, ww, sw);
  const bool i_sent = standalone_send(Kind::kInput, p, dc, wi, si);
  const bool w_ok = w_sent && standalone_finish(Kind::kWeight, p, dc, dw, sw);
  const bool i_ok = i_sent && standalone_finish(Kind::kInput, p, dc, in_out, si);
  ++stats_.apart;
  auto again = [&](Kind kind, size_t failed, float* out) {
    excluded_.assign(slots_.size(), 0);
    excluded_[failed] = 1;
    retry(kind, p, dc, out);
  };
  if (!w_ok) again(Kind::kWeight, ww, dw);
  if (!i_ok) again(Kind::kInput, wi, in_out);
  if (g) col2im(*g, dcols_.data(), dx);
}

void OffloadBackend::end_step() {
  ++steps_done_;
  for (auto& s : slots_) {
    if (s.quarantined) continue;
    try {
      s.api->end_step();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "tempo: worker %s: end of step failed: %s\n", s.api->name().c_str(), e.what());
    }
  }
  for (auto& h : held_) {
    h.valid = false;
    h.chunks.clear();
    h.kept.clear();
  }
}

PhaseSeconds OffloadBackend::take_phase_seconds() {
  PhaseSeconds p = phases_;
  phases_ = {};
  return p;
}

}  // namespace tempo
