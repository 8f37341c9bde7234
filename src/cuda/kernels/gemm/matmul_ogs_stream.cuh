// matmul_ogs for few rows per expert (decode), where the weights are the whole cost: each token
// tile reads its expert's weights once, straight from global memory into tensor-core fragments,
// with no shared-memory staging and no barrier in the k loop.
//
// The MMA's roles are swapped: mma.sync m16n8k16 takes 16 weight rows (output columns n, a
// slab) as its M and 8 tokens as its N, so one token still fills the MMA with weights. A block
// of kWarps warps (4; 16 for the gate's few, long items) owns one work item, (1 or 2 slabs of
// 16 output columns) x (a tile of 8*NT tokens of one expert); its warps split K and add their
// partial sums in a fixed order (deterministic). The grid is persistent and walks the work
// items, so blocks never idle on empty tiles; for few rows the blocks list the tiles themselves
// (tile_locate.cuh).
//
// k order: an MMA's k positions may hold any k as long as the weight (A) and token (B) fragments
// agree. Lane (g, t) owns the 32-wide k block t of every 4 consecutive blocks, so each weight row
// is one 16-byte load per lane (a whole MXFP4 block with one scale). Within 8 consecutive k, the
// lane puts elements (0,4), (1,5), (2,6), (3,7) in its four bf16x2 fragment registers: that pairs
// nibbles 16 bits apart in a code word, which decodes with shifts and masks, and the bf16 token
// values are paired the same way with one byte permute each.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "../quant/e2m1_bf16.cuh"
#include "matmul_ogs_params.cuh"
#include "mma.cuh"
#include "tile_io.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace stream {
constexpr int kCols = 16;       // output columns (weight rows) per slab: the MMA's M
// Slabs per work item: MXFP4 items of 8 or 16 tokens take two, so each token-value load and
// permute, address and epilogue serves twice the weight bytes, and each lane has 4 weight loads
// in flight.
__host__ __device__ constexpr int slabs(int NT, bool mxfp4) { return mxfp4 && NT <= 2 ? 2 : 1; }
// Blocks per SM the launch bounds cap the registers for (the launcher sizes its persistent grid by
// the occupancy API).
__host__ __device__ constexpr int min_blocks(int NT, bool mxfp4, int warps) {
  return warps == 16 ? 1 : (NT == 1 && mxfp4 ? 5 : 4);
}
}  // namespace stream

