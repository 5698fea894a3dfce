// XLA FFI handlers for stride-1 2-D convolutions and max pooling on the CPU through oneDNN (NHWC activations, HWIO
// kernels, f32).
//
// deepsea_conv_fwd(x, w) -> y, deepsea_conv_bwd_data(g, w) -> dx, deepsea_conv_bwd_weights(x, g) -> dw, with XLA's
// explicit padding (lo, hi per spatial axis) as the attribute `padding` = [lo_h, hi_h, lo_w, hi_w];
// deepsea_conv_fwd_bias_leaky_relu(x, w, b) -> leaky_relu(conv(x, w) + b) (attribute `negative_slope`), the bias and
// activation as oneDNN post-operations. Max pooling is further down. Built and loaded by deepsea/onednn.py, which
// also holds the pure-JAX references they are tested against.
//
// oneDNN picks its own blocked kernel layout ("any"); the HWIO kernel is reordered into it on each call (at most
// 9*128*128 floats). Primitives are created once per shape and cached; they run with a user scratchpad, so
// concurrent calls from XLA's threads share nothing mutable.
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "dnnl_c_api.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Kind { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

struct Dims {
  int64_t n, h, w, c, f, kh, kw, ho, wo, pt, pb, pl, pr;
  bool bias_act = false;  // forward only: + bias, then leaky ReLU with `slope` (oneDNN post-op)
  float slope = 0.f;
  auto tie() const { return std::tie(n, h, w, c, f, kh, kw, ho, wo, pt, pb, pl, pr, bias_act, slope); }
};

struct Key {
  Kind kind;
  Dims d;
  bool operator<(const Key& o) const { return kind != o.kind ? kind < o.kind : d.tie() < o.d.tie(); }
};

struct Plan {
  dnnl_primitive_t conv = nullptr;
  dnnl_primitive_t reorder = nullptr;  // HWIO -> oneDNN's kernel layout (fwd, bwd data) or back (bwd weights)
  dnnl_memory_desc_t src_md = nullptr, dst_md = nullptr, plain_w_md = nullptr, blocked_w_md = nullptr;
  dnnl_memory_desc_t bias_md = nullptr;  // the fused forward only
  dnnl_memory_desc_t scratch_md = nullptr, reorder_scratch_md = nullptr;
  size_t blocked_w_bytes = 0, scratch_bytes = 0, reorder_scratch_bytes = 0;
};

dnnl_engine_t engine() {
  static dnnl_engine_t e = [] {
    dnnl_engine_t e = nullptr;
    if (dnnl_engine_create(&e, dnnl_cpu, 0) != dnnl_success) e = nullptr;
    return e;
  }();
  return e;
}

std::string Check(dnnl_status_t s, const char* what) {
  return s == dnnl_success ? std::string() : std::string(what) + " failed with oneDNN status " + std::to_string(s);
}

#define DNNL_TRY(expr)                                \
  do {                                                \
    std::string err_ = Check((expr), #expr);          \
    if (!err_.empty()) return err_;                   \
  } while (0)

dnnl_memory_desc_t Nhwc(int64_t n, int64_t h, int64_t w, int64_t c, std::string* err) {
  dnnl_memory_desc_t md = nullptr;
  dnnl_dims_t dims = {n, c, h, w}, strides = {h * w * c, 1, w * c, c};
  *err = Check(dnnl_memory_desc_create_with_strides(&md, 4, dims, dnnl_f32, strides), "nhwc memory desc");
  return md;
}

dnnl_memory_desc_t Hwio(const Dims& d, std::string* err) {
  dnnl_memory_desc_t md = nullptr;
  dnnl_dims_t dims = {d.f, d.c, d.kh, d.kw}, strides = {1, d.f, d.kw * d.c * d.f, d.c * d.f};
  *err = Check(dnnl_memory_desc_create_with_strides(&md, 4, dims, dnnl_f32, strides), "hwio memory desc");
  return md;
}

size_t ScratchBytes(const_dnnl_primitive_desc_t pd, dnnl_memory_desc_t* md) {
  const_dnnl_memory_desc_t q = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, DNNL_ARG_SCRATCHPAD);
  if (q == nullptr) return 0;
  dnnl_memory_desc_clone(md, q);
  return dnnl_memory_desc_get_size(q);
}

