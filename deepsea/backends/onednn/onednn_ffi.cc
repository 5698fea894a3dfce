// XLA FFI handlers for stride-1 2-D convolutions and max pooling on the CPU through oneDNN (NHWC activations, HWIO
// kernels, f32), written against oneDNN's C++ API (RAII objects; every failure is a dnnl::error).
//
// deepsea_conv_fwd(x, w) -> y, deepsea_conv_bwd_data(g, w) -> dx, deepsea_conv_bwd_weights(x, g) -> dw, with XLA's
// explicit padding as the attribute `padding` = [lo_h, hi_h, lo_w, hi_w];
// deepsea_conv_fwd_bias_leaky_relu(x, w, b) -> leaky_relu(conv(x, w) + b) (attribute `negative_slope`), the bias and
// activation as oneDNN post-operations; deepsea_conv_bwd_weights_bias(x, g) -> (dw, db), the kernel gradient with
// the bias gradient (g summed over all but the channels) from the same pass over g;
// deepsea_max_pool(x) -> y, deepsea_max_pool_train(x) -> (y, ws) and deepsea_max_pool_bwd(ws, g) -> dx (attributes
// `window`, `strides`, `padding`; padded cells never win; the gradient goes to the first maximum of each window, as
// XLA's select-and-scatter): a training step's forward pass keeps oneDNN's workspace (each window's argmax, bytes
// whose count deepsea_onednn_pool_workspace_bytes gives) for its backward pass, which reads only that and g.
// deepsea_matmul(a, b) -> op(a) op(b) for row-major matrices (attributes `transpose_a`, `transpose_b`: op(m) is m's
// transpose, read in place through strides), all three in one dtype (products accumulate in float32): a dense
// layer's forward pass, input gradient and kernel gradient.
// Built and loaded by deepsea/backends/onednn/__init__.py, beside the pure-JAX references they are tested against.
//
// oneDNN picks its own blocked kernel layout ("any"); the HWIO kernel is reordered into it on each call. With
// DEEPSEA_ONEDNN_TUNE=1 a convolution's implementation is chosen by timing oneDNN's candidates once per shape
// (below); by default it is oneDNN's own first choice. Primitives are made once per shape and kept in a bounded
// least-recently-used cache. Scratchpads, workspaces and blocked kernels are oneDNN memory objects allocated per
// call (an allocation failure is an error returned to XLA), so concurrent calls share nothing mutable. Every handler
// turns any exception into an XLA FFI error.
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <functional>
#include <algorithm>
#include <atomic>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dnnl::algorithm;
using dnnl::memory;
using dnnl::prop_kind;
using Args = std::unordered_map<int, memory>;
using dt = memory::data_type;
using tag = memory::format_tag;

// At most this many primitives of one kind are kept; a network uses a few dozen shapes.
constexpr size_t kMaxPlans = 256;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// One primitive at a time: each uses all cores (OpenMP), and two teams at once would oversubscribe them.
std::mutex& RunMutex() {
  static std::mutex mu;
  return mu;
}

// A least-recently-used cache of plans; plans are shared, so one evicted while in use stays alive until done.
template <class K, class P>
class PlanCache {
 public:
  std::shared_ptr<const P> Get(const K& key, const std::function<P()>& make) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(key);
    if (it != map_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
    auto plan = std::make_shared<const P>(make());  // may throw: then nothing is inserted
    lru_.push_front(key);
    map_.emplace(key, std::make_pair(plan, lru_.begin()));
    if (map_.size() > kMaxPlans) {
      map_.erase(lru_.back());
      lru_.pop_back();
    }
    return plan;
  }

