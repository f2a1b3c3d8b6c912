#include "eval/attacks/input_recovery.h"

#include <Eigen/Dense>
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <limits>
#include <numeric>
#include <optional>
#include <unordered_map>

#include "common/error.h"
#include "common/parallel.h"
#include "trusted/rng.h"
#include "trusted/obfuscation/keys.h"
#include "trusted/obfuscation/mask.h"
#include "trusted/obfuscation/obfuscator.h"
#include "trusted/obfuscation/col_mix.h"
#include "trusted/obfuscation/row_mix.h"
#include "eval/measurements/tap.h"
#include "trusted/nn/layers.h"
#include "eval/attacks/low_rank.h"
#include "eval/measurements/traced.h"
#include "eval/attacks/weight_recovery.h"

namespace tempo {

double psnr(const float* a, const float* b, int64_t n) {
  double se = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = double(a[i]) - b[i];
    se += d * d;
  }
  if (se == 0) return std::numeric_limits<double>::infinity();
  return 10 * std::log10(static_cast<double>(n) / se);
}

double ssim(const float* a, const float* b, int64_t h, int64_t w) {
  constexpr int kWin = 11;
  TEMPO_CHECK(h >= kWin && w >= kWin, "SSIM needs images of at least 11×11");
  std::array<double, kWin> g{};
  double gs = 0;
  for (int i = 0; i < kWin; ++i) gs += g[i] = std::exp(-double((i - 5) * (i - 5)) / (2 * 1.5 * 1.5));
  for (double& v : g) v /= gs;
  const double c1 = 0.01 * 0.01, c2 = 0.03 * 0.03;
  double total = 0;
  for (int64_t y = 0; y + kWin <= h; ++y)
    for (int64_t x = 0; x + kWin <= w; ++x) {
      double ma = 0, mb = 0, saa = 0, sbb = 0, sab = 0;
      for (int dy = 0; dy < kWin; ++dy)
        for (int dx = 0; dx < kWin; ++dx) {
          const double wt = g[dy] * g[dx], va = a[(y + dy) * w + x + dx], vb = b[(y + dy) * w + x + dx];
          ma += wt * va, mb += wt * vb, saa += wt * va * va, sbb += wt * vb * vb, sab += wt * va * vb;
        }
      const double va = saa - ma * ma, vb = sbb - mb * mb, cov = sab - ma * mb;
      total += ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2));
    }
  return total / static_cast<double>((h - kWin + 1) * (w - kWin + 1));
}

std::vector<float> affine_fit(const float* r, const float* t, int64_t n) {
  double mr = 0, mt = 0;
  for (int64_t i = 0; i < n; ++i) mr += r[i], mt += t[i];
  mr /= static_cast<double>(n), mt /= static_cast<double>(n);
  double cov = 0, var = 0;
  for (int64_t i = 0; i < n; ++i) cov += (r[i] - mr) * (t[i] - mt), var += (r[i] - mr) * (r[i] - mr);
  const double alpha = var > 0 ? cov / var : 0, beta = mt - alpha * mr;
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(std::clamp(alpha * r[i] + beta, 0.0, 1.0));
  return out;
}

namespace {

constexpr int kK = 3, kKK = 9;
// Neighbours of a row: right, down, left, up.
constexpr int kDy[4] = {0, 1, 0, -1}, kDx[4] = {1, 0, -1, 0};

// Column scales (sign included) up to one common factor, from the sharpest
// mode of within-row log-ratios of each pair of columns (equal pixels make
// it exact), joined along a maximum spanning tree of the mode counts.
std::vector<double> column_key(const float* ct, int64_t rows) {
  std::array<std::array<double, kKK>, kKK> mode{};
  std::array<std::array<int64_t, kKK>, kKK> count{};
  std::array<std::array<int, kKK>, kKK> sign{};
  std::vector<double> d;
  d.reserve(static_cast<size_t>(rows));
  constexpr double kWindow = 1e-5;  // far above float rounding (~3e-7), far below distinct ratios
  for (int j = 0; j < kKK; ++j)
    for (int jj = j + 1; jj < kKK; ++jj) {
      d.clear();
      int64_t same = 0;
      for (int64_t i = 0; i < rows; ++i) {
        const float a = ct[i * kKK + j], b = ct[i * kKK + jj];
        if (a == 0 || b == 0) continue;
        d.push_back(std::log(std::fabs(double(a))) - std::log(std::fabs(double(b))));
        same += (a > 0) == (b > 0);
      }
      std::sort(d.begin(), d.end());
      size_t best_lo = 0, best_n = 0;
      for (size_t lo = 0, hi = 0; lo < d.size(); ++lo) {
        while (hi < d.size() && d[hi] - d[lo] <= kWindow) ++hi;
        if (hi - lo > best_n) best_n = hi - lo, best_lo = lo;
      }
      const double m =
          best_n ? std::accumulate(d.begin() + best_lo, d.begin() + best_lo + best_n, 0.0) / double(best_n) : 0;
      mode[j][jj] = m, mode[jj][j] = -m;
      count[j][jj] = count[jj][j] = static_cast<int64_t>(best_n);
      sign[j][jj] = sign[jj][j] = 2 * same >= static_cast<int64_t>(d.size()) ? 1 : -1;
    }
  std::vector<double> logs(kKK, 0), sg(kKK, 1);
  std::array<bool, kKK> in{};
  in[0] = true;
  for (int added = 1; added < kKK; ++added) {
    int bu = -1, bv = -1;
    for (int u = 0; u < kKK; ++u)
      for (int v = 0; v < kKK; ++v)
        if (in[u] && !in[v] && (bu < 0 || count[u][v] > count[bu][bv])) bu = u, bv = v;
    logs[bv] = logs[bu] - mode[bu][bv];  // mode[u][v] = log|q_u| − log|q_v|
    sg[bv] = sg[bu] * sign[bu][bv];
    in[bv] = true;
  }
  std::vector<double> scale(kKK);
  for (int j = 0; j < kKK; ++j) scale[j] = sg[j] * std::exp(logs[j]);
  return scale;
}

// Each row de-scaled by the column key and put on the integer lattice: the
// smallest multiplier m ≤ 255 of the row's largest entry that lands every
// entry within tol of an integer gives the primitive integer patch.
void row_patches(const float* ct, int64_t rows, const std::vector<double>& scale, std::vector<int32_t>& raw,
                 std::vector<uint8_t>& ok) {
  constexpr double kTol = 2e-3;
  raw.assign(static_cast<size_t>(rows * kKK), 0);
  ok.assign(static_cast<size_t>(rows), 0);
  std::array<double, kKK> v{};
  for (int64_t i = 0; i < rows; ++i) {
    double big = 0;
    for (int j = 0; j < kKK; ++j) {
      v[j] = ct[i * kKK + j] / scale[j];
      if (std::fabs(v[j]) > std::fabs(big)) big = v[j];
    }
    if (big == 0) {
      ok[i] = 1;
      continue;
    }
    bool neg = false;
    for (double& x : v) neg |= (x /= big) < -kTol;  // pixels are non-negative: mixed signs mean a wrong key
    if (neg) continue;
    for (int m = 1; m <= 255; ++m) {
      bool fits = true;
      for (int j = 0; j < kKK && fits; ++j) fits = std::fabs(v[j] * m - std::round(v[j] * m)) < kTol;
      if (!fits) continue;
      for (int j = 0; j < kKK; ++j) raw[i * kKK + j] = static_cast<int32_t>(std::lround(v[j] * m));
      ok[i] = 1;
      break;
    }
  }
}

// Patch entries shared with the neighbour in direction dir (0: right, 1:
// down): on this row's side ("a") entry (ky+dy, kx+dx), on the neighbour's
// ("b") entry (ky, kx), listed in the same order.
std::array<int, 6> shared_entries(int dir, bool a_side) {
  std::array<int, 6> e{};
  int n = 0;
  for (int ky = 0; ky + kDy[dir] < kK; ++ky)
    for (int kx = 0; kx + kDx[dir] < kK; ++kx)
      e[n++] = a_side ? (ky + kDy[dir]) * kK + kx + kDx[dir] : ky * kK + kx;
  return e;
}

// The shared part of a patch (entries in layout order), reduced by its gcd
// and hashed; 0 when it has fewer than two non-zero entries (it would match
// too many rows to place any).
uint64_t shared_key(const int32_t* p, const std::array<int, 6>& e, const std::vector<int32_t>& layout) {
  int nz = 0, g = 0;
  for (int idx : e) {
    const int32_t v = p[layout[idx]];
    if (v) ++nz, g = std::gcd(g, v);
  }
  if (nz < 2) return 0;
  uint64_t h = 1469598103934665603ULL;
  for (int idx : e) h = (h ^ static_cast<uint64_t>(p[layout[idx]] / g + 1)) * 1099511628211ULL;
  return h | 1;
}

// Rows joined by a part they share exactly: row a's far part (toward its
// neighbour) equals row b's near part, and that pattern occurs exactly once
// as a far part and once as a near part. key(i, far) is row i's far or near
// pattern, or nothing where the row carries no information. Calls
// join(a, b) for each join; returns how many.
template <class Key, class KeyOf, class Join>
int64_t unique_matches(int64_t rows, KeyOf&& key, Join&& join) {
  struct Seen {
    int32_t n_far = 0, n_near = 0;
    int64_t far = -1, near = -1;
  };
  std::unordered_map<Key, Seen> seen;
  seen.reserve(static_cast<size_t>(rows) * 2);
  for (int64_t i = 0; i < rows; ++i) {
    if (std::optional<Key> k = key(i, true)) {
      Seen& s = seen[*k];
      ++s.n_far, s.far = i;
    }
    if (std::optional<Key> k = key(i, false)) {
      Seen& s = seen[*k];
      ++s.n_near, s.near = i;
    }
  }
  int64_t joins = 0;
  for (const auto& [k, s] : seen) {
    if (s.n_far != 1 || s.n_near != 1 || s.far == s.near) continue;
    join(s.far, s.near);
    ++joins;
  }
  return joins;
}

// Joins rows whose shared part occurs exactly once on each side; nb: rows × 4
// (−1: none). Returns the number of joins.
int64_t find_edges(const std::vector<int32_t>& raw, const std::vector<uint8_t>& ok, int64_t rows,
                   const std::vector<int32_t>& layout, std::vector<int32_t>& nb) {
  nb.assign(static_cast<size_t>(rows * 4), -1);
  int64_t joins = 0;
  for (int dir = 0; dir < 2; ++dir) {
    const auto ea = shared_entries(dir, true), eb = shared_entries(dir, false);
    joins += unique_matches<uint64_t>(
        rows,
        [&](int64_t i, bool far) -> std::optional<uint64_t> {
          if (!ok[i]) return std::nullopt;
          const uint64_t k = shared_key(raw.data() + i * kKK, far ? ea : eb, layout);
          return k ? std::optional<uint64_t>(k) : std::nullopt;
        },
        [&](int64_t a, int64_t b) {
          nb[a * 4 + dir] = static_cast<int32_t>(b);
          nb[b * 4 + dir + 2] = static_cast<int32_t>(a);
        });
  }
  return joins;
}

// The layout: the 3×3 arrangements of columns that put the most correlated
// columns next to each other, the best few ranked by exact joins.
std::vector<int32_t> find_layout(const std::vector<int32_t>& raw, const std::vector<uint8_t>& ok, int64_t rows) {
  std::array<double, kKK> mean{};
  std::array<std::array<double, kKK>, kKK> c{};
  int64_t n = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const int32_t* p = raw.data() + i * kKK;
    const int32_t mx = *std::max_element(p, p + kKK);
    if (!ok[i] || mx == 0) continue;
    ++n;
    for (int j = 0; j < kKK; ++j) {
      mean[j] += double(p[j]) / mx;
      for (int jj = 0; jj < kKK; ++jj) c[j][jj] += double(p[j]) * p[jj] / (double(mx) * mx);
    }
  }
  std::vector<int32_t> layout(kKK), chosen;
  std::iota(layout.begin(), layout.end(), 0);
  if (n == 0) return layout;  // no patch on the lattice: nothing to arrange
  for (int j = 0; j < kKK; ++j) mean[j] /= double(n);
  std::array<std::array<double, kKK>, kKK> corr{};
  for (int j = 0; j < kKK; ++j)
    for (int jj = 0; jj < kKK; ++jj) {
      const double cov = c[j][jj] / double(n) - mean[j] * mean[jj];
      const double vj = c[j][j] / double(n) - mean[j] * mean[j], vjj = c[jj][jj] / double(n) - mean[jj] * mean[jj];
      corr[j][jj] = cov / std::sqrt(std::max(vj * vjj, 1e-30));
    }
  // The 12 pairs of 4-adjacent entries of a 3×3 grid.
  std::vector<std::pair<int, int>> adj;
  for (int e = 0; e < kKK; ++e) {
    if (e % kK + 1 < kK) adj.emplace_back(e, e + 1);
    if (e + kK < kKK) adj.emplace_back(e, e + kK);
  }
  constexpr size_t kCandidates = 64;  // 8 orientations of each of the best 8 arrangements
  std::vector<std::pair<double, std::array<int32_t, kKK>>> best;
  std::array<int32_t, kKK> perm{};
  std::iota(perm.begin(), perm.end(), 0);
  auto worse = [](const auto& a, const auto& b) { return a.first > b.first; };  // min-heap on score
  do {
    double s = 0;
    for (const auto& [a, b] : adj) s += corr[perm[a]][perm[b]];
    if (best.size() < kCandidates) {
      best.emplace_back(s, perm);
      std::push_heap(best.begin(), best.end(), worse);
    } else if (s > best.front().first) {
      std::pop_heap(best.begin(), best.end(), worse);
      best.back() = {s, perm};
      std::push_heap(best.begin(), best.end(), worse);
    }
  } while (std::next_permutation(perm.begin(), perm.end()));
  std::sort(best.begin(), best.end(), worse);
  std::vector<int32_t> nb;
  int64_t most = -1;
  for (const auto& [score, p] : best) {
    layout.assign(p.begin(), p.end());
    const int64_t joins = find_edges(raw, ok, rows, layout, nb);
    if (joins > most) most = joins, chosen = layout;
  }
  return chosen;
}