std::string MakePlan(Kind kind, const Dims& d, Plan* p) {
  dnnl_engine_t eng = engine();
  if (eng == nullptr) return "oneDNN found no CPU engine";
  std::string err;
  dnnl_memory_desc_t x_md = Nhwc(d.n, d.h, d.w, d.c, &err);
  if (!err.empty()) return err;
  dnnl_memory_desc_t y_md = Nhwc(d.n, d.ho, d.wo, d.f, &err);
  if (!err.empty()) return err;
  p->plain_w_md = Hwio(d, &err);
  if (!err.empty()) return err;
  dnnl_memory_desc_t any_w = nullptr;
  dnnl_dims_t wdims = {d.f, d.c, d.kh, d.kw};
  DNNL_TRY(dnnl_memory_desc_create_with_tag(&any_w, 4, wdims, dnnl_f32, dnnl_format_tag_any));
  dnnl_dims_t strides = {1, 1}, dilates = {0, 0}, pad_l = {d.pt, d.pl}, pad_r = {d.pb, d.pr};

  dnnl_primitive_attr_t attr = nullptr;
  DNNL_TRY(dnnl_primitive_attr_create(&attr));
  DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));

  dnnl_primitive_desc_t fwd = nullptr, pd = nullptr;
  if (d.bias_act) {
    dnnl_dims_t bdims = {d.f}, bstrides = {1};
    DNNL_TRY(dnnl_memory_desc_create_with_strides(&p->bias_md, 1, bdims, dnnl_f32, bstrides));
    dnnl_primitive_attr_t act_attr = nullptr;
    dnnl_post_ops_t ops = nullptr;
    DNNL_TRY(dnnl_primitive_attr_create(&act_attr));
    DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(act_attr, dnnl_scratchpad_mode_user));
    DNNL_TRY(dnnl_post_ops_create(&ops));
    DNNL_TRY(dnnl_post_ops_append_eltwise(ops, dnnl_eltwise_relu, d.slope, 0.f));  // relu(alpha): leaky ReLU
    DNNL_TRY(dnnl_primitive_attr_set_post_ops(act_attr, ops));
    DNNL_TRY(dnnl_convolution_forward_primitive_desc_create(&fwd, eng, dnnl_forward_training,
                                                            dnnl_convolution_direct, x_md, any_w, p->bias_md, y_md,
                                                            strides, dilates, pad_l, pad_r, act_attr));
    dnnl_post_ops_destroy(ops);
    dnnl_primitive_attr_destroy(act_attr);
  } else {
    DNNL_TRY(dnnl_convolution_forward_primitive_desc_create(&fwd, eng, dnnl_forward_training,
                                                            dnnl_convolution_direct, x_md, any_w, nullptr, y_md,
                                                            strides, dilates, pad_l, pad_r, attr));
  }
  int w_arg = DNNL_ARG_WEIGHTS;
  if (kind == kFwd) {
    pd = fwd;
  } else if (kind == kBwdData) {
    DNNL_TRY(dnnl_convolution_backward_data_primitive_desc_create(&pd, eng, dnnl_convolution_direct, x_md, any_w, y_md,
                                                                  strides, dilates, pad_l, pad_r, fwd, attr));
  } else {
    DNNL_TRY(dnnl_convolution_backward_weights_primitive_desc_create(&pd, eng, dnnl_convolution_direct, x_md, any_w,
                                                                     nullptr, y_md, strides, dilates, pad_l, pad_r,
                                                                     fwd, attr));
    w_arg = DNNL_ARG_DIFF_WEIGHTS;
  }
  DNNL_TRY(dnnl_memory_desc_clone(&p->blocked_w_md, dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, w_arg)));
  p->blocked_w_bytes = dnnl_memory_desc_get_size(p->blocked_w_md);
  p->scratch_bytes = ScratchBytes(pd, &p->scratch_md);
  DNNL_TRY(dnnl_primitive_create(&p->conv, pd));
  if (!dnnl_memory_desc_equal(p->blocked_w_md, p->plain_w_md)) {
    dnnl_primitive_desc_t rpd = nullptr;
    if (kind == kBwdWeights) {
      DNNL_TRY(dnnl_reorder_primitive_desc_create(&rpd, p->blocked_w_md, eng, p->plain_w_md, eng, attr));
    } else {
      DNNL_TRY(dnnl_reorder_primitive_desc_create(&rpd, p->plain_w_md, eng, p->blocked_w_md, eng, attr));
    }
    p->reorder_scratch_bytes = ScratchBytes(rpd, &p->reorder_scratch_md);
    DNNL_TRY(dnnl_primitive_create(&p->reorder, rpd));
    dnnl_primitive_desc_destroy(rpd);
  }
  if (pd != fwd) dnnl_primitive_desc_destroy(pd);
  dnnl_primitive_desc_destroy(fwd);
  dnnl_primitive_attr_destroy(attr);
  dnnl_memory_desc_destroy(any_w);
  p->src_md = x_md;
  p->dst_md = y_md;
  return "";
}