template <int NT, bool kMxfp4, int kWarps = 4>
__global__ void __launch_bounds__(32 * kWarps, stream::min_blocks(NT, kMxfp4, kWarps))
    matmul_ogs_stream_kernel(const MatmulOgsParams p) {
  using namespace stream;
  constexpr int BM = 8 * NT;  // tokens per work item
  // k steps whose weights are loaded before any is used. Measured on an H100: loading MXFP4 steps
  // ahead (4 / NT, at 4 blocks per SM) was 5-10% slower than one step at 6 blocks per SM; the
  // bf16 gate (one 8-token tile), with few blocks and a long k loop, takes 2.
  constexpr int kUnroll = kMxfp4 || NT > 1 ? 1 : 2;
  constexpr int kThreads = 32 * kWarps;
  constexpr int kSlabs = slabs(NT, kMxfp4), kItemCols = kCols * kSlabs;
  __shared__ float partial[kWarps][kItemCols][BM + 1];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;  // the MMA's row group and k/column slot
  // With expert offsets and few rows and experts, the block lists the tiles itself (tile_locate.cuh).
  __shared__ int tile_start[kScanMaxExperts + 1];
  const bool scanned = blocks_scan_tiles(p.expert_offsets != nullptr, p.E, p.P);
  if (scanned) scan_expert_tiles<kThreads>(p, BM, tile_start);
  const int64_t tiles = scanned ? tile_start[p.E] : tile_count<BM>(p);
  const int64_t work = tiles * ((p.N + kItemCols - 1) / kItemCols);
  const int64_t k_blocks = (p.K + 31) / 32;
  const bf16* x = static_cast<const bf16*>(p.x);
  const uint4 nan8 = make_uint4(0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u);

  // Work items run column slab by column slab, so the token tiles of one expert that read the
  // same weights run side by side and the second read comes from L2.
  for (int64_t item = blockIdx.x; item < work; item += gridDim.x) {
    int e;
    int64_t row_begin, row_end;
    if (scanned) scanned_tile_at<BM>(p, tile_start, item % tiles, e, row_begin, row_end);
    else tile_at<BM>(p, item % tiles, e, row_begin, row_end);
    const int64_t n0 = item / tiles * kItemCols;

    int64_t src[NT];  // x row of this lane's token in each 8-token group (or kNoRow, kBadRow)
#pragma unroll
    for (int s = 0; s < NT; ++s) src[s] = source_row(p, row_begin + s * 8 + g, row_end);
    // This lane's weight rows: n0 + 16j + g and n0 + 16j + g + 8 of slab j (r = 2j and 2j + 1).
    constexpr int kRows = 2 * kSlabs;
    int64_t n_of[kRows], w_of[kRows];  // output column, weight row
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      n_of[r] = n0 + 16 * (r / 2) + 8 * (r % 2) + g;
      w_of[r] = static_cast<int64_t>(e) * p.N + n_of[r];
    }

    // Raw weights of this lane's rows for one k block.
    struct Raw {
      uint4 v[kRows][kMxfp4 ? 1 : 4];  // [row][16-byte word]: MXFP4 codes, or bf16
      uint32_t scale[kRows];
    };
    auto load = [&](int64_t kb) {
      Raw raw;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const int64_t n = n_of[r], row = w_of[r];
        const bool valid = n < p.N && kb < k_blocks;
        raw.scale[r] = 127;
        if constexpr (kMxfp4) {
          raw.v[r][0] = make_uint4(0, 0, 0, 0);
          if (valid) {
            raw.v[r][0] = load_streaming(static_cast<const uint8_t*>(p.w) + (row * k_blocks + kb) * 16);
            raw.scale[r] = p.w_scales[row * k_blocks + kb];
          }
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            raw.v[r][i] = make_uint4(0, 0, 0, 0);
            // bf16 weights (the gate's, in practice) are read once per token tile: through L1,
            // where a block's next items find them (streamed past L1, the gate took 396 us for
            // E = 128, T = 8192 on an H100).
            if (valid && kb * 32 + 8 * i < p.K) {
              raw.v[r][i] = __ldg(reinterpret_cast<const uint4*>(static_cast<const bf16*>(p.w) + row * p.K + kb * 32 + 8 * i));
            }
          }
        }
      }
      return raw;
    };

    float acc[kSlabs][NT][4] = {};
    // The second scale multiply (e2m1_bf16.cuh), which scales above 128 need: kPerLane, where a
    // lane's scale asks for it (predicated; predicated-off multiplies still issue: 64 of the
    // ~560 instructions of a two-slab k step), kNone or kAll. Real checkpoints have no such
    // scales, so 16-token tiles let a warp run a copy without it unless a lane needs it.
    enum Second { kPerLane, kNone, kAll };
    auto compute = [&](int64_t kb, const Raw& raw, auto second_step) {
      [[maybe_unused]] constexpr Second kSecond = decltype(second_step)::value;  // MXFP4 only
      const int64_t k0 = kb * 32;
      uint32_t b[NT][4][4];  // [token group][8-element word][register]
#pragma unroll
      for (int s = 0; s < NT; ++s) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint4 v = make_uint4(0, 0, 0, 0);
          if (src[s] >= 0 && k0 + 8 * i < p.K) v = __ldg(reinterpret_cast<const uint4*>(x + src[s] * p.K + k0 + 8 * i));
          else if (src[s] == kBadRow) v = nan8;
          pair_bf16x8(v, b[s][i]);
        }
      }
