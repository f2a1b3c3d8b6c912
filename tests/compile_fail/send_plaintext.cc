// Compiled by CTest three times: as is (must compile), and with each of the
// macros below (must NOT compile). It proves that the worker-facing API takes
// only ciphertext made by the obfuscator.
#include "trusted/tensor.h"
#include "wire/worker_api.h"

void send(tempo::WorkerApi& worker, const tempo::Tensor& plaintext, const tempo::CipherMatrix& cipher) {
#if defined(TEMPO_SEND_TENSOR)
  worker.put(1, plaintext);  // a plaintext tensor is not a CipherMatrix
#elif defined(TEMPO_FORGE_CIPHERTEXT)
  tempo::Matrix m(1, 1);
  worker.put(1, tempo::CipherMatrix(tempo::CipherMatrix::Seal{}, std::move(m)));  // only the Obfuscator can seal
#else
  (void)plaintext;
  worker.put(1, cipher);  // ciphertext is fine
#endif
}
