#include "trusted/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "common/error.h"

namespace tempo {

int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) r += ", ";
    r += std::to_string(s[i]);
  }
  return r + "]";
}

void Tensor::Free::operator()(float* p) const { std::free(p); }

Tensor::Tensor(const Shape& shape) {
  resize(shape);
  zero();
}

Tensor::Tensor(const Tensor& other) { *this = other; }

Tensor& Tensor::operator=(const Tensor& other) {
  if (this == &other) return *this;
  resize(other.shape_);
  if (numel_) std::memcpy(data(), other.data(), sizeof(float) * static_cast<size_t>(numel_));
  return *this;
}

void Tensor::set_numel(int64_t n) {
  if (n > capacity_) {
    size_t bytes = (sizeof(float) * static_cast<size_t>(n) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    data_.reset(static_cast<float*>(p));
    capacity_ = n;
  }
  numel_ = n;
}

void Tensor::resize(const Shape& shape) {
  for (int64_t d : shape) TEMPO_CHECK(d >= 0, "negative tensor dimension in " + shape_str(shape));
  set_numel(numel_of(shape));
  if (shape_ != shape) shape_ = shape;
}

void Tensor::resize(std::initializer_list<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    TEMPO_CHECK(d >= 0, "negative tensor dimension in " + shape_str(Shape(shape)));
    n *= d;
  }
  set_numel(n);
  shape_.assign(shape);  // reuses the vector's capacity
}

void Tensor::reshape(std::initializer_list<int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  TEMPO_CHECK(n == numel_, "cannot reshape " + shape_str(shape_) + " to " + shape_str(Shape(shape)));
  shape_.assign(shape);
}

void Tensor::reshape(const Shape& shape) {
  TEMPO_CHECK(numel_of(shape) == numel_,
        "cannot reshape " + shape_str(shape_) + " to " + shape_str(shape));
  shape_ = shape;
}

void Tensor::zero() {
  if (numel_) std::memset(data(), 0, sizeof(float) * static_cast<size_t>(numel_));
}

void Tensor::fill(float v) { std::fill(data(), data() + numel_, v); }

}  // namespace tempo