// The plan for `key`, made by `make(plan)` on first use and kept for the process (one cache per call site).
template <class K, class P, class Make>
std::string Cached(const K& key, Make make, const P** out) {
  static std::mutex mu;
  static std::map<K, std::unique_ptr<P>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) {
    auto plan = std::make_unique<P>();
    std::string err = make(plan.get());
    if (!err.empty()) return err;
    it = cache.emplace(key, std::move(plan)).first;
  }
  *out = it->second.get();
  return "";
}

std::string GetPlan(Kind kind, const Dims& d, const Plan** out) {
  return Cached(Key{kind, d}, [&](Plan* p) { return MakePlan(kind, d, p); }, out);
}

// A buffer for one call, 64-byte aligned (oneDNN's kernels use aligned vector loads on their own buffers).
struct Scratch {
  void* ptr = nullptr;
  explicit Scratch(size_t bytes) {
    if (bytes) ptr = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  }
  ~Scratch() { std::free(ptr); }
};

// Memory objects wrapping XLA's buffers for one call.
struct Mems {
  std::vector<dnnl_memory_t> all;
  std::string err;
  dnnl_memory_t Wrap(const_dnnl_memory_desc_t md, void* data) {
    dnnl_memory_t m = nullptr;
    if (md == nullptr) return nullptr;
    std::string e = Check(dnnl_memory_create(&m, md, engine(), data), "dnnl_memory_create");
    if (!e.empty()) err = e;
    all.push_back(m);
    return m;
  }
  ~Mems() {
    for (dnnl_memory_t m : all)
      if (m) dnnl_memory_destroy(m);
  }
};

// One primitive at a time: each uses all cores (OpenMP), and two teams at once would oversubscribe them.
std::mutex& RunMutex() {
  static std::mutex mu;
  return mu;
}

dnnl_stream_t Stream() {
  thread_local dnnl_stream_t s = [] {
    dnnl_stream_t s = nullptr;
    if (dnnl_stream_create(&s, engine(), dnnl_stream_default_flags) != dnnl_success) s = nullptr;
    return s;
  }();
  return s;
}