 private:
  std::mutex mu_;
  std::list<K> lru_;
  std::map<K, std::pair<std::shared_ptr<const P>, typename std::list<K>::iterator>> map_;
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Wraps an XLA buffer (no allocation, no ownership).
memory Wrap(const memory::desc& md, const void* data) { return memory(md, Engine(), const_cast<void*>(data)); }

// A oneDNN-allocated buffer for one call; added to `args` under `arg` when it is not empty.
void AddOwned(Args* args, int arg, const memory::desc& md) {
  if (md.get_size() > 0) args->emplace(arg, memory(md, Engine()));
}

void Execute(const dnnl::primitive& p, Args args) {
  p.execute(Stream(), args);
  Stream().wait();
}

// ---- time per primitive, for profiles ----------------------------------------------------------------------------
// Each plan owns a row of counters keyed by what ran (the primitive's kind and shape, as a readable string); a call
// adds its wall time, split into the kernel reorders and the primitive itself, with relaxed atomic adds (no lock
// on the hot path). Rows are never erased (a reset zeroes them), so the plans' pointers stay valid.
// deepsea_onednn_stats() hands the rows to Python.

struct StatRow {
  std::string impl;  // oneDNN's implementation name (e.g. brgconv:avx512_core_bf16, jit_bf16:avx512_core_bf16)
  std::string candidates;  // a tuned plan's candidates as "impl=ms,impl=ms" (oneDNN's first choice first); else ""
  std::atomic<int64_t> calls{0}, reorder_ns{0}, exec_ns{0};
};

std::mutex& StatsMutex() {
  static std::mutex mu;
  return mu;
}

std::map<std::string, StatRow>& Stats() {
  static std::map<std::string, StatRow> rows;
  return rows;
}

StatRow* StatRowFor(const std::string& key, const std::string& impl, const std::string& candidates = "") {
  std::lock_guard<std::mutex> lock(StatsMutex());
  StatRow& row = Stats()[key];
  row.impl = impl;
  row.candidates = candidates;
  return &row;
}

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Record(StatRow* row, int64_t reorder_ns, int64_t exec_ns) {
  row->calls.fetch_add(1, std::memory_order_relaxed);
  row->reorder_ns.fetch_add(reorder_ns, std::memory_order_relaxed);
  row->exec_ns.fetch_add(exec_ns, std::memory_order_relaxed);
}

// ---- choosing among oneDNN's implementations ---------------------------------------------------------------------
// oneDNN lists the implementations that can compute a primitive, its own heuristic choice first (next_impl). Its
// choice is not always the fastest on a given CPU and shape (measured per layer: docs/results.md), so a plan made
// with DEEPSEA_ONEDNN_TUNE=1 times every candidate but the reference ones (`ref:`) on zeroed buffers of the plan's
// shapes, once, with no other primitive running, and takes the fastest unless it is within kTuneMargin of oneDNN's
// choice. Off by default: implementations round differently, and a choice made by timing can differ between runs
// of the same code, so runs would no longer repeat bit for bit.

constexpr double kTuneMargin = 0.05;  // a candidate must be this fraction faster than oneDNN's choice to replace it
constexpr int kTuneRuns = 3;          // timed runs per candidate after one untimed (the fastest counts)
constexpr double kTuneDropRatio = 2;  // a candidate this much slower than the best after one timed run is dropped

// Read at each call (plans are kept per setting); a value other than unset, empty, 0 or 1 is an error, not "off".
bool TuneEnabled() {
  const char* v = std::getenv("DEEPSEA_ONEDNN_TUNE");
  if (v == nullptr || *v == '\0' || std::strcmp(v, "0") == 0) return false;
  if (std::strcmp(v, "1") == 0) return true;
  throw std::invalid_argument(std::string("DEEPSEA_ONEDNN_TUNE must be 0 or 1, got '") + v + "'");
}

// What a plan keeps of one implementation.
template <class P>
struct Chosen {
  P prim;
  std::string impl;
  memory::desc weights, scratch;  // the kernel (or kernel gradient) as this implementation reads (writes) it
};

// Runs `pd`'s candidates (pd is left at its last candidate) and returns the chosen one; `weights(pd)` gives a
// candidate's kernel (or kernel gradient) descriptor, `args()` the other buffers of one run, `candidates` the
// report "impl=ms,...". Without tuning, oneDNN's first choice, untimed.
template <class P, class PD, class WeightsOf, class Buffers>
Chosen<P> ChooseImpl(PD& pd, bool tune, WeightsOf weights, int weights_arg, Buffers args, std::string* candidates) {
  Chosen<P> first{P(pd), pd.impl_info_str(), weights(pd), pd.scratchpad_desc()};
  if (!tune || first.impl.rfind("ref", 0) == 0) return first;
  std::lock_guard<std::mutex> run_lock(RunMutex());
  Chosen<P> best = first;
  double first_ms = -1, best_ms = -1;
  std::ostringstream report;
  bool is_first = true;
  do {
    const std::string impl = pd.impl_info_str();
    if (impl.rfind("ref", 0) == 0) continue;
    Chosen<P> c = is_first ? first : Chosen<P>{P(pd), impl, weights(pd), pd.scratchpad_desc()};
    Args run = args();
    run.emplace(weights_arg, memory(c.weights, Engine()));
    AddOwned(&run, DNNL_ARG_SCRATCHPAD, c.scratch);
    for (auto& [arg, m] : run) std::memset(m.get_data_handle(), 0, m.get_desc().get_size());
    double ms = -1;
    for (int r = 0; r <= kTuneRuns; ++r) {
      const int64_t t0 = NowNs();
      Execute(c.prim, run);
      const double t = (NowNs() - t0) / 1e6;
      if (r > 0) ms = ms < 0 ? t : std::min(ms, t);
      if (r == 1 && best_ms > 0 && t > kTuneDropRatio * best_ms) break;
    }
    report << (is_first ? "" : ",") << impl << "=" << ms;
    if (is_first) {
      first_ms = best_ms = ms;
    } else if (ms < best_ms && ms < (1 - kTuneMargin) * first_ms) {
      best = c;
      best_ms = ms;
    }
    is_first = false;
  } while (pd.next_impl());
  *candidates = report.str();
  return best;
}

// ---- convolutions ------------------------------------------------------------------------------------------------

enum Kind { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };

struct ConvDims {
  int64_t n, h, w, c, f, kh, kw, ho, wo, pt, pb, pl, pr;
  bool bias_act = false;  // forward: + bias, then leaky ReLU with `slope` (oneDNN post-op); kernel gradient: and the
  float slope = 0.f;      // bias gradient (the slope is unused there)
  bool bf16 = false;  // activations (and the primitive's kernel) in bfloat16; the HWIO kernel, its gradient and
                      // the bias stay float32 (the reorders convert)
  bool tune = false;  // the implementation timed among oneDNN's candidates (set from DEEPSEA_ONEDNN_TUNE)
  auto tie() const { return std::tie(n, h, w, c, f, kh, kw, ho, wo, pt, pb, pl, pr, bias_act, slope, bf16, tune); }
};

struct ConvKey {
  Kind kind;
  ConvDims d;
  bool operator<(const ConvKey& o) const { return kind != o.kind ? kind < o.kind : d.tie() < o.d.tie(); }
};

struct ConvPlan {
  dnnl::primitive conv;
  dnnl::primitive reorder;  // HWIO -> oneDNN's kernel layout (fwd, bwd data) or back (bwd weights); empty if equal
  memory::desc src, dst, plain_w, blocked_w, bias, scratch, reorder_scratch;
  StatRow* stats = nullptr;  // this plan's time row
};

ConvPlan MakeConvPlan(Kind kind, const ConvDims& d) {
  dnnl::engine& eng = Engine();
  ConvPlan p;
  const dt act = d.bf16 ? dt::bf16 : dt::f32;
  p.src = memory::desc({d.n, d.c, d.h, d.w}, act, tag::nhwc);
  p.dst = memory::desc({d.n, d.f, d.ho, d.wo}, act, tag::nhwc);
  p.plain_w = memory::desc({d.f, d.c, d.kh, d.kw}, dt::f32, tag::hwio);
  // the kernel as the primitive reads it (the activations' type) and its gradient as it writes it (float32)
  memory::desc any_w({d.f, d.c, d.kh, d.kw}, kind == kBwdWeights ? dt::f32 : act, tag::any);
  memory::dims strides = {1, 1}, pad_l = {d.pt, d.pl}, pad_r = {d.pb, d.pr};
  memory::desc fwd_w({d.f, d.c, d.kh, d.kw}, act, tag::any);
  dnnl::primitive_attr attr = UserScratchpad();
  dnnl::convolution_forward::primitive_desc fwd;
  if (d.bias_act) p.bias = memory::desc({d.f}, dt::f32, tag::x);
  if (d.bias_act && kind == kFwd) {
    dnnl::primitive_attr act_attr = UserScratchpad();
    dnnl::post_ops ops;
    ops.append_eltwise(algorithm::eltwise_relu, d.slope, 0.f);  // relu with alpha: leaky ReLU
    act_attr.set_post_ops(ops);
    fwd = dnnl::convolution_forward::primitive_desc(eng, prop_kind::forward_training, algorithm::convolution_direct,
                                                    p.src, fwd_w, p.bias, p.dst, strides, pad_l, pad_r, act_attr);
  } else {
    fwd = dnnl::convolution_forward::primitive_desc(eng, prop_kind::forward_training, algorithm::convolution_direct,
                                                    p.src, fwd_w, p.dst, strides, pad_l, pad_r, attr);
  }
  // buffers for timing candidates (the kernel's comes from each candidate)
  auto act_args = [&](int a, const memory::desc& ma, int b, const memory::desc& mb) {
    Args args = {{a, memory(ma, eng)}, {b, memory(mb, eng)}};
    if (d.bias_act) args.emplace(kind == kFwd ? DNNL_ARG_BIAS : DNNL_ARG_DIFF_BIAS, memory(p.bias, eng));
    return args;
  };
  std::string impl, candidates;
  if (kind == kFwd) {
    auto c = ChooseImpl<dnnl::convolution_forward>(
        fwd, d.tune, [](const auto& pd) { return pd.weights_desc(); }, DNNL_ARG_WEIGHTS,
        [&]() { return act_args(DNNL_ARG_SRC, p.src, DNNL_ARG_DST, p.dst); }, &candidates);
    p.conv = c.prim, p.blocked_w = c.weights, p.scratch = c.scratch, impl = c.impl;
  } else if (kind == kBwdData) {
    dnnl::convolution_backward_data::primitive_desc pd(eng, algorithm::convolution_direct, p.src, any_w, p.dst,
                                                       strides, pad_l, pad_r, fwd, attr);
    auto c = ChooseImpl<dnnl::convolution_backward_data>(
        pd, d.tune, [](const auto& pd) { return pd.weights_desc(); }, DNNL_ARG_WEIGHTS,
        [&]() {
          return Args{{DNNL_ARG_DIFF_DST, memory(p.dst, eng)}, {DNNL_ARG_DIFF_SRC, memory(p.src, eng)}};
        },
        &candidates);
    p.conv = c.prim, p.blocked_w = c.weights, p.scratch = c.scratch, impl = c.impl;
  } else {
    dnnl::convolution_backward_weights::primitive_desc pd =
        d.bias_act ? dnnl::convolution_backward_weights::primitive_desc(eng, algorithm::convolution_direct, p.src,
                                                                        any_w, p.bias, p.dst, strides, pad_l, pad_r,
                                                                        fwd, attr)
                   : dnnl::convolution_backward_weights::primitive_desc(eng, algorithm::convolution_direct, p.src,
                                                                        any_w, p.dst, strides, pad_l, pad_r, fwd, attr);
    auto c = ChooseImpl<dnnl::convolution_backward_weights>(
        pd, d.tune, [](const auto& pd) { return pd.diff_weights_desc(); }, DNNL_ARG_DIFF_WEIGHTS,
        [&]() { return act_args(DNNL_ARG_SRC, p.src, DNNL_ARG_DIFF_DST, p.dst); }, &candidates);
    p.conv = c.prim, p.blocked_w = c.weights, p.scratch = c.scratch, impl = c.impl;
  }
  std::ostringstream key;
  key << (kind == kFwd       ? (d.bias_act ? "conv_fwd_bias_act" : "conv_fwd")
          : kind == kBwdData ? "conv_bwd_data"
                             : (d.bias_act ? "conv_bwd_weights_bias" : "conv_bwd_weights"))
      << (d.bf16 ? " bf16 " : " f32 ") << d.n << "x" << d.h << "x" << d.w << "x" << d.c << "->" << d.f << " k"
      << d.kh << "x" << d.kw << (d.tune ? " tuned" : "");
  p.stats = StatRowFor(key.str(), impl, candidates);
  if (p.blocked_w != p.plain_w) {
    const memory::desc& from = kind == kBwdWeights ? p.blocked_w : p.plain_w;
    const memory::desc& to = kind == kBwdWeights ? p.plain_w : p.blocked_w;
    dnnl::reorder::primitive_desc rpd(eng, from, eng, to, attr);
    p.reorder_scratch = rpd.scratchpad_desc();
    p.reorder = dnnl::reorder(rpd);
  }
  return p;
}

PlanCache<ConvKey, ConvPlan>& ConvPlans() {
  static PlanCache<ConvKey, ConvPlan> cache;
  return cache;
}

// a, b: the inputs (fwd: x, w; bwd data: g, w; bwd weights: x, g); out: the result; bias: the fused forward's bias,
// or the kernel gradient's bias gradient (written).
void RunConv(Kind kind, ConvDims d, const void* a, const void* b, void* out, const void* bias = nullptr) {
  d.tune = TuneEnabled();
  std::shared_ptr<const ConvPlan> p = ConvPlans().Get(ConvKey{kind, d}, [&] { return MakeConvPlan(kind, d); });
  std::lock_guard<std::mutex> run_lock(RunMutex());
  const int64_t t0 = NowNs();
  const bool reorder = static_cast<bool>(p->reorder);
  memory plain_w = Wrap(p->plain_w, kind == kBwdWeights ? out : b);
  memory w = reorder ? memory(p->blocked_w, Engine()) : plain_w;
  if (kind != kBwdWeights && reorder) {
    Args args = {{DNNL_ARG_FROM, plain_w}, {DNNL_ARG_TO, w}};
    AddOwned(&args, DNNL_ARG_SCRATCHPAD, p->reorder_scratch);
    Execute(p->reorder, std::move(args));
  }
  const int64_t t1 = NowNs();
  Args args;
  AddOwned(&args, DNNL_ARG_SCRATCHPAD, p->scratch);
  if (kind == kFwd) {
    args.insert({{DNNL_ARG_SRC, Wrap(p->src, a)}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, Wrap(p->dst, out)}});
    if (d.bias_act) args.insert({DNNL_ARG_BIAS, Wrap(p->bias, bias)});
  } else if (kind == kBwdData) {
    args.insert({{DNNL_ARG_DIFF_DST, Wrap(p->dst, a)}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DIFF_SRC, Wrap(p->src, out)}});
  } else {
    args.insert({{DNNL_ARG_SRC, Wrap(p->src, a)}, {DNNL_ARG_DIFF_DST, Wrap(p->dst, b)}, {DNNL_ARG_DIFF_WEIGHTS, w}});
    if (d.bias_act) args.insert({DNNL_ARG_DIFF_BIAS, Wrap(p->bias, bias)});
  }
  Execute(p->conv, std::move(args));
  const int64_t t2 = NowNs();
  if (kind == kBwdWeights && reorder) {
    Args back = {{DNNL_ARG_FROM, w}, {DNNL_ARG_TO, plain_w}};
    AddOwned(&back, DNNL_ARG_SCRATCHPAD, p->reorder_scratch);
    Execute(p->reorder, std::move(back));
  }
  Record(p->stats, (t1 - t0) + (NowNs() - t2), t2 - t1);
}

