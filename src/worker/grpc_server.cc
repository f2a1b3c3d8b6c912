#include "worker/grpc_server.h"

#include <grpcpp/grpcpp.h>
#include <sodium.h>

#include <condition_variable>
#include <thread>

#include "common/error.h"
#include "wire/proto/worker.grpc.pb.h"
#include "wire/raw_chunk.h"
#include "wire/remote_worker.h"

namespace tempo {

namespace {

grpc::Status to_status(const std::exception& e) {
  if (auto* n = dynamic_cast<const NodeError*>(&e)) {
    switch (n->kind) {
      case NodeError::Kind::kNoSession: return {grpc::StatusCode::NOT_FOUND, e.what()};
      case NodeError::Kind::kTooManySessions: return {grpc::StatusCode::RESOURCE_EXHAUSTED, e.what()};
      case NodeError::Kind::kBadProtocol: return {grpc::StatusCode::FAILED_PRECONDITION, e.what()};
    }
  }
  if (dynamic_cast<const WorkerError*>(&e)) return {grpc::StatusCode::INVALID_ARGUMENT, e.what()};
  if (dynamic_cast<const std::bad_alloc*>(&e)) return {grpc::StatusCode::RESOURCE_EXHAUSTED, "worker out of memory"};
  return {grpc::StatusCode::INTERNAL, e.what()};
}

class Service final : public wire::Worker::Service {
 public:
  Service(WorkerNode& node, std::string token) : node_(node), token_(std::move(token)) {
    // Run is method 4 in worker.proto's order; its handler uses raw_chunk.h's types.
    MarkMethodStreamed(4, new grpc::internal::BidiStreamingHandler<Service, InRunPart, OutChunk>(
                              [](Service* self, grpc::ServerContext* ctx,
                                 grpc::ServerReaderWriter<OutChunk, InRunPart>* stream) { return self->run(ctx, stream); },
                              this));
  }

  grpc::Status Hello(grpc::ServerContext* ctx, const wire::HelloRequest* req, wire::HelloReply* out) override {
    return guarded(ctx, [&] { *out = node_.hello(*req, ctx->peer()); });
  }
  grpc::Status Health(grpc::ServerContext* ctx, const wire::HealthRequest*, wire::HelloReply* out) override {
    return guarded(ctx, [&] { *out = node_.health(); });
  }
  grpc::Status Put(grpc::ServerContext* ctx, grpc::ServerReader<wire::TensorChunk>* in, wire::PutReply* out) override {
    return in_session(ctx, [&](WorkerNode::Session& s) {
      *out = node_.put(s, [&](wire::TensorChunk& c) { return in->Read(&c); });
    });
  }
  grpc::Status Compute(grpc::ServerContext* ctx, const wire::ComputeRequest* req,
                       grpc::ServerWriter<wire::TensorChunk>* out) override {
    return in_session(ctx, [&](WorkerNode::Session& s) {
      Matrix z = node_.compute(s, *req);
      wire::TensorChunk chunk;
      encode_chunks(z, 0, chunk, [&](const wire::TensorChunk& c) { return out->Write(c); });
    });
  }
  // Run's operands and result skip protobuf's copies (raw_chunk.h).
  grpc::Status run(grpc::ServerContext* ctx, grpc::ServerReaderWriter<OutChunk, InRunPart>* stream) {
    return in_session(ctx, [&](WorkerNode::Session& s) {
      InRunPart in;
      Matrix z = node_.run(s, [&](WorkerNode::RunStep& step, TensorReceiver& rx, size_t room) {
        in.rx = &rx;
        in.max_bytes = room;
        in.before = &step.before;
        in.compute = &step.compute;
        if (!stream->Read(&in)) {
          if (!in.error.empty()) throw WorkerError(in.error);
          return false;
        }
        step.part = static_cast<wire::RunPart::PartCase>(in.part);
        return true;
      });
      OutChunk chunk;
      write_chunks(std::make_shared<const Matrix>(std::move(z)), 0, chunk,
                   [&](const OutChunk& c) { return stream->Write(c); });
    });
  }
  grpc::Status Release(grpc::ServerContext* ctx, const wire::ReleaseRequest* req, wire::Empty*) override {
    return in_session(ctx, [&](WorkerNode::Session& s) { node_.release(s, *req); });
  }
  grpc::Status EndStep(grpc::ServerContext* ctx, const wire::Empty*, wire::Empty*) override {
    return in_session(ctx, [&](WorkerNode::Session& s) { node_.end_step(s); });
  }
  grpc::Status Goodbye(grpc::ServerContext* ctx, const wire::Empty*, wire::Empty*) override {
    return guarded(ctx, [&] { node_.goodbye(session_id(ctx)); });
  }

