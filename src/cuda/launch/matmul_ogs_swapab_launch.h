// The swap-AB kernels' launch (matmul_ogs_swapab.cuh), one per kernel shape: matmul_ogs's
// launcher runs the library's configs, bench/swapab_variants.cu any other shape.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>

#include "../../core/problem.h"
#include "../kernels/gemm/matmul_ogs_swapab.cuh"
#include "../runtime/device_info.h"
#include "../runtime/dynamic_smem.h"
#include "../runtime/occupancy.h"
#include "../runtime/tensor_map.h"
#include "matmul_ogs_launch.h"

namespace moekit::cuda {

// The token tiles listed; with a gather, their x rows staged (params.x_staged: the workspace's),
// else x's TMA descriptor built; then a persistent grid over (token tile, Sh::kTileCols weight
// rows) items: as many blocks as are resident at once (one an SM), never more than there can be
// items.
template <class Sh>
void launch_swapab(const MatmulOgsProblem& p, const MatmulOgsParams& params, cudaStream_t stream,
                   const ExecContext& ctx) {
  constexpr auto* kernel = matmul_ogs_swapab_kernel<Sh>;
  constexpr int R = Sh::kRows;
  static_assert(R <= kSwapabMaxTileRows, "x's staged rows run kSwapabMaxTileRows past P");
  plan_tiles<R>(params, stream, ctx);
  const int64_t sms = device_info(p.device.index).sm_count, tiles = max_row_tiles(params, R);
  CUtensorMap x_rows{};
  if (params.gather_idx != nullptr) {
    stage_x_kernel<R><<<static_cast<unsigned>(tiles * (R / 8)), swapab::kStageThreads, 0, stream>>>(params);
    MOEKIT_CHECK_LAUNCH(ctx, stream, "stage_x_kernel");
  } else if (params.K > 0) {  // K = 0: no k steps, nothing copied (the rows are their bias)
    x_rows = bf16_row_tiles(params.x, params.P, params.K, R);
  }
  allow_dynamic_smem<kernel>(Sh::kSmemBytes, p.device.index);
  const int64_t items = tiles * ceil_div(ceil_div(p.N, mxfp4_slabs::kRows), Sh::kSlabs);
  const int64_t resident = sms * resident_blocks_per_sm<kernel>(Sh::kThreads, Sh::kSmemBytes, p.device.index);
  kernel<<<static_cast<unsigned>(std::min(items, resident)), Sh::kThreads, Sh::kSmemBytes, stream>>>(params, x_rows);
}

}  // namespace moekit::cuda
