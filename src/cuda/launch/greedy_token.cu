#include <algorithm>

#include "../kernels/sampling/greedy_token.cuh"
#include "../runtime/cluster_size.h"
#include "../runtime/device_guard.h"
#include "../runtime/device_info.h"
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_kernel.h"
#include "launch_util.h"

namespace moekit::cuda {
namespace {

// One block per ~16 KB of logits, up to a cluster's worth on sm_90 (one block elsewhere).
template <class T, bool kVec>
void launch_greedy_token(const GreedyTokenProblem& p, const TensorView& logits, const TensorView& position,
                         const TensorView& token, const TensorView& ids, cudaStream_t stream, int major) {
  constexpr auto kernel = &greedy_token_kernel<T, kVec>;
  const int64_t wanted = (p.V * static_cast<int64_t>(sizeof(T)) + 16383) / 16384;
  const int cluster = max_cluster_blocks<kernel>(kGreedyThreads, 0, p.device.index, major);
  const int blocks = static_cast<int>(std::min<int64_t>({wanted, kGreedyMaxBlocks, cluster}));
  launch_kernel_in_clusters(kernel, dim3(blocks), dim3(blocks), kGreedyThreads, 0, stream, chains_on(major),
                            logits.ptr<T>(), static_cast<int>(p.V), position.ptr<int32_t>(), static_cast<int>(p.L),
                            token.ptr<int32_t>(), ids.ptr<int32_t>());
}

}  // namespace

void greedy_token(const GreedyTokenProblem& p, const TensorView& logits, const TensorView& position,
                  const TensorView& token, const TensorView& ids, const ExecContext& ctx) {
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of("greedy_token", p.device, ctx);
  const int major = device_info(p.device.index).major;
  const bool vec = aligned(logits, 16);
  if (logits.dtype == DType::kBFloat16) {
    if (vec) launch_greedy_token<bf16, true>(p, logits, position, token, ids, stream, major);
    else launch_greedy_token<bf16, false>(p, logits, position, token, ids, stream, major);
  } else {
    if (vec) launch_greedy_token<float, true>(p, logits, position, token, ids, stream, major);
    else launch_greedy_token<float, false>(p, logits, position, token, ids, stream, major);
  }
  MOEKIT_CHECK_LAUNCH(ctx, stream, "greedy_token_kernel");
}

}  // namespace moekit::cuda