// ---- max pooling -------------------------------------------------------------------------------------------------

// What a pooling call computes: the forward pass alone (prediction); the forward pass and oneDNN's workspace (the
// argmax of each window, a training step's forward); or the input's gradient from that workspace.
enum PoolMode { kPoolInference, kPoolTraining, kPoolBackward };

struct PoolDims {
  int64_t n, h, w, c, ho, wo, kh, kw, sh, sw, pt, pb, pl, pr;
  PoolMode mode;
  bool bf16 = false;
  auto tie() const { return std::tie(n, h, w, c, ho, wo, kh, kw, sh, sw, pt, pb, pl, pr, mode, bf16); }
  bool operator<(const PoolDims& o) const { return tie() < o.tie(); }
};

struct PoolPlan {
  dnnl::primitive prim;  // the forward pass (inference or training) or the backward pass
  memory::desc src, dst, workspace, scratch;
  StatRow* stats = nullptr;
};

PoolPlan MakePoolPlan(const PoolDims& d) {
  dnnl::engine& eng = Engine();
  PoolPlan p;
  const dt act = d.bf16 ? dt::bf16 : dt::f32;
  p.src = memory::desc({d.n, d.c, d.h, d.w}, act, tag::nhwc);
  p.dst = memory::desc({d.n, d.c, d.ho, d.wo}, act, tag::nhwc);
  memory::dims strides = {d.sh, d.sw}, kernel = {d.kh, d.kw}, dilation = {0, 0}, pad_l = {d.pt, d.pl},
               pad_r = {d.pb, d.pr};
  dnnl::primitive_attr attr = UserScratchpad();
  const bool inference = d.mode == kPoolInference;
  dnnl::pooling_forward::primitive_desc fwd(eng, inference ? prop_kind::forward_inference : prop_kind::forward_training,
                                            algorithm::pooling_max, p.src, p.dst, strides, kernel, dilation, pad_l,
                                            pad_r, attr);
  p.workspace = fwd.workspace_desc();
  static const char* const kNames[] = {"max_pool", "max_pool_train", "max_pool_bwd"};
  std::ostringstream key;
  key << kNames[d.mode] << (d.bf16 ? " bf16 " : " f32 ") << d.n << "x" << d.h << "x" << d.w << "x" << d.c << " k"
      << d.kh << "x" << d.kw << " s" << d.sh;
  if (d.mode == kPoolBackward) {
    dnnl::pooling_backward::primitive_desc bwd(eng, algorithm::pooling_max, p.src, p.dst, strides, kernel, dilation,
                                               pad_l, pad_r, fwd, attr);
    p.scratch = bwd.scratchpad_desc();
    p.prim = dnnl::pooling_backward(bwd);
    p.stats = StatRowFor(key.str(), bwd.impl_info_str());
  } else {
    p.scratch = fwd.scratchpad_desc();
    p.prim = dnnl::pooling_forward(fwd);
    p.stats = StatRowFor(key.str(), fwd.impl_info_str());
  }
  return p;
}