// One fragment's rows with coordinates and relative factors.
struct Fragments {
  std::vector<int32_t> id, fy, fx;  // per row; id −1: in none
  std::vector<double> factor;
  std::vector<std::vector<int32_t>> rows;  // per fragment
};

// Breadth-first over the joins: coordinates follow the directions, each
// row's factor follows from the pixels it shares with the row it was
// reached from. A join that would put two rows on one position is dropped.
Fragments assemble(const std::vector<int32_t>& patch, const std::vector<uint8_t>& informative, int64_t rows,
                   const std::vector<int32_t>& nb) {
  Fragments f;
  f.id.assign(static_cast<size_t>(rows), -1);
  f.fy.assign(static_cast<size_t>(rows), 0);
  f.fx.assign(static_cast<size_t>(rows), 0);
  f.factor.assign(static_cast<size_t>(rows), 0);
  std::unordered_map<int64_t, int32_t> at;
  std::vector<int32_t> queue;
  std::array<std::array<int, 6>, 2> ea{shared_entries(0, true), shared_entries(1, true)},
      eb{shared_entries(0, false), shared_entries(1, false)};
  auto sum = [&](int64_t row, const std::array<int, 6>& e) {
    double s = 0;
    for (int idx : e) s += patch[row * kKK + idx];
    return s;
  };
  auto key = [](int64_t y, int64_t x) { return (y << 32) ^ (x & 0xffffffff); };
  for (int64_t r = 0; r < rows; ++r) {
    if (!informative[r] || f.id[r] >= 0) continue;
    const int32_t fid = static_cast<int32_t>(f.rows.size());
    f.rows.emplace_back();
    at.clear();
    queue.assign(1, static_cast<int32_t>(r));
    f.id[r] = fid, f.factor[r] = 1;
    at[key(0, 0)] = static_cast<int32_t>(r);
    for (size_t q = 0; q < queue.size(); ++q) {
      const int32_t i = queue[q];
      f.rows[fid].push_back(i);
      for (int d = 0; d < 4; ++d) {
        const int32_t j = nb[i * 4 + d];
        if (j < 0 || f.id[j] >= 0) continue;
        const int32_t y = f.fy[i] + kDy[d], x = f.fx[i] + kDx[d];
        if (!at.emplace(key(y, x), j).second) continue;
        // d < 2: i holds the "a" side; otherwise j does.
        const double si = d < 2 ? sum(i, ea[d]) : sum(i, eb[d - 2]);
        const double sj = d < 2 ? sum(j, eb[d]) : sum(j, ea[d - 2]);
        if (si <= 0 || sj <= 0) {
          at.erase(key(y, x));
          continue;
        }
        f.id[j] = fid, f.fy[j] = y, f.fx[j] = x, f.factor[j] = f.factor[i] * si / sj;
        queue.push_back(j);
      }
    }
  }
  return f;
}

struct Pixel {
  int32_t y, x;
  float v;
};

// A fragment's pixels (each the mean of the patches that hold it) at
// coordinates relative to its first row, back on the k/255 lattice: the
// smallest multiplier of the largest that puts every pixel on an integer
// (exact unless all of the fragment's pixels share a factor); scaled to max
// 1 if none does.
std::vector<Pixel> fragment_pixels(const Fragments& f, int32_t fid, const std::vector<int32_t>& patch) {
  std::unordered_map<int64_t, std::pair<double, int>> acc;
  for (int32_t r : f.rows[fid])
    for (int ky = 0; ky < kK; ++ky)
      for (int kx = 0; kx < kK; ++kx) {
        const int64_t y = f.fy[r] + ky - 1, x = f.fx[r] + kx - 1;
        auto& a = acc[(y << 32) ^ (x & 0xffffffff)];
        a.first += f.factor[r] * patch[r * kKK + ky * kK + kx];
        ++a.second;
      }
  std::vector<Pixel> px;
  std::vector<double> v;
  double mx = 0;
  for (const auto& [k, a] : acc) {
    px.push_back({static_cast<int32_t>(k >> 32), static_cast<int32_t>(k & 0xffffffff), 0.0f});
    v.push_back(a.first / a.second);
    mx = std::max(mx, v.back());
  }
  if (mx <= 0) return px;
  int lattice = 0;
  for (int m = 1; m <= 255 && !lattice; ++m) {
    bool fits = true;
    for (size_t i = 0; i < v.size() && fits; ++i) fits = std::fabs(v[i] / mx * m - std::round(v[i] / mx * m)) < 1e-3;
    if (fits) lattice = m;
  }
  for (size_t i = 0; i < v.size(); ++i)
    px[i].v = lattice ? static_cast<float>(std::round(v[i] / mx * lattice) / 255.0) : static_cast<float>(v[i] / mx);
  return px;
}

// The 8 rotations and reflections of the plane: bit 0 transposes, bit 1
// negates y, bit 2 negates x.
void orient(int t, int32_t& y, int32_t& x) {
  if (t & 1) std::swap(y, x);
  if (t & 2) y = -y;
  if (t & 4) x = -x;
}

// The non-zero extent of a set of (oriented) pixels.
struct Extent {
  int32_t y0 = INT32_MAX, y1 = INT32_MIN, x0 = INT32_MAX, x1 = INT32_MIN;
  void add(int32_t y, int32_t x) { y0 = std::min(y0, y), y1 = std::max(y1, y), x0 = std::min(x0, x), x1 = std::max(x1, x); }
  bool empty() const { return y0 > y1; }
};

// The offset that centres [lo, hi] on a canvas of n; when the free margin is
// odd, `up` gives the extra pixel to the low side (the data set's convention).
int32_t centred(int32_t lo, int32_t hi, int64_t n, bool up) {
  const double mid = (-lo + (static_cast<int32_t>(n) - 1 - hi)) / 2.0;
  return static_cast<int32_t>(up ? std::ceil(mid) : std::floor(mid));
}

// How the data set centres its objects, read off public images: for each
// axis, whether the odd pixel of margin goes after the object (ceil) or
// before it (floor).
std::pair<bool, bool> centring_convention(const float* pub, int64_t count, int64_t h, int64_t w) {
  int64_t up_y = 0, down_y = 0, up_x = 0, down_x = 0;
  for (int64_t s = 0; s < count; ++s) {
    Extent e;
    for (int32_t y = 0; y < h; ++y)
      for (int32_t x = 0; x < w; ++x)
        if (pub[(s * h + y) * w + x] > 0) e.add(y, x);
    if (e.empty()) continue;
    up_y += centred(e.y0, e.y1, h, true) == 0, down_y += centred(e.y0, e.y1, h, false) == 0;
    up_x += centred(e.x0, e.x1, w, true) == 0, down_x += centred(e.x0, e.x1, w, false) == 0;
  }
  return {up_y >= down_y, up_x >= down_x};
}

// Where a set of (oriented) pixels goes on an h×w canvas: its non-zero
// extent centred as the data set centres its objects.
std::pair<int32_t, int32_t> placement(const std::vector<Pixel>& px, int t, int64_t h, int64_t w,
                                      std::pair<bool, bool> up) {
  Extent e;
  for (const auto& p : px) {
    if (p.v <= 0) continue;
    int32_t y = p.y, x = p.x;
    orient(t, y, x);
    e.add(y, x);
  }
  if (e.empty()) return {0, 0};
  return {centred(e.y0, e.y1, h, up.first), centred(e.x0, e.x1, w, up.second)};
}

void check_geometry(const ConvGeometry& g) {
  TEMPO_CHECK(g.c == 1 && g.k == kK && g.s == 1 && g.p == 1,
              "input recovery from patches: implemented for single-channel images under a 3×3 same convolution");
}

}  // namespace

