// Whole convolutions through oneDNN: its direct kernels, the ones PyTorch's
// CPU path runs, and under ConvKernels::kBest its Winograd kernels where it
// has them (conv.h). The caller's tensors stay plain NCHW / OIHW; each
// primitive asks for the blocked layouts it runs fastest on, and reorders move the
// operands in and the result out. Primitives are built once per geometry;
// the blocked copies live in one arena per workspace, so after a model's
// first step nothing is allocated.
//
// oneDNN generates its kernels at run time (JIT): under SGX the enclave
// needs executable heap pages, which Gramine gives on SGX1 (its heap is
// RWX) and on SGX2 with EDMM. A build with -DTEMPO_DNNL=OFF uses im2col +
// sgemm instead (common/conv.cc).
#if TEMPO_DNNL

#include "common/conv_dnnl.h"

#include <cstdlib>
#include <memory>
#include <new>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/error.h"

namespace tempo {

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

memory::desc plain(memory::dims dims, Tag tag) { return memory::desc(dims, Dt::f32, tag); }
memory::desc any(memory::dims dims) { return memory::desc(dims, Dt::f32, Tag::any); }

size_t floats(const memory::desc& d) { return (d.get_size() + sizeof(float) - 1) / sizeof(float); }

// One argument of one primitive: the caller's plain tensor, and where the
// primitive wants it (the same memory when the layouts agree, else a blocked
// copy in the arena at `offset`, filled or emptied by a reorder).
struct Slot {
  memory user, inner;
  dnnl::reorder move;
  bool blocked = false;
  size_t offset = 0;  // in floats, into the arena

  Slot() = default;
  Slot(const memory::desc& user_md, const memory::desc& want, const dnnl::engine& eng, bool output,
       size_t& arena_floats)
      : user(user_md, eng, DNNL_MEMORY_NONE) {
    blocked = want != user_md;
    if (!blocked) {
      inner = user;
      return;
    }
    inner = memory(want, eng, DNNL_MEMORY_NONE);
    offset = arena_floats;
    arena_floats += (floats(want) + 15) / 16 * 16;  // 64-byte aligned pieces
    move = output ? dnnl::reorder(inner, user) : dnnl::reorder(user, inner);
  }
  void bind(const void* p, float* arena) {
    user.set_data_handle(const_cast<void*>(p));
    if (blocked) inner.set_data_handle(arena + offset);
  }
  void load(dnnl::stream& s) {
    if (blocked) move.execute(s, user, inner);
  }
  void store(dnnl::stream& s) {
    if (blocked) move.execute(s, inner, user);
  }
};

// A primitive with its three arguments: two inputs, one output.
struct Op {
  dnnl::primitive prim;
  Slot in0, in1, out;
  int arg0 = 0, arg1 = 0, arg_out = 0;
  std::unordered_map<int, memory> args;
  size_t arena_floats = 0;

  void init(dnnl::primitive p, const dnnl::engine& eng, int a0, const memory::desc& u0, const memory::desc& w0, int a1,
            const memory::desc& u1, const memory::desc& w1, int ao, const memory::desc& uo,
            const memory::desc& wo) {
    prim = std::move(p);
    arg0 = a0, arg1 = a1, arg_out = ao;
    in0 = Slot(u0, w0, eng, false, arena_floats);
    in1 = Slot(u1, w1, eng, false, arena_floats);
    out = Slot(uo, wo, eng, true, arena_floats);
    args = {{a0, in0.inner}, {a1, in1.inner}, {ao, out.inner}};
  }
};

}  // namespace

