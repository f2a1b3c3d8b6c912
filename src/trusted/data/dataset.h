// Training data (DESIGN.md §4, `--data`): Fashion-MNIST (gzip IDX), CIFAR-10
// (binary version), the user's own safetensors file, and synthetic Gaussian
// classes; plus the batch loader that shuffles, augments and normalises.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "trusted/rng.h"
#include "trusted/io/safetensors.h"
#include "trusted/tensor.h"

namespace tempo {

struct Dataset {
  std::string description;  // e.g. "fashion-mnist (/usr/share/datasets/fashion-mnist): 60000 train, 10000 test"
  Shape sample_shape;       // {C, H, W}
  int num_classes = 10;
  Tensor train_x;  // N×C×H×W
  std::vector<int64_t> train_y;
  Tensor test_x;  // may be empty (a tensors: file without a test set; synthetic:N with N < 5)
  std::vector<int64_t> test_y;
  // Training batches get pad-4 / random crop / horizontal flip p = 0.5, then
  // normalisation.
  bool cifar_augment = false;
  // Per channel; applied to every batch (train and test) when non-empty. Images
  // are stored un-normalised (in [0, 1] for image datasets).
  std::vector<float> norm_mean, norm_std;
};

// spec: "fashion-mnist[:DIR]", "cifar10:DIR", "tensors:FILE", "synthetic[:N]".
// input_shape is the model's {C, H, W}: a dataset whose sample shape differs is
// an error naming both. Labels outside [0, num_classes) are an error naming
// the sample index. `seed` is used by synthetic only.
Dataset load_dataset(const std::string& spec, const Shape& input_shape, uint64_t seed);

// The tensors of an encrypted data set (P6): images, labels, optional
// test_images/test_labels, and the preprocessing (norm_mean, norm_std,
// augment), so that training on it equals training on the source.
std::vector<NamedTensor> dataset_tensors(const Dataset& d);
// The inverse, validated as a tensors: file is; `what` names the source.
Dataset dataset_from_tensors(TensorMap tensors, const std::string& what, const Shape& input_shape);

// ---- Parsers, exposed for tests and fuzzers --------------------------------

// One IDX file image (already gunzipped): big-endian magic 0x00000803 (u8
// images, 3 dims) or 0x00000801 (u8 labels, 1 dim), big-endian u32 dims, then
// exactly prod(dims) bytes.
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> bytes;
};
IdxArray parse_idx(const uint8_t* data, size_t size, const std::string& what);

// Decompresses a gzip image (concatenated members allowed). Data that does not
// start with the gzip magic is returned unchanged. Truncated or corrupt data
// (bad CRC, trailing garbage) is an Error naming `what`.
std::vector<uint8_t> gunzip(const uint8_t* data, size_t size, const std::string& what);
// read_file + gunzip; a missing file is an Error naming it.
std::vector<uint8_t> gunzip_file(const std::string& path);

// CIFAR-10 binary records (1 label byte + 3072 bytes CHW): appends pixels / 255
// to x (N×3×32×32 row-major) and labels to y. The size must be a positive
// multiple of 3073 and every label < 10.
void parse_cifar(const uint8_t* data, size_t size, const std::string& what, std::vector<float>& x,
                 std::vector<int64_t>& y);

// ---- Batches ----------------------------------------------------------------

// Batches for one pass over the training (train = true) or test set. With
// shuffle, each epoch takes the samples in a permutation drawn from
// Rng::derive(seed, epoch); without, in file order. The last partial batch is
// kept. Training batches of a cifar_augment dataset are augmented with an Rng
// also derived from (seed, epoch), so runs repeat exactly. Normalisation is
// applied when norm_mean is non-empty. The Dataset must outlive the loader.
class BatchLoader {
 public:
  BatchLoader(const Dataset& d, bool train, int64_t batch_size, bool shuffle, uint64_t seed);
  int64_t num_batches() const;
  int64_t num_samples() const { return n_; }
  // Starts epoch `epoch` (1-based); the constructor starts epoch 1.
  void start_epoch(int epoch);
  // Fills x (resized to B×C×H×W; no allocation once its capacity suffices)
  // and y with the next batch; false at the end of the epoch.
  bool next(Tensor& x, std::vector<int64_t>& y);
  // Moves past `batches` batches as next() would (augmentation draws
  // included) without producing them: a resumed run continues mid-epoch.
  void skip(int64_t batches);
  // Several masters: next() gives only rows [b·shard/shards, b·(shard+1)/shards)
  // of each global batch of b rows (the same batches, split evenly).
  void set_shard(int shard, int shards);

 private:
  const Dataset& d_;
  const Tensor& xs_;
  const std::vector<int64_t>& ys_;
  bool shuffle_, augment_;
  int64_t batch_, n_, pos_ = 0;
  int shard_ = 0, shards_ = 1;
  uint64_t seed_;
  std::vector<int64_t> order_;  // the epoch's permutation (shuffle only)
  Rng aug_rng_;
  Shape batch_shape_;  // reused so next() does not allocate
};

}  // namespace tempo