PatchAttack attack_patches(const float* ct, const ConvGeometry& g, const float* pub, int64_t pub_count) {
  check_geometry(g);
  TEMPO_CHECK(pub_count > 0, "input recovery: no public images for the attacker's prior");
  const int64_t P = g.h * g.w, rows = g.n * P;
  std::vector<float> prior(static_cast<size_t>(P), 0.0f);
  for (int64_t s = 0; s < pub_count; ++s)
    for (int64_t q = 0; q < P; ++q) prior[q] += pub[s * P + q] / static_cast<float>(pub_count);
  const std::pair<bool, bool> up = centring_convention(pub, pub_count, g.h, g.w);
  PatchAttack a;
  a.col_scale = column_key(ct, rows);
  std::vector<int32_t> raw;
  row_patches(ct, rows, a.col_scale, raw, a.patch_ok);
  a.layout = find_layout(raw, a.patch_ok, rows);
  a.patch.assign(raw.size(), 0);
  std::vector<uint8_t> informative(static_cast<size_t>(rows), 0);
  for (int64_t i = 0; i < rows; ++i)
    for (int e = 0; e < kKK; ++e) {
      a.patch[i * kKK + e] = raw[i * kKK + a.layout[e]];
      informative[i] |= a.patch_ok[i] && a.patch[i * kKK + e] != 0;
    }
  std::vector<int32_t> nb;
  find_edges(raw, a.patch_ok, rows, a.layout, nb);
  const Fragments f = assemble(a.patch, informative, rows, nb);
  // The N largest fragments are the attacker's images.
  std::vector<int32_t> order(f.rows.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t u, int32_t v) { return f.rows[u].size() > f.rows[v].size(); });
  a.slots = std::min<int64_t>(g.n, static_cast<int64_t>(order.size()));
  std::vector<std::vector<Pixel>> px(static_cast<size_t>(a.slots));
  for (int64_t s = 0; s < a.slots; ++s) px[s] = fragment_pixels(f, order[s], a.patch);
  // The orientation that best matches the public mean image, over all slots.
  auto render = [&](int64_t s, int t, float* img) {
    std::fill(img, img + P, 0.0f);
    const auto [oy, ox] = placement(px[s], t, g.h, g.w, up);
    for (const auto& p : px[s]) {
      int32_t y = p.y, x = p.x;
      orient(t, y, x);
      y += oy, x += ox;
      if (y >= 0 && y < g.h && x >= 0 && x < g.w) img[y * g.w + x] = p.v;
    }
  };
  std::vector<float> img(static_cast<size_t>(P));
  int best_t = 0;
  double best_score = -1e300;
  for (int t = 0; t < 8; ++t) {
    double score = 0;
    for (int64_t s = 0; s < a.slots; ++s) {
      render(s, t, img.data());
      for (int64_t q = 0; q < P; ++q) score += double(img[q]) * prior[q];
    }
    if (score > best_score) best_score = score, best_t = t;
  }
  // From here on patches and layout are in the chosen orientation: entry
  // (ky, kx) of the layout lands at offset orient(t, ky − 1, kx − 1).
  {
    std::vector<int32_t> layout(kKK), patch(a.patch.size());
    for (int e = 0; e < kKK; ++e) {
      int32_t y = e / kK - 1, x = e % kK - 1;
      orient(best_t, y, x);
      const int to = (y + 1) * kK + x + 1;
      layout[to] = a.layout[e];
      for (int64_t i = 0; i < rows; ++i) patch[i * kKK + to] = a.patch[i * kKK + e];
    }
    a.layout = std::move(layout);
    a.patch = std::move(patch);
    a.orientation = best_t;
  }
  a.images.assign(static_cast<size_t>(a.slots * P), 0.0f);
  a.slot.assign(static_cast<size_t>(rows), -1);
  a.y.assign(static_cast<size_t>(rows), -1);
  a.x.assign(static_cast<size_t>(rows), -1);
  for (int64_t s = 0; s < a.slots; ++s) {
    render(s, best_t, a.images.data() + s * P);
    const auto [oy, ox] = placement(px[s], best_t, g.h, g.w, up);
    for (int32_t r : f.rows[order[s]]) {
      int32_t y = f.fy[r], x = f.fx[r];
      orient(best_t, y, x);
      a.slot[r] = static_cast<int32_t>(s), a.y[r] = y + oy, a.x[r] = x + ox;
    }
  }
  return a;
}

std::vector<float> images_with_known_order(const PatchAttack& a, const ConvGeometry& g, const int32_t* pos) {
  check_geometry(g);
  const int64_t P = g.h * g.w, rows = g.n * P;
  std::vector<int32_t> row_at(static_cast<size_t>(rows), -1);
  for (int64_t i = 0; i < rows; ++i) row_at[pos[i]] = static_cast<int32_t>(i);
  std::vector<uint8_t> informative(static_cast<size_t>(rows), 0);
  for (int64_t i = 0; i < rows; ++i)
    for (int e = 0; e < kKK; ++e) informative[i] |= a.patch_ok[i] && a.patch[i * kKK + e] != 0;
  // Joins between true neighbours wherever both patches are known.
  std::vector<int32_t> nb(static_cast<size_t>(rows * 4), -1);
  for (int64_t i = 0; i < rows; ++i) {
    if (!informative[i]) continue;
    const int64_t img = pos[i] / P, y = pos[i] % P / g.w, x = pos[i] % g.w;
    for (int d = 0; d < 4; ++d) {
      const int64_t yy = y + kDy[d], xx = x + kDx[d];
      if (yy < 0 || yy >= g.h || xx < 0 || xx >= g.w) continue;
      const int32_t j = row_at[img * P + yy * g.w + xx];
      if (informative[j]) nb[i * 4 + d] = j;
    }
  }
  const Fragments f = assemble(a.patch, informative, rows, nb);
  std::vector<float> out(static_cast<size_t>(rows), 0.0f);
  for (int32_t fid = 0; fid < static_cast<int32_t>(f.rows.size()); ++fid) {
    const int32_t root = f.rows[fid][0];
    const int64_t img = pos[root] / P, y0 = pos[root] % P / g.w - f.fy[root], x0 = pos[root] % g.w - f.fx[root];
    for (const auto& p : fragment_pixels(f, fid, a.patch)) {
      const int64_t y = y0 + p.y, x = x0 + p.x;
      if (y >= 0 && y < g.h && x >= 0 && x < g.w) out[img * P + y * g.w + x] = p.v;
    }
  }
  return out;
}

std::vector<float> images_from_maps(const float* ct, int64_t n, int64_t c, int64_t h, int64_t w, int64_t oh,
                                    int64_t ow) {
  const int64_t hw = h * w;
  // Each map to [0, 1]: its sign from the largest entry (maps are
  // non-negative: ReLU, max-pooling), its scale from its maximum.
  std::vector<float> m(static_cast<size_t>(n * c * hw));
  for (int64_t b = 0; b < n * c; ++b) {
    const float* src = ct + b * hw;
    float big = 0;
    for (int64_t q = 0; q < hw; ++q)
      if (std::fabs(src[q]) > std::fabs(big)) big = src[q];
    for (int64_t q = 0; q < hw; ++q) m[b * hw + q] = big != 0 ? std::max(0.0f, src[q] / big) : 0.0f;
  }
  // A channel (one column for all images) is inverted if on average its
  // border, where the background of centred objects lies, is brighter than
  // its centre.
  std::vector<uint8_t> invert(static_cast<size_t>(c), 0);
  for (int64_t j = 0; j < c; ++j) {
    double border = 0, centre = 0;
    int64_t nb = 0, nc = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
          const double v = m[(i * c + j) * hw + y * w + x];
          if (y == 0 || x == 0 || y == h - 1 || x == w - 1) border += v, ++nb;
          else if (std::abs(2 * y - (h - 1)) < h / 2 && std::abs(2 * x - (w - 1)) < w / 2) centre += v, ++nc;
        }
    invert[j] = nb && nc && border / double(nb) > centre / double(nc);
  }
  std::vector<float> avg(static_cast<size_t>(hw)), out(static_cast<size_t>(n * oh * ow));
  for (int64_t i = 0; i < n; ++i) {
    std::fill(avg.begin(), avg.end(), 0.0f);
    for (int64_t j = 0; j < c; ++j)
      for (int64_t q = 0; q < hw; ++q) {
        const float v = m[(i * c + j) * hw + q];
        avg[q] += (invert[j] ? 1 - v : v) / static_cast<float>(c);
      }
    // Bilinear, centres aligned: map pixel y covers output rows y·oh/h ...
    for (int64_t Y = 0; Y < oh; ++Y)
      for (int64_t X = 0; X < ow; ++X) {
        const double sy = std::clamp((Y + 0.5) * double(h) / oh - 0.5, 0.0, double(h - 1));
        const double sx = std::clamp((X + 0.5) * double(w) / ow - 0.5, 0.0, double(w - 1));
        const int64_t y0 = static_cast<int64_t>(sy), x0 = static_cast<int64_t>(sx);
        const int64_t y1 = std::min(y0 + 1, h - 1), x1 = std::min(x0 + 1, w - 1);
        const double fy = sy - y0, fx = sx - x0;
        out[(i * oh + Y) * ow + X] = static_cast<float>(
            (1 - fy) * ((1 - fx) * avg[y0 * w + x0] + fx * avg[y0 * w + x1]) +
            fy * ((1 - fx) * avg[y1 * w + x0] + fx * avg[y1 * w + x1]));
      }
  }
  return out;
}

namespace {

// Keeps the input operand (im2col patches) of the first two products at one
// step; up to it everything is computed in the master. After it nothing is:
// the evaluation that ends train() is not part of the measurement.
class PatchTap final : public TapBackend {
 public:
  explicit PatchTap(int64_t at_step) : at_(at_step) {}
  // After the captured step nothing is computed (the evaluation that
  // follows training is not needed).
  void forward(const Product& p, float* c) override {
    if (steps() >= at_) {
      std::fill(c, c + p.m * p.n, 0.0f);
      return;
    }
    if (steps() + 1 == at_ && p.id >= 0 && p.id < 2 && got[p.id].a.empty())
      got[p.id] = {p.m, p.k, p.n, std::vector<float>(p.a, p.a + p.m * p.k)};
    inner_.forward(p, c);
  }
  struct Got {
    int64_t m = 0, k = 0, n = 0;
    std::vector<float> a;
  };
  std::array<Got, 2> got;

