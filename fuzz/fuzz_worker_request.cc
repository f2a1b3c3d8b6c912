// Fuzzes the worker's request decoder: the bytes are a sequence of requests
// as a hostile client could send them (each a protobuf message, the way gRPC
// hands them to the service), applied in order to one WorkerNode session.
// Kind 5 feeds the bytes instead to the master's decoder of worker replies
// (decode_chunk), which a hostile worker controls. Kind 6 records form a Run
// call, each message through the worker's raw decoder (decode_run_part).
// Format: repeated [kind: 1 byte][length: 2 bytes LE][message bytes]; a Put
// is a run of consecutive kind-1 records. Any crash, sanitizer report, leak,
// or exception other than WorkerError is a finding.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "worker/worker_node.h"

namespace {

using namespace tempo;

// A small exact backend (no BLAS): products by the definition.
class NaiveBackend final : public ComputeBackend {
 public:
  std::string name() const override { return "naive"; }
  Matrix product(ProductOp op, const Matrix& x, const Matrix& y, int64_t groups) override {
    int64_t r, c;
    WorkerService::result_shape(op, x, y, groups, r, c);
    const int64_t xb = x.rows() / groups, yb = y.rows() / groups, zb = r / groups;
    const int64_t k = op == ProductOp::kTN ? xb : x.cols();
    Matrix z(r, c);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t i = 0; i < zb; ++i)
        for (int64_t j = 0; j < c; ++j) {
          float s = 0;
          for (int64_t t = 0; t < k; ++t) {
            const float a = op == ProductOp::kTN ? x.row(g * xb + t)[i] : x.row(g * xb + i)[t];
            const float b = op == ProductOp::kNT ? y.row(g * yb + j)[t] : y.row(g * yb + t)[j];
            s += a * b;
          }
          z.row(g * zb + i)[j] = s;
        }
    return z;
  }
  Matrix conv(ConvOp op, const Matrix& a, const Matrix& b, const ConvGeometry& g) override {
    // Shapes were checked by the service; the values do not matter here.
    const int64_t rows = op == ConvOp::kBackwardWeight ? g.o : g.n;
    const int64_t cols = op == ConvOp::kForward ? g.o * g.oh * g.ow
                         : op == ConvOp::kBackwardInput ? g.c * g.h * g.w
                                                        : g.c * g.k * g.k;
    Matrix z(rows, cols);
    std::memset(z.data(), 0, sizeof(float) * static_cast<size_t>(z.size()));
    return z;
  }
};

struct Reader {
  const uint8_t* p;
  size_t n;
  bool next(uint8_t& kind, const uint8_t*& msg, size_t& len) {
    if (n < 3) return false;
    kind = p[0];
    len = std::min<size_t>(p[1] | (p[2] << 8), n - 3);
    msg = p + 3;
    p += 3 + len;
    n -= 3 + len;
    return true;
  }
  bool peek_kind(uint8_t k) const { return n >= 3 && p[0] == k; }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  WorkerNodeOptions o;
  o.make_backend = [](bool) { return std::make_unique<NaiveBackend>(); };
  o.quota_bytes = 1 << 20;  // small, so big claims hit the quota path
  o.log = false;
  WorkerNode node(o);
  wire::HelloRequest hello;
  hello.set_protocol(kWireProtocol);
  const std::string id = node.hello(hello, "fuzz").session();
  Reader in{data, size};
  uint8_t kind;
  const uint8_t* msg;
  size_t len;
  while (in.next(kind, msg, len)) {
    try {
      WorkerNode::Use s = node.session(id);
      switch (kind % 8) {
        case 0: {
          wire::HelloRequest r;
          if (r.ParseFromArray(msg, static_cast<int>(len))) node.goodbye(node.hello(r, "fuzz").session());
          break;
        }
        case 1: {  // a Put: this record and the kind-1 records after it
          bool first = true;
          node.put(*s, [&](wire::TensorChunk& c) {
            if (!first) {
              if (!in.peek_kind(1) || !in.next(kind, msg, len)) return false;
            }
            first = false;
            return c.ParseFromArray(msg, static_cast<int>(len));
          });
          break;
        }
        case 2: {
          wire::ComputeRequest r;
          if (r.ParseFromArray(msg, static_cast<int>(len))) {
            Matrix z = node.compute(*s, r);
            wire::TensorChunk chunk;
            encode_chunks(z, 0, chunk, [](const wire::TensorChunk&) { return true; });
          }
          break;
        }
        case 3: {
          wire::ReleaseRequest r;
          if (r.ParseFromArray(msg, static_cast<int>(len))) node.release(*s, r);
          break;
        }
        case 4: node.end_step(*s); break;
        case 5: {  // the master's decoder of a worker's reply, fed in two pieces
          TensorReceiver rx;
          const size_t cut = len ? msg[0] % (len + 1) : 0;
          const char* b = reinterpret_cast<const char*>(msg);
          decode_chunk({std::string_view(b, cut), std::string_view(b + cut, len - cut)}, rx, 1 << 16);
          if (rx.complete()) rx.take();
          break;
        }
        case 6: {  // a Run: this record and the kind-6 records after it, as the worker decodes them
          bool first = true;
          Matrix z = node.run(*s, [&](WorkerNode::RunStep& step, TensorReceiver& rx, size_t room) {
            if (!first && (!in.peek_kind(6) || !in.next(kind, msg, len))) return false;
            first = false;
            const size_t cut = len ? msg[0] % (len + 1) : 0;
            const char* b = reinterpret_cast<const char*>(msg);
            step.part = static_cast<wire::RunPart::PartCase>(decode_run_part(
                {std::string_view(b, cut), std::string_view(b + cut, len - cut)}, rx, room, step.before, step.compute));
            return true;
          });
          break;
        }
        default: node.health(); break;
      }
    } catch (const WorkerError&) {
      // a clean refusal
    }
  }
  return 0;
}
