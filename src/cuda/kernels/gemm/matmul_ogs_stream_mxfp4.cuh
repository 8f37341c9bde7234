// matmul_ogs for few rows per expert (decode) with MXFP4 weights, where the weights are the
// whole cost: each token tile reads its expert's weights once.
//
// Work items, MMA roles and the warps' fixed-order sum are stream_common.cuh's: 16 weight rows
// are mma.sync's M and 8 tokens its N. A step is one item's weights for up to kChunkBlocks k
// blocks (all of K = 2880): the block copies the next step's codes and scales into shared memory
// by cp.async while it computes the current one, so the copies are in flight behind the math
// (loaded straight into registers, ~24 KB per SM were in flight and DRAM ran under half speed).
//
// k order: every MMA's 16 k lie in one 32-wide block, so the block's scale multiplies the MMA's
// result (in float32, exactly: a power of two) instead of every weight. Lane (g, t) takes bytes
// 4t..4t+3 of a block's codes (codes 8t..8t+7) for rows g and g + 8, and the 8 bf16 token values
// 8t..8t+7 (one 16-byte load); MMA j of the block puts codes 8t + 4j .. 8t + 4j + 3 at its k
// slots 2t, 2t + 1, 2t + 8, 2t + 9, so both fragments are in memory order: codes decode through
// a constant table of the e2m1 magnitudes, and token values need no permute.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../quant/e2m1_bf16.cuh"
#include "matmul_ogs_params.cuh"
#include "mma.cuh"
#include "stream_common.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace stream {
constexpr int kChunkBlocks = 96;  // k blocks of 32 per step
// Staging buffer: 16 code rows, then 16 scale rows. Code rows are 97 words of 16 bytes apart,
// so the 4-byte reads of rows g = 0..7 (lanes 4g..4g+3) fall on distinct banks. Each scale row
// starts at the 4-byte word holding its first scale (cp.async copies aligned words).
constexpr int kCodeRowBytes = (kChunkBlocks + 1) * 16;
constexpr int kScaleRowBytes = kChunkBlocks + 4;
constexpr int kStageBytes = kCols * (kCodeRowBytes + kScaleRowBytes);
constexpr int kMxfp4SmemBytes = 2 * kStageBytes;  // double-buffered
constexpr int kMxfp4Threads = 128;                // 4 warps; the copy gives each thread one row's 8th
// Resident blocks per SM that the launch bounds leave registers for (shared memory allows 4 on
// an H100).
__host__ __device__ constexpr int mxfp4_min_blocks(int NT) { return NT == 4 ? 3 : 4; }
}  // namespace stream

// 2^(s - 127) for an e8m0 scale byte s < 255: 2^-127 (a float32 subnormal) for 0.
__device__ __forceinline__ float e8m0_to_float(uint32_t s) { return __uint_as_float(max(s << 23, 0x00400000u)); }

