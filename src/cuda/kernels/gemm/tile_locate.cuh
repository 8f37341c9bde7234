// Which (expert, row range) a matmul_ogs block computes: block x enumerates the row tiles of the
// experts in order, so the grid can be sized from shapes alone (P / BM + E tiles at most).
#pragma once

#include <cstdint>

#include "matmul_ogs_params.cuh"

namespace moekit::cuda {

// False if the block has no work. Offsets are clamped to [0, P] so malformed ones cannot send a
// block out of bounds.
template <int BM>
__device__ __forceinline__ bool locate_tile(const MatmulOgsParams& p, int& expert, int64_t& row_begin,
                                            int64_t& row_end) {
  int64_t tile = blockIdx.x;
  if (p.expert_offsets == nullptr) {
    expert = 0;
    row_begin = tile * BM;
    row_end = min(p.P, row_begin + BM);
    return row_begin < p.P;
  }
  for (int e = 0; e < p.E; ++e) {
    const int64_t lo = min(max(static_cast<int64_t>(p.expert_offsets[e]), int64_t{0}), p.P);
    const int64_t hi = min(max(static_cast<int64_t>(p.expert_offsets[e + 1]), lo), p.P);
    const int64_t tiles = (hi - lo + BM - 1) / BM;
    if (tile < tiles) {
      expert = e;
      row_begin = lo + tile * BM;
      row_end = min(hi, row_begin + BM);
      return true;
    }
    tile -= tiles;
  }
  return false;
}

}  // namespace moekit::cuda
