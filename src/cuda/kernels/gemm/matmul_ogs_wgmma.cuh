// matmul_ogs for many rows per expert on Hopper (sm_90a): MXFP4 weights, bf16 x, 128 x 128 output
// tiles (tokens x weight rows) of one expert per block, two warpgroups each issuing
// wgmma.m64n128k16 from shared memory for its 64 rows.
//
// Per 64-wide k step s, in every thread:
//   barrier; issue the wgmmas of step s (asynchronous); wait for its warpgroup's step s - 1
//   wgmmas (so one step stays in flight across the loop); copy x rows and MXFP4 codes for step
//   s + 2 by cp.async into the stages step s - 1 used; decode the codes it copied itself for step
//   s + 1 (one 32-code block, one scale) into a bf16 weight tile; fence for the async proxy.
// So the tensor cores run while the threads copy and decode. Rings: 3 x tiles (each warpgroup
// copies its own rows, so it can refill them once its own wgmmas are done), 3 decoded weight
// tiles (shared by both warpgroups: tile s + 1 was last read by step s - 2, which every thread
// has waited for before the barrier of step s), 3 code stages. Tiles use wgmma's 128-byte swizzle
// K-major layout (a row's 64 elements in one 128-byte line, chunks XOR-permuted by row), so 8
// threads copy one row's line from global memory whole and write 8 distinct banks. (The
// no-swizzle layout, 16 bytes per row per core matrix, made each warp's copy touch 32 rows: mlp1
// at T = 8192 took 5.6 ms instead of 3.0.) The epilogue (bias, SwiGLU, NaN for bad gather
// indices) is the tiled kernels'.
//
// Three forms (WgmmaForm): the forward; the backward's recompute of h, whose epilogue writes the
// gradient at h (tile_io.cuh; a form of its own, so the forward's epilogue carries none of it:
// with a runtime branch the layer measured 1-1.5% slower); and the transposed product.
// kTransposed: matmul_ogs_backward's product u[r] = x[r] W[e] (x holds rows of N, the gradient
// at h; out takes float32 rows of K). The reduction runs over the weight rows, 64 a step, and a
// block's 128 columns over K; the decoded tile is wgmma's MN-major B (a weight row's 64 k values
// along a 128-byte line, the tile's two halves of 64 columns 8 KB apart), so the decode writes
// whole lines as in the forward, and a thread's block is block wq of the tile's four in weight
// row wr of the step's 64.
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
static_assert(kBK * 2 == 128, "one 128-byte swizzle line per tile row");
constexpr int kXTileBytes = kBM * kBK * 2, kWTileBytes = kBN * kBK * 2, kCodeTileBytes = kBN * kBK / 2;
// Dynamic shared memory: the x, decoded-weight and code rings, plus slack to align them to 1 KB.
constexpr int kSmemBytes = kStages * (kXTileBytes + kWTileBytes + kCodeTileBytes) + 1024;
}  // namespace wg

enum class WgmmaForm { kForward, kRecompute, kTransposed };