 private:
  int64_t at_;
};

// Reconstructions and the baseline, scored image by image after the affine
// fit; PSNR capped at 100 dB (exact up to rounding) in the means.
void score(InputRecoveryRow& row, const std::vector<const float*>& recon, const float* truth, const float* prior,
           int64_t h, int64_t w) {
  const int64_t P = h * w, n = static_cast<int64_t>(recon.size());
  row.images = n;
  for (int64_t i = 0; i < n; ++i) {
    const float* t = truth + i * P;
    const std::vector<float> r = affine_fit(recon[i], t, P), b = affine_fit(prior, t, P);
    const double p = psnr(r.data(), t, P);
    row.images_exact += (p >= 40) / double(n);
    row.psnr += std::min(100.0, p) / double(n);
    row.ssim += ssim(r.data(), t, h, w) / double(n);
    row.base_psnr += std::min(100.0, psnr(b.data(), t, P)) / double(n);
    row.base_ssim += ssim(b.data(), t, h, w) / double(n);
  }
}

// The blind patch attack scored with the trace: each slot's image (the one most of its rows come from), and the
// counts of non-zero patches, of those recovered exactly up to a factor, and of those placed right.
struct PatchScore {
  std::vector<int64_t> slot_image;
  int64_t nonzero = 0, patches = 0, placed = 0;
};

// Scores the blind attack's patches and placements (pos[i]: the plaintext row of ciphertext row i).
PatchScore score_patches(const PatchAttack& a, const PatchTap::Got& g1, const std::vector<int32_t>& pos, int64_t P,
                         int64_t W) {
  // Scoring the patches: de-scaled rows equal to the truth up to one factor.
  int64_t nonzero = 0, patches = 0, placed = 0;
  std::vector<int64_t> slot_image(static_cast<size_t>(a.slots), -1);
  {
    std::vector<std::unordered_map<int64_t, int64_t>> votes(static_cast<size_t>(a.slots));
    for (int64_t i = 0; i < g1.m; ++i)
      if (a.slot[i] >= 0) ++votes[a.slot[i]][pos[i] / P];
    for (int64_t s = 0; s < a.slots; ++s) {
      int64_t most = 0;
      for (const auto& [img, v] : votes[s])
        if (v > most) most = v, slot_image[s] = img;
    }
  }
  // Relative placement: the offset of a slot is its most common one.
  std::vector<std::unordered_map<int64_t, int64_t>> offsets(static_cast<size_t>(a.slots));
  for (int64_t i = 0; i < g1.m; ++i) {
    const int64_t s = a.slot[i];
    if (s >= 0 && pos[i] / P == slot_image[s])
      ++offsets[s][(a.y[i] - pos[i] % P / W) * 4096 + (a.x[i] - pos[i] % W)];
  }
  std::vector<int64_t> slot_offset(static_cast<size_t>(a.slots), INT64_MIN);
  for (int64_t s = 0; s < a.slots; ++s) {
    int64_t most = 0;
    for (const auto& [o, v] : offsets[s])
      if (v > most) most = v, slot_offset[s] = o;
  }
  for (int64_t i = 0; i < g1.m; ++i) {
    const float* src = g1.a.data() + int64_t{pos[i]} * g1.k;
    if (std::all_of(src, src + g1.k, [](float v) { return v == 0; })) continue;
    ++nonzero;
    // The recovered patch is the true one up to a factor: compare by
    // cross-multiplying with the largest true entry.
    const int64_t e_max = std::max_element(src, src + g1.k) - src;
    bool same = a.patch_ok[i];
    for (int64_t e = 0; e < g1.k && same; ++e)
      same = std::fabs(double(a.patch[i * g1.k + e]) * src[e_max] - double(a.patch[i * g1.k + e_max]) * src[e]) <=
             1e-4 * src[e_max] * std::max(1, a.patch[i * g1.k + e_max]);
    patches += same;
    const int64_t s = a.slot[i];
    placed += s >= 0 && pos[i] / P == slot_image[s] &&
              slot_offset[s] == (a.y[i] - pos[i] % P / W) * 4096 + (a.x[i] - pos[i] % W);
  }
  return {std::move(slot_image), nonzero, patches, placed};
}

// Rows 1 and 2, --offload-first: the first layer's im2col patches attacked blind, and with the row order known.
// pool: `count` public images (the attacker's prior is their mean); images: the batch, N × H × W.
void first_layer_rows(Obfuscator& obf, const PatchTap::Got& g1, const ConvGeometry& geo, const Tensor& pool,
                      int64_t count, const std::vector<float>& prior, const std::vector<float>& images,
                      bool identity, std::vector<InputRecoveryRow>& out) {
  const int64_t C = geo.c, H = geo.h, W = geo.w, P = H * W, N = geo.n;
  const Traced enc = encrypt_traced(obf.draw_triple(g1.m, g1.k, g1.n), g1.a.data(), g1.m, g1.k);
  InputRecoveryRow blind;
  blind.setting = "im2col, --offload-first: first layer's patches, blind";
  InputRecoveryRow known;
  known.setting = "im2col, --offload-first: the same patches, row order known";
  blind.attempted = known.attempted = true;
  if (C != 1) {
    blind.attempted = known.attempted = false;
    blind.note = known.note = "not attempted: images with more than one channel";
  } else {
    const PatchAttack a = attack_patches(enc.values.data(), geo, pool.data(), count);
    std::vector<int32_t> pos(static_cast<size_t>(g1.m));
    for (int64_t i = 0; i < g1.m; ++i) pos[i] = enc.src_row[i * g1.k];
    const PatchScore ps = score_patches(a, g1, pos, P, W);
    const std::vector<int64_t>& slot_image = ps.slot_image;
    const int64_t nonzero = ps.nonzero, patches = ps.patches, placed = ps.placed;
    // Each image's reconstruction: its largest slot, else the prior.
    std::vector<const float*> recon(static_cast<size_t>(N), prior.data());
    int64_t with_slot = 0;
    for (int64_t s = a.slots - 1; s >= 0; --s)
      if (slot_image[s] >= 0) recon[slot_image[s]] = a.images.data() + s * P;
    for (int64_t i = 0; i < N; ++i) with_slot += recon[i] != prior.data();
    score(blind, recon, images.data(), prior.data(), H, W);
    blind.rows_placed = nonzero ? double(placed) / double(nonzero) : 0;
    blind.images_placed = double(with_slot) / double(N);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%.3f of non-zero patches recovered exactly up to a factor (column key, layout, orientation)",
                  nonzero ? double(patches) / double(nonzero) : 0.0);
    blind.note = buf;
    const std::vector<float> k = images_with_known_order(a, geo, pos.data());
    std::vector<const float*> krec(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) krec[i] = k.data() + i * P;
    score(known, krec, images.data(), prior.data(), H, W);
    known.rows_placed = 1, known.images_placed = 1;
    known.note = identity ? "the row order is not hidden without keys" : "an upper bound: the row order is secret";
  }
  out.push_back(blind);
  out.push_back(known);
}

// Row 4: each channel-mode ciphertext map (ct, N·C2 maps of H2 × W2) against its plaintext map (maps, through the
// trace tr), both scaled to max 1 (only the scale is hidden).
InputRecoveryRow maps_row(const std::vector<float>& maps, const std::vector<float>& ct, const Traced& tr, int64_t N,
                          int64_t C2, int64_t H2, int64_t W2) {
  const int64_t P2 = H2 * W2;
  // The maps themselves: each ciphertext map against its plaintext map,
  // both scaled to max 1 (only the scale is hidden).
  InputRecoveryRow mrow;
  mrow.setting = "channel mode (--channel-from 1): the feature maps themselves";
  mrow.attempted = true;
  double worst = 0;
  int64_t nz = 0;
  std::vector<float> a(static_cast<size_t>(P2)), b(static_cast<size_t>(P2));
  for (int64_t e = 0; e < N * C2; ++e) {
    const float* src = maps.data() + (int64_t{tr.src_row[e]} * C2 + tr.src_col[e]) * P2;
    const float* cte = ct.data() + e * P2;
    const float tmax = *std::max_element(src, src + P2);
    if (tmax <= 0) continue;
    float big = 0;
    for (int64_t q = 0; q < P2; ++q)
      if (std::fabs(cte[q]) > std::fabs(big)) big = cte[q];
    for (int64_t q = 0; q < P2; ++q) a[q] = cte[q] / big, b[q] = src[q] / tmax;
    double err = 0;
    for (int64_t q = 0; q < P2; ++q) err = std::max(err, std::fabs(double(a[q]) - b[q]));
    worst = std::max(worst, err);
    mrow.psnr += std::min(100.0, psnr(a.data(), b.data(), P2));
    if (H2 >= 11) mrow.ssim += ssim(a.data(), b.data(), H2, W2);
    ++nz;
  }
  mrow.images = N;
  if (nz) mrow.psnr /= double(nz), mrow.ssim /= double(nz);
  mrow.base_psnr = mrow.base_ssim = std::nan("");
  mrow.rows_placed = 1, mrow.images_placed = 1, mrow.images_exact = std::nan("");
  char buf[160];
  std::snprintf(buf, sizeof buf, "%lld non-zero maps, each equal to the plaintext map up to one scale (max error %.1e)",
                static_cast<long long>(nz), worst);
  mrow.note = buf;
  return mrow;
}

// Rows 3 and 4, channel mode from the first offloaded convolution (--channel-from 1): images rebuilt from the
// second layer's feature maps (C2 maps of H2 × W2 per image), and the maps themselves.
void channel_mode_rows(Obfuscator& obf, const PatchTap::Got& g2, int64_t N, int64_t C2, int64_t H2, int64_t W2,
                       int64_t H, int64_t W, const std::vector<float>& prior, const std::vector<float>& images,
                       std::vector<InputRecoveryRow>& out) {
  const int64_t P2 = H2 * W2;
  std::vector<float> maps(static_cast<size_t>(N * C2 * P2));
  for (int64_t i = 0; i < N; ++i)
    for (int64_t c = 0; c < C2; ++c)
      for (int64_t q = 0; q < P2; ++q)
        maps[(i * C2 + c) * P2 + q] = g2.a[(i * P2 + q) * g2.k + c * kK * kK + kK * kK / 2];
  const Triple t = obf.draw_triple(N, C2, g2.n);
  std::vector<float> ct(maps.size());
  t.encrypt_x(maps.data(), N, C2, ct.data(), 0, -1, P2);
  const std::vector<float> zeros(static_cast<size_t>(N * C2), 0.0f);
  const Traced tr = encrypt_traced(t, zeros.data(), N, C2);
  const std::vector<float> rec = images_from_maps(ct.data(), N, C2, H2, W2, H, W);
  InputRecoveryRow row;
  row.setting = "channel mode (--channel-from 1): second layer's feature maps -> image";
  row.attempted = true;
  std::vector<const float*> recon(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) recon[tr.src_row[i * C2]] = rec.data() + i * H * W;
  score(row, recon, images.data(), prior.data(), H, W);
  row.rows_placed = 1, row.images_placed = 1;
  const InputRecoveryRow mrow = maps_row(maps, ct, tr, N, C2, H2, W2);
  row.note = "maps normalised, border-bright channels inverted, averaged over channels, upsampled";
  out.push_back(row);
  out.push_back(mrow);
}

}  // namespace

