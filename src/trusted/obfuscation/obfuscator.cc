#include "trusted/obfuscation/obfuscator.h"

#include <sodium.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>

#include "common/copy.h"
#include "common/error.h"
#include "common/parallel.h"

namespace tempo {

Obfuscator::~Obfuscator() = default;  // secret_ wipes itself

Obfuscator::Obfuscator(const Secret& secret, double key_scale) : secret_(secret.clone()), sigma_(key_scale) {
  TEMPO_CHECK(key_scale >= 1.0 && key_scale < 1e6, "--key-scale must be at least 1 (and below 1e6)");
}

std::unique_ptr<Obfuscator> Obfuscator::insecure_identity(const Secret& secret) {
  std::fprintf(stderr,
               "tempo: WARNING: INSECURE offload mode: workers receive PLAINTEXT inputs, weights "
               "and gradients (an ablation for measurements, never for real data)\n");
  std::unique_ptr<Obfuscator> o(new Obfuscator());
  o->identity_ = true;
  o->secret_ = secret.clone();
  return o;
}

ScaledPerm Obfuscator::draw(int64_t d) {
  if (identity_) return ScaledPerm::identity(d);
  KeyStream ks(secret_, next_stream_++);
  return ks.scaled_perm(d, sigma_);
}

Triple Obfuscator::draw_triple(int64_t m, int64_t k, int64_t n) {
  Triple t;
  t.left = draw(m);
  t.inner = draw(k);
  t.right = draw(n);
  return t;
}

// A rows×cols ciphertext filled by one Triple pass.
template <typename Fill>
CipherMatrix Obfuscator::seal(int64_t rows, int64_t cols, Fill&& fill) {
  Matrix out(rows, cols);
  fill(out.data());
  return CipherMatrix(CipherMatrix::Seal{}, std::move(out));
}

CipherMatrix Obfuscator::encrypt_x(const Triple& t, const float* x, int64_t m, int64_t k, int64_t r0,
                                   int64_t r1, int64_t block, const RowVisit* visit) const {
  if (r1 < 0) r1 = m;
  return seal(r1 - r0, k * block, [&](float* o) { t.encrypt_x(x, m, k, o, r0, r1, block, visit); });
}

std::vector<CipherMatrix> Obfuscator::encrypt_x_from(const Triple& t, int64_t m, int64_t k,
                                                     const std::vector<std::pair<int64_t, int64_t>>& ranges,
                                                     const RowPass& pass, const RowsVisit* visit) const {
  TEMPO_CHECK(t.left.size() == m && t.inner.size() == k, "encrypt_x_from: key size mismatch");
  int64_t covered = 0;
  for (const auto& [r0, r1] : ranges) {
    TEMPO_CHECK(r0 == covered && r1 >= r0, "encrypt_x_from: the ranges must tile the rows in order");
    covered = r1;
  }
  TEMPO_CHECK(covered == m, "encrypt_x_from: the ranges must cover every row");
  // Row j of X is row at[j] of left·X (left.perm[at[j]] = j). This and
  // the row counts below live in the calling thread's scratch, grown once;
  // the sink reaches them (from the pass's threads) through references.
  thread_local std::vector<int32_t> at_scratch;
  thread_local std::vector<uint8_t> made_scratch;
  std::vector<int32_t>& at = at_scratch;
  at.resize(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) at[static_cast<size_t>(t.left.perm[static_cast<size_t>(i)])] = static_cast<int32_t>(i);
  const ScaledPerm cols = t.inner.inv_t();
  std::vector<Matrix> out;
  for (const auto& [r0, r1] : ranges) out.emplace_back(r1 - r0, k);
  // A ciphertext larger than the caches is streamed (it is not read again
  // here), from a row buffer of the thread's.
  const bool stream = m * k * static_cast<int64_t>(sizeof(float)) >= kStreamBytes;
  // How often each row came: a byte per row, so the pass's threads never
  // share a counter. The sink runs on those threads, where nothing may
  // throw: a row out of range is only flagged, and reported after the pass.
  std::vector<uint8_t>& made = made_scratch;
  made.assign(static_cast<size_t>(m), 0);
  std::atomic<bool> stray{false};
  const RowsVisit sink = [&](const int64_t* index, const float* const* rows, int64_t n) {
    for (int64_t r = 0; r < n; ++r)
      if (index[r] < 0 || index[r] >= m) {
        stray.store(true, std::memory_order_relaxed);
        return;
      }
    if (visit) (*visit)(index, rows, n);
    for (int64_t r = 0; r < n; ++r) {
      const int64_t j = index[r];
      const float* row = rows[r];
      ++made[static_cast<size_t>(j)];
      const int64_t i = at[static_cast<size_t>(j)];
      size_t part = 0;
      while (i >= ranges[part].second) ++part;
      float* dst = out[part].row(i - ranges[part].first);
      const float s = t.left.scale[static_cast<size_t>(i)];
      if (stream) {
        thread_local std::vector<float> buf;
        if (buf.size() < static_cast<size_t>(k)) buf.resize(static_cast<size_t>(k));
        keyed_row(row, s, cols, buf.data());
        stream_floats(dst, buf.data(), k);
      } else {
        keyed_row(row, s, cols, dst);
      }
    }
  };
  pass(sink);
  TEMPO_CHECK(!stray.load() && std::all_of(made.begin(), made.end(), [](uint8_t c) { return c == 1; }),
              "encrypt_x_from: the pass did not make every row exactly once");
  std::vector<CipherMatrix> sealed;
  for (Matrix& o : out) sealed.emplace_back(CipherMatrix::Seal{}, std::move(o));
  return sealed;
}

CipherMatrix Obfuscator::encrypt_xt(const Triple& t, const float* xt, int64_t k, int64_t m, int64_t block) const {
  return seal(k, m * block, [&](float* o) { t.encrypt_xt(xt, k, m, o, block); });
}

CipherMatrix Obfuscator::encrypt_y(const Triple& t, const float* y, int64_t k, int64_t n, int64_t r0,
                                   int64_t r1, int64_t block) const {
  if (r1 < 0) r1 = k;
  return seal(r1 - r0, n * block, [&](float* o) { t.encrypt_y(y, k, n, o, r0, r1, block); });
}

CipherMatrix Obfuscator::encrypt_yt(const Triple& t, const float* yt, int64_t n, int64_t k, int64_t block,
                                    int64_t r0, int64_t r1) const {
  if (r1 < 0) r1 = n;
  return seal(r1 - r0, k * block, [&](float* o) { t.encrypt_yt(yt, n, k, o, block, r0, r1); });
}

CipherMatrix Obfuscator::encrypt_batch(Part part, const std::vector<Triple>& ts, const std::vector<int32_t>& order,
                                       const float* blocks, int64_t rows, int64_t cols) const {
  const int64_t groups = static_cast<int64_t>(order.size()), size = rows * cols;
  return seal(groups * rows, cols, [&](float* o) {
    parallel_for(groups, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) {
        const int64_t g = order[static_cast<size_t>(j)];
        const Triple& t = ts[static_cast<size_t>(g)];
        const float* in = blocks + g * size;
        float* out = o + j * size;
        switch (part) {
          case Part::kX: t.encrypt_x(in, rows, cols, out); break;
          case Part::kXt: t.encrypt_xt(in, rows, cols, out); break;
          case Part::kY: t.encrypt_y(in, rows, cols, out); break;
          case Part::kYt: t.encrypt_yt(in, rows, cols, out); break;
        }
      }
    });
  });
}

CipherMatrix Obfuscator::columns(const CipherMatrix& c, int64_t c0, int64_t c1) {
  const Matrix& m = c.matrix();
  return seal(m.rows(), c1 - c0, [&](float* o) {
    for (int64_t i = 0; i < m.rows(); ++i)
      std::memcpy(o + i * (c1 - c0), m.row(i) + c0, sizeof(float) * static_cast<size_t>(c1 - c0));
  });
}

}  // namespace tempo