std::string Run(Kind kind, const Dims& d, void* a, void* b, void* out, void* bias = nullptr) {
  const Plan* p = nullptr;
  std::string err = GetPlan(kind, d, &p);
  if (!err.empty()) return err;
  std::lock_guard<std::mutex> run_lock(RunMutex());
  dnnl_stream_t s = Stream();
  if (s == nullptr) return "oneDNN could not create a CPU stream";
  Scratch blocked(p->reorder ? p->blocked_w_bytes : 0), scratch(p->scratch_bytes),
      rscratch(p->reorder_scratch_bytes);
  Mems m;
  // The kernel argument: w (fwd, bwd data: input `b`) or dw (bwd weights: the output).
  void* plain_w = kind == kBwdWeights ? out : b;
  dnnl_memory_t w_plain = m.Wrap(p->plain_w_md, plain_w);
  dnnl_memory_t w = p->reorder ? m.Wrap(p->blocked_w_md, blocked.ptr) : w_plain;
  dnnl_memory_t sp = m.Wrap(p->scratch_md, scratch.ptr);
  dnnl_memory_t rsp = m.Wrap(p->reorder_scratch_md, rscratch.ptr);
  if (!m.err.empty()) return m.err;
  auto exec = [&](dnnl_primitive_t prim, std::vector<dnnl_exec_arg_t> args, dnnl_memory_t scratchpad) {
    if (scratchpad) args.push_back({DNNL_ARG_SCRATCHPAD, scratchpad});
    return Check(dnnl_primitive_execute(prim, s, static_cast<int>(args.size()), args.data()), "execute");
  };
  if (kind != kBwdWeights && p->reorder) {
    err = exec(p->reorder, {{DNNL_ARG_FROM, w_plain}, {DNNL_ARG_TO, w}}, rsp);
    if (!err.empty()) return err;
  }
  if (kind == kFwd) {
    dnnl_memory_t x = m.Wrap(p->src_md, a), y = m.Wrap(p->dst_md, out);
    if (!m.err.empty()) return m.err;
    std::vector<dnnl_exec_arg_t> args = {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, y}};
    if (p->bias_md) {
      dnnl_memory_t bm = m.Wrap(p->bias_md, bias);
      if (!m.err.empty()) return m.err;
      args.push_back({DNNL_ARG_BIAS, bm});
    }
    err = exec(p->conv, args, sp);
  } else if (kind == kBwdData) {
    dnnl_memory_t g = m.Wrap(p->dst_md, a), dx = m.Wrap(p->src_md, out);
    if (!m.err.empty()) return m.err;
    err = exec(p->conv, {{DNNL_ARG_DIFF_DST, g}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, dx}}, sp);
  } else {
    dnnl_memory_t x = m.Wrap(p->src_md, a), g = m.Wrap(p->dst_md, b);
    if (!m.err.empty()) return m.err;
    err = exec(p->conv, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, g}, {DNNL_ARG_DIFF_WEIGHTS, w}}, sp);
    if (err.empty() && p->reorder) err = exec(p->reorder, {{DNNL_ARG_FROM, w}, {DNNL_ARG_TO, w_plain}}, rsp);
  }
  if (err.empty()) err = Check(dnnl_stream_wait(s), "dnnl_stream_wait");
  return err;
}

ffi::Error ToError(const std::string& err) {
  return err.empty() ? ffi::Error::Success() : ffi::Error::Internal("deepsea oneDNN convolution: " + err);
}

ffi::Error DimsFrom(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                    ffi::Span<const int64_t> padding, Dims* d) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4 || padding.size() != 4)
    return ffi::Error::InvalidArgument("deepsea oneDNN convolution: expects rank-4 NHWC/HWIO arrays and 4 paddings");
  *d = Dims{x[0], x[1], x[2], x[3], w[3], w[0], w[1], y[1], y[2], padding[0], padding[1], padding[2], padding[3]};
  if (w[2] != x[3] || y[0] != x[0] || y[3] != w[3] || d->ho != d->h + d->pt + d->pb - d->kh + 1 ||
      d->wo != d->w + d->pl + d->pr - d->kw + 1)
    return ffi::Error::InvalidArgument("deepsea oneDNN convolution: inconsistent shapes");
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   ffi::Span<const int64_t> padding) {
  Dims d;
  if (auto e = DimsFrom(x.dimensions(), w.dimensions(), y->dimensions(), padding, &d); e.failure()) return e;
  return ToError(Run(kFwd, d, x.untyped_data(), w.untyped_data(), y->untyped_data()));
}

ffi::Error ConvFwdBiasAct(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                          ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> padding, float negative_slope) {
  Dims d;
  if (auto e = DimsFrom(x.dimensions(), w.dimensions(), y->dimensions(), padding, &d); e.failure()) return e;
  if (b.dimensions().size() != 1 || b.dimensions()[0] != d.f)
    return ffi::Error::InvalidArgument("deepsea oneDNN convolution: the bias must have one value per output channel");
  d.bias_act = true;
  d.slope = negative_slope;
  return ToError(Run(kFwd, d, x.untyped_data(), w.untyped_data(), y->untyped_data(), b.untyped_data()));
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                       ffi::Span<const int64_t> padding) {
  Dims d;
  if (auto e = DimsFrom(dx->dimensions(), w.dimensions(), g.dimensions(), padding, &d); e.failure()) return e;
  return ToError(Run(kBwdData, d, g.untyped_data(), w.untyped_data(), dx->untyped_data()));
}

ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dw,
                          ffi::Span<const int64_t> padding) {
  Dims d;
  if (auto e = DimsFrom(x.dimensions(), dw->dimensions(), g.dimensions(), padding, &d); e.failure()) return e;
  return ToError(Run(kBwdWeights, d, x.untyped_data(), g.untyped_data(), dw->untyped_data()));
}