std::vector<InputRecoveryRow> measure_input_recovery(TrainConfig cfg, int64_t at_step, uint64_t seed, bool identity) {
  cfg.mode = "tee-only";
  cfg.steps = at_step;
  cfg.save.clear();
  cfg.metrics.clear();
  cfg.offload_first = true;  // the first layer's product goes through the tap
  const std::unique_ptr<Model> model = build_model(cfg.model, cfg.seed);
  std::array<const Conv2d*, 2> conv{};
  for (size_t i = 0; i < 2 && i < model->product_layers.size(); ++i)
    conv[i] = dynamic_cast<const Conv2d*>(model->product_layers[i]);
  TEMPO_CHECK(conv[0] && conv[1] && model->input_shape.size() == 3,
              "input recovery: model '" + cfg.model + "' does not start with two convolutions");
  for (const Conv2d* c : conv)
    TEMPO_CHECK(c->kernel == kK && c->stride == 1 && c->padding == 1,
                "input recovery: implemented for 3×3 same convolutions (as in cnn)");
  const int64_t C = model->input_shape[0], H = model->input_shape[1], W = model->input_shape[2], P = H * W;
  PatchTap tap(at_step);
  train(cfg, &tap);
  TEMPO_CHECK(!tap.got[0].a.empty() && !tap.got[1].a.empty(), "input recovery: the step was not captured");
  // The attacker's public prior: the mean test image (training images if none).
  const Dataset data = load_dataset(cfg.data, model->input_shape, cfg.seed);
  const Tensor& pool = data.test_x.numel() ? data.test_x : data.train_x;
  std::vector<float> prior(static_cast<size_t>(P), 0.0f);
  const int64_t count = pool.numel() / (C * P);
  for (int64_t s = 0; s < count; ++s)
    for (int64_t q = 0; q < P; ++q) prior[q] += pool[s * C * P + q] / static_cast<float>(count);

  std::unique_ptr<Obfuscator> obf = measurement_keys(seed, cfg.offload.key_scale, identity);
  std::vector<InputRecoveryRow> out;
  const auto& g1 = tap.got[0];
  const int64_t N = g1.m / P;
  const ConvGeometry geo = ConvGeometry::make(N, C, H, W, g1.n, kK, 1, 1);
  // The images, from the centre entry of each patch.
  std::vector<float> images(static_cast<size_t>(N * P));
  for (int64_t r = 0; r < N * P; ++r) images[r] = g1.a[r * g1.k + g1.k / 2];

  // 1. --offload-first, im2col: the first layer's patches.
  first_layer_rows(*obf, g1, geo, pool, count, prior, images, identity, out);
  // 2. The default: the first offloaded product is the second convolution's.
  const auto& g2 = tap.got[1];
  const int64_t C2 = g2.k / (kK * kK), P2 = g2.m / N;
  const int64_t H2 = static_cast<int64_t>(std::lround(std::sqrt(double(P2)))), W2 = H2;
  TEMPO_CHECK(H2 * W2 == P2 && C2 * kK * kK == g2.k, "input recovery: the second convolution's input is not square");
  {
    InputRecoveryRow row;
    row.setting = "im2col, default: second layer's patches (first offloaded)";
    row.note = "not attempted: post-ReLU/pool values lie on no lattice; " + std::to_string(g2.k) +
               " columns from " + std::to_string(C2) + " channels";
    out.push_back(row);
  }
  // 3. Channel mode from the first offloaded convolution (--channel-from 1).
  channel_mode_rows(*obf, g2, N, C2, H2, W2, H, W, prior, images, out);
  return out;
}

namespace {

// Mutual nearest matches between the rows' far and near signatures (rows ×
// words bit rows): row a's far part is nearest (Hamming) to row b's near
// part and no other row's, and the reverse. Calls join(a, b) for each;
// returns how many.
template <class Join>
int64_t nearest_matches(const std::vector<uint64_t>& far, const std::vector<uint64_t>& near, int64_t rows,
                        int64_t words, Join&& join) {
  auto dist = [&](int64_t a, int64_t b) {
    int d = 0;
    for (int64_t w = 0; w < words; ++w) d += __builtin_popcountll(far[a * words + w] ^ near[b * words + w]);
    return d;
  };
  // best[0][a]: the near row nearest to a's far part; best[1][b]: the far row
  // nearest to b's near part; −1 where the least distance is not unique.
  std::array<std::vector<int64_t>, 2> best;
  for (int side = 0; side < 2; ++side) {
    best[side].assign(static_cast<size_t>(rows), -1);
    parallel_for(rows, [&](int64_t lo, int64_t hi) {
      for (int64_t a = lo; a < hi; ++a) {
        int least = std::numeric_limits<int>::max(), ties = 0;
        int64_t arg = -1;
        for (int64_t b = 0; b < rows; ++b) {
          if (b == a) continue;
          const int d = side == 0 ? dist(a, b) : dist(b, a);
          if (d < least) least = d, ties = 1, arg = b;
          else if (d == least) ++ties;
        }
        best[side][a] = ties == 1 ? arg : -1;
      }
    }, 64);
  }
  int64_t joins = 0;
  for (int64_t a = 0; a < rows; ++a) {
    const int64_t b = best[0][a];
    if (b < 0 || best[1][b] != a) continue;
    join(a, b);
    ++joins;
  }
  return joins;
}

// A's ciphertext as the worker receives it under fresh tempo keys, traced: with a mask (mask_rank > 0),
// (A + U·Vᵀ)' as OffloadBackend sends it; else A'.
Traced encrypt_for_worker(const std::vector<float>& a, int64_t m, int64_t k, int64_t n, uint64_t seed,
                          double key_scale, int mask_rank) {
  std::unique_ptr<Obfuscator> obf = measurement_keys(seed, key_scale, false);
  const Triple triple = obf->draw_triple(m, k, n);
  // With a mask, the worker receives (A + U·Vᵀ)' (as OffloadBackend sends it).
  AdditiveMask mask(std::max(1, mask_rank));
  const float* sent = a.data();
  if (mask_rank > 0) {
    KeyStream ks = obf->stream();
    sent = mask.apply(Product{0, "conv2", a.data(), nullptr, m, k, n}, ks).a;
  }
  return encrypt_traced(triple, sent, m, k);
}

// What the worker takes for zeros (guess) and how zero-like each entry looks (score: −|entry|): exact zeros of
// A'; with a mask, the zeros of the sparse part of a low-rank-plus-sparse split of A'.
void guess_zeros(const Traced& enc, int64_t m, int64_t k, int mask_rank, std::vector<double>& score,
                 std::vector<uint8_t>& guess) {
  if (mask_rank > 0) {
    const SparseSplit sp = split_low_rank_sparse(enc.values.data(), m, k);
    for (int64_t e = 0; e < m * k; ++e) {
      score[e] = -std::fabs(sp.s[e]);
      guess[e] = sp.s[e] == 0.0;
    }
  } else {
    for (int64_t e = 0; e < m * k; ++e) {
      score[e] = -std::fabs(static_cast<double>(enc.values[e]));
      guess[e] = enc.values[e] == 0.0f;
    }
  }
}

// The worker's zero guesses as bit columns: bit i of column j is set where it takes entry (i, j) for a zero.
struct ZeroBits {
  int64_t words = 0;           // 64-bit words per column
  std::vector<uint64_t> zcol;  // k columns of `words` words
  uint64_t at(int64_t i, int64_t j) const { return (zcol[j * words + i / 64] >> (i % 64)) & 1; }
};

// Channels whose map has no zero at all: their centre column has no zero,
// and each edge column's zeros are exactly one image border (the padding),
// m / side rows, which the attacker can tell from the shapes alone.
void count_border_columns(const ZeroBits& zb, const std::vector<int64_t>& ones, const std::vector<int64_t>& col_src,
                          const std::vector<int64_t>& row_src, int64_t m, int64_t k, int64_t images, int64_t side,
                          ZeroJigsawResult& r) {
  const int64_t P = side * side;
  auto zero = [&](int64_t i, int64_t j) { return zb.at(i, j); };
  const int64_t border = images * side;
  for (int64_t j = 0; j < k; ++j) r.no_zero_columns += ones[j] == 0;
  for (int64_t j = 0; j < k; ++j) {
    if (ones[j] != border) continue;
    ++r.border_columns;
    // Scoring: are these zeros exactly one border's positions?
    const int64_t o = col_src[j] % (kK * kK), ky = o / kK, kx = o % kK;
    bool exact = (ky == 1) != (kx == 1);  // an edge offset, not a corner or the centre
    for (int64_t i = 0; i < m && exact; ++i) {
      const int64_t y = row_src[i] % P / side, x = row_src[i] % side;
      const bool pad = (ky == 0 && y == 0) || (ky == 2 && y == side - 1) || (kx == 0 && x == 0) ||
                       (kx == 2 && x == side - 1);
      exact = zero(i, j) == pad;
    }
    r.border_columns_exact += exact;
  }
}

// Columns: of each column's nearest columns, by the phi coefficient of the zero indicators and by the count of
// zeros alone, the fraction of its own channel (and, by phi, of its own kernel offset); with their chances.
void column_purity(const ZeroBits& zb, const std::vector<int64_t>& ones, const std::vector<int64_t>& col_src,
                   int64_t m, int64_t k, int64_t C, ZeroJigsawResult& r) {
  const std::vector<uint64_t>& zcol = zb.zcol;
  const int64_t words = zb.words;
  std::vector<double> phi(static_cast<size_t>(k * k), -2.0);
  parallel_for(k, [&](int64_t lo, int64_t hi) {
    for (int64_t a = lo; a < hi; ++a)
      for (int64_t b = 0; b < k; ++b) {
        if (a == b) continue;
        int64_t both = 0;
        for (int64_t w = 0; w < words; ++w) both += __builtin_popcountll(zcol[a * words + w] & zcol[b * words + w]);
        const double n = static_cast<double>(m), na = static_cast<double>(ones[a]), nb = static_cast<double>(ones[b]);
        const double den = std::sqrt(na * (n - na) * nb * (n - nb));
        phi[a * k + b] = den > 0 ? (static_cast<double>(both) * n - na * nb) / den : 0.0;
      }
  }, 4);
  const int64_t kk = kK * kK;
  for (int64_t a = 0; a < k; ++a) {
    std::vector<int64_t> order;
    for (int64_t b = 0; b < k; ++b)
      if (b != a) order.push_back(b);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return phi[a * k + x] > phi[a * k + y]; });
    int64_t same_c = 0, same_o = 0;
    for (int64_t t = 0; t < kk - 1; ++t) same_c += col_src[order[t]] / kk == col_src[a] / kk;
    for (int64_t t = 0; t < C - 1; ++t) same_o += col_src[order[t]] % kk == col_src[a] % kk;
    r.channel_purity += static_cast<double>(same_c) / static_cast<double>((kk - 1) * k);
    r.offset_purity += static_cast<double>(same_o) / static_cast<double>((C - 1) * k);
  }
  // The same by zero count alone: a channel's 9 columns hold one map, so
  // their counts differ only by what the padding and the borders add.
  for (int64_t a = 0; a < k; ++a) {
    std::vector<int64_t> order;
    for (int64_t b = 0; b < k; ++b)
      if (b != a) order.push_back(b);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t x, int64_t y) { return std::llabs(ones[x] - ones[a]) < std::llabs(ones[y] - ones[a]); });
    int64_t same_c = 0;
    for (int64_t t = 0; t < kk - 1; ++t) same_c += col_src[order[t]] / kk == col_src[a] / kk;
    r.count_channel_purity += static_cast<double>(same_c) / static_cast<double>((kk - 1) * k);
  }
  r.channel_chance = static_cast<double>(kk - 1) / static_cast<double>(k - 1);
  r.offset_chance = static_cast<double>(C - 1) / static_cast<double>(k - 1);
}

// Fragments assembled by the correct exact joins (find: each row's fragment): the largest per image, as a
// fraction of the image, averaged; and the fraction of rows in fragments of 10 or more.
void score_fragments(const std::function<int64_t(int64_t)>& find, const std::vector<int64_t>& row_src, int64_t m,
                     int64_t P, int64_t images, ZeroJigsawResult& r) {
  std::unordered_map<int64_t, int64_t> size;
  for (int64_t i = 0; i < m; ++i) ++size[find(i)];
  std::vector<int64_t> largest(static_cast<size_t>(images), 0);
  int64_t in10 = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t s = size[find(i)];
    largest[row_src[i] / P] = std::max(largest[row_src[i] / P], s);
    in10 += s >= 10;
  }
  for (int64_t s : largest) r.largest_fragment += static_cast<double>(s) / static_cast<double>(P * images);
  r.in_fragments_10 = static_cast<double>(in10) / static_cast<double>(m);
}