PlanCache<PoolDims, PoolPlan>& PoolPlans() {
  static PlanCache<PoolDims, PoolPlan> cache;
  return cache;
}

// The workspace's size in bytes for these dimensions: XLA holds it between a step's forward and backward passes.
size_t PoolWorkspaceBytes(const PoolDims& d) {
  return PoolPlans().Get(d, [&] { return MakePoolPlan(d); })->workspace.get_size();
}

// kPoolInference: x -> out; kPoolTraining: x -> out and the workspace `ws`; kPoolBackward: (ws, g = x) -> out.
// `ws_bytes`, the size of the buffer XLA allocated for `ws`, must be oneDNN's (the caller sized it by asking
// deepsea_onednn_pool_workspace_bytes).
void RunPool(const PoolDims& d, const void* x, void* ws, size_t ws_bytes, void* out) {
  std::shared_ptr<const PoolPlan> p = PoolPlans().Get(d, [&] { return MakePoolPlan(d); });
  if (d.mode != kPoolInference && ws_bytes != p->workspace.get_size())
    throw std::invalid_argument("the workspace has " + std::to_string(ws_bytes) + " bytes where oneDNN needs " +
                                std::to_string(p->workspace.get_size()));
  std::lock_guard<std::mutex> run_lock(RunMutex());
  const int64_t t0 = NowNs();
  Args args;
  if (d.mode == kPoolBackward) {
    args = {{DNNL_ARG_DIFF_DST, Wrap(p->dst, x)}, {DNNL_ARG_DIFF_SRC, Wrap(p->src, out)},
            {DNNL_ARG_WORKSPACE, Wrap(p->workspace, ws)}};
  } else {
    args = {{DNNL_ARG_SRC, Wrap(p->src, x)}, {DNNL_ARG_DST, Wrap(p->dst, out)}};
    if (d.mode == kPoolTraining) args.insert({DNNL_ARG_WORKSPACE, Wrap(p->workspace, ws)});
  }
  AddOwned(&args, DNNL_ARG_SCRATCHPAD, p->scratch);
  Execute(p->prim, std::move(args));
  Record(p->stats, 0, NowNs() - t0);
}

