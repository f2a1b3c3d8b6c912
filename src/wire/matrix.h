// Matrix: a row-major float32 matrix in a pooled, 64-byte aligned buffer.
// The unit of data between master and workers (on the wire: raw little-endian
// floats). Buffers return to a process-wide pool when a Matrix dies, so a
// training step, once warm, allocates nothing: the next step of the same
// shapes takes the same buffers back.
#pragma once

#include <cstddef>
#include <cstdint>

namespace tempo {

class Matrix {
 public:
  Matrix() = default;
  Matrix(int64_t rows, int64_t cols);  // contents unspecified
  ~Matrix();
  Matrix(Matrix&& o) noexcept;
  Matrix& operator=(Matrix&& o) noexcept;
  Matrix(const Matrix&) = delete;
  Matrix& operator=(const Matrix&) = delete;

  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }
  int64_t size() const { return rows_ * cols_; }
  float* data() { return data_; }
  const float* data() const { return data_; }
  float* row(int64_t i) { return data_ + i * cols_; }
  const float* row(int64_t i) const { return data_ + i * cols_; }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;  // floats
  int64_t rows_ = 0, cols_ = 0;
};

// Bytes held by the pool (idle buffers), for memory reports.
size_t matrix_pool_idle_bytes();

}  // namespace tempo