// Rows, given the column structure: a row's right (lower) part must equal its neighbour's left (upper) part;
// exact joins (unique both ways, joined into fragments) and nearest ones (mutual Hamming nearest, scored only).
void join_rows(const ZeroBits& zb, const std::vector<int64_t>& col_src, const std::vector<int64_t>& row_src,
               int64_t m, int64_t k, int64_t C, int64_t images, int64_t side, ZeroJigsawResult& r) {
  const int64_t P = side * side, kk = kK * kK;
  auto zero = [&](int64_t i, int64_t j) { return zb.at(i, j); };
  // Rows, given the column structure: exact joins of shared zero patterns.
  std::vector<int64_t> col_of(static_cast<size_t>(k));  // plaintext column → ciphertext column
  for (int64_t j = 0; j < k; ++j) col_of[col_src[j]] = j;
  // The pattern of row i over offsets (ky, kx) with ky in [y0, y1), kx in [x0, x1).
  auto signature = [&](int64_t i, int64_t y0, int64_t y1, int64_t x0, int64_t x1) {
    std::string sig;
    sig.reserve(static_cast<size_t>(C * kK * kK / 8 + 1));
    uint8_t byte = 0;
    int bit = 0;
    for (int64_t c = 0; c < C; ++c)
      for (int64_t ky = y0; ky < y1; ++ky)
        for (int64_t kx = x0; kx < x1; ++kx) {
          byte = static_cast<uint8_t>(byte | (zero(i, col_of[c * kk + ky * kK + kx]) << bit));
          if (++bit == 8) sig.push_back(static_cast<char>(byte)), byte = 0, bit = 0;
        }
    if (bit) sig.push_back(static_cast<char>(byte));
    return sig;
  };
  std::vector<int64_t> at(static_cast<size_t>(m));  // plaintext row → ciphertext row
  for (int64_t i = 0; i < m; ++i) at[row_src[i]] = i;
  std::vector<int64_t> parent(static_cast<size_t>(m));
  std::iota(parent.begin(), parent.end(), 0);
  std::function<int64_t(int64_t)> find = [&](int64_t x) { return parent[x] == x ? x : parent[x] = find(parent[x]); };
  auto join = [&](bool horizontal, ZeroJigsawResult::Joins& out) {
    // Row i's far part (right or lower offsets) must equal its neighbour's
    // near part (left or upper).
    std::vector<int64_t> truth(static_cast<size_t>(m), -1);
    for (int64_t i = 0; i < m; ++i) {
      const int64_t src = row_src[i], img = src / P, y = src % P / side, x = src % side;
      const bool has = horizontal ? x + 1 < side : y + 1 < side;
      if (has) truth[i] = at[img * P + (horizontal ? y * side + x + 1 : (y + 1) * side + x)];
      out.adjacencies += has;
    }
    out.unique = unique_matches<std::string>(
        m,
        [&](int64_t i, bool far) -> std::optional<std::string> {
          if (horizontal) return far ? signature(i, 0, kK, 1, kK) : signature(i, 0, kK, 0, kK - 1);
          return far ? signature(i, 1, kK, 0, kK) : signature(i, 0, kK - 1, 0, kK);
        },
        [&](int64_t a, int64_t b) {
          if (b != truth[a]) return;
          ++out.correct;
          parent[find(a)] = find(b);
        });
  };
  join(true, r.right);
  join(false, r.down);
  // Nearest instead of exact matches, scored only (not joined into fragments).
  auto near_join = [&](bool horizontal, ZeroJigsawResult::Joins& out) {
    const int64_t wds = (C * kK * (kK - 1) + 63) / 64;  // bits of a far or near part, in words
    std::vector<uint64_t> far(static_cast<size_t>(m * wds), 0), near(static_cast<size_t>(m * wds), 0);
    for (int64_t i = 0; i < m; ++i) {
      const std::string f = horizontal ? signature(i, 0, kK, 1, kK) : signature(i, 1, kK, 0, kK);
      const std::string n0 = horizontal ? signature(i, 0, kK, 0, kK - 1) : signature(i, 0, kK - 1, 0, kK);
      std::memcpy(far.data() + i * wds, f.data(), f.size());
      std::memcpy(near.data() + i * wds, n0.data(), n0.size());
    }
    out.adjacencies = (horizontal ? r.right : r.down).adjacencies;
    out.unique = nearest_matches(far, near, m, wds, [&](int64_t a, int64_t b) {
      const int64_t src = row_src[a], img = src / P, y = src % P / side, x = src % side;
      const bool has = horizontal ? x + 1 < side : y + 1 < side;
      out.correct += has && b == at[img * P + (horizontal ? y * side + x + 1 : (y + 1) * side + x)];
    });
  };
  near_join(true, r.right_nearest);
  near_join(false, r.down_nearest);
  score_fragments(find, row_src, m, P, images, r);
}

ZeroJigsawResult zero_jigsaw(const std::vector<float>& a, int64_t m, int64_t k, int64_t n, int64_t images,
                             uint64_t seed, double key_scale, int mask_rank) {
  const int64_t C = k / (kK * kK);
  // The feature map's side: conv2's input is square (cnn: 14×14).
  const int64_t P = m / images, side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(P))));
  TEMPO_CHECK(side * side == P && P * images == m, "zero-pattern measurement: expected square feature maps");
  const Traced enc = encrypt_for_worker(a, m, k, n, seed, key_scale, mask_rank);
  ZeroJigsawResult r;
  r.rows = m;
  r.cols = k;
  r.channels = C;
  r.mask_rank = mask_rank;
  // The plaintext's zeros at each ciphertext position (scoring only).
  std::vector<uint8_t> truth(static_cast<size_t>(m * k));
  int64_t zeros = 0;
  for (int64_t e = 0; e < m * k; ++e) {
    truth[e] = a[static_cast<size_t>(enc.src_row[e] * k + enc.src_col[e])] == 0.0f;
    zeros += truth[e];
  }
  r.zero_fraction = static_cast<double>(zeros) / static_cast<double>(m * k);
  for (int64_t i = 0; i < m; ++i)
    r.zero_rows += std::all_of(a.begin() + i * k, a.begin() + (i + 1) * k, [](float v) { return v == 0.0f; });
  // What the worker takes for zeros: exact zeros of A'; with a mask, the
  // zeros of the sparse part of a low-rank-plus-sparse split of A'.
  std::vector<double> score(static_cast<size_t>(m * k));
  std::vector<uint8_t> guess(static_cast<size_t>(m * k));
  guess_zeros(enc, m, k, mask_rank, score, guess);
  r.zero_auc = roc_auc(score, truth);
  int64_t guessed = 0, hit = 0;
  for (int64_t e = 0; e < m * k; ++e) guessed += guess[e], hit += guess[e] && truth[e];
  r.pattern_fraction = static_cast<double>(guessed) / static_cast<double>(m * k);
  r.pattern_precision = guessed ? static_cast<double>(hit) / static_cast<double>(guessed) : 0.0;
  r.pattern_recall = zeros ? static_cast<double>(hit) / static_cast<double>(zeros) : 0.0;
  ZeroBits zb;
  zb.words = (m + 63) / 64;
  const int64_t words = zb.words;
  std::vector<uint64_t>& zcol = zb.zcol;
  zcol.assign(static_cast<size_t>(k * words), 0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < k; ++j)
      if (guess[i * k + j]) zcol[j * words + i / 64] |= uint64_t{1} << (i % 64);
  // Scoring only: each ciphertext column's channel and offset, each row's position.
  std::vector<int64_t> col_src(static_cast<size_t>(k)), row_src(static_cast<size_t>(m));
  for (int64_t j = 0; j < k; ++j) col_src[j] = enc.src_col[j];
  for (int64_t i = 0; i < m; ++i) row_src[i] = enc.src_row[i * k];

  // Columns: phi coefficient of the zero indicators, nearest columns.
  std::vector<int64_t> ones(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) {
    int64_t n1 = 0;
    for (int64_t w = 0; w < words; ++w) n1 += __builtin_popcountll(zcol[j * words + w]);
    ones[j] = n1;
  }
  count_border_columns(zb, ones, col_src, row_src, m, k, images, side, r);
  column_purity(zb, ones, col_src, m, k, C, r);
  join_rows(zb, col_src, row_src, m, k, C, images, side, r);
  return r;
}

}  // namespace

namespace {

// The im2col operand of the second convolution at a step of a real run.
struct Captured {
  std::vector<float> a;
  int64_t m = 0, k = 0, n = 0;
};
Captured capture_conv2(TrainConfig cfg, int64_t at_step) {
  cfg.mode = "tee-only";
  cfg.steps = at_step;
  cfg.save.clear();
  cfg.metrics.clear();
  cfg.offload_first = true;  // so the tap sees the first two products
  const std::unique_ptr<Model> model = build_model(cfg.model, cfg.seed);
  const Conv2d* conv2 = model->product_layers.size() > 1 ? dynamic_cast<const Conv2d*>(model->product_layers[1]) : nullptr;
  TEMPO_CHECK(conv2 && conv2->kernel == kK && conv2->stride == 1 && conv2->padding == 1,
              "zero-pattern measurement: needs a second 3×3 same convolution (as in cnn)");
  PatchTap tap(at_step);
  train(cfg, &tap);
  auto& g = tap.got[1];
  TEMPO_CHECK(!g.a.empty(), "zero-pattern measurement: the step was not captured");
  return {std::move(g.a), g.m, g.k, g.n};
}

// The attack on the row mixing's grouping (MaskSubspaceResult). Each
// ciphertext row, as a unit vector with the subspace s projected off (most of
// the mask), becomes the profile −log|entry| (a zero of A shared by its
// whole group is a small entry there), centred and normalised; rows are
// compared by the cosine of their profiles (tried and kept as the best of
// three: the indicator of each row's quarter of smallest entries found a
// third as many partners, the profile without normalising as many). Scored
// on a fixed sample of rows against the true groups (RowMix::grouping; each
// ciphertext row's trace names its mixed row).
void find_mixing_groups(const Traced& enc, const CommonSubspace& s, int64_t m, int64_t k,
                        const RowMix::Grouping& grouping, MaskSubspaceResult& r) {
  using RowMajor = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMajor x = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>(
                   enc.values.data(), m, k).cast<double>();
  x.rowwise().normalize();
  if (s.dim > 0) {
    Eigen::Map<const RowMajor> basis(s.basis.data(), s.dim, k);
    x -= (x * basis.transpose()) * basis;
  }
  Eigen::MatrixXf feat(k, m);  // one column per row: its profile
  for (int64_t i = 0; i < m; ++i) {
    double mean = 0;
    for (int64_t j = 0; j < k; ++j) mean += std::log(std::fabs(x(i, j)) + 1e-12);
    mean /= static_cast<double>(k);
    for (int64_t j = 0; j < k; ++j) feat(j, i) = static_cast<float>(mean - std::log(std::fabs(x(i, j)) + 1e-12));
    feat.col(i).normalize();
  }
  const std::vector<int64_t>& starts = grouping.starts;
  const auto groups = static_cast<int64_t>(starts.size()) - 1;
  std::vector<int64_t> group_of_mixed(static_cast<size_t>(m));
  int64_t smallest = m;
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t b = starts[static_cast<size_t>(g)], e = starts[static_cast<size_t>(g) + 1];
    smallest = std::min(smallest, e - b);
    for (int64_t i = b; i < e; ++i) group_of_mixed[static_cast<size_t>(i)] = g;
  }
  auto group = [&](int64_t row) { return group_of_mixed[static_cast<size_t>(enc.src_row[static_cast<size_t>(row * k)])]; };
  const int64_t queries = std::min<int64_t>(m, 300), nb = std::max<int64_t>(1, smallest - 1);
  int64_t hits = 0;
  for (int64_t t = 0; t < queries; ++t) {
    const int64_t q = t * m / queries;
    const Eigen::VectorXf sim = feat.transpose() * feat.col(q);
    std::vector<int64_t> idx(static_cast<size_t>(m));
    std::iota(idx.begin(), idx.end(), int64_t{0});
    idx.erase(idx.begin() + q);
    std::partial_sort(idx.begin(), idx.begin() + nb, idx.end(),
                      [&](int64_t a, int64_t b) { return sim[a] > sim[b] || (sim[a] == sim[b] && a < b); });
    for (int64_t u = 0; u < nb; ++u) hits += group(idx[static_cast<size_t>(u)]) == group(q);
  }
  r.group_neighbours = nb;
  r.group_queries = queries;
  r.group_precision = static_cast<double>(hits) / static_cast<double>(nb * queries);
  r.group_chance = (static_cast<double>(m) / static_cast<double>(groups) - 1) / static_cast<double>(m - 1);
}

