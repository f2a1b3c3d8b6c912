// The trust boundary, in types. Workers accept only CipherMatrix, and only
// the obfuscator (src/trusted/obfuscation/obfuscator.h) can make one: its
// constructor takes a Seal, which only the Obfuscator can construct. So
// handing a plaintext Tensor, or a Matrix built from one, to a worker does
// not compile (tests/compile_fail proves it). What a worker returns is an
// ordinary Matrix: ciphertext that only the obfuscator can decrypt.
#pragma once

#include <memory>
#include <utility>

#include "wire/matrix.h"

namespace tempo {

class Obfuscator;

class CipherMatrix {
 public:
  // Passkey: only the Obfuscator can make one.
  class Seal {
    Seal() = default;
    friend class Obfuscator;
  };

  CipherMatrix(Seal, Matrix m) : m_(std::make_shared<const Matrix>(std::move(m))) {}

  int64_t rows() const { return m_->rows(); }
  int64_t cols() const { return m_->cols(); }
  const Matrix& matrix() const { return *m_; }
  // Shared, read-only: one ciphertext sent to several in-process workers is
  // not copied.
  std::shared_ptr<const Matrix> shared() const { return m_; }

 private:
  std::shared_ptr<const Matrix> m_;
};

}  // namespace tempo
