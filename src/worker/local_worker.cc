#include "worker/local_worker.h"

#include <future>

#include "common/error.h"

namespace tempo {

LocalWorker::LocalWorker(std::string name, std::unique_ptr<ComputeBackend> backend,
                         size_t quota_bytes)
    : name_(std::move(name)),
      deferred_(backend && backend->on_host_cores()),
      service_(std::move(backend), quota_bytes) {
  if (!deferred_) thread_ = std::thread([this] { run(); });
}

LocalWorker::~LocalWorker() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void LocalWorker::run() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

void LocalWorker::put(Handle h, const CipherMatrix& m) { service_.put(h, m.shared()); }

std::future<Matrix> LocalWorker::product(ProductOp op, Handle x, Handle y, int64_t groups) {
  return enqueue([this, op, x, y, groups] { return service_.product(op, x, y, groups); });
}

std::future<Matrix> LocalWorker::conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) {
  return enqueue([this, op, a, b, g] { return service_.conv(op, a, b, g); });
}

std::future<Matrix> LocalWorker::enqueue(std::function<Matrix()> fn) {
  if (deferred_) return std::async(std::launch::deferred, std::move(fn));
  auto task = std::make_shared<std::packaged_task<Matrix()>>(std::move(fn));
  std::future<Matrix> f = task->get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.emplace_back([task] { (*task)(); });
  }
  cv_.notify_one();
  return f;
}

void LocalWorker::release(Handle h) { service_.release(h); }

void LocalWorker::end_step() { service_.end_step(); }

}  // namespace tempo
