// A worker process's state, independent of the transport: client sessions
// (each with its own tensor store, memory quota and idle timer) and the
// handling of every request. The gRPC service (grpc_server.cc) is a thin
// layer over this; the fuzzer drives it directly with decoded requests.
// Everything a client sends is treated as hostile: sizes are checked before
// allocation, shapes before compute, and an error ends only that request.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "wire/proto/worker.pb.h"
#include "wire/tensor_codec.h"
#include "worker/transcript.h"
#include "worker/worker_service.h"

namespace tempo {

struct WorkerNodeOptions {
  std::string backend = "cpu";            // its name, as reported to clients
  std::string device;                     // e.g. the CPU or GPU model
  // Makes the compute backend of a new session (required); the argument is
  // whether the client allows TF32.
  std::function<std::unique_ptr<ComputeBackend>(bool)> make_backend;
  size_t quota_bytes = size_t{8} << 30;   // per session
  int idle_timeout_s = 300;               // a silent session is dropped after this
  int max_sessions = 16;
  bool log = true;                        // one stderr line per session event
  // Evaluation only: write every tensor received and returned to
  // record_dir/<session>.tempotx (format in transcript.h).
  std::string record_dir;
};

// A request error that is not the client's data: which status to answer.
class NodeError : public WorkerError {
 public:
  enum class Kind { kNoSession, kTooManySessions, kBadProtocol };
  NodeError(Kind k, const std::string& what) : WorkerError(what), kind(k) {}
  Kind kind;
};

class WorkerNode {
 public:
  struct Session {
    Session(std::unique_ptr<ComputeBackend> b, size_t quota) : service(std::move(b), quota) {}
    WorkerService service;
    std::string id, client;
    std::atomic<int64_t> last_used_ms{0};
    std::atomic<int> active{0};
    std::unique_ptr<TranscriptWriter> transcript;  // with record_dir
  };
  // Marks a session busy for the lifetime of a request (so it is not reaped).
  class Use {
   public:
    Use(std::shared_ptr<Session> s);
    ~Use();
    Session& operator*() const { return *s_; }
    Session* operator->() const { return s_.get(); }

   private:
    std::shared_ptr<Session> s_;
  };

  explicit WorkerNode(WorkerNodeOptions opts);

  wire::HelloReply hello(const wire::HelloRequest& req, const std::string& peer);
  wire::HelloReply health() const;
  // The session with this id, or NodeError(kNoSession).
  Use session(const std::string& id);
  void goodbye(const std::string& id);

  // Reads a tensor's chunks from `next` (false: stream ended) into the store.
  wire::PutReply put(Session& s, const std::function<bool(wire::TensorChunk&)>& next);
  // Runs the request; one compute at a time on this node's device.
  Matrix compute(Session& s, const wire::ComputeRequest& req);
  // A Run call. `next` decodes the call's next message (false: the stream
  // ended): an operand chunk goes into rx (room: the largest tensor a new
  // header may claim), and `step` says which part came. Returns the result
  // of the computation, the last part.
  struct RunStep {
    wire::RunPart::PartCase part = wire::RunPart::PART_NOT_SET;
    wire::Housekeeping before;
    wire::ComputeRequest compute;
  };
  using RunReader = std::function<bool(RunStep& step, TensorReceiver& rx, size_t room)>;
  Matrix run(Session& s, const RunReader& next);
  // The same over parsed messages (tests and the fuzzer).
  Matrix run_parsed(Session& s, const std::function<bool(wire::RunPart&)>& next);
  void release(Session& s, const wire::ReleaseRequest& req);
  void end_step(Session& s);

  // Drops sessions idle longer than the timeout; returns how many.
  int reap_idle();
  size_t sessions() const;
  const WorkerNodeOptions& options() const { return opts_; }

 private:
  // Starts or continues a tensor in rx (the quota's room bounds a header).
  void receive(Session& s, TensorReceiver& rx, const wire::TensorChunk& chunk);
  static size_t room(Session& s);
  // Stores rx's complete tensor under its handle.
  void store(Session& s, TensorReceiver& rx);
  wire::HelloReply info() const;
  void log(const std::string& line) const;

  WorkerNodeOptions opts_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<Session>> sessions_;
  std::mutex compute_mu_;
};

int64_t steady_ms();

}  // namespace tempo