// An entry counts as a zero of a vector found in a group's span when within this of the vector's largest entry
// (float ciphertexts).
constexpr double kZero = 1e-4;

// The best AUC of y's entries (−|entry|, scaled by the largest) as a detector of the zeros of one of the group's n
// rows of A (zero[u][j]: row u is zero in ciphertext column j); −1 where no row has both zeros and non-zeros.
double best_zero_auc(const Eigen::VectorXd& y, const std::vector<std::vector<uint8_t>>& zero, int64_t n, int64_t k) {
  std::vector<double> score(static_cast<size_t>(k));
  const double mx = y.cwiseAbs().maxCoeff();
  for (int64_t j = 0; j < k; ++j) score[static_cast<size_t>(j)] = mx > 0 ? -std::fabs(y[j]) / mx : 0.0;
  double best = -1;
  for (int64_t u = 0; u < n; ++u) {
    const auto& z = zero[static_cast<size_t>(u)];
    const int64_t c = std::count(z.begin(), z.end(), uint8_t{1});
    if (c > 0 && c < k) best = std::max(best, roc_auc(score, z));
  }
  return best;
}

// The vector of span(basis) (k × d) with the most zeros found by 300 random tries (group g's own random stream):
// each the vector zero in d − 1 random columns; extra: its zeros beyond those (−1: no try gave one vector).
struct Sparsest {
  Eigen::VectorXd y;
  int64_t extra = -1;
};

// Searches span(basis) for its sparsest vector (see Sparsest).
Sparsest sparsest_vector(const Eigen::MatrixXd& basis, int64_t k, int64_t g) {
  const int64_t d = basis.cols();
  Rng rng = Rng::derive(static_cast<uint64_t>(g), 11);
  Eigen::VectorXd best_y;
  int64_t best_extra = -1;
  std::vector<int64_t> cols(static_cast<size_t>(k));
  for (int tr = 0; tr < 300; ++tr) {
    std::iota(cols.begin(), cols.end(), int64_t{0});
    for (int64_t u = 0; u < d - 1; ++u)
      std::swap(cols[static_cast<size_t>(u)], cols[static_cast<size_t>(u) + rng.below(static_cast<uint32_t>(k - u))]);
    Eigen::MatrixXd sub(d - 1, d);
    for (int64_t u = 0; u < d - 1; ++u) sub.row(u) = basis.row(cols[static_cast<size_t>(u)]);
    Eigen::FullPivLU<Eigen::MatrixXd> lu(sub);
    const Eigen::MatrixXd ker = lu.kernel();
    if (ker.cols() != 1) continue;
    const Eigen::VectorXd y = basis * ker.col(0);
    const double mx = y.cwiseAbs().maxCoeff();
    int64_t zeros = 0;
    for (int64_t j = 0; j < k; ++j) zeros += std::fabs(y[j]) <= kZero * mx;
    if (zeros - (d - 1) > best_extra) best_extra = zeros - (d - 1), best_y = y;
  }
  return {best_y, best_extra};
}

// Whether y's zeros are exactly those of one of the group's n rows of A (zero: as in best_zero_auc).
bool zeros_of_a_row(const Eigen::VectorXd& y, const std::vector<std::vector<uint8_t>>& zero, int64_t n, int64_t k) {
  const double mx = y.cwiseAbs().maxCoeff();
  for (int64_t u = 0; u < n; ++u) {
    bool same = true;
    for (int64_t j = 0; j < k && same; ++j)
      same = (std::fabs(y[j]) <= kZero * mx) == static_cast<bool>(zero[static_cast<size_t>(u)][static_cast<size_t>(j)]);
    if (same) return true;
  }
  return false;
}

// The oracle-group second step (MaskSubspaceResult::sparse_auc). a: A
// (m×k, before mixing).
void sparsest_in_groups(const Traced& enc, const CommonSubspace& s, const float* a, const RowMix::Grouping& grouping,
                        int64_t m, int64_t k, MaskSubspaceResult& r) {
  const std::vector<int32_t>& perm = grouping.perm;
  const auto groups = static_cast<int64_t>(grouping.starts.size()) - 1;
  // Ciphertext row of each mixed row, and the plaintext column of each
  // ciphertext column (the same for every row).
  std::vector<int64_t> cipher_of(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) cipher_of[static_cast<size_t>(enc.src_row[static_cast<size_t>(i * k)])] = i;
  std::vector<int64_t> col(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) col[static_cast<size_t>(j)] = enc.src_col[static_cast<size_t>(j)];
  const int64_t want = std::min<int64_t>(groups, 40);
  double sum_sparse = 0, sum_proj = 0;
  int64_t scored = 0, scored_proj = 0, exact = 0;
  for (int64_t t = 0; t < want; ++t) {
    const int64_t g = t * groups / want, b = grouping.starts[static_cast<size_t>(g)],
                  n = grouping.starts[static_cast<size_t>(g) + 1] - b;
    // Basis of span(group rows) + S, orthonormalised.
    Eigen::MatrixXd span(n + s.dim, k);
    for (int64_t u = 0; u < n; ++u)
      for (int64_t j = 0; j < k; ++j)
        span(u, j) = enc.values[static_cast<size_t>(cipher_of[static_cast<size_t>(b + u)] * k + j)];
    for (int64_t d = 0; d < s.dim; ++d)
      for (int64_t j = 0; j < k; ++j) span(n + d, j) = s.basis[static_cast<size_t>(d * k + j)];
    // (Rows of A repeated within a group make the span smaller: its rank.)
    Eigen::ColPivHouseholderQR<Eigen::MatrixXd> qr(span.transpose());
    qr.setThreshold(1e-5);
    const Eigen::MatrixXd basis = qr.householderQ() * Eigen::MatrixXd::Identity(k, qr.rank());  // k × d
    // The group's rows of A, in ciphertext column order: the truth.
    std::vector<std::vector<uint8_t>> zero(static_cast<size_t>(n), std::vector<uint8_t>(static_cast<size_t>(k)));
    int64_t any = 0;
    for (int64_t u = 0; u < n; ++u)
      for (int64_t j = 0; j < k; ++j)
        any += zero[static_cast<size_t>(u)][static_cast<size_t>(j)] =
            a[static_cast<size_t>(perm[static_cast<size_t>(b + u)]) * static_cast<size_t>(k) + static_cast<size_t>(col[static_cast<size_t>(j)])] == 0.0f;
    if (any == 0 || any == n * k) continue;
    // A row of A lies in this span and is zero in about half its columns;
    // a vector of a d-dimensional span that is zero in d − 1 chosen columns
    // is fixed up to scale. So: random sets of d − 1 columns, the vector
    // zero there, and the one with the most further zeros (a row of A has
    // many; a vector made zero by force has none).
    const int64_t d = basis.cols();
    if (d - 1 <= k / 2) {  // else more forced zeros than a row of A has, about: no try can hit one
      const Sparsest sp = sparsest_vector(basis, k, g);
      if (sp.extra >= 0) {
        const double auc = best_zero_auc(sp.y, zero, n, k);
        if (auc >= 0) sum_sparse += auc, ++scored;
        // Exact: its zeros are exactly those of one row of the group.
        exact += zeros_of_a_row(sp.y, zero, n, k);
      }
    }
    // Reference: the group's rows themselves, with the subspace projected off.
    for (int64_t u = 0; u < n; ++u) {
      Eigen::VectorXd y = span.row(u).transpose();
      if (s.dim > 0) {
        const Eigen::MatrixXd sb = span.bottomRows(s.dim);
        y -= sb.transpose() * (sb * y);
      }
      const double auc = best_zero_auc(y, zero, n, k);
      if (auc >= 0) sum_proj += auc, ++scored_proj;
    }
  }
  r.sparse_groups = want;
  r.sparse_exact = exact;
  if (scored) r.sparse_auc = sum_sparse / static_cast<double>(scored);
  if (scored_proj) r.sparse_auc_projected = sum_proj / static_cast<double>(scored_proj);
}

// Marks the repeated rows of A (scoring only): rows with at least 19 exact copies; counts them in r.
void mark_repeated_rows(const Captured& cap, std::vector<uint8_t>& repeated, MaskSubspaceResult& r) {
  const int64_t m = cap.m, k = cap.k;
  std::unordered_map<std::string, int64_t> count;
  auto key = [&](int64_t i) {
    return std::string(reinterpret_cast<const char*>(cap.a.data() + i * k), static_cast<size_t>(k) * sizeof(float));
  };
  for (int64_t i = 0; i < m; ++i) ++count[key(i)];
  for (int64_t i = 0; i < m; ++i) r.repeated_rows += repeated[static_cast<size_t>(i)] = count[key(i)] >= 20;
}

// Fraction of the mask's row space inside S: top-r eigenvectors of R'ᵀR' (enc_r: the mask alone under the keys).
double mask_space_captured(const Traced& enc_r, const CommonSubspace& s, int64_t m, int64_t k, int64_t rank_used) {
  Eigen::MatrixXd gram = Eigen::MatrixXd::Zero(k, k);
  Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> R(enc_r.values.data(), m, k);
  gram.noalias() = (R.transpose() * R).cast<double>();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(gram);
  const Eigen::MatrixXd qr = eig.eigenvectors().rightCols(rank_used);  // k × r
  Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> S(s.basis.data(), s.dim, k);
  return (S * qr).squaredNorm() / static_cast<double>(rank_used);
}

// What decoding the sampled rows outside S gives, row after row: zero scores (projected; decoded with the oracle's
// signs; decoded with the Gram matrix's signs), the truth, and the counts of guessed and right zeros.
struct DecodeTally {
  std::vector<double> score_p, score_s, score_g;
  std::vector<uint8_t> truth;
  int64_t guessed = 0, hit = 0, zeros = 0, g_guessed = 0, g_hit = 0;
};

