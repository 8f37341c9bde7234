// The torch binding: registers moekit's ops under torch.ops.moekit. It only translates:
// at::Tensor <-> moekit::TensorView, output allocation on the inputs' device, and
// moekit::Error -> the matching Python exception. Calls on meta tensors are validated by the
// same C++ checks and return meta outputs without running (python/moekit/_fake.py sends fake
// and meta calls here). The ops are inference-only: an Autograd kernel refuses inputs that
// require grad while grad mode is on; calls no kernel takes (sparse tensors, None, other
// devices) are refused by name. moekit._eager (eager_calls.cpp) reads the eager calls of plain
// arguments in C and calls these ops through the dispatcher.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <array>
#include <cfloat>
#include <cmath>
#include <optional>
#include <tuple>

#if defined(MOEKIT_WITH_CUDA)
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "../../src/core/accept.h"
#include "../../src/core/check.h"
#include "../../src/core/mxfp4_slabs.h"
#include "../../src/core/problem.h"
#include "moekit/moekit.h"

namespace {

using moekit::DType;
using moekit::TensorView;
using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Runs `fn`, turning moekit::Error into the Python exception that fits its kind.
template <class Fn>
auto translate_errors(Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const moekit::Error& e) {
    switch (e.kind()) {
      case moekit::Error::Kind::kType: TORCH_CHECK_TYPE(false, e.what());
      case moekit::Error::Kind::kValue:
      case moekit::Error::Kind::kDevice: TORCH_CHECK_VALUE(false, e.what());
      default: TORCH_CHECK(false, e.what());
    }
  }
}

// The layout's name, as torch prints it (no iostreams here: see docs/design.md).
std::string layout_name(at::Layout layout) {
  switch (layout) {
    case at::kStrided: return "Strided";
    case at::kSparse: return "Sparse";
    case at::kSparseCsr: return "SparseCsr";
    case at::kSparseCsc: return "SparseCsc";
    case at::kSparseBsr: return "SparseBsr";
    case at::kSparseBsc: return "SparseBsc";
    case at::kMkldnn: return "Mkldnn";
    case at::kJagged: return "Jagged";
    default: return "a layout other than Strided";
  }
}

[[noreturn]] void refuse(moekit::Error::Kind kind, const std::string& op, const std::string& arg,
                        const std::string& expected, const std::string& got) {
  throw moekit::Error(kind, "moekit." + op + ": '" + arg + "' expected " + expected + ", got " + got);
}

TensorView view(const char* op, const char* arg, const Tensor& t) {
  if (!t.defined()) refuse(moekit::Error::Kind::kValue, op, arg, "a tensor", "None");
  TensorView v;
  switch (t.scalar_type()) {
    case at::kFloat: v.dtype = DType::kFloat32; break;
    case at::kBFloat16: v.dtype = DType::kBFloat16; break;
    case at::kByte: v.dtype = DType::kUInt8; break;
    case at::kInt: v.dtype = DType::kInt32; break;
    default:
      throw moekit::Error(moekit::Error::Kind::kType,
                          std::string("moekit.") + op + ": '" + arg +
                              "' expected a dtype moekit takes (float32, bfloat16, uint8, int32), got " +
                              std::string(c10::toString(t.scalar_type())));
  }
  if (t.dim() > moekit::kMaxDims) {
    throw moekit::Error(moekit::Error::Kind::kValue, std::string("moekit.") + op + ": '" + arg + "' expected at most " +
                                                         std::to_string(moekit::kMaxDims) + " dimensions, got " +
                                                         std::to_string(t.dim()));
  }
  if (!t.is_cpu() && !t.is_cuda() && !t.is_meta()) {
    refuse(moekit::Error::Kind::kDevice, op, arg, "a CPU, CUDA or meta tensor", t.device().str());
  }
  v.data = t.is_meta() ? nullptr : t.data_ptr();
  v.ndim = static_cast<int>(t.dim());
  for (int d = 0; d < v.ndim; ++d) {
    v.shape[d] = t.size(d);
    v.stride[d] = t.stride(d);
  }
  if (t.is_cuda()) v.device = {moekit::DeviceType::kCUDA, t.get_device()};
  else if (t.is_meta()) v.device = {moekit::DeviceType::kMeta, 0};
  return v;
}