// ---- matrix products ---------------------------------------------------------------------------------------------

struct MatmulDims {
  int64_t m, k, n;
  bool ta, tb;  // a is stored (k, m), b is stored (n, k)
  bool bf16;
  auto tie() const { return std::tie(m, k, n, ta, tb, bf16); }
  bool operator<(const MatmulDims& o) const { return tie() < o.tie(); }
};

struct MatmulPlan {
  dnnl::primitive mm;
  memory::desc a, b, c, scratch;
  StatRow* stats = nullptr;
};

MatmulPlan MakeMatmulPlan(const MatmulDims& d) {
  MatmulPlan p;
  const dt t = d.bf16 ? dt::bf16 : dt::f32;
  p.a = memory::desc({d.m, d.k}, t, d.ta ? tag::ba : tag::ab);
  p.b = memory::desc({d.k, d.n}, t, d.tb ? tag::ba : tag::ab);
  p.c = memory::desc({d.m, d.n}, t, tag::ab);
  dnnl::matmul::primitive_desc pd(Engine(), p.a, p.b, p.c, UserScratchpad());
  p.scratch = pd.scratchpad_desc();
  p.mm = dnnl::matmul(pd);
  std::ostringstream key;
  key << "matmul" << (d.bf16 ? " bf16 " : " f32 ") << d.m << "x" << d.k << (d.ta ? "T" : "") << " * " << d.k << "x"
      << d.n << (d.tb ? "T" : "");
  p.stats = StatRowFor(key.str(), pd.impl_info_str());
  return p;
}

PlanCache<MatmulDims, MatmulPlan>& MatmulPlans() {
  static PlanCache<MatmulDims, MatmulPlan> cache;
  return cache;
}

void RunMatmul(const MatmulDims& d, const void* a, const void* b, void* c) {
  std::shared_ptr<const MatmulPlan> p = MatmulPlans().Get(d, [&] { return MakeMatmulPlan(d); });
  std::lock_guard<std::mutex> run_lock(RunMutex());
  const int64_t t0 = NowNs();
  Args args = {{DNNL_ARG_SRC, Wrap(p->a, a)}, {DNNL_ARG_WEIGHTS, Wrap(p->b, b)}, {DNNL_ARG_DST, Wrap(p->c, c)}};
  AddOwned(&args, DNNL_ARG_SCRATCHPAD, p->scratch);
  Execute(p->mm, std::move(args));
  Record(p->stats, 0, NowNs() - t0);
}