// Decodes ciphertext row i (enc) three ways and adds it to the tally: projected off S, decoded with the oracle's
// signs (before: the operand before the mask; enc_1: the keys' signs), and decoded with the Gram signs gs.
void decode_row(int64_t i, const Traced& enc, const Traced& enc_1, const std::vector<float>& before,
                const CommonSubspace& s, const SignFactors& gs, int64_t k, DecodeTally& tally, MaskSubspaceResult& r) {
  std::vector<double>& score_p = tally.score_p;
  std::vector<double>& score_s = tally.score_s;
  std::vector<double>& score_g = tally.score_g;
  std::vector<uint8_t>& truth = tally.truth;
  int64_t& guessed = tally.guessed;
  int64_t& hit = tally.hit;
  int64_t& zeros = tally.zeros;
  int64_t& g_guessed = tally.g_guessed;
  int64_t& g_hit = tally.g_hit;
  std::vector<float> sign(static_cast<size_t>(k)), gsign(static_cast<size_t>(k));
  std::vector<double> row(static_cast<size_t>(k));
  for (int64_t j = 0; j < k; ++j) {
    const size_t e = static_cast<size_t>(i * k + j);
    row[static_cast<size_t>(j)] = enc.values[e];
    // The oracle: the sign the ciphertext entry would have with the mask gone.
    const float plain = before[static_cast<size_t>(enc.src_row[e] * k + enc.src_col[e])];
    sign[static_cast<size_t>(j)] = (plain >= 0) == (enc_1.values[e] >= 0) ? 1.0f : -1.0f;
    truth.push_back(plain == 0.0f);
    zeros += plain == 0.0f;
  }
  double norm = 0, mx = 0;
  for (double v : row) norm += v * v;
  for (double& v : row) v /= std::sqrt(norm);
  // Projected: the row minus its part in S.
  std::vector<double> proj(row);
  for (int64_t d = 0; d < s.dim; ++d) {
    double c = 0;
    for (int64_t j = 0; j < k; ++j) c += s.basis[static_cast<size_t>(d * k + j)] * row[static_cast<size_t>(j)];
    for (int64_t j = 0; j < k; ++j) proj[static_cast<size_t>(j)] -= c * s.basis[static_cast<size_t>(d * k + j)];
  }
  for (double v : proj) mx = std::max(mx, std::fabs(v));
  for (double v : proj) score_p.push_back(-std::fabs(v) / mx);
  const std::vector<double> z = decode_with_signs(row.data(), s, sign.data());
  mx = 0;
  for (double v : z) mx = std::max(mx, std::fabs(v));
  bool exact = true;
  for (int64_t j = 0; j < k; ++j) {
    const double a = mx > 0 ? std::fabs(z[static_cast<size_t>(j)]) / mx : 0.0;
    score_s.push_back(-a);
    const bool g = a < 0.01, t = truth[truth.size() - static_cast<size_t>(k - j)];
    guessed += g;
    hit += g && t;
    exact &= g == t;
  }
  r.exact_rows += exact;
  // The worker's own signs.
  for (int64_t j = 0; j < k; ++j)
    gsign[static_cast<size_t>(j)] = static_cast<float>(gs.row[static_cast<size_t>(i)] * gs.col[static_cast<size_t>(j)]);
  const std::vector<double> zg = decode_with_signs(row.data(), s, gsign.data());
  mx = 0;
  for (double v : zg) mx = std::max(mx, std::fabs(v));
  for (int64_t j = 0; j < k; ++j) {
    const double a = mx > 0 ? std::fabs(zg[static_cast<size_t>(j)]) / mx : 0.0;
    score_g.push_back(-a);
    const bool g = a < 0.01;
    g_guessed += g;
    g_hit += g && truth[truth.size() - static_cast<size_t>(k - j)];
  }
}

// Zeros of the rows outside S, where there are any to find: a fixed sample of them decoded (decode_row), the
// columns' key signs from the Gram matrix checked against the keys (enc_1), and the zero measurements of r.
void score_decodes(const Traced& enc, const Traced& enc_1, const std::vector<float>& before, const CommonSubspace& s,
                   int64_t m, int64_t k, MaskSubspaceResult& r) {
  std::vector<int64_t> outside;
  for (int64_t i = 0; i < m; ++i)
    if (s.residual[static_cast<size_t>(i)] >= 1e-4) outside.push_back(i);
  if (outside.empty()) return;
  // A fixed sample of rows (the decode costs ~k·dim·600 flops a row).
  const size_t want = std::min<size_t>(outside.size(), 300);
  std::vector<int64_t> sample;
  for (size_t t = 0; t < want; ++t) sample.push_back(outside[t * outside.size() / want]);
  const SignFactors gs = gram_sign_factors(enc.values.data(), m, k);
  {
    int64_t agree = 0;  // against the keys' signs (row 0's entries of enc_1, up to its row sign)
    for (int64_t j = 0; j < k; ++j) agree += gs.col[static_cast<size_t>(j)] == (enc_1.values[static_cast<size_t>(j)] >= 0 ? 1 : -1);
    r.col_signs_right = static_cast<double>(std::max(agree, k - agree)) / static_cast<double>(k);
  }
  DecodeTally d;
  for (int64_t i : sample) decode_row(i, enc, enc_1, before, s, gs, k, d, r);
  r.decoded_rows = static_cast<int64_t>(sample.size());
  if (d.zeros == 0 || d.zeros == static_cast<int64_t>(d.truth.size())) return;
  r.auc_projected = roc_auc(d.score_p, d.truth);
  r.auc_signs = roc_auc(d.score_s, d.truth);
  r.precision_signs = d.guessed ? static_cast<double>(d.hit) / static_cast<double>(d.guessed) : 0.0;
  r.recall_signs = static_cast<double>(d.hit) / static_cast<double>(d.zeros);
  r.auc_gram = roc_auc(d.score_g, d.truth);
  r.precision_gram = d.g_guessed ? static_cast<double>(d.g_hit) / static_cast<double>(d.g_guessed) : 0.0;
  r.recall_gram = static_cast<double>(d.g_hit) / static_cast<double>(d.zeros);
}

MaskSubspaceResult mask_subspace(const Captured& cap, uint64_t seed, double key_scale, int rank, int mix, int col) {
  const int64_t m = cap.m, k = cap.k;
  MaskSubspaceResult r;
  r.mask_rank = rank;
  r.row_mix = mix;
  r.col_mix = col;
  r.rows = m;
  // Repeated rows of A (scoring only): rows with at least 19 exact copies.
  std::vector<uint8_t> repeated(static_cast<size_t>(m));
  mark_repeated_rows(cap, repeated, r);
  std::unique_ptr<Obfuscator> obf = measurement_keys(seed, key_scale, false);
  const Triple triple = obf->draw_triple(m, k, cap.n);
  // As OffloadBackend sends it: rows mixed, columns mixed, then the mask
  // added in place.
  Product p{0, "conv2", cap.a.data(), nullptr, m, k, cap.n};
  RowMix mixer(std::max(2, mix));
  std::vector<float> before;  // the operand before the mask
  if (mix > 0) {
    KeyStream ks = obf->stream();
    p = mixer.apply(p, ks);
  }
  std::vector<float> own;  // the column-mixed operand when not row-mixed
  float* buf = mix > 0 ? mixer.mixed_a(0) : nullptr;
  if (col > 0) {
    ColMix cols(col);
    KeyStream ks = obf->stream();
    cols.draw(0, k, ks);
    if (!buf) {
      own.resize(static_cast<size_t>(m * k));
      buf = own.data();
    }
    cols.mix(0, p.a, m, buf);
    p.a = buf;
  }
  before.assign(p.a, p.a + m * k);
  r.zeros_sent = static_cast<double>(std::count(before.begin(), before.end(), 0.0f)) / static_cast<double>(m * k);
  AdditiveMask mask(std::max(1, rank));
  KeyStream ks = obf->stream();
  const Product& q = rank == 0 ? p : buf ? mask.apply_in_place(p, buf, ks) : mask.apply(p, ks);
  const Traced enc = encrypt_traced(triple, q.a, m, k);
  // The mask alone under the same keys: its row space, for scoring.
  std::vector<float> mask_only(static_cast<size_t>(m * k));
  for (int64_t e = 0; e < m * k; ++e) mask_only[static_cast<size_t>(e)] = q.a[e] - before[static_cast<size_t>(e)];
  const Traced enc_r = encrypt_traced(triple, mask_only.data(), m, k);
  const std::vector<float> ones(static_cast<size_t>(m * k), 1.0f);
  const Traced enc_1 = encrypt_traced(triple, ones.data(), m, k);  // the keys' signs
  const int64_t rank_used = std::min<int64_t>(rank, std::min(m, k));

  // The attack: the worker knows r (a public flag) and looks a little wider.
  const CommonSubspace s = find_common_subspace(enc.values.data(), m, k, std::min<int64_t>(k - 1, rank_used + 8));
  r.subspace_dim = s.dim;
  for (int64_t i = 0; i < m; ++i) {
    if (s.residual[static_cast<size_t>(i)] >= 1e-4) continue;
    ++r.rows_in;
    if (mix == 0) r.rows_in_repeated += repeated[static_cast<size_t>(enc.src_row[static_cast<size_t>(i * k)])];
  }
  // Fraction of the mask's row space inside S: top-r eigenvectors of R'ᵀR'.
  r.mask_captured = -1;  // no mask
  if (rank_used > 0) r.mask_captured = mask_space_captured(enc_r, s, m, k, rank_used);
  if (mix > 0) {
    const RowMix::Grouping grouping = mixer.grouping(0);
    find_mixing_groups(enc, s, m, k, grouping, r);
    // Without a mask the worker has no subspace to add (the flag is public).
    sparsest_in_groups(enc, rank > 0 ? s : CommonSubspace{}, cap.a.data(), grouping, m, k, r);
  }
  // Zeros of the rows outside S, where there are any to find.
  score_decodes(enc, enc_1, before, s, m, k, r);
  return r;
}

}  // namespace

std::vector<ZeroJigsawResult> measure_zero_jigsaw(TrainConfig cfg, int64_t at_step, uint64_t seed,
                                                  const std::vector<int>& mask_ranks) {
  const Captured cap = capture_conv2(cfg, at_step);
  std::vector<ZeroJigsawResult> out;
  for (int rank : mask_ranks) out.push_back(zero_jigsaw(cap.a, cap.m, cap.k, cap.n, cfg.batch_size, seed,
                                                        cfg.offload.key_scale, rank));
  return out;
}

std::vector<MaskSubspaceResult> measure_mask_subspace(TrainConfig cfg, int64_t at_step, uint64_t seed,
                                                      const std::vector<BlindingCase>& cases) {
  const Captured cap = capture_conv2(cfg, at_step);
  std::vector<MaskSubspaceResult> out;
  for (const BlindingCase& c : cases) {
    TEMPO_CHECK(c.mask_rank > 0 || c.row_mix > 0, "mask subspace measurement: needs a mask or row mixing");
    out.push_back(mask_subspace(cap, seed, cfg.offload.key_scale, c.mask_rank, c.row_mix, c.col_mix));
  }
  return out;
}

}  // namespace tempo