TensorView view(const char* op, const char* arg, const OptTensor& t) {
  return t.has_value() ? view(op, arg, *t) : TensorView();
}

at::Device torch_device(const moekit::Device& d) {
  switch (d.type) {
    case moekit::DeviceType::kCUDA: return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(d.index));
    case moekit::DeviceType::kMeta: return at::Device(at::kMeta);
    case moekit::DeviceType::kCPU: break;
  }
  return at::Device(at::kCPU);
}

// Calls on meta tensors stop after validation and output allocation: there is nothing to run.
bool shapes_only(const moekit::Device& d) { return d.type == moekit::DeviceType::kMeta; }

// A Python float for a float32 parameter: values beyond float32's range are refused here, where
// they are still doubles (NaN and infinities pass on, for the op's own checks).
float to_float(const char* op, const char* arg, double v) {
  if (std::isfinite(v) && std::fabs(v) > FLT_MAX) {
    refuse(moekit::Error::Kind::kValue, op, arg, "a value within float32's range", moekit::check::format_number(v));
  }
  return static_cast<float>(v);
}

at::TensorOptions options(const moekit::Device& d, at::ScalarType dtype) {
  return at::TensorOptions().device(torch_device(d)).dtype(dtype);
}

// Makes the op's device current (restored on scope exit, so the caller's current device never
// changes) and names the stream to launch on: the current stream of *that* device.
class OnDevice {
 public:
  explicit OnDevice(const moekit::Device& device) {
    // moekit's CPU loops on torch's intra-op pool: one owner for the CPU threads.
    ctx_.cpu_parallel = [](int64_t n, int64_t grain, const moekit::ExecContext::ParallelBody& body) {
      at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) { body(begin, end); });
    };
#if defined(MOEKIT_WITH_CUDA)
    if (device.type == moekit::DeviceType::kCUDA) {
      guard_.emplace(torch_device(device));
      ctx_.cuda_stream = c10::cuda::getCurrentCUDAStream(device.index).stream();
      ctx_.cuda_stream_given = true;
    }
#endif
  }
  const moekit::ExecContext& ctx() const { return ctx_; }

 private:
#if defined(MOEKIT_WITH_CUDA)
  std::optional<c10::cuda::CUDAGuard> guard_;
#endif
  moekit::ExecContext ctx_;
};

// An op's workspace on the op's device (current under OnDevice), freed when the call returns:
// the memory an at::empty of its bytes would hold (on CUDA torch's caching allocator, on the
// current stream, inside a capture's pool), without the dispatch, storage and tensor at::empty
// makes around it: host time on the eager decode step's path to its first launch.
class Workspace {
 public:
  Workspace(const moekit::Device& device, size_t bytes)
      : data_(allocator(device)->allocate(bytes)),
        view_(data_.get(), DType::kUInt8, {static_cast<int64_t>(bytes)}, device) {}
  const TensorView& view() const { return view_; }

 private:
  static c10::Allocator* allocator(const moekit::Device& device) {
#if defined(MOEKIT_WITH_CUDA)
    if (device.type == moekit::DeviceType::kCUDA) return c10::cuda::CUDACachingAllocator::get();
#endif
    return c10::GetCPUAllocator();
  }
  c10::DataPtr data_;
  TensorView view_;
};

std::vector<int64_t> with(std::vector<int64_t> lead, std::initializer_list<int64_t> tail) {
  lead.insert(lead.end(), tail);
  return lead;
}

std::tuple<Tensor, Tensor> quantize_mxfp4(const Tensor& w) {
  return translate_errors([&] {
    const TensorView wv = view("quantize_mxfp4", "w", w);
    const moekit::MxProblem p = moekit::check_quantize_mxfp4_inputs(wv);
    const OnDevice on(p.device);
    Tensor blocks = at::empty(with(p.lead, {p.K / 32, 16}), options(p.device, at::kByte));
    Tensor scales = at::empty(with(p.lead, {p.K / 32}), options(p.device, at::kByte));
    if (shapes_only(p.device)) return std::make_tuple(blocks, scales);
    moekit::quantize_mxfp4(wv, view("quantize_mxfp4", "blocks", blocks), view("quantize_mxfp4", "scales", scales),
                           on.ctx());
    return std::make_tuple(blocks, scales);
  });
}

