#include "wire/remote_worker.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "common/error.h"
#include "wire/proto/worker.grpc.pb.h"
#include "wire/raw_chunk.h"
#include "wire/tensor_codec.h"

namespace tempo {

namespace {

wire::ComputeRequest::Op wire_op(ProductOp op) {
  switch (op) {
    case ProductOp::kNT: return wire::ComputeRequest::PRODUCT_NT;
    case ProductOp::kNN: return wire::ComputeRequest::PRODUCT_NN;
    default: return wire::ComputeRequest::PRODUCT_TN;
  }
}

wire::ComputeRequest::Op wire_op(ConvOp op) {
  switch (op) {
    case ConvOp::kForward: return wire::ComputeRequest::CONV_FORWARD;
    case ConvOp::kBackwardInput: return wire::ComputeRequest::CONV_BACKWARD_INPUT;
    default: return wire::ComputeRequest::CONV_BACKWARD_WEIGHT;
  }
}

class RemoteWorker final : public WorkerApi {
  // What the next Run carries before its computation.
  struct Pending {
    bool end_step = false;
    std::vector<Handle> release;
    std::vector<std::pair<Handle, std::shared_ptr<const Matrix>>> puts;
  };

 public:
  RemoteWorker(const std::string& address, const RemoteOptions& opts) : address_(address), opts_(opts) {
    if (opts_.token.empty() && !opts_.token_file.empty()) opts_.token = read_secret_file(opts_.token_file, "token");
    std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
    if (!opts.tls_ca.empty()) {
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = read_secret_file(opts.tls_ca, "TLS CA");
      if (!opts.tls_cert.empty() || !opts.tls_key.empty()) {
        TEMPO_CHECK(!opts.tls_cert.empty() && !opts.tls_key.empty(), "mutual TLS needs both --tls-cert and --tls-key");
        ssl.pem_cert_chain = read_secret_file(opts.tls_cert, "TLS certificate");
        ssl.pem_private_key = read_secret_file(opts.tls_key, "TLS key");
      }
      creds = grpc::SslCredentials(ssl);
    } else {
      TEMPO_CHECK(opts.tls_cert.empty() && opts.tls_key.empty(), "--tls-cert/--tls-key need --tls-ca");
    }
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(static_cast<int>(kMaxMessageBytes));
    args.SetMaxSendMessageSize(static_cast<int>(kMaxMessageBytes));
    for (const auto& [name, value] : bulk_channel_args()) args.SetInt(name, value);
    // Reconnect quickly after a worker restarts.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
    channel_ = grpc::CreateCustomChannel(address, creds, args);
    stub_ = wire::Worker::NewStub(channel_);
    run_method_ = std::make_unique<grpc::internal::RpcMethod>("/tempo.wire.Worker/Run",
                                                              grpc::internal::RpcMethod::BIDI_STREAMING, channel_);
    std::string err = open_session(opts.connect_timeout_s, true);
    if (!err.empty())
      throw Error("cannot use worker " + address + ": " + err +
                  "\n  (is `tempo worker --listen " + address + "` running and reachable, with the same "
                  "token and TLS settings?)");
    thread_ = std::thread([this] { run(); });
  }

  ~RemoteWorker() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      if (current_) current_->TryCancel();
    }
    cv_.notify_all();
    thread_.join();
    grpc::ClientContext ctx;
    prepare(ctx, 1.0);
    wire::Empty in, out;
    stub_->Goodbye(&ctx, in, &out);  // best effort
  }

  std::string name() const override { return address_; }
  const std::string& info() const { return info_; }

  // Kept until the next product, which carries it in the same call.
  void put(Handle h, const CipherMatrix& m) override {
    std::shared_ptr<const Matrix> data = m.shared();
    std::lock_guard<std::mutex> lock(mu_);
    shapes_[h] = {data->rows(), data->cols()};
    pending_.puts.emplace_back(h, std::move(data));
  }

