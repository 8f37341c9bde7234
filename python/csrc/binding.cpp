// The torch binding: registers moekit's ops under torch.ops.moekit. It only translates:
// at::Tensor <-> moekit::TensorView, output allocation on the inputs' device, and
// moekit::Error -> the matching Python exception. Fake (meta) kernels live in
// python/moekit/_fake.py.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#if defined(MOEKIT_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

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

TensorView view(const char* op, const char* arg, const Tensor& t) {
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
  v.data = t.data_ptr();
  v.ndim = static_cast<int>(t.dim());
  for (int d = 0; d < v.ndim; ++d) {
    v.shape[d] = t.size(d);
    v.stride[d] = t.stride(d);
  }
  v.device = t.is_cuda() ? moekit::Device{moekit::DeviceType::kCUDA, t.get_device()} : moekit::Device{};
  if (!t.is_cpu() && !t.is_cuda()) {
    throw moekit::Error(moekit::Error::Kind::kDevice, std::string("moekit.") + op + ": '" + arg +
                                                          "' expected a CPU or CUDA tensor, got " + t.device().str());
  }
  return v;
}

TensorView view(const char* op, const char* arg, const OptTensor& t) {
  return t.has_value() ? view(op, arg, *t) : TensorView();
}

at::Device torch_device(const moekit::Device& d) {
  return d.type == moekit::DeviceType::kCPU ? at::Device(at::kCPU) : at::Device(at::kCUDA, d.index);
}

at::TensorOptions options(const moekit::Device& d, at::ScalarType dtype) {
  return at::TensorOptions().device(torch_device(d)).dtype(dtype);
}

// Makes the op's device current (restored on scope exit, so the caller's current device never
// changes) and names the stream to launch on: the current stream of *that* device.
class OnDevice {
 public:
  explicit OnDevice(const moekit::Device& device) {
    ctx_.cpu_threads = at::get_num_threads();
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
    moekit::quantize_mxfp4(wv, view("quantize_mxfp4", "blocks", blocks), view("quantize_mxfp4", "scales", scales),
                           on.ctx());
    return std::make_tuple(blocks, scales);
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
    moekit::route(lv, p.k,
                  {view(op, "expert_idx", idx), view(op, "expert_weight", weight), view(op, "expert_counts", counts),
                   view(op, "expert_offsets", offsets), view(op, "gather_idx", gather),
                   view(op, "scatter_idx", scatter)},
                  on.ctx());
    return std::make_tuple(idx, weight, counts, offsets, gather, scatter);
  });
}

Tensor matmul_ogs(const Tensor& x, const Tensor& w, const OptTensor& w_scales, const OptTensor& bias,
                  const OptTensor& expert_offsets, const OptTensor& gather_idx, const OptTensor& scatter_idx,
                  const OptTensor& combine_weight, bool swiglu, double swiglu_alpha, double swiglu_limit) {
  return translate_errors([&] {
    const char* op = "matmul_ogs";
    moekit::MatmulOgsArgs a;
    a.x = view(op, "x", x);
    a.w = {view(op, "w", w), view(op, "w_scales", w_scales)};
    a.bias = view(op, "bias", bias);
    a.expert_offsets = view(op, "expert_offsets", expert_offsets);
    a.gather_idx = view(op, "gather_idx", gather_idx);
    a.scatter_idx = view(op, "scatter_idx", scatter_idx);
    a.combine_weight = view(op, "combine_weight", combine_weight);
    a.swiglu = {swiglu, static_cast<float>(swiglu_alpha), static_cast<float>(swiglu_limit)};
    const moekit::MatmulOgsProblem p = moekit::check_matmul_ogs_inputs(a);
    const OnDevice on(p.device);
    Tensor out = at::empty({p.out_rows, p.out_cols}, options(p.device, x.scalar_type()));
    a.out = view(op, "out", out);
    Tensor workspace;  // only the CUDA backend needs one
    if (p.device.type == moekit::DeviceType::kCUDA) {
      workspace = at::empty({static_cast<int64_t>(moekit::matmul_ogs_workspace_bytes(p))}, options(p.device, at::kByte));
      a.workspace = view(op, "workspace", workspace);
    }
    moekit::matmul_ogs(a, on.ctx());
    return out;
  });
}

