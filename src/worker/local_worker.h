// An in-process worker (`--workers local:N`): a WorkerService behind the
// same WorkerApi as a remote worker. A GPU backend's requests run on the
// worker's own thread, so the master works while the device computes. A
// CPU backend's products run when their result is awaited, on the thread
// that awaits it: they compute on the master's own cores and threads
// anyway, and a second thread calling the (OpenMP) BLAS would bring a
// second OpenMP pool, which makes libgomp see more threads than cores and
// stop spinning between the master's parallel loops (every loop then
// pays to wake its threads; with the worker's threads also holding the
// cores, a fifth of the master's time in a tempo step on 2 cores,
// docs/BENCHMARKS.md).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

#include "worker/worker_service.h"

namespace tempo {

class LocalWorker final : public WorkerApi {
 public:
  LocalWorker(std::string name, std::unique_ptr<ComputeBackend> backend,
              size_t quota_bytes = size_t{16} << 30);
  ~LocalWorker() override;
  std::string name() const override { return name_; }
  void put(Handle h, const CipherMatrix& m) override;
  std::future<Matrix> product(ProductOp op, Handle x, Handle y, int64_t groups) override;
  using WorkerApi::product;
  std::future<Matrix> conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) override;
  void release(Handle h) override;
  void end_step() override;

 private:
  void run();
  std::future<Matrix> enqueue(std::function<Matrix()> fn);
  std::string name_;
  bool deferred_;  // CPU backend: requests run when awaited (above)
  WorkerService service_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tempo
