// BatchLoader: shuffling, CIFAR augmentation and normalisation of batches.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "common/error.h"
#include "trusted/data/dataset.h"

namespace tempo {

namespace {
constexpr int64_t kPad = 4;                            // CIFAR augmentation: zero padding
constexpr uint64_t kAugTag = uint64_t(1) << 63;        // augmentation stream: derive(seed, epoch | kAugTag)
}  // namespace

BatchLoader::BatchLoader(const Dataset& d, bool train, int64_t batch_size, bool shuffle, uint64_t seed)
    : d_(d),
      xs_(train ? d.train_x : d.test_x),
      ys_(train ? d.train_y : d.test_y),
      shuffle_(shuffle),
      augment_(train && d.cifar_augment),
      batch_(batch_size),
      n_(static_cast<int64_t>(ys_.size())),
      seed_(seed) {
  TEMPO_CHECK(batch_size > 0, "batch size must be at least 1 (got " + std::to_string(batch_size) + "); fix --batch-size");
  const Shape& s = d.sample_shape;
  TEMPO_CHECK(s.size() == 3, "dataset '" + d.description + "': sample shape " + shape_str(s) + " is not C×H×W");
  const int64_t per = numel_of(s);
  TEMPO_CHECK(xs_.numel() == n_ * per && (n_ == 0 || (xs_.ndim() == 4 && xs_.dim(0) == n_)),
        "dataset '" + d.description + "': " + (train ? "training" : "test") + " images " + shape_str(xs_.shape()) +
            " do not match " + std::to_string(n_) + " labels of sample shape " + shape_str(s));
  TEMPO_CHECK(d.norm_mean.empty() || (d.norm_mean.size() == static_cast<size_t>(s[0]) && d.norm_std.size() == d.norm_mean.size()),
        "dataset '" + d.description + "': normalisation needs one mean and one std per channel");
  for (float v : d.norm_std) TEMPO_CHECK(v > 0, "dataset '" + d.description + "': normalisation std must be positive");
  batch_shape_ = {0, s[0], s[1], s[2]};
  if (shuffle_) order_.resize(static_cast<size_t>(n_));
  start_epoch(1);
}

int64_t BatchLoader::num_batches() const { return (n_ + batch_ - 1) / batch_; }

void BatchLoader::start_epoch(int epoch) {
  TEMPO_CHECK(epoch >= 1, "BatchLoader::start_epoch: epochs are numbered from 1 (got " + std::to_string(epoch) + ")");
  pos_ = 0;
  const uint64_t e = static_cast<uint64_t>(epoch);
  if (shuffle_) {
    std::iota(order_.begin(), order_.end(), int64_t(0));
    Rng r = Rng::derive(seed_, e);
    for (int64_t i = n_ - 1; i > 0; --i) {
      int64_t j = static_cast<int64_t>(r.below(static_cast<uint64_t>(i) + 1));
      std::swap(order_[static_cast<size_t>(i)], order_[static_cast<size_t>(j)]);
    }
  }
  aug_rng_ = Rng::derive(seed_, e | kAugTag);
}

bool BatchLoader::next(Tensor& x, std::vector<int64_t>& y) {
  if (pos_ >= n_) return false;
  const int64_t full = std::min(batch_, n_ - pos_);
  // This shard's rows [lo, hi) of the global batch (all of it with one shard).
  const int64_t lo = full * shard_ / shards_, hi = full * (shard_ + 1) / shards_, b = hi - lo;
  const int64_t C = batch_shape_[1], H = batch_shape_[2], W = batch_shape_[3];
  const int64_t plane = H * W, per = C * plane;
  batch_shape_[0] = b;
  x.resize(batch_shape_);
  y.resize(static_cast<size_t>(b));
  const bool norm = !d_.norm_mean.empty();
  for (int64_t j = 0; j < full; ++j) {
    if (j < lo || j >= hi) {  // another shard's sample: only its augmentation draws, in order
      if (augment_) {
        aug_rng_.below(2 * kPad + 1);
        aug_rng_.below(2 * kPad + 1);
        aug_rng_.uniform();
      }
      continue;
    }
    const int64_t i = j - lo;
    const int64_t idx = shuffle_ ? order_[static_cast<size_t>(pos_ + j)] : pos_ + j;
    y[static_cast<size_t>(i)] = ys_[static_cast<size_t>(idx)];
    const float* src = xs_.data() + idx * per;
    float* dst = x.data() + i * per;
    if (augment_) {
      // torchvision RandomCrop(padding=4) draws top then left; then
      // RandomHorizontalFlip(p=0.5); then Normalize.
      const int64_t top = static_cast<int64_t>(aug_rng_.below(2 * kPad + 1));
      const int64_t left = static_cast<int64_t>(aug_rng_.below(2 * kPad + 1));
      const bool flip = aug_rng_.uniform() < 0.5;
      for (int64_t c = 0; c < C; ++c) {
        const float m = norm ? d_.norm_mean[static_cast<size_t>(c)] : 0.0f;
        const float sd = norm ? d_.norm_std[static_cast<size_t>(c)] : 1.0f;
        const float pad_value = norm ? (0.0f - m) / sd : 0.0f;
        for (int64_t h = 0; h < H; ++h) {
          float* o = dst + c * plane + h * W;
          const int64_t sh = h + top - kPad;
          if (sh < 0 || sh >= H) {
            std::fill(o, o + W, pad_value);
            continue;
          }
          const float* row = src + c * plane + sh * W;
          for (int64_t w = 0; w < W; ++w) {
            const int64_t sw = (flip ? W - 1 - w : w) + left - kPad;
            if (sw < 0 || sw >= W)
              o[w] = pad_value;
            else
              o[w] = norm ? (row[sw] - m) / sd : row[sw];
          }
        }
      }
    } else if (norm) {
      for (int64_t c = 0; c < C; ++c) {
        const float m = d_.norm_mean[static_cast<size_t>(c)], sd = d_.norm_std[static_cast<size_t>(c)];
        const float* s = src + c * plane;
        float* o = dst + c * plane;
        for (int64_t k = 0; k < plane; ++k) o[k] = (s[k] - m) / sd;
      }
    } else {
      std::memcpy(dst, src, sizeof(float) * static_cast<size_t>(per));
    }
  }
  pos_ += full;
  return true;
}

void BatchLoader::set_shard(int shard, int shards) {
  TEMPO_CHECK(shards >= 1 && shard >= 0 && shard < shards, "BatchLoader: shard out of range");
  shard_ = shard;
  shards_ = shards;
}

void BatchLoader::skip(int64_t batches) {
  for (int64_t k = 0; k < batches && pos_ < n_; ++k) {
    const int64_t b = std::min(batch_, n_ - pos_);
    if (augment_)
      for (int64_t i = 0; i < b; ++i) {  // the draws of next(), in its order
        aug_rng_.below(2 * kPad + 1);
        aug_rng_.below(2 * kPad + 1);
        aug_rng_.uniform();
      }
    pos_ += b;
  }
}

}  // namespace tempo