#pragma unroll
      for (int j = 0; j < kSlabs; ++j) {  // slab by slab: one slab's weight fragments live at a time
        uint32_t a[2][4][4];  // [row lo/hi][8-element word][fragment register]
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          if constexpr (kMxfp4) {
            const uint32_t scale = raw.scale[2 * j + r];
            const uint32_t first = mxfp4_first_multiplier(scale), second = mxfp4_second_multiplier(scale);
            const bool lane_second = kSecond == kAll || (kSecond == kPerLane && scale > 128);
            const uint32_t words[4] = {raw.v[2 * j + r][0].x, raw.v[2 * j + r][0].y, raw.v[2 * j + r][0].z,
                                       raw.v[2 * j + r][0].w};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              decode_e2m1x8_strided(words[i], first, a[r][i]);
              if (kSecond != kNone && lane_second) apply_second_step(a[r][i], second);
            }
          } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) pair_bf16x8(raw.v[2 * j + r][i], a[r][i]);
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const uint32_t frag[4] = {a[0][i][2 * h], a[1][i][2 * h], a[0][i][2 * h + 1], a[1][i][2 * h + 1]};
#pragma unroll
            for (int s = 0; s < NT; ++s) mma_bf16_m16n8k16(acc[j][s], frag, b[s][i][2 * h], b[s][i][2 * h + 1]);
          }
        }
      }
    };

    constexpr int kStride = 4 * kWarps;  // k blocks between a warp's consecutive steps
    for (int64_t kb0 = 4 * warp; kb0 < k_blocks; kb0 += kStride * kUnroll) {
      Raw raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) raw[u] = load(kb0 + kStride * u + t);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (kb0 + kStride * u >= k_blocks) continue;
        const int64_t kb = kb0 + kStride * u + t;
        if constexpr (kMxfp4 && NT == 2) {
          // Two copies, picked by the warp. Measured on an H100: 16-token tiles 4-5% faster
          // (E=128 T=512: 1418 vs 1488 us); 8-token tiles 4-7% slower (E=32 T=8: 183 vs 171 us),
          // and 32-token tiles spill, so those keep one copy.
          bool lane_needs = false;
#pragma unroll
          for (int r = 0; r < kRows; ++r) lane_needs |= raw[u].scale[r] > 128;
          if (warp_needs_second_step(lane_needs)) compute(kb, raw[u], std::integral_constant<Second, kAll>{});
          else compute(kb, raw[u], std::integral_constant<Second, kNone>{});
        } else {
          compute(kb, raw[u], std::integral_constant<Second, kMxfp4 ? kPerLane : kNone>{});
        }
      }
    }

    // acc[j][s]: (column 16j + g, tokens 2t and 2t+1) and (column 16j + g + 8, same tokens) of
    // group s.
#pragma unroll
    for (int j = 0; j < kSlabs; ++j) {
#pragma unroll
      for (int s = 0; s < NT; ++s) {
        partial[warp][16 * j + g][s * 8 + 2 * t] = acc[j][s][0];
        partial[warp][16 * j + g][s * 8 + 2 * t + 1] = acc[j][s][1];
        partial[warp][16 * j + g + 8][s * 8 + 2 * t] = acc[j][s][2];
        partial[warp][16 * j + g + 8][s * 8 + 2 * t + 1] = acc[j][s][3];
      }
    }
    __syncthreads();
    auto column = [&](int c, int token) {  // the warps' partial sums, in a fixed order
      float h = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) h += partial[w][c][token];
      return h;
    };
    // Column pairs (a bad row is NaN already).
    for (int v = threadIdx.x; v < BM * kItemCols / 2; v += kThreads) {
      const int token = v / (kItemCols / 2), c = 2 * (v % (kItemCols / 2));
      const int64_t row = row_begin + token, n = n0 + c;
      if (row < row_end && n < p.N) store_output_pair(p, e, row, n, false, column(c, token), column(c + 1, token));
    }
    __syncthreads();  // `partial` is reused by the next item
  }
}

}  // namespace moekit::cuda