// ---- the handlers ------------------------------------------------------------------------------------------------

// Runs `body`, turning every exception into an FFI error that names the operation.
template <class F>
ffi::Error Guard(const char* what, F body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("deepsea oneDNN ") + what + ": " + e.what() + " (oneDNN status " +
                                std::to_string(static_cast<int>(e.status)) + ")");
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, std::string("deepsea oneDNN ") + what + ": out of memory");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("deepsea oneDNN ") + what + ": " + e.what());
  }
}

ffi::Error ConvDimsFrom(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                        ffi::Span<const int64_t> padding, ConvDims* d) {
  if (x.size() != 4 || w.size() != 4 || y.size() != 4 || padding.size() != 4)
    return ffi::Error::InvalidArgument("deepsea oneDNN convolution: expects rank-4 NHWC/HWIO arrays and 4 paddings");
  *d = ConvDims{x[0], x[1], x[2], x[3], w[3], w[0], w[1], y[1], y[2], padding[0], padding[1], padding[2], padding[3]};
  if (w[2] != x[3] || y[0] != x[0] || y[3] != w[3] || d->ho != d->h + d->pt + d->pb - d->kh + 1 ||
      d->wo != d->w + d->pl + d->pr - d->kw + 1 || d->pt < 0 || d->pb < 0 || d->pl < 0 || d->pr < 0)
    return ffi::Error::InvalidArgument("deepsea oneDNN convolution: inconsistent shapes or negative padding");
  return ffi::Error::Success();
}

template <ffi::DataType T>
ffi::Error ConvFwd(ffi::Buffer<T> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<T> y,
                   ffi::Span<const int64_t> padding) {
  ConvDims d;
  if (auto e = ConvDimsFrom(x.dimensions(), w.dimensions(), y->dimensions(), padding, &d); e.failure()) return e;
  d.bf16 = T == ffi::BF16;
  return Guard("convolution", [&] { RunConv(kFwd, d, x.untyped_data(), w.untyped_data(), y->untyped_data()); });
}

template <ffi::DataType T>
ffi::Error ConvFwdBiasAct(ffi::Buffer<T> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<T> y,
                          ffi::Span<const int64_t> padding, float negative_slope) {
  ConvDims d;
  if (auto e = ConvDimsFrom(x.dimensions(), w.dimensions(), y->dimensions(), padding, &d); e.failure()) return e;
  if (b.dimensions().size() != 1 || b.dimensions()[0] != d.f)
    return ffi::Error::InvalidArgument("deepsea oneDNN convolution: the bias must have one value per output channel");
  d.bias_act = true;
  d.slope = negative_slope;
  d.bf16 = T == ffi::BF16;
  return Guard("convolution", [&] {
    RunConv(kFwd, d, x.untyped_data(), w.untyped_data(), y->untyped_data(), b.untyped_data());
  });
}

template <ffi::DataType T>
ffi::Error ConvBwdData(ffi::Buffer<T> g, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<T> dx,
                       ffi::Span<const int64_t> padding) {
  ConvDims d;
  if (auto e = ConvDimsFrom(dx->dimensions(), w.dimensions(), g.dimensions(), padding, &d); e.failure()) return e;
  d.bf16 = T == ffi::BF16;
  return Guard("convolution input gradient",
               [&] { RunConv(kBwdData, d, g.untyped_data(), w.untyped_data(), dx->untyped_data()); });
}

template <ffi::DataType T>
ffi::Error ConvBwdWeights(ffi::Buffer<T> x, ffi::Buffer<T> g, ffi::ResultBuffer<ffi::F32> dw,
                          ffi::Span<const int64_t> padding) {
  ConvDims d;
  if (auto e = ConvDimsFrom(x.dimensions(), dw->dimensions(), g.dimensions(), padding, &d); e.failure()) return e;
  d.bf16 = T == ffi::BF16;
  return Guard("convolution kernel gradient",
               [&] { RunConv(kBwdWeights, d, x.untyped_data(), g.untyped_data(), dw->untyped_data()); });
}

template <ffi::DataType T>
ffi::Error ConvBwdWeightsBias(ffi::Buffer<T> x, ffi::Buffer<T> g, ffi::ResultBuffer<ffi::F32> dw,
                              ffi::ResultBuffer<ffi::F32> db, ffi::Span<const int64_t> padding) {
  ConvDims d;
  if (auto e = ConvDimsFrom(x.dimensions(), dw->dimensions(), g.dimensions(), padding, &d); e.failure()) return e;
  if (db->dimensions().size() != 1 || db->dimensions()[0] != d.f)
    return ffi::Error::InvalidArgument("deepsea oneDNN convolution: the bias gradient must have one value per channel");
  d.bias_act = true;
  d.bf16 = T == ffi::BF16;
  return Guard("convolution kernel and bias gradient", [&] {
    RunConv(kBwdWeights, d, x.untyped_data(), g.untyped_data(), dw->untyped_data(), db->untyped_data());
  });
}