Tensor moe_mlp(const Tensor& x, const Tensor& gate_weight, const OptTensor& gate_bias, const Tensor& mlp1_weight,
               const OptTensor& mlp1_scales, const OptTensor& mlp1_bias, const Tensor& mlp2_weight,
               const OptTensor& mlp2_scales, const OptTensor& mlp2_bias, int64_t experts_per_token,
               double swiglu_alpha, double swiglu_limit) {
  return translate_errors([&] {
    const char* op = "moe_mlp";
    moekit::MoeMlpArgs a;
    a.x = view(op, "x", x);
    a.gate_weight = view(op, "gate_weight", gate_weight);
    a.gate_bias = view(op, "gate_bias", gate_bias);
    a.mlp1 = {view(op, "mlp1_weight", mlp1_weight), view(op, "mlp1_scales", mlp1_scales)};
    a.mlp1_bias = view(op, "mlp1_bias", mlp1_bias);
    a.mlp2 = {view(op, "mlp2_weight", mlp2_weight), view(op, "mlp2_scales", mlp2_scales)};
    a.mlp2_bias = view(op, "mlp2_bias", mlp2_bias);
    a.experts_per_token = experts_per_token;
    a.swiglu_alpha = static_cast<float>(swiglu_alpha);
    a.swiglu_limit = static_cast<float>(swiglu_limit);
    const moekit::MoeMlpProblem p = moekit::check_moe_mlp_inputs(a);
    const OnDevice on(p.device);
    Tensor y = at::empty({p.T, p.H}, options(p.device, x.scalar_type()));
    Tensor workspace = at::empty({static_cast<int64_t>(moekit::moe_mlp_workspace_size(a))},
                                 options(p.device, at::kByte));
    a.y = view(op, "y", y);
    a.workspace = view(op, "workspace", workspace);
    moekit::moe_mlp(a, on.ctx());
    return y;
  });
}

}  // namespace

TORCH_LIBRARY(moekit, m) {
  m.def("quantize_mxfp4(Tensor w) -> (Tensor blocks, Tensor scales)");
  m.def("dequantize_mxfp4(Tensor blocks, Tensor scales, ScalarType dtype) -> Tensor");
  m.def("route(Tensor logits, int k) -> (Tensor expert_idx, Tensor expert_weight, Tensor expert_counts, "
        "Tensor expert_offsets, Tensor gather_idx, Tensor scatter_idx)");
  m.def("matmul_ogs(Tensor x, Tensor w, Tensor? w_scales, Tensor? bias, Tensor? expert_offsets, "
        "Tensor? gather_idx, Tensor? scatter_idx, Tensor? combine_weight, bool swiglu, float swiglu_alpha, "
        "float swiglu_limit) -> Tensor");
  m.def("moe_mlp(Tensor x, Tensor gate_weight, Tensor? gate_bias, Tensor mlp1_weight, Tensor? mlp1_scales, "
        "Tensor? mlp1_bias, Tensor mlp2_weight, Tensor? mlp2_scales, Tensor? mlp2_bias, int experts_per_token, "
        "float swiglu_alpha, float swiglu_limit) -> Tensor");
}

// One implementation per op serves every device: it reads the device from the tensors.
#define MOEKIT_REGISTER_IMPLS(m)                     \
  m.impl("quantize_mxfp4", &quantize_mxfp4);         \
  m.impl("dequantize_mxfp4", &dequantize_mxfp4);     \
  m.impl("route", &route);                           \
  m.impl("matmul_ogs", &matmul_ogs);                 \
  m.impl("moe_mlp", &moe_mlp)

TORCH_LIBRARY_IMPL(moekit, CPU, m) { MOEKIT_REGISTER_IMPLS(m); }
#if defined(MOEKIT_WITH_CUDA)
TORCH_LIBRARY_IMPL(moekit, CUDA, m) { MOEKIT_REGISTER_IMPLS(m); }
#endif