// ---- max pooling: deepsea_max_pool(x) -> y, deepsea_max_pool_bwd(x, g) -> dx ----------------------------------
// Attributes `window` = [kh, kw], `strides` = [sh, sw], `padding` = [lo_h, hi_h, lo_w, hi_w] (padded cells never win).
// The gradient goes to the first maximum of each window, in row-major window order, as XLA's select-and-scatter
// does. The backward pass recomputes the forward with oneDNN's workspace (the argmax indices) in a temporary buffer,
// so the forward's output is all that crosses into XLA.

struct PoolDims {
  int64_t n, h, w, c, ho, wo, kh, kw, sh, sw, pt, pb, pl, pr;
  auto tie() const { return std::tie(n, h, w, c, ho, wo, kh, kw, sh, sw, pt, pb, pl, pr); }
  bool operator<(const PoolDims& o) const { return tie() < o.tie(); }
};

struct PoolPlan {
  dnnl_primitive_t fwd = nullptr, bwd = nullptr;  // fwd: inference (forward call) or training (backward call)
  dnnl_memory_desc_t src_md = nullptr, dst_md = nullptr, ws_md = nullptr, fwd_scratch_md = nullptr,
                     bwd_scratch_md = nullptr;
  size_t dst_bytes = 0, ws_bytes = 0, fwd_scratch_bytes = 0, bwd_scratch_bytes = 0;
};

std::string MakePoolPlan(bool backward, const PoolDims& d, PoolPlan* p) {
  dnnl_engine_t eng = engine();
  if (eng == nullptr) return "oneDNN found no CPU engine";
  std::string err;
  p->src_md = Nhwc(d.n, d.h, d.w, d.c, &err);
  if (!err.empty()) return err;
  p->dst_md = Nhwc(d.n, d.ho, d.wo, d.c, &err);
  if (!err.empty()) return err;
  dnnl_dims_t strides = {d.sh, d.sw}, kernel = {d.kh, d.kw}, dilation = {0, 0}, pad_l = {d.pt, d.pl},
              pad_r = {d.pb, d.pr};
  dnnl_primitive_attr_t attr = nullptr;
  DNNL_TRY(dnnl_primitive_attr_create(&attr));
  DNNL_TRY(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user));
  dnnl_primitive_desc_t fwd = nullptr;
  DNNL_TRY(dnnl_pooling_forward_primitive_desc_create(
      &fwd, eng, backward ? dnnl_forward_training : dnnl_forward_inference, dnnl_pooling_max, p->src_md, p->dst_md,
      strides, kernel, dilation, pad_l, pad_r, attr));
  p->fwd_scratch_bytes = ScratchBytes(fwd, &p->fwd_scratch_md);
  DNNL_TRY(dnnl_primitive_create(&p->fwd, fwd));
  if (backward) {
    const_dnnl_memory_desc_t ws = dnnl_primitive_desc_query_md(fwd, dnnl_query_exec_arg_md, DNNL_ARG_WORKSPACE);
    if (ws == nullptr) return "max pooling has no workspace";
    DNNL_TRY(dnnl_memory_desc_clone(&p->ws_md, ws));
    p->ws_bytes = dnnl_memory_desc_get_size(ws);
    p->dst_bytes = dnnl_memory_desc_get_size(p->dst_md);
    dnnl_primitive_desc_t bwd = nullptr;
    DNNL_TRY(dnnl_pooling_backward_primitive_desc_create(&bwd, eng, dnnl_pooling_max, p->src_md, p->dst_md, strides,
                                                         kernel, dilation, pad_l, pad_r, fwd, attr));
    p->bwd_scratch_bytes = ScratchBytes(bwd, &p->bwd_scratch_md);
    DNNL_TRY(dnnl_primitive_create(&p->bwd, bwd));
    dnnl_primitive_desc_destroy(bwd);
  }
  dnnl_primitive_desc_destroy(fwd);
  dnnl_primitive_attr_destroy(attr);
  return "";
}

