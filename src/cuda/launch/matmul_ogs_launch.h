// What matmul_ogs's launcher shares with its backward's: the kernels' arguments of a call, the
// list of row tiles, and the forward's kernel choice and launch for the problem's rows.
#pragma once

#include <cuda_runtime.h>

#include "../../core/problem.h"
#include "../kernels/gemm/matmul_ogs_params.cuh"
#include "../kernels/gemm/tile_locate.cuh"
#include "../runtime/check.h"
#include "launch_util.h"

namespace moekit::cuda {

// The kernels' arguments of a call, but for out and the workspace's parts.
MatmulOgsParams matmul_ogs_params(const MatmulOgsProblem& p, const MatmulOgsArgs& a);
// A forward call's: those and the workspace's parts (the tile list, x's staged rows, and with
// scatter the float32 rows the combine sums, as out).
MatmulOgsParams matmul_ogs_forward_params(const MatmulOgsProblem& p, const MatmulOgsArgs& a);

// Refuses (naming `op`) problems whose grids would pass the CUDA limits.
void check_matmul_ogs_grids(const char* op, const MatmulOgsProblem& p, const MatmulOgsArgs& a);

// The kernel that choose_matmul_ogs_kernel picks for the call, writing each problem row (h, its
// SwiGLU, or the backward's gradient at h: matmul_ogs_params.cuh) into params.out; no combine.
void launch_matmul_ogs_rows(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const MatmulOgsParams& params,
                            cudaStream_t stream, const ExecContext& ctx);

// With expert offsets, lists the row tiles of height BM (into params.tile_items) before a matmul
// kernel runs.
template <int BM>
void plan_tiles(const MatmulOgsParams& params, cudaStream_t stream, const ExecContext& ctx) {
  static_assert(BM >= kMinTileRows, "the workspace's tile list allows for tiles of kMinTileRows rows at least");
  if (params.expert_offsets == nullptr) return;
  plan_tiles_kernel<BM><<<1, kPlanThreads, 0, stream>>>(params);
  MOEKIT_CHECK_LAUNCH(ctx, stream, "plan_tiles_kernel");
}

// The row tiles of height BM a grid sized from shapes alone must allow for: P / BM, plus a
// partial tile per expert.
inline int64_t max_row_tiles(const MatmulOgsParams& params, int BM) {
  return ceil_div(params.P, BM) + (params.expert_offsets != nullptr ? params.E : 0);
}

}  // namespace moekit::cuda
