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

// 512: at 1024 threads cub's 64-bit block scan spilled 108 bytes (64 registers a thread; 51 and
// none at 512, sm_90a); gpt-oss's 32 and 128 experts take one thread each either way.
constexpr int kPlanThreads = 512;

// Offsets clamped to [0, P], so malformed ones cannot send a block out of bounds.
__device__ __forceinline__ void expert_rows(const MatmulOgsParams& p, int e, int64_t& lo, int64_t& hi) {
  lo = min(max(static_cast<int64_t>(p.expert_offsets[e]), int64_t{0}), p.P);
  hi = min(max(static_cast<int64_t>(p.expert_offsets[e + 1]), lo), p.P);
}

// Thread t of a kThreads block takes the contiguous run of experts [first, last); a block scan
// gives the index of the run's first tile of BM rows (`at`) and the number of all tiles.
template <int kThreads>
__device__ __forceinline__ void expert_tile_run(const MatmulOgsParams& p, int BM, int& first, int& last,
                                                int64_t& at, int64_t& total) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  const int chunk = (p.E + kThreads - 1) / kThreads;
  first = min(static_cast<int>(threadIdx.x) * chunk, p.E);
  last = min(first + chunk, p.E);
  int64_t tiles = 0;
  for (int e = first; e < last; ++e) {
    int64_t lo, hi;
    expert_rows(p, e, lo, hi);
    tiles += (hi - lo + BM - 1) / BM;
  }
  Scan(scan_storage).ExclusiveSum(tiles, at, total);
}

// One block lists the tiles in expert order.
template <int BM>
__global__ void __launch_bounds__(kPlanThreads) plan_tiles_kernel(const MatmulOgsParams p) {
  int first, last;
  int64_t at, total;
  expert_tile_run<kPlanThreads>(p, BM, first, last, at, total);
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

// A persistent kernel can list the tiles itself instead: each block scans the experts' tile
// counts once into shared memory (tile_start[e]: expert e's first tile; tile_start[E]: all),
// which saves plan_tiles_kernel's launch (~4 us) where that is a good part of the time: few
// rows. With many items per block, the binary search per item cost more than the launch
// (measured on an H100: E=128, T=128, mlp1 545 vs 532 + 4 us).
constexpr int kScanMaxExperts = 1024;  // tile_start's size
constexpr int64_t kScanMaxRows = 128;  // P up to this: the blocks scan; beyond, plan_tiles_kernel lists

__host__ __device__ constexpr bool blocks_scan_tiles(bool offsets, int64_t n_experts, int64_t rows) {
  return offsets && n_experts <= kScanMaxExperts && rows <= kScanMaxRows;
}

template <int kThreads>
__device__ __forceinline__ void scan_expert_tiles(const MatmulOgsParams& p, int BM, int* tile_start) {
  int first, last;
  int64_t at, total;
  expert_tile_run<kThreads>(p, BM, first, last, at, total);
  for (int e = first; e < last; ++e) {
    tile_start[e] = static_cast<int>(at);
    int64_t lo, hi;
    expert_rows(p, e, lo, hi);
    at += (hi - lo + BM - 1) / BM;
  }
  if (threadIdx.x == 0) tile_start[p.E] = static_cast<int>(total);
  __syncthreads();
}

// tile_at for a scanned list: the expert is the last one whose first tile is at most `index`
// (experts without tiles share their successor's first tile).
template <int BM>
__device__ __forceinline__ void scanned_tile_at(const MatmulOgsParams& p, const int* tile_start, int64_t index,
                                                int& expert, int64_t& row_begin, int64_t& row_end) {
  int lo = 0, hi = p.E - 1;  // tile_start[lo] <= index < tile_start[hi + 1]
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tile_start[mid] <= index) lo = mid;
    else hi = mid - 1;
  }
  int64_t first, last;
  expert_rows(p, lo, first, last);
  expert = lo;
  row_begin = first + (index - tile_start[lo]) * BM;
  row_end = min(last, row_begin + BM);
}

// The tile of block x; false if the block has no work.
template <int BM>
__device__ __forceinline__ bool locate_tile(const MatmulOgsParams& p, int& expert, int64_t& row_begin,
                                            int64_t& row_end) {
  if (static_cast<int64_t>(blockIdx.x) >= tile_count<BM>(p)) return false;
  tile_at<BM>(p, blockIdx.x, expert, row_begin, row_end);
  return true;
}

// For a 1-D grid over (row tile, column tile of BN of the `cols` output columns), column tiles
// fastest: the blocks of one row tile run together and read its gathered x rows from L2, not
// DRAM (one x tile per column tile, with row tiles fastest, made mlp1 at T = 8192 read 3.8 GB
// from DRAM). The tile of block x and its first column n0; false if the block has no work.
template <int BM, int BN>
__device__ __forceinline__ bool locate_column_tile(const MatmulOgsParams& p, int64_t cols, int& expert,
                                                   int64_t& row_begin, int64_t& row_end, int64_t& n0) {
  const int64_t n_tiles = (cols + BN - 1) / BN, tile = blockIdx.x / n_tiles;
  if (tile >= tile_count<BM>(p)) return false;
  tile_at<BM>(p, tile, expert, row_begin, row_end);
  n0 = static_cast<int64_t>(blockIdx.x % n_tiles) * BN;
  return true;
}

}  // namespace moekit::cuda