 private:
  bool authorized(grpc::ServerContext* ctx) const {
    if (token_.empty()) return true;
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    if (it == md.end()) return false;
    const std::string want = "Bearer " + token_;
    const auto& got = it->second;
    return got.size() == want.size() && sodium_memcmp(got.data(), want.data(), want.size()) == 0;
  }
  static std::string session_id(grpc::ServerContext* ctx) {
    const auto& md = ctx->client_metadata();
    auto it = md.find("tempo-session");
    return it == md.end() ? std::string() : std::string(it->second.data(), it->second.size());
  }
  template <class F>
  grpc::Status guarded(grpc::ServerContext* ctx, F&& f) {
    if (!authorized(ctx))
      return {grpc::StatusCode::UNAUTHENTICATED, "missing or wrong token (give the master --token-file)"};
    try {
      f();
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return to_status(e);
    }
  }
  template <class F>
  grpc::Status in_session(grpc::ServerContext* ctx, F&& f) {
    return guarded(ctx, [&] {
      WorkerNode::Use s = node_.session(session_id(ctx));
      f(*s);
    });
  }

  WorkerNode& node_;
  std::string token_;
};

}  // namespace

struct WorkerServer::Impl {
  WorkerNode node;
  Service service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::mutex mu;
  std::condition_variable cv;
  bool down = false;
  std::thread reaper;

  Impl(const WorkerServerOptions& o) : node(o.node), service(node, o.token) {}
};

WorkerServer::WorkerServer(WorkerServerOptions opts) : impl_(std::make_unique<Impl>(opts)) {
  TEMPO_CHECK(sodium_init() >= 0, "libsodium failed to initialise");
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (!opts.tls_cert.empty() || !opts.tls_key.empty()) {
    TEMPO_CHECK(!opts.tls_cert.empty() && !opts.tls_key.empty(), "TLS needs both --tls-cert and --tls-key");
    grpc::SslServerCredentialsOptions ssl(opts.tls_client_ca.empty()
                                              ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
    ssl.pem_key_cert_pairs.push_back(
        {read_secret_file(opts.tls_key, "TLS key"), read_secret_file(opts.tls_cert, "TLS certificate")});
    if (!opts.tls_client_ca.empty()) ssl.pem_root_certs = read_secret_file(opts.tls_client_ca, "TLS client CA");
    creds = grpc::SslServerCredentials(ssl);
  } else {
    TEMPO_CHECK(opts.tls_client_ca.empty(), "--tls-client-ca needs --tls-cert and --tls-key");
  }
  grpc::ServerBuilder b;
  b.AddListeningPort(opts.listen, creds, &impl_->port);
  b.RegisterService(&impl_->service);
  b.SetMaxReceiveMessageSize(static_cast<int>(kMaxMessageBytes));
  b.SetMaxSendMessageSize(static_cast<int>(kMaxMessageBytes));
  for (const auto& [name, value] : bulk_channel_args()) b.AddChannelArgument(name, value);
  // Connections that never finish their handshake, or sit with no call, are closed.
  b.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, 10000);
  b.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, std::max(1, opts.node.idle_timeout_s) * 1000);
  b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  impl_->server = b.BuildAndStart();
  TEMPO_CHECK(impl_->server && impl_->port > 0,
              "cannot listen on " + opts.listen + " (address in use, or not an address of this machine?)");
  impl_->reaper = std::thread([this] {
    std::unique_lock<std::mutex> lock(impl_->mu);
    while (!impl_->down) {
      impl_->cv.wait_for(lock, std::chrono::milliseconds(500));
      lock.unlock();
      impl_->node.reap_idle();
      lock.lock();
    }
  });
}

WorkerServer::~WorkerServer() {
  shutdown();
  impl_->reaper.join();
}

int WorkerServer::port() const { return impl_->port; }
WorkerNode& WorkerServer::node() { return impl_->node; }

void WorkerServer::wait(const std::atomic<bool>* stop) {
  std::unique_lock<std::mutex> lock(impl_->mu);
  while (!impl_->down && !(stop && stop->load())) impl_->cv.wait_for(lock, std::chrono::milliseconds(100));
}

void WorkerServer::shutdown() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->down) return;
    impl_->down = true;
  }
  impl_->cv.notify_all();
  // Calls in flight get two seconds to finish, then are cancelled.
  impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace tempo
