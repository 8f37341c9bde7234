// Which (expert, row range) a matmul_ogs block computes. With expert offsets, plan_tiles_kernel
// first lists the row tiles of the experts in order (one item per tile of BM rows). Block x then
// reads item x, and the blocks past the list (the grid is sized from shapes alone: P / BM + E
// tiles at most) exit after one load instead of scanning every expert's offsets; a persistent
// grid walks the list instead.
#pragma once

#include <cub/block/block_scan.cuh>

#include <cstdint>

#include "matmul_ogs_params.cuh"

namespace moekit::cuda {

constexpr int kPlanThreads = 1024;

// Offsets clamped to [0, P], so malformed ones cannot send a block out of bounds.
__device__ __forceinline__ void expert_rows(const MatmulOgsParams& p, int e, int64_t& lo, int64_t& hi) {
  lo = min(max(static_cast<int64_t>(p.expert_offsets[e]), int64_t{0}), p.P);
  hi = min(max(static_cast<int64_t>(p.expert_offsets[e + 1]), lo), p.P);
}

// One block: thread t takes a contiguous run of experts; a block scan places their tiles.
template <int BM>
__global__ void __launch_bounds__(kPlanThreads) plan_tiles_kernel(const MatmulOgsParams p) {
  using Scan = cub::BlockScan<int64_t, kPlanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  const int chunk = (p.E + kPlanThreads - 1) / kPlanThreads;
  const int first = min(static_cast<int>(threadIdx.x) * chunk, p.E), last = min(first + chunk, p.E);
  int64_t tiles = 0;
  for (int e = first; e < last; ++e) {
    int64_t lo, hi;
    expert_rows(p, e, lo, hi);
    tiles += (hi - lo + BM - 1) / BM;
  }
  int64_t at, total;
  Scan(scan_storage).ExclusiveSum(tiles, at, total);
  for (int e = first; e < last; ++e) {
    int64_t lo, hi;
    expert_rows(p, e, lo, hi);
    for (int64_t row = lo; row < hi; row += BM) p.tile_items[at++] = make_int2(e, static_cast<int>(row));
  }
  if (threadIdx.x == 0) *p.tile_count = static_cast<int>(total);
}

// The number of row tiles: listed by plan_tiles_kernel with expert offsets, else P / BM.
template <int BM>
__device__ __forceinline__ int64_t tile_count(const MatmulOgsParams& p) {
  return p.expert_offsets ? *p.tile_count : (p.P + BM - 1) / BM;
}

// The expert and row range of tile `index` < tile_count<BM>(p).
template <int BM>
__device__ __forceinline__ void tile_at(const MatmulOgsParams& p, int64_t index, int& expert, int64_t& row_begin,
                                        int64_t& row_end) {
  if (p.expert_offsets == nullptr) {
    expert = 0;
    row_begin = index * BM;
    row_end = min(p.P, row_begin + BM);
    return;
  }
  const int2 item = p.tile_items[index];
  int64_t lo, hi;
  expert_rows(p, item.x, lo, hi);
  expert = item.x;
  row_begin = item.y;
  row_end = min(hi, row_begin + BM);
}

// The tile of block x; false if the block has no work.
template <int BM>
__device__ __forceinline__ bool locate_tile(const MatmulOgsParams& p, int& expert, int64_t& row_begin,
                                            int64_t& row_end) {
  if (static_cast<int64_t>(blockIdx.x) >= tile_count<BM>(p)) return false;
  tile_at<BM>(p, blockIdx.x, expert, row_begin, row_end);
  return true;
}

}  // namespace moekit::cuda
