// moe_mlp for a few tokens: three kernels (src/cuda/kernels/moe) instead of the four matmul and
// routing launches of the general path, chained by programmatic dependent launch on sm_90.
#include <algorithm>

#include "../../core/check.h"
#include "../../core/matmul_ogs_config.h"
#include "../kernels/moe/decode_experts.cuh"
#include "../kernels/moe/decode_gate.cuh"
#include "../runtime/device_guard.h"
#include "../runtime/device_info.h"
#include "../runtime/dynamic_smem.h"
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_kernel.h"
#include "launch_util.h"

namespace moekit::cuda {
namespace {

using ExpertsConfig = MoeDecodeExpertsConfig<kMoeDecodeWarps, 1>;  // the warps moe_decode_plan splits for

// mlp1 (kCombine false) or mlp2, in the plan's way of filling the MMA (plan.halves).
template <auto kKernel>
void launch_experts_as(unsigned grid, unsigned threads, size_t smem, cudaStream_t stream, bool chained,
                       const MoeDecodeExpertsParams& m, int device) {
  allow_dynamic_smem<kKernel>(static_cast<int>(smem), device);
  launch_kernel(kKernel, grid, threads, smem, stream, chained, m);
}
template <bool kCombine>
void launch_experts(const MoeDecodePlan& plan, unsigned grid, unsigned threads, size_t smem, cudaStream_t stream,
                    bool chained, const MoeDecodeExpertsParams& m, int device) {
  if (plan.halves == 2) {
    launch_experts_as<moe_decode_experts_kernel<kCombine, 2, ExpertsConfig>>(grid, threads, smem, stream, chained, m, device);
  } else {
    launch_experts_as<moe_decode_experts_kernel<kCombine, 1, ExpertsConfig>>(grid, threads, smem, stream, chained, m, device);
  }
}

}  // namespace

bool moe_mlp_decode_fits(const MoeMlpProblem& p, const MoeMlpArgs& a) {
  const auto aligned16 = [](const TensorView& t) { return !t.present() || aligned(t, 16); };
  const DeviceInfo& device = device_info(p.device.index);
  // The expert kernels' x rows (and mlp1's group sums) and route in shared memory.
  const int halves = p.decode.halves;
  const size_t smem = std::max(moe_decode_mlp1_bytes(p.T, p.H, ExpertsConfig::kWarps, halves),
                               moe_decode_x_bytes(p.T * p.k, p.I, halves)) +
                      sizeof(DecodeRoute);
  return p.decode.fits && p.T <= moe_decode_max_tokens(p, device) &&
         smem <= static_cast<size_t>(device.max_smem_per_block_optin) &&
         a.x.dtype == DType::kBFloat16 && a.mlp1.scales.present() && a.mlp2.scales.present() && p.H % 8 == 0 &&
         p.I % 8 == 0 && aligned16(a.x) && aligned16(a.gate_weight) && aligned16(a.mlp1.values) &&
         aligned16(a.mlp2.values) && aligned16(a.workspace) && device.major >= 8;
}

void moe_mlp_decode(const MoeMlpProblem& p, const MoeMlpArgs& a, const ExecContext& ctx) {
  using namespace moe_decode;
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of("moe_mlp", p.device, ctx);
  const DeviceInfo& device = device_info(p.device.index);
  const bool chained = chains_on(device.major);
  const MoeMlpWorkspace& ws = p.workspace;
  const MoeDecodePlan& plan = p.decode;
  char* base = a.workspace.ptr<char>();
  float* logits = reinterpret_cast<float*>(base + ws.logits);
  uint4* x_paired = reinterpret_cast<uint4*>(base + ws.decode_x);
  int* counters = reinterpret_cast<int*>(base + ws.decode_counters);

  MoeDecodeGateParams gate{};
  gate.x = a.x.ptr<bf16>();
  gate.T = static_cast<int>(p.T);
  gate.H = p.H;
  gate.w = a.gate_weight.data;
  gate.w_bf16 = a.gate_weight.dtype == DType::kBFloat16;
  gate.bias = a.gate_bias.present() ? a.gate_bias.data : nullptr;
  gate.bias_bf16 = a.gate_bias.present() && a.gate_bias.dtype == DType::kBFloat16;
  gate.E = static_cast<int>(p.E);
  gate.logits = logits;
  gate.x_paired = x_paired;
  gate.counters = counters;
  gate.n_counters = plan.counters;
  launch_kernel(moe_decode_gate_kernel, static_cast<unsigned>(p.E), 32 * kGateWarps, 0, stream, chained, gate);
  MOEKIT_CHECK_LAUNCH(ctx, stream, "moe_decode_gate_kernel");

  MoeDecodeExpertsParams m{};
  m.logits = logits;
  m.route = base + ws.decode_route;
  m.T = static_cast<int>(p.T);
  m.E = static_cast<int>(p.E);
  m.k = p.k;
  m.partials = reinterpret_cast<float*>(base + ws.decode_partials);
  m.alpha = a.swiglu_alpha;
  m.limit = a.swiglu_limit;
  m.act = reinterpret_cast<bf16*>(base + ws.act);
  m.y = a.y.ptr<bf16>();
  const int64_t sms = device.sm_count;
  // One block per SM, with the warps its share of the units needs, and at least one group of
  // mlp1's k ranges (splits1 <= 4 warps, which meet in shared memory).
  const unsigned threads = static_cast<unsigned>(
      32 * std::clamp<int64_t>(std::max(ceil_div(std::max(plan.units1, plan.units2), sms), plan.splits1), 1,
                               ExpertsConfig::kWarps));
  const auto set_matmul = [&](const ExpertWeights& w, const TensorView& bias, int64_t N, int64_t K, const void* x,
                              int64_t splits) {
    m.x_stride = moe_decode_x_stride(K, plan.halves);
    m.w = w.values.ptr<uint8_t>();
    m.w_scales = w.scales.ptr<uint8_t>();
    m.N = N;
    m.K = K;
    m.bias = bias.present() ? bias.data : nullptr;
    m.bias_bf16 = bias.present() && bias.dtype == DType::kBFloat16;
    m.x = static_cast<const uint4*>(x);
    m.splits = static_cast<int>(splits);
  };

  set_matmul(a.mlp1, a.mlp1_bias, 2 * p.I, p.H, x_paired, plan.splits1);
  const size_t smem1 = moe_decode_mlp1_bytes(p.T, p.H, static_cast<int>(threads / 32), plan.halves);
  launch_experts<false>(plan, static_cast<unsigned>(sms), threads, smem1, stream, chained, m, p.device.index);
  MOEKIT_CHECK_LAUNCH(ctx, stream, "moe_decode_experts_kernel (mlp1)");

  set_matmul(a.mlp2, a.mlp2_bias, p.H, p.I, m.act, plan.splits2);
  m.counters = counters;
  const size_t smem2 = moe_decode_x_bytes(p.T * p.k, p.I, plan.halves);
  launch_experts<true>(plan, static_cast<unsigned>(sms), threads, smem2, stream, chained, m, p.device.index);
  MOEKIT_CHECK_LAUNCH(ctx, stream, "moe_decode_experts_kernel (mlp2)");
}

}  // namespace moekit::cuda