struct ConvWorkspace::Dnnl {
  explicit Dnnl(bool winograd) : winograd(winograd) {}
  bool winograd;  // Winograd where oneDNN has it (ConvKernels::kBest)
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};

  // The primitives of one geometry; backward ones are made on first use.
  struct Entry {
    ConvGeometry g;
    dnnl::algorithm alg = dnnl::algorithm::convolution_direct;
    dnnl::convolution_forward::primitive_desc fwd_pd;
    Op fwd, bwd_data, bwd_weight;  // a backward Op's prim is empty until first use
  };
  std::vector<std::unique_ptr<Entry>> entries;

  struct FreeDeleter {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, FreeDeleter> arena;
  size_t arena_size = 0;

  static bool same(const ConvGeometry& a, const ConvGeometry& b) {
    return a.n == b.n && a.c == b.c && a.h == b.h && a.w == b.w && a.o == b.o && a.k == b.k && a.s == b.s &&
           a.p == b.p;
  }
  memory::dims src_dims(const ConvGeometry& g) const { return {g.n, g.c, g.h, g.w}; }
  memory::dims wei_dims(const ConvGeometry& g) const { return {g.o, g.c, g.k, g.k}; }
  memory::dims dst_dims(const ConvGeometry& g) const { return {g.n, g.o, g.oh, g.ow}; }
  memory::dims strides(const ConvGeometry& g) const { return {g.s, g.s}; }
  memory::dims pads(const ConvGeometry& g) const { return {g.p, g.p}; }

  Entry& entry(const ConvGeometry& g) {
    for (auto& e : entries)
      if (same(e->g, g)) return *e;
    TEMPO_CHECK(g.n > 0 && g.c > 0 && g.o > 0 && g.oh > 0 && g.ow > 0, "convolution with an empty shape");
    auto e = std::make_unique<Entry>();
    e->g = g;
    choose(*e);
    const auto& pd = e->fwd_pd;
    e->fwd.init(dnnl::convolution_forward(pd), eng, DNNL_ARG_SRC, plain(src_dims(g), Tag::nchw), pd.src_desc(),
                DNNL_ARG_WEIGHTS, plain(wei_dims(g), Tag::oihw), pd.weights_desc(), DNNL_ARG_DST,
                plain(dst_dims(g), Tag::nchw), pd.dst_desc());
    reserve(e->fwd.arena_floats);
    entries.push_back(std::move(e));
    return *entries.back();
  }

  dnnl::convolution_forward::primitive_desc forward_pd(const ConvGeometry& g, dnnl::algorithm alg) const {
    dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_training, alg, any(src_dims(g)), any(wei_dims(g)),
                                      any(dst_dims(g)), strides(g), pads(g), pads(g));
    return dnnl::convolution_forward::primitive_desc(d, eng);
  }

  // e's algorithm and forward descriptor: Winograd where it is wanted
  // (conv.h) and oneDNN has it for all three products (F(4×4, 3×3), on
  // AVX-512 cores only in oneDNN 2.x; trying the descriptors generates no
  // code), else direct.
  void choose(Entry& e) const {
    const ConvGeometry& g = e.g;
    if (winograd && g.k == 3 && g.s == 1 && g.c >= kWinogradMinChannels && g.o >= kWinogradMinChannels &&
        g.oh >= kWinogradMinSide && g.ow >= kWinogradMinSide) {
      try {
        e.alg = dnnl::algorithm::convolution_winograd;
        e.fwd_pd = forward_pd(g, e.alg);
        backward_pd<dnnl::convolution_backward_data>(e);
        backward_pd<dnnl::convolution_backward_weights>(e);
        return;
      } catch (const dnnl::error&) {
      }
    }
    e.alg = dnnl::algorithm::convolution_direct;
    e.fwd_pd = forward_pd(g, e.alg);
  }

  // The backward primitives of g's entry, made on first use: their
  // descriptors take the same shapes as the forward's and it as a hint.
  Op& bwd_data(const ConvGeometry& g) {
    Entry& e = entry(g);
    if (!e.bwd_data.prim) {
      auto pd = backward_pd<dnnl::convolution_backward_data>(e);
      e.bwd_data.init(dnnl::convolution_backward_data(pd), eng, DNNL_ARG_DIFF_DST, plain(dst_dims(g), Tag::nchw),
                      pd.diff_dst_desc(), DNNL_ARG_WEIGHTS, plain(wei_dims(g), Tag::oihw), pd.weights_desc(),
                      DNNL_ARG_DIFF_SRC, plain(src_dims(g), Tag::nchw), pd.diff_src_desc());
      reserve(e.bwd_data.arena_floats);
    }
    return e.bwd_data;
  }

  Op& bwd_weight(const ConvGeometry& g) {
    Entry& e = entry(g);
    if (!e.bwd_weight.prim) {
      auto pd = backward_pd<dnnl::convolution_backward_weights>(e);
      e.bwd_weight.init(dnnl::convolution_backward_weights(pd), eng, DNNL_ARG_SRC, plain(src_dims(g), Tag::nchw),
                        pd.src_desc(), DNNL_ARG_DIFF_DST, plain(dst_dims(g), Tag::nchw), pd.diff_dst_desc(),
                        DNNL_ARG_DIFF_WEIGHTS, plain(wei_dims(g), Tag::oihw), pd.diff_weights_desc());
      reserve(e.bwd_weight.arena_floats);
    }
    return e.bwd_weight;
  }

  template <typename Prim>
  typename Prim::primitive_desc backward_pd(const Entry& e) const {
    const ConvGeometry& g = e.g;
    typename Prim::desc d(e.alg, any(src_dims(g)), any(wei_dims(g)),
                          any(dst_dims(g)), strides(g), pads(g), pads(g));
    return typename Prim::primitive_desc(d, eng, e.fwd_pd);
  }

  void reserve(size_t n) {
    if (n <= arena_size) return;
    void* p = std::aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    arena.reset(static_cast<float*>(p));
    arena_size = n;
  }

  void run(Op& op, const void* in0, const void* in1, void* out) {
    op.in0.bind(in0, arena.get());
    op.in1.bind(in1, arena.get());
    op.out.bind(out, arena.get());
    op.in0.load(strm);
    op.in1.load(strm);
    op.prim.execute(strm, op.args);
    op.out.store(strm);
    strm.wait();
  }

  // Both backward products of one layer: the weight gradient, then the input
  // gradient, with dy moved into its blocked layout once when both
  // primitives want the same one.
  void backward(const ConvGeometry& g, const float* x, const float* dy, const float* w, float* dw, float* dx) {
    Op& bw = bwd_weight(g);
    if (!dx) return run(bw, x, dy, dw);
    Op& bd = bwd_data(g);
    reserve(bw.arena_floats + bd.arena_floats);
    float* base = arena.get();
    bw.in0.bind(x, base);
    bw.in1.bind(dy, base);
    bw.out.bind(dw, base);
    bd.in0.bind(dy, base + bw.arena_floats);
    bd.in1.bind(w, base + bw.arena_floats);
    bd.out.bind(dx, base + bw.arena_floats);
    const bool share = bw.in1.blocked && bd.in0.blocked && bw.in1.inner.get_desc() == bd.in0.inner.get_desc();
    bw.in0.load(strm);
    bw.in1.load(strm);
    bw.prim.execute(strm, bw.args);
    bw.out.store(strm);
    if (share) bd.in0.inner.set_data_handle(bw.in1.inner.get_data_handle());
    else bd.in0.load(strm);
    bd.in1.load(strm);
    bd.prim.execute(strm, bd.args);
    bd.out.store(strm);
    strm.wait();
  }
};