template <int NT>
__global__ void __launch_bounds__(stream::kMxfp4Threads, stream::mxfp4_min_blocks(NT))
    matmul_ogs_stream_mxfp4_kernel(const MatmulOgsParams p) {
  using namespace stream;
  constexpr int BM = 8 * NT;              // tokens per work item
  constexpr int kWarps = kMxfp4Threads / 32;
  constexpr int kGroup = 4 / NT;          // k blocks whose token values are loaded together
  static_assert(kWarps * sizeof(Partial<BM>) <= kStageBytes, "partial sums reuse a staging buffer");
  extern __shared__ __align__(16) unsigned char stage[];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;  // the MMA's row group and k/column slot
  const int64_t tiles = tile_count<BM>(p);
  const int64_t work = tiles * ((p.N + kCols - 1) / kCols);
  const int64_t k_blocks = p.K / 32;
  const int64_t chunks = (k_blocks + kChunkBlocks - 1) / kChunkBlocks;
  const int64_t items = work > blockIdx.x ? (work - 1 - blockIdx.x) / gridDim.x + 1 : 0;
  const bf16* x = static_cast<const bf16*>(p.x);
  const E2m1Table unit = e2m1_table(127);  // the magnitudes themselves

  // An item's expert, token rows and columns; `gathered` holds the x row of this lane's token in
  // each 8-token group, read by the copy of the item's first step but checked only when used.
  struct Tile {
    int e;
    int64_t row_begin, row_end, n0;
    int32_t gathered[NT];
  };
  Tile staged{};

  // Copies step s's weights into buffer s % 2 and keeps its tile in `staged` (nothing past the
  // last step). Always commits one cp.async group, so "all but the newest group" is step s - 1's.
  auto stage_step = [&](int64_t s) {
    if (s < items * chunks) {
      const int64_t item = blockIdx.x + (chunks == 1 ? s : s / chunks) * gridDim.x;
      const int64_t chunk = chunks == 1 ? 0 : s % chunks;
      tile_at<BM>(p, item % tiles, staged.e, staged.row_begin, staged.row_end);
      staged.n0 = item / tiles * kCols;
#pragma unroll
      for (int i = 0; i < NT; ++i) {
        const int64_t row = staged.row_begin + i * 8 + g;
        staged.gathered[i] = row < staged.row_end && p.gather_idx ? p.gather_idx[row] : static_cast<int32_t>(row);
      }
      const int64_t kb0 = chunk * kChunkBlocks;
      const int nkb = static_cast<int>(min(int64_t{kChunkBlocks}, k_blocks - kb0));
      const int r = threadIdx.x / 8, j = threadIdx.x % 8;  // this thread copies every 8th word of row r
      unsigned char* codes_dst = stage + (s % 2) * kStageBytes + r * kCodeRowBytes;
      unsigned char* scales_dst = stage + (s % 2) * kStageBytes + kCols * kCodeRowBytes + r * kScaleRowBytes;
      if (staged.n0 + r < p.N) {
        const int64_t row = static_cast<int64_t>(staged.e) * p.N + staged.n0 + r;
        const uint8_t* codes = static_cast<const uint8_t*>(p.w) + (row * k_blocks + kb0) * 16;
        for (int b = j; b < nkb; b += 8) cp_async_16(codes_dst + b * 16, codes + b * 16, 16);
        const int64_t begin = row * k_blocks + kb0, first = begin & ~int64_t{3};  // scales: 4-aligned tensor
        const int words = static_cast<int>((begin + nkb - first + 3) / 4);
        for (int i = j; i < words; i += 8) {
          cp_async_4(scales_dst + 4 * i, p.w_scales + first + 4 * i,
                     static_cast<int>(min(int64_t{4}, begin + nkb - first - 4 * i)));
        }
      } else {  // a row past N (last slab): zero codes with unit scales, so the k loop need not check
        for (int b = j; b < nkb; b += 8) *reinterpret_cast<uint4*>(codes_dst + b * 16) = make_uint4(0, 0, 0, 0);
        for (int i = j; i < kScaleRowBytes / 4; i += 8) *reinterpret_cast<uint32_t*>(scales_dst + 4 * i) = 0x7f7f7f7fu;
      }
    }
    cp_async_commit();
  };

  int e = 0;
  int64_t row_begin = 0, row_end = 0, n0 = 0;
  int64_t src[NT];
  float acc[NT][4];

  stage_step(0);
  for (int64_t s = 0; s < items * chunks; ++s) {
    const int64_t chunk = chunks == 1 ? 0 : s % chunks;
    if (chunk == 0) {  // a new item
      e = staged.e;
      row_begin = staged.row_begin;
      row_end = staged.row_end;
      n0 = staged.n0;
      token_sources<NT>(p, row_begin, row_end, g, staged.gathered, src);
#pragma unroll
      for (int i = 0; i < NT; ++i) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
      }
    }
    const int64_t kb0 = chunk * kChunkBlocks;
    const int nkb = static_cast<int>(min(int64_t{kChunkBlocks}, k_blocks - kb0));
    const unsigned char* buf = stage + (s % 2) * kStageBytes;
    const unsigned char* codes_lo = buf + g * kCodeRowBytes + 4 * t;
    const unsigned char* codes_hi = codes_lo + 8 * kCodeRowBytes;
    const int64_t row_lo = static_cast<int64_t>(e) * p.N + n0 + g;
    // Each scale row starts at its first scale's offset within a 4-byte word.
    const unsigned char* scales_lo = buf + kCols * kCodeRowBytes + g * kScaleRowBytes + ((row_lo * k_blocks + kb0) & 3);
    const unsigned char* scales_hi =
        buf + kCols * kCodeRowBytes + (g + 8) * kScaleRowBytes + (((row_lo + 8) * k_blocks + kb0) & 3);
    // Token values of block b of this step for this lane: 8 bf16 at xs[i] + 32 * b; lanes without
    // a token read zeros, lanes with a bad index NaN.
    const bf16* xs[NT];
    uint4 fill[NT];
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      xs[i] = src[i] >= 0 ? x + src[i] * p.K + kb0 * 32 + 8 * t : nullptr;
      const uint32_t f = src[i] == -2 ? 0x7fc07fc0u : 0u;
      fill[i] = make_uint4(f, f, f, f);
    }
    auto load_x = [&](int b, uint4 (&v)[NT]) {
#pragma unroll
      for (int i = 0; i < NT; ++i) v[i] = xs[i] && b < nkb ? __ldg(reinterpret_cast<const uint4*>(xs[i] + 32 * b)) : fill[i];
    };

    stage_step(s + 1);
    cp_async_wait<1>();
    __syncthreads();  // every thread's copies of step s have landed

    // Warp w takes blocks w, w + 4, ...; token values arrive kGroup blocks at a time, one group ahead.
    uint4 xv[kGroup][NT];
