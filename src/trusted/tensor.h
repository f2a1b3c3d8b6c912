// Tensor: a dense, contiguous, row-major float32 array with a shape (plaintext;
// lives only on the trusted side). Storage is 64-byte aligned and grows only:
// resize() to a shape no larger than the capacity never allocates, which is
// how layers keep the hot path allocation-free across steps.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace tempo {

using Shape = std::vector<int64_t>;

int64_t numel_of(const Shape& s);
std::string shape_str(const Shape& s);

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(const Shape& shape);  // zero-filled
  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[static_cast<size_t>(i < 0 ? i + ndim() : i)]; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const { return numel_; }
  bool empty() const { return numel_ == 0; }

  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  float& operator[](int64_t i) { return data_.get()[i]; }
  float operator[](int64_t i) const { return data_.get()[i]; }

  // Sets the shape; contents are unspecified. Allocates only when the new size
  // exceeds the capacity.
  void resize(const Shape& shape);
  void resize(std::initializer_list<int64_t> shape);  // no temporary Shape
  // Changes the shape without touching the data; numel must not change.
  void reshape(const Shape& shape);
  void reshape(std::initializer_list<int64_t> shape);
  void zero();
  void fill(float v);

 private:
  void set_numel(int64_t n);  // grows the storage if needed
  struct Free {
    void operator()(float* p) const;
  };
  Shape shape_;
  int64_t numel_ = 0;
  int64_t capacity_ = 0;
  std::unique_ptr<float[], Free> data_;
};

}  // namespace tempo
