// An in-process worker (`--workers local:N`): a WorkerService driven by its
// own thread, behind the same WorkerApi as a remote worker.
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
  WorkerService service_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tempo
