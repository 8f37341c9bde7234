// matmul_ogs for many rows per expert on Hopper (sm_90a): MXFP4 weights, bf16 x, 128 x 128 output
// tiles (tokens x weight rows) of one expert per block, two warpgroups each issuing
// wgmma.m64n128k16 from shared memory.
//
// Per 64-wide k step: gathered x rows and raw MXFP4 codes arrive by cp.async in a 3-stage ring.
// The step's wgmmas run asynchronously while every thread decodes the codes it copied itself for
// the next step (one 32-code MXFP4 block: one scale) into the other half of a double-buffered bf16
// weight tile, so decoding overlaps the tensor cores. Tiles use wgmma's no-swizzle K-major layout:
// 8 x 8 core matrices of 128 contiguous bytes, consecutive along K, 8-row groups 1 KB apart.
// The epilogue (bias, SwiGLU, NaN for bad gather indices) is the tiled kernels'.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../element.cuh"
#include "../quant/e2m1_bf16.cuh"
#include "matmul_ogs_params.cuh"
#include "mma.cuh"
#include "tile_io.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace wg {
constexpr int kBM = 128, kBN = 128, kBK = 64, kStages = 3, kThreads = 256;
constexpr int kCoreBytes = 128;                    // one 8 x 8 bf16 core matrix
constexpr int kGroupBytes = kBK / 8 * kCoreBytes;  // one 8-row group of a tile: 1 KB
constexpr int kXTileBytes = kBM * kBK * 2, kWTileBytes = kBN * kBK * 2, kCodeTileBytes = kBN * kBK / 2;
// Dynamic shared memory: x ring, two decoded weight tiles, code ring.
constexpr int kSmemBytes = kStages * kXTileBytes + 2 * kWTileBytes + kStages * kCodeTileBytes;

// Byte offset of element (row, k) in a tile, and of the 8 elements at k .. k + 7 (k % 8 == 0).
__device__ __forceinline__ int core_offset(int row, int k) {
  return (row / 8) * kGroupBytes + (k / 8) * kCoreBytes + (row % 8) * 16 + (k % 8) * 2;
}
}  // namespace wg