template <WgmmaForm kForm>
__global__ void __launch_bounds__(wg::kThreads, 2) matmul_ogs_wgmma_kernel(const MatmulOgsParams p) {
#if MOEKIT_WGMMA
  using namespace wg;
  constexpr bool kTransposed = kForm == WgmmaForm::kTransposed;
  const int64_t red = kTransposed ? p.N : p.K;  // the reduction's length, and x's row length
  int e;
  int64_t row_begin, row_end, n0;
  if (!locate_column_tile<kBM, kBN>(p, kTransposed ? p.K : p.N, e, row_begin, row_end, n0)) return;

  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + (1024 - shared_address(smem_raw) % 1024) % 1024;
  unsigned char* xs = smem;                             // [kStages][kXTileBytes]
  unsigned char* ws = smem + kStages * kXTileBytes;     // [kStages][kWTileBytes]
  unsigned char* codes_s = ws + kStages * kWTileBytes;  // [kStages][256 threads][16]
  __shared__ int64_t src_row[kBM];
  gather_rows<kBM>(p, row_begin, row_end, src_row);
  __syncthreads();

  // The warpgroup index broadcast from lane 0, so the compiler sees it is warp-uniform and builds
  // the x descriptor in uniform registers.
  const int tid = threadIdx.x, warpgroup = __shfl_sync(0xffffffffu, tid / 128, 0), local = tid % 128;
  const int k_steps = static_cast<int>((red + kBK - 1) / kBK);
  const int k_blocks = static_cast<int>(p.K / 32);  // MXFP4 blocks per weight row; K % 32 == 0
  // This thread's copies, fixed for the block. x: chunk xc of rows xr + 16j (j < 4) of its
  // warpgroup's 64, so 8 consecutive threads copy one row's 128-byte line. Weights: one MXFP4
  // block a step (16 code bytes, at code_at of the code stage), which it also waits for and
  // decodes itself: block wb of each step's two in weight row n0 + wr (a thread pair reads the
  // row's 32 bytes), or, transposed, block wb of the tile's four in weight row 64 step + wr.
  const int xc = local % 8, xr = warpgroup * 64 + local / 8;
  const bf16* x_from[4];
  bool x_valid[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t src = src_row[xr + 16 * j];
    x_valid[j] = src >= 0;
    x_from[j] = static_cast<const bf16*>(p.x) + (src >= 0 ? src * red : 0) + xc * 8;
  }
  const int wr = kTransposed ? tid / 4 : tid / 2, wb = kTransposed ? tid % 4 : tid % 2;
  // This thread's block of step 0 (its code bytes and scale). Forward a step moves two blocks
  // along the row, in 32-bit offsets as the kernel had them before its transposed form (64-bit
  // ones cost the loop 13 instructions and the layer ~4%); transposed, 64 weight rows.
  const int64_t w_row0 = static_cast<int64_t>(e) * p.N + (kTransposed ? wr : n0 + wr);
  const int block0 = kTransposed ? static_cast<int>(n0 / 32) + wb : wb;
  const bool w_valid = kTransposed ? block0 < k_blocks : n0 + wr < p.N;
  const uint8_t* code_from = static_cast<const uint8_t*>(p.w) + (w_valid ? (w_row0 * k_blocks + block0) * 16 : 0);
  const uint8_t* scale_from = p.w_scales + (w_valid ? w_row0 * k_blocks + block0 : 0);
  const int64_t rows_step = static_cast<int64_t>(kBK) * k_blocks;  // transposed: blocks between steps
  auto block_valid = [&](int step) {
    if constexpr (kTransposed) return w_valid && static_cast<int64_t>(step) * kBK + wr < p.N;
    else return w_valid && 2 * step + wb < k_blocks;
  };
  auto block_offset = [&](int step) -> int64_t {  // in blocks from step 0's
    if constexpr (kTransposed) return step * rows_step;
    else return 2 * step;
  };
  const int code_at = wr * (kTransposed ? 64 : 32) + wb * 16;  // in a code stage

  auto issue = [&](int step) {  // x rows and codes of `step`, one commit group
    const int stage = step % kStages;
    const int64_t k0 = static_cast<int64_t>(step) * kBK;
    const bool k_valid = k0 + xc * 8 < red;
    const int64_t k_from = k_valid ? k0 : 0;  // past the row a copy reads nothing; its address stays in the row
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      cp_async_16(xs + stage * kXTileBytes + sw128_offset(xr + 16 * j, xc), x_from[j] + k_from,
                  x_valid[j] && k_valid ? 16 : 0);
    }
    const bool valid = block_valid(step);
    cp_async_16(codes_s + stage * kCodeTileBytes + code_at, valid ? code_from + block_offset(step) * 16 : code_from,
                valid ? 16 : 0);
  };
  auto load_scale = [&](int step) -> uint32_t { return block_valid(step) ? scale_from[block_offset(step)] : 127; };
  auto decode = [&](int step, uint32_t scale) {
    const int stage = step % kStages;
    const uint4 codes = *reinterpret_cast<const uint4*>(codes_s + stage * kCodeTileBytes + code_at);
    unsigned char* tile = ws + stage * kWTileBytes + (kTransposed ? (wb / 2) * (kWTileBytes / 2) : 0);
    const int chunk0 = kTransposed ? (wb % 2) * 4 : wb * 4;
    decode_e2m1_block(codes, scale, [&](int i, uint4 v) {
      *reinterpret_cast<uint4*>(tile + sw128_offset(wr, chunk0 + i)) = v;
    });
  };

  // Prologue: steps 0 and 1 in flight, step 0 decoded.
  issue(0);
  cp_async_commit();
  if (k_steps > 1) issue(1);
  cp_async_commit();
  cp_async_wait<1>();
  decode(0, load_scale(0));
  fence_proxy_async_shared();

  // Stage 0's descriptors, built once (a step adds its offsets).
  const uint64_t a_desc = wgmma_descriptor_sw128(xs + warpgroup * 64 * 128);
  const uint64_t b_desc = kTransposed ? wgmma_descriptor_mn_sw128(ws, kWTileBytes / 2) : wgmma_descriptor_sw128(ws);
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;
  auto run_step = [&](int step, uint32_t& scale) {  // scale: step + 1's on entry, step + 3's on exit
    __syncthreads();  // x and weights of this step are in (each thread waited and fenced its own)
    const int stage = step % kStages;
    cute::warpgroup_arrive();
#pragma unroll
    for (int j = 0; j < kBK / 16; ++j) {  // k16 sub-step j: 32 bytes into each K-major row, 16 MN-major rows on
      wgmma_m64n128k16_bf16<kTransposed>(
          acc, wgmma_descriptor_advance(a_desc, stage * kXTileBytes + 32 * j),
          wgmma_descriptor_advance(b_desc, stage * kWTileBytes + (kTransposed ? 16 * 128 : 32) * j));
    }
    cute::warpgroup_commit_batch();
    cute::warpgroup_wait<1>();  // this warpgroup's step - 1: its x rows and codes stage are free again

    if (step + 2 < k_steps) issue(step + 2);
    cp_async_commit();
    cp_async_wait<1>();  // this thread's copies for step + 1
    if (step + 1 < k_steps) decode(step + 1, scale);
    fence_proxy_async_shared();
    scale = step + 3 < k_steps ? load_scale(step + 3) : 127;
  };
  // Two scale registers, one for even and one for odd steps, each loaded two steps before its
  // decode (a single register handed along would wait for its load after one step).
  uint32_t scale_even = k_steps > 1 ? load_scale(1) : 127, scale_odd = k_steps > 2 ? load_scale(2) : 127;
  for (int step = 0; step < k_steps; step += 2) {
    run_step(step, scale_even);
    if (step + 1 < k_steps) run_step(step + 1, scale_odd);
  }
  cute::warpgroup_wait<0>();
  cp_async_wait<0>();

  // Epilogue: warp w of the warpgroup holds rows 16w + g and 16w + g + 8; acc[4j ..] columns
  // 8j + 2t. The bias is read before any store (the compiler cannot move loads above stores that
  // might alias them, and one round trip per column pair stalled every block's end).
  const int lane = tid % 32, g = lane / 4, t = lane % 4;
  const int row0 = warpgroup * 64 + (tid / 32 % 4) * 16 + g;
  if constexpr (kTransposed) {  // float32 rows of K (a multiple of 32: column pairs are whole)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t row = row_begin + row0 + 8 * h;
      if (row >= row_end) continue;
#pragma unroll
      for (int j = 0; j < kBN / 8; ++j) {
        const int64_t c = n0 + 8 * j + 2 * t;
        if (c < p.K) {
          *reinterpret_cast<float2*>(static_cast<float*>(p.out) + row * p.K + c) =
              make_float2(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
        }
      }
    }
    return;
  }
  if (p.bias) {
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int64_t n = n0 + 8 * j + 2 * t;
      const float b0 = n < p.N ? load_float(p.bias, p.bias_bf16, static_cast<int64_t>(e) * p.N + n) : 0.0f;
      const float b1 = n + 1 < p.N ? load_float(p.bias, p.bias_bf16, static_cast<int64_t>(e) * p.N + n + 1) : 0.0f;
      acc[4 * j] += b0;
      acc[4 * j + 1] += b1;
      acc[4 * j + 2] += b0;
      acc[4 * j + 3] += b1;
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int rr = row0 + 8 * h;
    if (row_begin + rr >= row_end) continue;
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j) {
      const int64_t n = n0 + 8 * j + 2 * t;
      if (n < p.N) {
        store_output_pair<kForm == WgmmaForm::kRecompute>(p, e, row_begin + rr, n, src_row[rr] == kBadRow, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1],
                          /*add_bias=*/false);
      }
    }
  }
#else
  __trap();  // chosen on sm_90 only: a build without sm_90a code must not write nothing silently
#endif
}

}  // namespace moekit::cuda
