#include <string>

#include "../../core/check.h"

#include "../kernels/routing/group.cuh"
#include "../kernels/routing/route_one_block.cuh"
#include "../kernels/routing/topk.cuh"
#include "../runtime/device_guard.h"
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_util.h"

namespace moekit::cuda {

void can_implement_route(const RouteProblem& p) {
  check::at_most("route", "logits", "experts", p.E, kTopkMaxExperts, "the CUDA top-k kernel's limit");
}

void route(const RouteProblem& p, const TensorView& logits, const RouteOutputs& out, const ExecContext& ctx) {
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of("route", p.device, ctx);
  const int E = static_cast<int>(p.E);
  const int chunks = group_chunks(E, p.T * p.k);
  const size_t group_smem = group_smem_bytes(E, chunks);
  if (p.T > 0 && p.T <= kRouteOneBlockTokens) {
    auto launch = [&](const auto* typed_logits) {
      route_one_block_kernel<<<1, kGroupThreads, group_smem, stream>>>(
          typed_logits, p.T, E, static_cast<int>(p.k), chunks, out.expert_idx.ptr<int32_t>(),
          out.expert_weight.ptr<float>(), out.expert_counts.ptr<int32_t>(), out.expert_offsets.ptr<int32_t>(),
          out.gather_idx.ptr<int32_t>(), out.scatter_idx.ptr<int32_t>());
    };
    if (logits.dtype == DType::kBFloat16) launch(logits.ptr<bf16>());
    else launch(logits.ptr<float>());
    MOEKIT_CHECK_LAUNCH(ctx, stream, "route_one_block_kernel");
    return;
  }
  if (p.T > 0) {
    constexpr int kWarpsPerBlock = 8;
    const unsigned grid = static_cast<unsigned>(ceil_div(p.T, kWarpsPerBlock));
    if (logits.dtype == DType::kBFloat16) {
      topk_softmax_kernel<<<grid, 32 * kWarpsPerBlock, 0, stream>>>(logits.ptr<bf16>(), p.T, p.E, p.k,
                                                                    out.expert_idx.ptr<int32_t>(), out.expert_weight.ptr<float>());
    } else {
      topk_softmax_kernel<<<grid, 32 * kWarpsPerBlock, 0, stream>>>(logits.ptr<float>(), p.T, p.E, p.k,
                                                                    out.expert_idx.ptr<int32_t>(), out.expert_weight.ptr<float>());
    }
    MOEKIT_CHECK_LAUNCH(ctx, stream, "topk_softmax_kernel");
  }
  group_by_expert_kernel<<<1, kGroupThreads, group_smem, stream>>>(
      out.expert_idx.ptr<int32_t>(), p.T * p.k, p.k, E, chunks, out.expert_counts.ptr<int32_t>(),
      out.expert_offsets.ptr<int32_t>(), out.gather_idx.ptr<int32_t>(), out.scatter_idx.ptr<int32_t>());
  MOEKIT_CHECK_LAUNCH(ctx, stream, "group_by_expert_kernel");
}

}  // namespace moekit::cuda