std::string RunPool(bool backward, const PoolDims& d, void* x, void* g, void* out) {
  const PoolPlan* p = nullptr;
  std::string plan_err =
      Cached(std::make_pair(backward, d), [&](PoolPlan* plan) { return MakePoolPlan(backward, d, plan); }, &p);
  if (!plan_err.empty()) return plan_err;
  std::lock_guard<std::mutex> run_lock(RunMutex());
  dnnl_stream_t s = Stream();
  if (s == nullptr) return "oneDNN could not create a CPU stream";
  Scratch y_tmp(backward ? p->dst_bytes : 0), ws(p->ws_bytes), fsp(p->fwd_scratch_bytes), bsp(p->bwd_scratch_bytes);
  Mems m;
  dnnl_memory_t src = m.Wrap(p->src_md, x);
  dnnl_memory_t dst = m.Wrap(p->dst_md, backward ? y_tmp.ptr : out);
  dnnl_memory_t wsm = m.Wrap(p->ws_md, ws.ptr);
  dnnl_memory_t fspm = m.Wrap(p->fwd_scratch_md, fsp.ptr), bspm = m.Wrap(p->bwd_scratch_md, bsp.ptr);
  if (!m.err.empty()) return m.err;
  std::vector<dnnl_exec_arg_t> args = {{DNNL_ARG_SRC, src}, {DNNL_ARG_DST, dst}};
  if (wsm) args.push_back({DNNL_ARG_WORKSPACE, wsm});
  if (fspm) args.push_back({DNNL_ARG_SCRATCHPAD, fspm});
  std::string err = Check(dnnl_primitive_execute(p->fwd, s, static_cast<int>(args.size()), args.data()), "execute");
  if (err.empty() && backward) {
    dnnl_memory_t gm = m.Wrap(p->dst_md, g), dx = m.Wrap(p->src_md, out);
    if (!m.err.empty()) return m.err;
    args = {{DNNL_ARG_DIFF_DST, gm}, {DNNL_ARG_DIFF_SRC, dx}, {DNNL_ARG_WORKSPACE, wsm}};
    if (bspm) args.push_back({DNNL_ARG_SCRATCHPAD, bspm});
    err = Check(dnnl_primitive_execute(p->bwd, s, static_cast<int>(args.size()), args.data()), "execute");
  }
  if (err.empty()) err = Check(dnnl_stream_wait(s), "dnnl_stream_wait");
  return err;
}

ffi::Error PoolDimsFrom(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y, ffi::Span<const int64_t> window,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding, PoolDims* d) {
  if (x.size() != 4 || y.size() != 4 || window.size() != 2 || strides.size() != 2 || padding.size() != 4)
    return ffi::Error::InvalidArgument("deepsea oneDNN max pooling: expects rank-4 NHWC arrays, 2 window sizes, "
                                       "2 strides and 4 paddings");
  *d = PoolDims{x[0], x[1], x[2], x[3], y[1], y[2], window[0], window[1], strides[0], strides[1],
                padding[0], padding[1], padding[2], padding[3]};
  if (y[0] != x[0] || y[3] != x[3] || d->sh < 1 || d->sw < 1 ||
      d->ho != (d->h + d->pt + d->pb - d->kh) / d->sh + 1 || d->wo != (d->w + d->pl + d->pr - d->kw) / d->sw + 1)
    return ffi::Error::InvalidArgument("deepsea oneDNN max pooling: inconsistent shapes");
  return ffi::Error::Success();
}

ffi::Error MaxPool(ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> y, ffi::Span<const int64_t> window,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  PoolDims d;
  if (auto e = PoolDimsFrom(x.dimensions(), y->dimensions(), window, strides, padding, &d); e.failure()) return e;
  return ToError(RunPool(false, d, x.untyped_data(), nullptr, y->untyped_data()));
}

ffi::Error MaxPoolBwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dx,
                      ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding) {
  PoolDims d;
  if (auto e = PoolDimsFrom(x.dimensions(), g.dimensions(), window, strides, padding, &d); e.failure()) return e;
  return ToError(RunPool(true, d, x.untyped_data(), g.untyped_data(), dx->untyped_data()));
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(deepsea_conv_fwd, ConvFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("padding"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(deepsea_conv_bwd_data, ConvBwdData,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("padding"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(deepsea_conv_bwd_weights, ConvBwdWeights,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("padding"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(deepsea_max_pool, MaxPool,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("window")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(deepsea_max_pool_bwd, MaxPoolBwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("window")
                                  .Attr<ffi::Span<const int64_t>>("strides")
                                  .Attr<ffi::Span<const int64_t>>("padding"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(deepsea_conv_fwd_bias_leaky_relu, ConvFwdBiasAct,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("padding")
                                  .Attr<float>("negative_slope"));