  using WorkerApi::product;
  std::future<Matrix> product(ProductOp op, Handle x, Handle y, int64_t groups) override {
    int64_t rows = 0, cols = 0;
    std::string bad;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto a = shapes_.find(x), b = shapes_.find(y);
      if (a == shapes_.end() || b == shapes_.end()) {
        bad = "handle " + std::to_string(a == shapes_.end() ? x : y) + " was not put";
      } else {
        const auto [xr, xc] = a->second;
        const auto [yr, yc] = b->second;
        bad = product_shape(op, xr, xc, yr, yc, groups, rows, cols);
      }
    }
    if (!bad.empty()) return failed(bad);
    wire::ComputeRequest req;
    req.set_op(wire_op(op));
    req.mutable_x()->set_handle(x);
    req.mutable_y()->set_handle(y);
    if (groups != 1) req.set_groups(groups);
    return compute(std::move(req), rows, cols);
  }

  std::future<Matrix> conv(ConvOp op, Handle a, Handle b, const ConvGeometry& g) override {
    wire::ComputeRequest req;
    req.set_op(wire_op(op));
    req.mutable_x()->set_handle(a);
    req.mutable_y()->set_handle(b);
    auto* geo = req.mutable_geometry();
    geo->set_n(g.n); geo->set_c(g.c); geo->set_h(g.h); geo->set_w(g.w); geo->set_o(g.o);
    geo->set_k(g.k); geo->set_s(g.s); geo->set_p(g.p); geo->set_oh(g.oh); geo->set_ow(g.ow);
    switch (op) {
      case ConvOp::kForward: return compute(std::move(req), g.n, g.o * g.oh * g.ow);
      case ConvOp::kBackwardInput: return compute(std::move(req), g.n, g.c * g.h * g.w);
      default: return compute(std::move(req), g.o, g.c * g.k * g.k);
    }
  }

  // Releases and the end of a step travel with the next product's call
  // (the worker then drops the tensors before it stores new ones).
  void release(Handle h) override {
    std::lock_guard<std::mutex> lock(mu_);
    shapes_.erase(h);
    auto& puts = pending_.puts;
    auto it = std::find_if(puts.begin(), puts.end(), [h](const auto& p) { return p.first == h; });
    if (it != puts.end()) puts.erase(it);
    else pending_.release.push_back(h);
  }

  void end_step() override {
    std::lock_guard<std::mutex> lock(mu_);
    shapes_.clear();
    pending_ = Pending{};
    pending_.end_step = true;
  }

 private:
  // Sets deadline and metadata for a call moving about `bytes`.
  void prepare(grpc::ClientContext& ctx, double seconds) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000)));
    if (!opts_.token.empty()) ctx.AddMetadata("authorization", "Bearer " + opts_.token);
    if (!session_.empty()) ctx.AddMetadata("tempo-session", session_);
  }
  double timeout(size_t bytes) const { return opts_.call_timeout_s + static_cast<double>(bytes) / 1e8; }

  // Hello; returns "" or what went wrong.
  std::string open_session(double seconds, bool wait_for_ready) {
    session_.clear();
    grpc::ClientContext ctx;
    prepare(ctx, seconds);
    ctx.set_wait_for_ready(wait_for_ready);
    wire::HelloRequest req;
    req.set_protocol(kWireProtocol);
    req.set_client(opts_.client);
    req.set_tf32(opts_.tf32);
    wire::HelloReply rep;
    grpc::Status st = stub_->Hello(&ctx, req, &rep);
    if (!st.ok()) return describe(st);
    if (rep.protocol() != kWireProtocol || rep.session().empty())
      return "protocol version " + std::to_string(rep.protocol()) + " differs from ours";
    session_ = rep.session();
    info_ = rep.backend() + " backend on " + rep.device() + ", quota " +
            std::to_string(rep.quota_bytes() >> 20) + " MiB, tempo " + rep.version();
    return "";
  }

  std::string describe(const grpc::Status& st) const {
    switch (st.error_code()) {
      case grpc::StatusCode::DEADLINE_EXCEEDED: return "no answer before the deadline (" + st.error_message() + ")";
      case grpc::StatusCode::UNAVAILABLE: return "unreachable (" + st.error_message() + ")";
      case grpc::StatusCode::UNAUTHENTICATED: return "refused: " + st.error_message();
      default: return st.error_message();
    }
  }

  // Runs one call (on the worker thread) with the session re-opened if the
  // worker lost it; throws WorkerError on failure.
  void call(const std::function<grpc::Status(grpc::ClientContext&)>& fn, size_t bytes) {
    if (session_.empty()) {
      std::string err = open_session(opts_.connect_timeout_s, false);
      if (!err.empty()) throw WorkerError("worker " + address_ + ": " + err);
    }
    grpc::ClientContext ctx;
    prepare(ctx, timeout(bytes));
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = &ctx;
    }
    grpc::Status st = fn(ctx);
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_ = nullptr;
    }
    if (st.error_code() == grpc::StatusCode::NOT_FOUND) session_.clear();  // restarted or timed out
    if (!st.ok()) throw WorkerError("worker " + address_ + ": " + describe(st));
  }

  // One Run call: the housekeeping and operands queued since the last
  // product, then the computation. Operand chunks point into the
  // ciphertexts (no copy on this side); the result streams straight into its
  // matrix, whose shape must be the one asked for.
  std::future<Matrix> compute(wire::ComputeRequest req, int64_t rows, int64_t cols) {
    Pending sent;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::swap(sent, pending_);
    }
    auto task = std::make_shared<std::packaged_task<Matrix()>>(
        [this, req = std::move(req), sent = std::move(sent), rows, cols] {
          const size_t out_bytes = static_cast<size_t>(rows * cols) * sizeof(float);
          size_t in_bytes = 0;
          for (const auto& p : sent.puts) in_bytes += static_cast<size_t>(p.second->size()) * sizeof(float);
          TensorReceiver rx;
          InChunk in;
          in.rx = &rx;
          in.max_bytes = out_bytes;
          call([&](grpc::ClientContext& ctx) {
            std::unique_ptr<grpc::ClientReaderWriter<OutRunPart, InChunk>> stream(
                grpc::internal::ClientReaderWriterFactory<OutRunPart, InChunk>::Create(channel_.get(), *run_method_,
                                                                                       &ctx));
            if (write_run(*stream, sent, req)) {
              bool checked = false;
              while (stream->Read(&in)) {
                if (!checked && (rx.handle() != 0 || rx.rows() != rows || rx.cols() != cols)) {
                  in.error = "result has shape " + std::to_string(rx.rows()) + "x" + std::to_string(rx.cols()) +
                             ", expected " + std::to_string(rows) + "x" + std::to_string(cols);
                  ctx.TryCancel();
                  break;
                }
                checked = true;
              }
            }
            grpc::Status st = stream->Finish();
            if (!in.error.empty()) throw WorkerError("worker " + address_ + ": malformed result: " + in.error);
            return st;
          }, in_bytes + out_bytes);
          return rx.take();
        });
    std::future<Matrix> f = task->get_future();
    enqueue([task] { (*task)(); });
    return f;
  }

  // Writes a Run's request stream; false if the stream broke (Finish says why).
  static bool write_run(grpc::ClientReaderWriter<OutRunPart, InChunk>& stream, const Pending& sent,
                        const wire::ComputeRequest& req) {
    OutRunPart part;
    if (sent.end_step || !sent.release.empty()) {
      wire::RunPart before;
      before.mutable_before()->set_end_step(sent.end_step);
      for (Handle h : sent.release) before.mutable_before()->add_release(h);
      part.serialized = before.SerializeAsString();
      if (!stream.Write(part)) return false;
      part.serialized.clear();
    }
    for (const auto& [h, m] : sent.puts)
      if (!write_chunks(m, h, part.chunk, [&](const OutChunk&) { return stream.Write(part); })) return false;
    part.chunk = OutChunk{};
    wire::RunPart last;
    *last.mutable_compute() = req;
    part.serialized = last.SerializeAsString();
    return stream.Write(part) && stream.WritesDone();
  }

  static std::future<Matrix> failed(const std::string& why) {
    std::promise<Matrix> p;
    p.set_exception(std::make_exception_ptr(WorkerError(why)));
    return p.get_future();
  }

  void enqueue(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }

  void run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;  // pending results get broken promises
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      try {
        task();
      } catch (const std::exception&) {
        // release/end_step are best effort; results carry their own errors
      }
    }
  }

  std::string address_;
  RemoteOptions opts_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<wire::Worker::Stub> stub_;
  std::unique_ptr<grpc::internal::RpcMethod> run_method_;
  std::string session_, info_;
  Pending pending_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  grpc::ClientContext* current_ = nullptr;
  std::unordered_map<Handle, std::pair<int64_t, int64_t>> shapes_;
  std::thread thread_;
};

}  // namespace

std::string read_secret_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  TEMPO_CHECK(in.good(), std::string("cannot read ") + what + " file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  TEMPO_CHECK(!s.empty(), std::string(what) + " file '" + path + "' is empty");
  return s;
}

std::unique_ptr<WorkerApi> connect_remote_worker(const std::string& address, const RemoteOptions& opts) {
  return std::make_unique<RemoteWorker>(address, opts);
}

std::string remote_worker_info(const WorkerApi& w) {
  auto* r = dynamic_cast<const RemoteWorker*>(&w);
  return r ? r->info() : std::string("in-process cpu worker");
}

}  // namespace tempo