ConvWorkspace::ConvWorkspace(ConvKernels kernels) {
  if (kernels != ConvKernels::kIm2col) dnnl_ = std::make_unique<Dnnl>(kernels == ConvKernels::kBest);
}
ConvWorkspace::~ConvWorkspace() = default;

std::string conv_kernels_name() {
  const dnnl_version_t* v = dnnl_version();
  return "onednn " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
         (default_conv_kernels() == ConvKernels::kDirect ? ", direct" : "");
}

std::string dnnl_conv_kernel(ConvWorkspace::Dnnl& d, const ConvGeometry& g) {
  return d.entry(g).fwd_pd.impl_info_str();
}

void dnnl_conv_forward(ConvWorkspace::Dnnl& d, const ConvGeometry& g, const float* x, const float* w, float* y) {
  d.run(d.entry(g).fwd, x, w, y);
}

void dnnl_conv_backward_input(ConvWorkspace::Dnnl& d, const ConvGeometry& g, const float* dy, const float* w,
                              float* dx) {
  d.run(d.bwd_data(g), dy, w, dx);
}

void dnnl_conv_backward_weight(ConvWorkspace::Dnnl& d, const ConvGeometry& g, const float* x, const float* dy,
                               float* dw) {
  d.run(d.bwd_weight(g), x, dy, dw);
}

void dnnl_conv_backward(ConvWorkspace::Dnnl& d, const ConvGeometry& g, const float* x, const float* dy,
                        const float* w, float* dw, float* dx) {
  d.backward(g, x, dy, w, dw, dx);
}

}  // namespace tempo

#endif  // TEMPO_DNNL