ffi::Error PoolDimsFrom(ffi::Span<const int64_t> x, ffi::Span<const int64_t> y, ffi::Span<const int64_t> window,
                        ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding, PoolMode mode, bool bf16,
                        PoolDims* d) {
  if (x.size() != 4 || y.size() != 4 || window.size() != 2 || strides.size() != 2 || padding.size() != 4)
    return ffi::Error::InvalidArgument(
        "deepsea oneDNN max pooling: expects rank-4 NHWC arrays, 2 window sizes, 2 strides and 4 paddings");
  *d = PoolDims{x[0],       x[1],       x[2],       x[3],       y[1],       y[2],       window[0], window[1],
                strides[0], strides[1], padding[0], padding[1], padding[2], padding[3], mode,      bf16};
  if (y[0] != x[0] || y[3] != x[3] || d->sh < 1 || d->sw < 1 || d->kh < 1 || d->kw < 1 ||
      d->ho != (d->h + d->pt + d->pb - d->kh) / d->sh + 1 || d->wo != (d->w + d->pl + d->pr - d->kw) / d->sw + 1)
    return ffi::Error::InvalidArgument("deepsea oneDNN max pooling: inconsistent shapes");
  return ffi::Error::Success();
}

template <ffi::DataType T>
ffi::Error MaxPool(ffi::Buffer<T> x, ffi::ResultBuffer<T> y, ffi::Span<const int64_t> window,
                   ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding) {
  PoolDims d;
  if (auto e = PoolDimsFrom(x.dimensions(), y->dimensions(), window, strides, padding, kPoolInference,
                            T == ffi::BF16, &d);
      e.failure())
    return e;
  return Guard("max pooling", [&] { RunPool(d, x.untyped_data(), nullptr, 0, y->untyped_data()); });
}

template <ffi::DataType T>
ffi::Error MaxPoolTrain(ffi::Buffer<T> x, ffi::ResultBuffer<T> y, ffi::ResultBuffer<ffi::U8> ws,
                        ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                        ffi::Span<const int64_t> padding) {
  PoolDims d;
  if (auto e = PoolDimsFrom(x.dimensions(), y->dimensions(), window, strides, padding, kPoolTraining,
                            T == ffi::BF16, &d);
      e.failure())
    return e;
  return Guard("max pooling",
               [&] { RunPool(d, x.untyped_data(), ws->untyped_data(), ws->size_bytes(), y->untyped_data()); });
}

template <ffi::DataType T>
ffi::Error MaxPoolBwd(ffi::Buffer<ffi::U8> ws, ffi::Buffer<T> g, ffi::ResultBuffer<T> dx,
                      ffi::Span<const int64_t> window, ffi::Span<const int64_t> strides,
                      ffi::Span<const int64_t> padding) {
  PoolDims d;
  if (auto e = PoolDimsFrom(dx->dimensions(), g.dimensions(), window, strides, padding, kPoolBackward,
                            T == ffi::BF16, &d);
      e.failure())
    return e;
  return Guard("max pooling gradient",
               [&] { RunPool(d, g.untyped_data(), ws.untyped_data(), ws.size_bytes(), dx->untyped_data()); });
}

template <ffi::DataType T>
ffi::Error Matmul(ffi::Buffer<T> a, ffi::Buffer<T> b, ffi::ResultBuffer<T> c, bool transpose_a, bool transpose_b) {
  auto as = a.dimensions(), bs = b.dimensions(), cs = c->dimensions();
  if (as.size() != 2 || bs.size() != 2 || cs.size() != 2)
    return ffi::Error::InvalidArgument("deepsea oneDNN matmul: expects matrices");
  const int64_t m = transpose_a ? as[1] : as[0], k = transpose_a ? as[0] : as[1];
  const int64_t kb = transpose_b ? bs[1] : bs[0], n = transpose_b ? bs[0] : bs[1];
  if (k != kb || cs[0] != m || cs[1] != n)
    return ffi::Error::InvalidArgument("deepsea oneDNN matmul: inconsistent shapes");
  MatmulDims d{m, k, n, transpose_a, transpose_b, T == ffi::BF16};
  return Guard("matmul", [&] { RunMatmul(d, a.untyped_data(), b.untyped_data(), c->untyped_data()); });
}

}  // namespace

// Each handler twice: float32 activations (the plain names) and bfloat16 activations (`_bf16`); kernels, kernel
// gradients and biases are float32 in both.
#define DEEPSEA_CONV(NAME, FN, A, B, R)                                                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, FN, ffi::Ffi::Bind().Arg<A>().Arg<B>().Ret<R>().Attr<ffi::Span<const int64_t>>("padding"))

#define DEEPSEA_CONV_BOTH(NAME, FN, A, B, R, A16, B16, R16) \
  DEEPSEA_CONV(NAME, FN<ffi::F32>, A, B, R);                 \
  DEEPSEA_CONV(NAME##_bf16, FN<ffi::BF16>, A16, B16, R16)

using F32Buf = ffi::Buffer<ffi::F32>;
using BF16Buf = ffi::Buffer<ffi::BF16>;

DEEPSEA_CONV_BOTH(deepsea_conv_fwd, ConvFwd, F32Buf, F32Buf, F32Buf, BF16Buf, F32Buf, BF16Buf);
DEEPSEA_CONV_BOTH(deepsea_conv_bwd_data, ConvBwdData, F32Buf, F32Buf, F32Buf, BF16Buf, F32Buf, BF16Buf);
DEEPSEA_CONV_BOTH(deepsea_conv_bwd_weights, ConvBwdWeights, F32Buf, F32Buf, F32Buf, BF16Buf, BF16Buf, F32Buf);

#define DEEPSEA_CONV_ACT(NAME, FN, A)                                                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, FN, ffi::Ffi::Bind().Arg<A>().Arg<F32Buf>().Arg<F32Buf>().Ret<A>()     \
                                              .Attr<ffi::Span<const int64_t>>("padding").Attr<float>("negative_slope"))