__global__ void __launch_bounds__(wg::kThreads, 2) matmul_ogs_wgmma_kernel(const MatmulOgsParams p) {
#if MOEKIT_WGMMA
  using namespace wg;
  // Block x -> (row tile, column tile), column tiles fastest (see matmul_ogs_tiled.cuh).
  const int64_t n_tiles = (p.N + kBN - 1) / kBN, tile = blockIdx.x / n_tiles;
  if (tile >= tile_count<kBM>(p)) return;
  int e;
  int64_t row_begin, row_end;
  tile_at<kBM>(p, tile, e, row_begin, row_end);
  const int64_t n0 = static_cast<int64_t>(blockIdx.x % n_tiles) * kBN;

  extern __shared__ __align__(1024) unsigned char smem[];
  unsigned char* xs = smem;                                             // [kStages][kXTileBytes]
  unsigned char* ws = smem + kStages * kXTileBytes;                     // [2][kWTileBytes]
  unsigned char* codes_s = ws + 2 * kWTileBytes;                        // [kStages][kBN][32]
  __shared__ int64_t src_row[kBM];
  gather_rows<kBM>(p, row_begin, row_end, src_row);
  __syncthreads();

  const int tid = threadIdx.x;
  const int k_steps = static_cast<int>((p.K + kBK - 1) / kBK);
  const int k_blocks = static_cast<int>(p.K / 32);  // MXFP4 blocks per weight row; K % 32 == 0
  // This thread's copies, fixed for the block: x row `r`, 16-byte pieces r_piece + 2j (so 8
  // consecutive threads write 8 rows of one core-matrix column: distinct banks), and the MXFP4
  // block `b` of weight row `r` (16 code bytes), which it also waits for and decodes itself.
  const int r = tid % kBM, half = tid / kBM;
  const int64_t src = src_row[r];
  const bf16* x_from = static_cast<const bf16*>(p.x) + (src >= 0 ? src * p.K : 0);
  const bool w_valid = n0 + r < p.N;
  const int64_t w_row = static_cast<int64_t>(e) * p.N + n0 + r;
  const uint8_t* code_from = static_cast<const uint8_t*>(p.w) + (w_valid ? w_row * k_blocks * 16 : 0);
  const uint8_t* scale_from = p.w_scales + (w_valid ? w_row * k_blocks : 0);

  auto issue = [&](int step, int stage) {
    const int64_t k0 = static_cast<int64_t>(step) * kBK;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int piece = half + 2 * j;
      const bool valid = src >= 0 && k0 + piece * 8 < p.K;
      cp_async_16(xs + stage * kXTileBytes + core_offset(r, piece * 8), valid ? x_from + k0 + piece * 8 : x_from,
                  valid ? 16 : 0);
    }
    const int block = 2 * step + half;
    const bool valid = w_valid && block < k_blocks;
    cp_async_16(codes_s + stage * kCodeTileBytes + r * 32 + half * 16, valid ? code_from + block * 16 : code_from,
                valid ? 16 : 0);
  };
  auto load_scale = [&](int step) -> uint32_t {
    const int block = 2 * step + half;
    return w_valid && block < k_blocks ? scale_from[block] : 127;
  };
  auto decode = [&](int stage, int buf, uint32_t scale) {
    const uint4 c = *reinterpret_cast<const uint4*>(codes_s + stage * kCodeTileBytes + r * 32 + half * 16);
    const uint32_t words[4] = {c.x, c.y, c.z, c.w};
    const Mxfp4Multiplier m = mxfp4_multiplier(scale);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t v[4];
      decode_e2m1x8(words[i], m, v);
      *reinterpret_cast<uint4*>(ws + buf * kWTileBytes + core_offset(r, half * 32 + i * 8)) = make_uint4(v[0], v[1], v[2], v[3]);
    }
  };
  auto wrap = [](int stage) { return stage + 1 == kStages ? 0 : stage + 1; };

  // Prologue: steps 0 .. kStages-2 in flight (always commit, so group counts line up); decode step 0.
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_steps) issue(s, s);
    cp_async_commit();
  }
  cp_async_wait<kStages - 2>();
  decode(0, 0, load_scale(0));
  fence_proxy_async_shared();
  uint32_t scale_ahead = k_steps > 1 ? load_scale(1) : 127;

  const int warpgroup = tid / 128;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  int stage = 0, ahead_stage = kStages - 1;
  for (int step = 0; step < k_steps; ++step) {
    __syncthreads();  // this step's x and decoded weights are in; every wgmma of the last step is done
    const uint32_t scale = scale_ahead;
    scale_ahead = step + 2 < k_steps ? load_scale(step + 2) : 127;
    if (step + kStages - 1 < k_steps) issue(step + kStages - 1, ahead_stage);
    cp_async_commit();

    const int buf = step & 1;
    const unsigned char* a_tile = xs + stage * kXTileBytes + warpgroup * (64 / 8) * kGroupBytes;
    const unsigned char* b_tile = ws + buf * kWTileBytes;
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < kBK / 16; ++j) {
      wgmma_m64n128k16_bf16(acc, wgmma_descriptor(a_tile + 2 * j * kCoreBytes, kCoreBytes, kGroupBytes),
                            wgmma_descriptor(b_tile + 2 * j * kCoreBytes, kCoreBytes, kGroupBytes));
    }
    wgmma_commit();

    // While the tensor cores work: the next step's weights (a stale stage on the last step,
    // which nothing reads).
    cp_async_wait<kStages - 2>();
    decode(wrap(stage), buf ^ 1, scale);
    fence_proxy_async_shared();
    wgmma_wait<0>();
    stage = wrap(stage);
    ahead_stage = wrap(ahead_stage);
  }
  cp_async_wait<0>();

  // Epilogue: warp w of the warpgroup holds rows 16w + g and 16w + g + 8; acc[4j ..] columns 8j + 2t.
  const int lane = tid % 32, g = lane / 4, t = lane % 4;
  const int row0 = warpgroup * 64 + (tid / 32 % 4) * 16 + g;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int rr = row0 + 8 * h;
    if (row_begin + rr >= row_end) continue;
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int64_t n = n0 + 8 * j + 2 * t;
      if (n < p.N) store_output_pair(p, e, row_begin + rr, n, src_row[rr] == kBadRow, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
    }
  }
#endif
}

}  // namespace moekit::cuda