std::tuple<Tensor, Tensor> repack_mxfp4(const Tensor& blocks, const Tensor& scales) {
  return translate_errors([&] {
    const char* op = "repack_mxfp4";
    const TensorView bv = view(op, "blocks", blocks), sv = view(op, "scales", scales);
    const moekit::MxSlabsProblem p = moekit::check_repack_mxfp4_inputs(bv, sv);
    const OnDevice on(p.device);
    Tensor codes = at::empty({p.E, p.slabs, p.steps, moekit::mxfp4_slabs::kCodeBytes}, options(p.device, at::kByte));
    Tensor slab_scales =
        at::empty({p.E, p.slabs, p.steps, moekit::mxfp4_slabs::kScaleBytes}, options(p.device, at::kByte));
    if (shapes_only(p.device)) return std::make_tuple(codes, slab_scales);
    moekit::repack_mxfp4(bv, sv, view(op, "codes", codes), view(op, "slab_scales", slab_scales), on.ctx());
    return std::make_tuple(codes, slab_scales);
  });
}

Tensor dequantize_mxfp4(const Tensor& blocks, const Tensor& scales, at::ScalarType dtype) {
  return translate_errors([&] {
    const char* op = "dequantize_mxfp4";
    const TensorView bv = view(op, "blocks", blocks), sv = view(op, "scales", scales);
    const moekit::MxProblem p = moekit::check_dequantize_mxfp4_inputs(bv, sv);
    if (dtype != at::kFloat && dtype != at::kBFloat16) {
      throw moekit::Error(moekit::Error::Kind::kType, std::string("moekit.dequantize_mxfp4: 'dtype' expected "
                                                                  "float32 or bfloat16, got ") + c10::toString(dtype));
    }
    const OnDevice on(p.device);
    Tensor out = at::empty(with(p.lead, {p.K}), options(p.device, dtype));
    if (shapes_only(p.device)) return out;
    moekit::dequantize_mxfp4(bv, sv, view(op, "out", out), on.ctx());
    return out;
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> route(const Tensor& logits, int64_t k) {
  return translate_errors([&] {
    const char* op = "route";
    const TensorView lv = view(op, "logits", logits);
    const moekit::RouteProblem p = moekit::check_route_inputs(lv, k);
    const OnDevice on(p.device);
    const auto i32 = options(p.device, at::kInt);
    Tensor idx = at::empty({p.T, p.k}, i32), weight = at::empty({p.T, p.k}, options(p.device, at::kFloat));
    Tensor counts = at::empty({p.E}, i32), offsets = at::empty({p.E + 1}, i32);
    Tensor gather = at::empty({p.T * p.k}, i32), scatter = at::empty({p.T, p.k}, i32);
    if (shapes_only(p.device)) return std::make_tuple(idx, weight, counts, offsets, gather, scatter);
    moekit::route(lv, p.k,
                  {view(op, "expert_idx", idx), view(op, "expert_weight", weight), view(op, "expert_counts", counts),
                   view(op, "expert_offsets", offsets), view(op, "gather_idx", gather),
                   view(op, "scatter_idx", scatter)},
                  on.ctx());
    return std::make_tuple(idx, weight, counts, offsets, gather, scatter);
  });
}

// matmul_ogs's arguments (its out and workspace aside), for it and its backward.
moekit::MatmulOgsArgs matmul_ogs_args(const char* op, const Tensor& x, const Tensor& w, const OptTensor& w_scales,
                                      const OptTensor& bias, const OptTensor& expert_offsets,
                                      const OptTensor& gather_idx, const OptTensor& scatter_idx,
                                      const OptTensor& combine_weight, bool swiglu, double swiglu_alpha,
                                      double swiglu_limit) {
  moekit::MatmulOgsArgs a;
  a.x = view(op, "x", x);
  a.w = {view(op, "w", w), view(op, "w_scales", w_scales)};
  a.bias = view(op, "bias", bias);
  a.expert_offsets = view(op, "expert_offsets", expert_offsets);
  a.gather_idx = view(op, "gather_idx", gather_idx);
  a.scatter_idx = view(op, "scatter_idx", scatter_idx);
  a.combine_weight = view(op, "combine_weight", combine_weight);
  a.swiglu = {swiglu, to_float(op, "swiglu_alpha", swiglu_alpha), to_float(op, "swiglu_limit", swiglu_limit)};
  return a;
}

Tensor matmul_ogs(const Tensor& x, const Tensor& w, const OptTensor& w_scales, const OptTensor& bias,
                  const OptTensor& expert_offsets, const OptTensor& gather_idx, const OptTensor& scatter_idx,
                  const OptTensor& combine_weight, bool swiglu, double swiglu_alpha, double swiglu_limit,
                  std::optional<at::ScalarType> out_dtype, const std::optional<std::string>& config,
                  const OptTensor& w_codes, const OptTensor& w_slab_scales, bool batch_invariant) {
  return translate_errors([&] {
    const char* op = "matmul_ogs";
    moekit::MatmulOgsArgs a = matmul_ogs_args(op, x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx,
                                              combine_weight, swiglu, swiglu_alpha, swiglu_limit);
    a.w.slab_codes = view(op, "w_codes", w_codes);
    a.w.slab_scales = view(op, "w_slab_scales", w_slab_scales);
    const moekit::MatmulOgsProblem p = moekit::check_matmul_ogs_inputs(a);
    const at::ScalarType dtype = out_dtype.value_or(x.scalar_type());
    if (dtype != x.scalar_type() && dtype != at::kFloat) {
      throw moekit::Error(moekit::Error::Kind::kType, std::string("moekit.matmul_ogs: 'out_dtype' expected x's "
                                                                  "dtype or float32, got ") + c10::toString(dtype));
    }
    const OnDevice on(p.device);
    Tensor out = at::empty({p.out_rows, p.out_cols}, options(p.device, dtype));
    if (shapes_only(p.device)) return out;
    a.out = view(op, "out", out);
    std::optional<Workspace> workspace;  // only the CUDA backend needs one
    if (p.device.type == moekit::DeviceType::kCUDA) a.workspace = workspace.emplace(p.device, p.workspace.total).view();
    moekit::ExecContext ctx = on.ctx();
    ctx.matmul_ogs_config = config.value_or("");
    ctx.batch_invariant = batch_invariant;
    moekit::matmul_ogs(a, ctx);
    return out;
  });
}

// The gradients of matmul_ogs (moekit::matmul_ogs_backward) that output_mask asks for (x, bias,
// combine_weight); one not asked for, or whose input the forward lacked, has no elements.
std::tuple<Tensor, Tensor, Tensor> matmul_ogs_backward(const Tensor& grad_out, const Tensor& x, const Tensor& w,
                                                       const OptTensor& w_scales, const OptTensor& bias,
                                                       const OptTensor& expert_offsets, const OptTensor& gather_idx,
                                                       const OptTensor& scatter_idx, const OptTensor& combine_weight,
                                                       bool swiglu, double swiglu_alpha, double swiglu_limit,
                                                       std::array<bool, 3> output_mask) {
  return translate_errors([&] {
    const char* op = "matmul_ogs_backward";
    moekit::MatmulOgsBackwardArgs b;
    b.forward = matmul_ogs_args(op, x, w, w_scales, bias, expert_offsets, gather_idx, scatter_idx, combine_weight,
                                swiglu, swiglu_alpha, swiglu_limit);
    b.grad_out = view(op, "grad_out", grad_out);
    const moekit::MatmulOgsProblem p = moekit::check_matmul_ogs_backward_inputs(b);
    const OnDevice on(p.device);
    const bool want_x = output_mask[0], want_bias = output_mask[1] && bias.has_value(),
               want_cw = output_mask[2] && combine_weight.has_value();
    Tensor grad_x = at::empty(want_x ? std::vector<int64_t>{p.M, p.K} : std::vector<int64_t>{0},
                              options(p.device, x.scalar_type()));
    Tensor grad_bias = at::empty(want_bias ? std::vector<int64_t>{p.E, p.N} : std::vector<int64_t>{0},
                                 options(p.device, bias.has_value() ? bias->scalar_type() : x.scalar_type()));
    Tensor grad_combine_weight = at::empty(want_cw ? std::vector<int64_t>{p.T, p.k} : std::vector<int64_t>{0},
                                           options(p.device, at::kFloat));
    if (want_x) b.grad_x = view(op, "grad_x", grad_x);
    if (want_bias) b.grad_bias = view(op, "grad_bias", grad_bias);
    if (want_cw) b.grad_combine_weight = view(op, "grad_combine_weight", grad_combine_weight);
    if (shapes_only(p.device)) return std::make_tuple(grad_x, grad_bias, grad_combine_weight);
    std::optional<Workspace> workspace;  // only the CUDA backend needs one
    if (p.device.type == moekit::DeviceType::kCUDA) {
      b.workspace = workspace.emplace(p.device, moekit::matmul_ogs_backward_workspace_size(b)).view();
    }
    moekit::matmul_ogs_backward(b, on.ctx());
    return std::make_tuple(grad_x, grad_bias, grad_combine_weight);
  });
}

Tensor moe_mlp(const Tensor& x, const Tensor& gate_weight, const OptTensor& gate_bias, const Tensor& mlp1_weight,
               const OptTensor& mlp1_scales, const OptTensor& mlp1_bias, const Tensor& mlp2_weight,
               const OptTensor& mlp2_scales, const OptTensor& mlp2_bias, int64_t experts_per_token,
               double swiglu_alpha, double swiglu_limit, const OptTensor& mlp1_codes,
               const OptTensor& mlp1_slab_scales, const OptTensor& mlp2_codes, const OptTensor& mlp2_slab_scales,
               bool batch_invariant) {
  return translate_errors([&] {
    const char* op = "moe_mlp";
    moekit::MoeMlpArgs a;
    a.x = view(op, "x", x);
    a.gate_weight = view(op, "gate_weight", gate_weight);
    a.gate_bias = view(op, "gate_bias", gate_bias);
    a.mlp1 = {view(op, "mlp1_weight", mlp1_weight), view(op, "mlp1_scales", mlp1_scales),
              view(op, "mlp1_codes", mlp1_codes), view(op, "mlp1_slab_scales", mlp1_slab_scales)};
    a.mlp1_bias = view(op, "mlp1_bias", mlp1_bias);
    a.mlp2 = {view(op, "mlp2_weight", mlp2_weight), view(op, "mlp2_scales", mlp2_scales),
              view(op, "mlp2_codes", mlp2_codes), view(op, "mlp2_slab_scales", mlp2_slab_scales)};
    a.mlp2_bias = view(op, "mlp2_bias", mlp2_bias);
    a.experts_per_token = experts_per_token;
    a.swiglu_alpha = to_float(op, "swiglu_alpha", swiglu_alpha);
    a.swiglu_limit = to_float(op, "swiglu_limit", swiglu_limit);
    const moekit::MoeMlpProblem p = moekit::check_moe_mlp_inputs(a);
    const OnDevice on(p.device);
    Tensor y = at::empty({p.T, p.H}, options(p.device, x.scalar_type()));
    if (shapes_only(p.device)) return y;
    const Workspace workspace(p.device, p.workspace.total);
    a.y = view(op, "y", y);
    a.workspace = workspace.view();
    moekit::ExecContext ctx = on.ctx();
    ctx.batch_invariant = batch_invariant;
    moekit::run_moe_mlp(p, a, ctx);  // p: its inputs checked above
    return y;
  });
}

std::tuple<Tensor, Tensor> add_rms_norm(const Tensor& x, const Tensor& residual, const Tensor& scale, double eps) {
  return translate_errors([&] {
    const char* op = "add_rms_norm";
    const TensorView xv = view(op, "x", x), rv = view(op, "residual", residual), sv = view(op, "scale", scale);
    const moekit::AddRmsNormProblem p = moekit::check_add_rms_norm_inputs(xv, rv, sv, to_float(op, "eps", eps));
    const OnDevice on(p.device);
    Tensor sum = at::empty({p.T, p.H}, options(p.device, x.scalar_type()));
    Tensor out = at::empty({p.T, p.H}, options(p.device, x.scalar_type()));
    if (shapes_only(p.device)) return std::make_tuple(sum, out);
    moekit::add_rms_norm(xv, rv, sv, p.eps, view(op, "sum", sum), view(op, "out", out), on.ctx());
    return std::make_tuple(sum, out);
  });
}

Tensor attention_decode(const Tensor& qkv, const Tensor& k_cache, const Tensor& v_cache, const Tensor& sinks,
                        const Tensor& position, const Tensor& inv_freq, double rope_scale, double sm_scale,
                        int64_t window) {
  return translate_errors([&] {
    const char* op = "attention_decode";
    moekit::AttentionDecodeArgs a;
    a.qkv = view(op, "qkv", qkv);
    a.k_cache = view(op, "k_cache", k_cache);
    a.v_cache = view(op, "v_cache", v_cache);
    a.sinks = view(op, "sinks", sinks);
    a.position = view(op, "position", position);
    a.inv_freq = view(op, "inv_freq", inv_freq);
    a.rope_scale = to_float(op, "rope_scale", rope_scale);
    a.sm_scale = to_float(op, "sm_scale", sm_scale);
    a.window = window;
    const moekit::AttentionDecodeProblem p = moekit::check_attention_decode_inputs(a);
    const OnDevice on(p.device);
    Tensor out = at::empty({p.T, p.Hq * p.D}, options(p.device, qkv.scalar_type()));
    if (shapes_only(p.device)) return out;
    a.out = view(op, "out", out);
    std::optional<Workspace> workspace;  // the CUDA backend's partials when it splits the keys
    if (p.workspace > 0 && p.device.type == moekit::DeviceType::kCUDA) {
      a.workspace = workspace.emplace(p.device, p.workspace).view();
    }
    moekit::attention_decode(a, on.ctx());
    return out;
  });
}

void greedy_token(const Tensor& logits, const Tensor& position, const Tensor& token, const Tensor& ids) {
  translate_errors([&] {
    const char* op = "greedy_token";
    const TensorView lv = view(op, "logits", logits), pv = view(op, "position", position);
    const TensorView tv = view(op, "token", token), iv = view(op, "ids", ids);
    const moekit::GreedyTokenProblem p = moekit::check_greedy_token_args(lv, pv, tv, iv);
    if (shapes_only(p.device)) return 0;
    const OnDevice on(p.device);
    moekit::greedy_token(lv, pv, tv, iv, on.ctx());
    return 0;
  });
}

// ---------------------------------------------------------------------- around every op

// "moekit.<op>" from the schema's "moekit::<op>".
std::string op_name(const c10::OperatorHandle& op) { return "moekit." + op.schema().name().substr(8); }

// The op's arguments on a boxed stack, with their schema entries.
template <class Fn>  // Fn(const c10::Argument& arg, const c10::IValue& value)
void for_each_argument(const c10::OperatorHandle& op, const torch::jit::Stack* stack, Fn&& fn) {
  const auto& args = op.schema().arguments();
  for (size_t i = 0; i < args.size(); ++i) fn(args[i], (*stack)[stack->size() - args.size() + i]);
}

// The Autograd kernel of the ops without a backward: with grad mode on, an input that requires
// grad is refused at the call (instead of outputs that silently carry no gradient). The backward
// ops are among them: a gradient of a gradient is refused the same way.
void inference_only(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  if (c10::GradMode::is_enabled()) {
    const std::string name = op_name(op);
    const bool backward = name.size() > 9 && name.compare(name.size() - 9, 9, "_backward") == 0;
    for_each_argument(op, stack, [&](const c10::Argument& arg, const c10::IValue& v) {
      if (!(v.isTensor() && v.toTensor().requires_grad())) return;
      TORCH_CHECK(!backward, name, ": '", arg.name(),
                  "' requires grad, but moekit computes first-order gradients only (no gradient of a gradient: "
                  "do not pass create_graph=True through moekit ops)");
      TORCH_CHECK(false, name, ": '", arg.name(),
                  "' requires grad, but this moekit op is inference-only (it has no backward); call it under "
                  "torch.no_grad() or torch.inference_mode(), or pass ", arg.name(), ".detach()");
    });
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

// The kernel of calls no backend kernel of moekit takes (registered for the sparse dispatch keys
// and as the fallback of every other key): it names the argument that sent the call here, a
// tensor of another layout first (mixed with dense tensors, that is what did), then None for a
// required tensor, then a tensor on a device moekit has no backend for.
void refuse_call(const c10::OperatorHandle& op, c10::DispatchKeySet, torch::jit::Stack* stack) {
  auto defined = [](const c10::IValue& v) { return v.isTensor() && v.toTensor().defined(); };
  for_each_argument(op, stack, [&](const c10::Argument& arg, const c10::IValue& v) {
    TORCH_CHECK_TYPE(!defined(v) || v.toTensor().layout() == at::kStrided, op_name(op), ": '", arg.name(),
                     "' expected a dense (strided) tensor, got layout ", layout_name(v.toTensor().layout()));
  });
  for_each_argument(op, stack, [&](const c10::Argument& arg, const c10::IValue& v) {
    TORCH_CHECK_VALUE(defined(v) || arg.type()->kind() != c10::TypeKind::TensorType, op_name(op), ": '",
                      arg.name(), "' expected a tensor, got None");
  });
  for_each_argument(op, stack, [&](const c10::Argument& arg, const c10::IValue& v) {
    TORCH_CHECK_VALUE(!defined(v), op_name(op), ": '", arg.name(), "' expected a CPU, CUDA or meta tensor, got ",
                      defined(v) ? v.toTensor().device().str() : "");
  });
  TORCH_CHECK(false, op_name(op), ": no kernel for these arguments");
}

// check_devices(op, names, devices): the device rule of every op (all tensors on one device),
// for fake tensors, whose devices python/moekit/_fake.py passes here by name ("cpu", "cuda:1").
void check_devices(c10::string_view op, const std::vector<std::string>& names, const std::vector<std::string>& devices) {
  translate_errors([&] {
    TORCH_CHECK(names.size() == devices.size(), "moekit.check_devices: one device per name expected");
    const std::string op_str(op);
    std::vector<TensorView> views(names.size());
    std::vector<std::pair<const char*, const TensorView*>> named;
    for (size_t i = 0; i < names.size(); ++i) {
      const at::Device d(devices[i]);
      views[i].ndim = 0;
      if (d.is_cuda()) views[i].device = {moekit::DeviceType::kCUDA, d.has_index() ? d.index() : 0};
      else if (d.is_meta()) views[i].device = {moekit::DeviceType::kMeta, 0};
      named.emplace_back(names[i].c_str(), &views[i]);
    }
    moekit::check::same_device(op_str.c_str(), named);
    return 0;
  });
}

constexpr const char* kOps[] = {"quantize_mxfp4", "dequantize_mxfp4", "repack_mxfp4", "route", "matmul_ogs",
                                "matmul_ogs_backward", "moe_mlp", "add_rms_norm", "attention_decode",
                                "greedy_token"};
// The ops whose gradients python/moekit/_autograd.py registers (torch.library.register_autograd):
// every other op gets the inference-only Autograd kernel.
constexpr const char* kDifferentiableOps[] = {"matmul_ogs", "route", "moe_mlp", "add_rms_norm"};

bool differentiable(const char* op) {
  for (const char* d : kDifferentiableOps) {
    if (std::string(d) == op) return true;
  }
  return false;
}

}  // namespace

TORCH_LIBRARY(moekit, m) {
  m.def("quantize_mxfp4(Tensor w) -> (Tensor blocks, Tensor scales)");
  m.def("dequantize_mxfp4(Tensor blocks, Tensor scales, ScalarType dtype) -> Tensor");
  m.def("repack_mxfp4(Tensor blocks, Tensor scales) -> (Tensor codes, Tensor slab_scales)");
  m.def("route(Tensor logits, int k) -> (Tensor expert_idx, Tensor expert_weight, Tensor expert_counts, "
        "Tensor expert_offsets, Tensor gather_idx, Tensor scatter_idx)");
  m.def("matmul_ogs(Tensor x, Tensor w, Tensor? w_scales, Tensor? bias, Tensor? expert_offsets, "
        "Tensor? gather_idx, Tensor? scatter_idx, Tensor? combine_weight, bool swiglu, float swiglu_alpha, "
        "float swiglu_limit, ScalarType? out_dtype=None, str? config=None, Tensor? w_codes=None, "
        "Tensor? w_slab_scales=None, bool batch_invariant=False) -> Tensor");
  m.def("matmul_ogs_backward(Tensor grad_out, Tensor x, Tensor w, Tensor? w_scales, Tensor? bias, "
        "Tensor? expert_offsets, Tensor? gather_idx, Tensor? scatter_idx, Tensor? combine_weight, bool swiglu, "
        "float swiglu_alpha, float swiglu_limit, bool[3] output_mask=[True, True, True]) -> (Tensor grad_x, "
        "Tensor grad_bias, Tensor grad_combine_weight)");
  m.def("moe_mlp(Tensor x, Tensor gate_weight, Tensor? gate_bias, Tensor mlp1_weight, Tensor? mlp1_scales, "
        "Tensor? mlp1_bias, Tensor mlp2_weight, Tensor? mlp2_scales, Tensor? mlp2_bias, int experts_per_token, "
        "float swiglu_alpha, float swiglu_limit, Tensor? mlp1_codes=None, Tensor? mlp1_slab_scales=None, "
        "Tensor? mlp2_codes=None, Tensor? mlp2_slab_scales=None, bool batch_invariant=False) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor scale, float eps) -> (Tensor sum, Tensor out)");
  m.def("attention_decode(Tensor qkv, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor sinks, Tensor position, "
        "Tensor inv_freq, float rope_scale, float sm_scale, int window) -> Tensor");
  m.def("greedy_token(Tensor logits, Tensor position, Tensor(a!) token, Tensor(b!) ids) -> ()");
  m.def("check_devices(str op, str[] names, str[] devices) -> ()", &check_devices);
}

// One implementation per op serves every device: it reads the device from the tensors.
#define MOEKIT_REGISTER_IMPLS(m)                     \
  m.impl("quantize_mxfp4", &quantize_mxfp4);         \
  m.impl("dequantize_mxfp4", &dequantize_mxfp4);     \
  m.impl("repack_mxfp4", &repack_mxfp4);             \
  m.impl("route", &route);                           \
  m.impl("matmul_ogs", &matmul_ogs);                 \
  m.impl("matmul_ogs_backward", &matmul_ogs_backward); \
  m.impl("moe_mlp", &moe_mlp);                       \
  m.impl("add_rms_norm", &add_rms_norm);             \
  m.impl("attention_decode", &attention_decode);     \
  m.impl("greedy_token", &greedy_token)

TORCH_LIBRARY_IMPL(moekit, CPU, m) { MOEKIT_REGISTER_IMPLS(m); }
#if defined(MOEKIT_WITH_CUDA)
TORCH_LIBRARY_IMPL(moekit, CUDA, m) { MOEKIT_REGISTER_IMPLS(m); }
#endif

TORCH_LIBRARY_IMPL(moekit, Autograd, m) {
  for (const char* op : kOps) {
    if (!differentiable(op)) m.impl(op, torch::CppFunction::makeFromBoxedFunction<&inference_only>());
  }
}

TORCH_LIBRARY_IMPL(moekit, CompositeExplicitAutograd, m) {
  for (const char* op : kOps) m.impl(op, torch::CppFunction::makeFromBoxedFunction<&refuse_call>());
}

#define MOEKIT_REFUSE_CALLS(key)                                                                          \
  TORCH_LIBRARY_IMPL(moekit, key, m) {                                                                     \
    for (const char* op : kOps) m.impl(op, torch::CppFunction::makeFromBoxedFunction<&refuse_call>());     \
  }
MOEKIT_REFUSE_CALLS(SparseCPU)
MOEKIT_REFUSE_CALLS(SparseCUDA)
MOEKIT_REFUSE_CALLS(SparseCsrCPU)
MOEKIT_REFUSE_CALLS(SparseCsrCUDA)