DEEPSEA_CONV_ACT(deepsea_conv_fwd_bias_leaky_relu, ConvFwdBiasAct<ffi::F32>, F32Buf);
DEEPSEA_CONV_ACT(deepsea_conv_fwd_bias_leaky_relu_bf16, ConvFwdBiasAct<ffi::BF16>, BF16Buf);

#define DEEPSEA_CONV_WB(NAME, FN, A)                                                                     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, FN, ffi::Ffi::Bind().Arg<A>().Arg<A>().Ret<F32Buf>().Ret<F32Buf>() \
                                              .Attr<ffi::Span<const int64_t>>("padding"))
DEEPSEA_CONV_WB(deepsea_conv_bwd_weights_bias, ConvBwdWeightsBias<ffi::F32>, F32Buf);
DEEPSEA_CONV_WB(deepsea_conv_bwd_weights_bias_bf16, ConvBwdWeightsBias<ffi::BF16>, BF16Buf);

#define DEEPSEA_POOL_ATTRS                      \
  .Attr<ffi::Span<const int64_t>>("window")     \
      .Attr<ffi::Span<const int64_t>>("strides") \
      .Attr<ffi::Span<const int64_t>>("padding")
#define DEEPSEA_POOL(NAME, FN, A) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, FN, ffi::Ffi::Bind().Arg<A>().Ret<A>() DEEPSEA_POOL_ATTRS)
#define DEEPSEA_POOL_TRAIN(NAME, FN, A) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, FN, ffi::Ffi::Bind().Arg<A>().Ret<A>().Ret<U8Buf>() DEEPSEA_POOL_ATTRS)
#define DEEPSEA_POOL_BWD(NAME, FN, A) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, FN, ffi::Ffi::Bind().Arg<U8Buf>().Arg<A>().Ret<A>() DEEPSEA_POOL_ATTRS)
using U8Buf = ffi::Buffer<ffi::U8>;
DEEPSEA_POOL(deepsea_max_pool, MaxPool<ffi::F32>, F32Buf);
DEEPSEA_POOL(deepsea_max_pool_bf16, MaxPool<ffi::BF16>, BF16Buf);
DEEPSEA_POOL_TRAIN(deepsea_max_pool_train, MaxPoolTrain<ffi::F32>, F32Buf);
DEEPSEA_POOL_TRAIN(deepsea_max_pool_train_bf16, MaxPoolTrain<ffi::BF16>, BF16Buf);
DEEPSEA_POOL_BWD(deepsea_max_pool_bwd, MaxPoolBwd<ffi::F32>, F32Buf);
DEEPSEA_POOL_BWD(deepsea_max_pool_bwd_bf16, MaxPoolBwd<ffi::BF16>, BF16Buf);

#define DEEPSEA_MATMUL(NAME, FN, A)                                                                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, FN, ffi::Ffi::Bind().Arg<A>().Arg<A>().Ret<A>().Attr<bool>("transpose_a") \
                                              .Attr<bool>("transpose_b"))
DEEPSEA_MATMUL(deepsea_matmul, Matmul<ffi::F32>, F32Buf);
DEEPSEA_MATMUL(deepsea_matmul_bf16, Matmul<ffi::BF16>, BF16Buf);

// The bytes of oneDNN's max pooling workspace for an NHWC map (x: n, h, w, c; output ho x wo; window kh x kw; strides
// sh, sw; paddings top, bottom, left, right; bf16 or f32), or -1 with the reason in `err` (at most `err_size` bytes).
extern "C" int64_t deepsea_onednn_pool_workspace_bytes(const int64_t* dims, int bf16, char* err, int64_t err_size) {
  try {
    PoolDims d{dims[0], dims[1], dims[2],  dims[3],  dims[4],  dims[5],  dims[6],       dims[7],
               dims[8], dims[9], dims[10], dims[11], dims[12], dims[13], kPoolTraining, bf16 != 0};
    return static_cast<int64_t>(PoolWorkspaceBytes(d));
  } catch (const std::exception& e) {
    if (err != nullptr && err_size > 0) {
      const size_t n = std::min(std::strlen(e.what()), static_cast<size_t>(err_size - 1));
      std::memcpy(err, e.what(), n);
      err[n] = '\0';
    }
    return -1;
  }
}

// The time rows that have calls, as text, one per line: "key\timpl\tcalls\treorder_ns\texec_ns\tcandidates".
// Copies at most `size` - 1 bytes into `buf` (NUL-terminated) and returns the full length, so a caller can retry
// with a larger buffer; `reset` zeroes the rows afterwards, only when they all fit.
extern "C" int64_t deepsea_onednn_stats(char* buf, int64_t size, int reset) {
  std::lock_guard<std::mutex> lock(StatsMutex());
  std::ostringstream out;
  for (const auto& [key, row] : Stats()) {
    if (row.calls.load() == 0) continue;
    out << key << '\t' << row.impl << '\t' << row.calls.load() << '\t' << row.reorder_ns.load() << '\t'
        << row.exec_ns.load() << '\t' << row.candidates << '\n';
  }
  const std::string text = out.str();
  if (buf != nullptr && size > 0) {
    const size_t n = std::min(text.size(), static_cast<size_t>(size - 1));
    std::memcpy(buf, text.data(), n);
    buf[n] = '\0';
  }
  if (reset && buf != nullptr && static_cast<int64_t>(text.size()) < size) {
    for (auto& [key, row] : Stats()) row.calls = row.reorder_ns = row.exec_ns = 0;
  }
  return static_cast<int64_t>(text.size());
}