#pragma unroll
    for (int u = 0; u < kGroup; ++u) load_x(warp + kWarps * u, xv[u]);
    for (int b0 = warp; b0 < nkb; b0 += kWarps * kGroup) {
      uint4 xn[kGroup][NT];
#pragma unroll
      for (int u = 0; u < kGroup; ++u) load_x(b0 + kWarps * (kGroup + u), xn[u]);
      // The group's codes and scales (a block past the step: zero codes, unit scale; its token
      // values are zeros or, for a bad index, NaN like the rest of that token's row).
      uint32_t code[kGroup][2], scale[kGroup][2];
      bool big = false;
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {
        const int b = b0 + kWarps * u;
        const bool in_step = b < nkb;
        code[u][0] = in_step ? *reinterpret_cast<const uint32_t*>(codes_lo + b * 16) : 0u;
        code[u][1] = in_step ? *reinterpret_cast<const uint32_t*>(codes_hi + b * 16) : 0u;
        scale[u][0] = in_step ? scales_lo[b] : 127u;
        scale[u][1] = in_step ? scales_hi[b] : 127u;
        big |= scale[u][0] >= 254 || scale[u][1] >= 254;
      }
      // Straight-line code over the group, so the blocks' decodes and MMAs interleave. Scales of
      // 2^127 and NaN (never in a real checkpoint) go into the weights instead, as the CPU's
      // float math dequantizes them (overflowing to inf), and the result is not scaled again.
      auto run_group = [&](const bool huge_scales) {
#pragma unroll
        for (int u = 0; u < kGroup; ++u) {
          uint32_t a[2][4];
          float m[2];
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            const bool in_weights = huge_scales && scale[u][r] >= 254;
            decode_e2m1x8(code[u][r], in_weights ? e2m1_table(scale[u][r]) : unit, a[r]);
            m[r] = in_weights ? 1.0f : e8m0_to_float(scale[u][r]);
          }
#pragma unroll
          for (int i = 0; i < NT; ++i) {
            float d[4] = {};
            mma_bf16_m16n8k16(d, {a[0][0], a[1][0], a[0][1], a[1][1]}, xv[u][i].x, xv[u][i].y);
            mma_bf16_m16n8k16(d, {a[0][2], a[1][2], a[0][3], a[1][3]}, xv[u][i].z, xv[u][i].w);
            acc[i][0] = fmaf(d[0], m[0], acc[i][0]);
            acc[i][1] = fmaf(d[1], m[0], acc[i][1]);
            acc[i][2] = fmaf(d[2], m[1], acc[i][2]);
            acc[i][3] = fmaf(d[3], m[1], acc[i][3]);
          }
        }
      };
      if (__any_sync(0xffffffffu, big)) run_group(true);
      else run_group(false);
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {
#pragma unroll
        for (int i = 0; i < NT; ++i) xv[u][i] = xn[u][i];
      }
    }
    __syncthreads();  // buffer s % 2 is read: the step after next refills it, or partial sums reuse it

    if (chunk == chunks - 1) {
      finish_item<NT, kWarps>(p, reinterpret_cast<Partial<BM>*>(stage + (s % 2) * kStageBytes), acc, e, row_begin,
                              row_end, n0);
    }
  }
  cp_async_wait<0>();  // no copy outlives the block (the last group is empty)
}

}  // namespace moekit::cuda
