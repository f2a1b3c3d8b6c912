#include "wire/matrix.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>

namespace tempo {

namespace {

// Free buffers by capacity (floats). A request takes the smallest buffer that
// fits and is at most twice the size, else allocates exactly.
class Pool {
 public:
  float* take(size_t n, size_t& cap) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(n);
      if (it != free_.end() && it->first <= 2 * n + 1024) {
        cap = it->first;
        float* p = it->second;
        free_.erase(it);
        idle_ -= cap * sizeof(float);
        return p;
      }
    }
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes ? bytes : 64);
    if (!p) throw std::bad_alloc();
    cap = n;
    return static_cast<float*>(p);
  }
  void give(float* p, size_t cap) {
    std::lock_guard<std::mutex> lock(mu_);
    // Keep the pool bounded: beyond 4 GiB idle, really free.
    if (idle_ + cap * sizeof(float) > (size_t{4} << 30)) {
      std::free(p);
      return;
    }
    free_.emplace(cap, p);
    idle_ += cap * sizeof(float);
  }
  size_t idle() {
    std::lock_guard<std::mutex> lock(mu_);
    return idle_;
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, float*> free_;
  size_t idle_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: Matrices may die during static destruction
  return *p;
}

}  // namespace

Matrix::Matrix(int64_t rows, int64_t cols) : rows_(rows), cols_(cols) {
  if (rows < 0 || cols < 0) throw std::invalid_argument("negative matrix dimension");
  if (rows && cols) data_ = pool().take(static_cast<size_t>(rows * cols), capacity_);
}

Matrix::~Matrix() {
  if (data_) pool().give(data_, capacity_);
}

Matrix::Matrix(Matrix&& o) noexcept
    : data_(o.data_), capacity_(o.capacity_), rows_(o.rows_), cols_(o.cols_) {
  o.data_ = nullptr;
  o.capacity_ = 0;
  o.rows_ = o.cols_ = 0;
}

Matrix& Matrix::operator=(Matrix&& o) noexcept {
  if (this != &o) {
    if (data_) pool().give(data_, capacity_);
    data_ = o.data_;
    capacity_ = o.capacity_;
    rows_ = o.rows_;
    cols_ = o.cols_;
    o.data_ = nullptr;
    o.capacity_ = 0;
    o.rows_ = o.cols_ = 0;
  }
  return *this;
}

size_t matrix_pool_idle_bytes() { return pool().idle(); }

}  // namespace tempo
