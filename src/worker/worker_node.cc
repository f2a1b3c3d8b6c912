#include "worker/worker_node.h"

#include <unistd.h>

#include <cstdio>
#include <random>
#include <vector>

#include "common/error.h"

namespace tempo {

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

namespace {

std::string random_id() {
  std::random_device rd;
  char buf[33];
  for (int i = 0; i < 4; ++i) std::snprintf(buf + 8 * i, 9, "%08x", rd());
  return buf;
}

ProductOp product_op(wire::ComputeRequest::Op op) {
  switch (op) {
    case wire::ComputeRequest::PRODUCT_NT: return ProductOp::kNT;
    case wire::ComputeRequest::PRODUCT_NN: return ProductOp::kNN;
    default: return ProductOp::kTN;
  }
}

ConvOp conv_op(wire::ComputeRequest::Op op) {
  switch (op) {
    case wire::ComputeRequest::CONV_FORWARD: return ConvOp::kForward;
    case wire::ComputeRequest::CONV_BACKWARD_INPUT: return ConvOp::kBackwardInput;
    default: return ConvOp::kBackwardWeight;
  }
}

}  // namespace

WorkerNode::Use::Use(std::shared_ptr<Session> s) : s_(std::move(s)) {
  s_->active.fetch_add(1);
  s_->last_used_ms = steady_ms();
}

WorkerNode::Use::~Use() {
  s_->last_used_ms = steady_ms();
  s_->active.fetch_sub(1);
}

WorkerNode::WorkerNode(WorkerNodeOptions opts) : opts_(std::move(opts)) {
  TEMPO_CHECK(static_cast<bool>(opts_.make_backend), "worker: no compute backend");
}

void WorkerNode::log(const std::string& line) const {
  if (opts_.log) std::fprintf(stderr, "tempo worker: %s\n", line.c_str());
}

wire::HelloReply WorkerNode::info() const {
  wire::HelloReply r;
  r.set_protocol(kWireProtocol);
  r.set_version(TEMPO_VERSION_STRING);
  r.set_backend(opts_.backend);
  r.set_device(opts_.device);
  r.set_memory_bytes(static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  r.set_quota_bytes(opts_.quota_bytes);
  r.set_idle_timeout_s(static_cast<uint32_t>(opts_.idle_timeout_s));
  r.set_sessions(static_cast<uint32_t>(sessions_.size()));
  return r;
}

wire::HelloReply WorkerNode::health() const {
  std::lock_guard<std::mutex> lock(mu_);
  return info();
}

wire::HelloReply WorkerNode::hello(const wire::HelloRequest& req, const std::string& peer) {
  if (req.protocol() != kWireProtocol)
    throw NodeError(NodeError::Kind::kBadProtocol, "protocol version " + std::to_string(req.protocol()) +
                                                       " is not this worker's " + std::to_string(kWireProtocol) +
                                                       "; run the same Tempo version on both sides");
  std::lock_guard<std::mutex> lock(mu_);
  if (static_cast<int>(sessions_.size()) >= opts_.max_sessions)
    throw NodeError(NodeError::Kind::kTooManySessions,
                    "worker is serving its maximum of " + std::to_string(opts_.max_sessions) + " sessions");
  auto s = std::make_shared<Session>(opts_.make_backend(req.tf32()), opts_.quota_bytes);
  s->id = random_id();
  s->client = req.client().substr(0, 200) + " from " + peer;
  s->last_used_ms = steady_ms();
  if (!opts_.record_dir.empty())
    s->transcript = std::make_unique<TranscriptWriter>(opts_.record_dir + "/" + s->id.substr(0, 16) + ".tempotx");
  sessions_[s->id] = s;
  log("session " + s->id.substr(0, 8) + " opened by " + s->client + " (" + std::to_string(sessions_.size()) +
      " open)");
  wire::HelloReply r = info();
  r.set_session(s->id);
  return r;
}

WorkerNode::Use WorkerNode::session(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end())
    throw NodeError(NodeError::Kind::kNoSession, "no session " + id.substr(0, 40) +
                                                     " (closed, timed out after idle, or the worker restarted)");
  return Use(it->second);
}

void WorkerNode::goodbye(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (sessions_.erase(id)) log("session " + id.substr(0, 8) + " closed (" + std::to_string(sessions_.size()) + " open)");
}

int WorkerNode::reap_idle() {
  std::vector<std::shared_ptr<Session>> dropped;  // freed outside the lock
  {
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t now = steady_ms(), limit = int64_t{opts_.idle_timeout_s} * 1000;
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (it->second->active.load() == 0 && now - it->second->last_used_ms.load() > limit) {
        log("session " + it->first.substr(0, 8) + " dropped after " + std::to_string(opts_.idle_timeout_s) +
            " s idle");
        dropped.push_back(std::move(it->second));
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  return static_cast<int>(dropped.size());
}

size_t WorkerNode::sessions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sessions_.size();
}

size_t WorkerNode::room(Session& s) {
  const size_t held = s.service.bytes_held(), quota = s.service.quota();
  return quota > held ? quota - held : 0;
}

void WorkerNode::receive(Session& s, TensorReceiver& rx, const wire::TensorChunk& chunk) {
  if (!rx.started()) rx.begin(chunk, room(s));
  else rx.append(chunk);
  s.last_used_ms = steady_ms();
}

void WorkerNode::store(Session& s, TensorReceiver& rx) {
  const Handle h = rx.handle();
  auto m = std::make_shared<const Matrix>(rx.take());
  if (s.transcript) s.transcript->add(true, h, *m);
  s.service.put(h, std::move(m));
}

wire::PutReply WorkerNode::put(Session& s, const std::function<bool(wire::TensorChunk&)>& next) {
  TensorReceiver rx;
  wire::TensorChunk chunk;
  while (next(chunk)) receive(s, rx, chunk);
  store(s, rx);
  wire::PutReply r;
  r.set_bytes_held(s.service.bytes_held());
  return r;
}

Matrix WorkerNode::run(Session& s, const RunReader& next) {
  RunStep step;
  TensorReceiver rx;
  for (bool first = true; next(step, rx, room(s)); first = false) {
    s.last_used_ms = steady_ms();
    switch (step.part) {
      case wire::RunPart::kBefore:
        if (!first) throw WorkerError("protocol error: housekeeping after the start of a run");
        if (step.before.end_step()) s.service.end_step();
        for (uint64_t h : step.before.release()) s.service.release(h);
        break;
      case wire::RunPart::kChunk:
        if (rx.complete()) {
          store(s, rx);
          rx = TensorReceiver();
        }
        break;
      case wire::RunPart::kCompute:
        if (rx.started()) throw WorkerError("protocol error: computation before its operand is complete (truncated tensor)");
        return compute(s, step.compute);
      default:
        throw WorkerError("protocol error: empty run message");
    }
  }
  throw WorkerError("protocol error: run ended without a computation");
}

Matrix WorkerNode::run_parsed(Session& s, const std::function<bool(wire::RunPart&)>& next) {
  wire::RunPart part;
  return run(s, [&](RunStep& step, TensorReceiver& rx, size_t room) {
    if (!next(part)) return false;
    step.part = part.part_case();
    switch (step.part) {
      case wire::RunPart::kBefore: step.before = part.before(); break;
      case wire::RunPart::kCompute: step.compute = part.compute(); break;
      case wire::RunPart::kChunk:
        if (!rx.started()) rx.begin(part.chunk(), room);
        else rx.append(part.chunk());
        break;
      default: break;
    }
    return true;
  });
}

Matrix WorkerNode::compute(Session& s, const wire::ComputeRequest& req) {
  const auto op = req.op();
  const bool is_product = op == wire::ComputeRequest::PRODUCT_NT || op == wire::ComputeRequest::PRODUCT_NN ||
                          op == wire::ComputeRequest::PRODUCT_TN;
  const bool is_conv = op == wire::ComputeRequest::CONV_FORWARD || op == wire::ComputeRequest::CONV_BACKWARD_INPUT ||
                       op == wire::ComputeRequest::CONV_BACKWARD_WEIGHT;
  if (!is_product && !is_conv) throw WorkerError("unknown operation " + std::to_string(static_cast<int>(op)));
  auto operand = [&](const wire::Operand& o, const char* which) -> std::shared_ptr<const Matrix> {
    switch (o.kind_case()) {
      case wire::Operand::kHandle: return s.service.get(o.handle());
      case wire::Operand::kTensor: {
        auto m = std::make_shared<const Matrix>(decode_inline(o.tensor(), kMaxInlineBytes));
        if (s.transcript) s.transcript->add(true, 0, *m);
        return m;
      }
      default: throw WorkerError(std::string("operand ") + which + " is missing");
    }
  };
  auto x = operand(req.x(), "x");
  auto y = operand(req.y(), "y");
  Matrix z;
  {
    std::lock_guard<std::mutex> lock(compute_mu_);
    if (is_product) {
      z = s.service.product(product_op(op), *x, *y, req.groups() == 0 ? 1 : req.groups());
    } else {
      const auto& g = req.geometry();
      ConvGeometry geo;
      geo.n = g.n(); geo.c = g.c(); geo.h = g.h(); geo.w = g.w(); geo.o = g.o();
      geo.k = g.k(); geo.s = g.s(); geo.p = g.p(); geo.oh = g.oh(); geo.ow = g.ow();
      z = s.service.conv(conv_op(op), *x, *y, geo);
    }
  }
  if (s.transcript) s.transcript->add(false, 0, z);
  return z;
}

void WorkerNode::release(Session& s, const wire::ReleaseRequest& req) {
  for (uint64_t h : req.handles()) s.service.release(h);
}

void WorkerNode::end_step(Session& s) { s.service.end_step(); }

}  // namespace tempo
