// matmul_ogs for few rows per expert with bf16 weights (the gate, in practice): each token tile
// reads its expert's weights once, straight from global memory into tensor-core fragments, with
// no shared-memory staging and no barrier in the k loop. (MXFP4 weights:
// matmul_ogs_stream_mxfp4.cuh.)
//
// The MMA's roles are swapped: mma.sync m16n8k16 takes 16 weight rows (output columns n) as its
// M and 8 tokens as its N, so one token still fills the MMA with weights. A block of kWarps warps
// (4; 16 for the gate's few, long items) owns one work item (stream_common.cuh); its warps split
// K. The grid is persistent and walks the work items, so blocks never idle on empty tiles.
//
// k order: an MMA's k positions may hold any k as long as the weight (A) and token (B) fragments
// agree. Lane (g, t) owns the 32-wide k block t of every 4 consecutive blocks (four 16-byte
// words per weight row); within 8 consecutive k it puts elements (0,4), (1,5), (2,6), (3,7) in
// its four bf16x2 fragment registers, pairing weights and token values with byte permutes.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "matmul_ogs_params.cuh"
#include "mma.cuh"
#include "stream_common.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace stream {
// Resident blocks per SM (launch bounds cap the registers to fit them): the persistent grid's size.
__host__ __device__ constexpr int min_blocks(int warps) { return warps == 16 ? 1 : 4; }
}  // namespace stream

// 8 consecutive bf16 -> bf16x2 registers holding elements (0,4), (1,5), (2,6), (3,7).
__device__ __forceinline__ void pair_bf16x8(const uint4 v, uint32_t (&r)[4]) {
  r[0] = __byte_perm(v.x, v.z, 0x5410);
  r[1] = __byte_perm(v.x, v.z, 0x7632);
  r[2] = __byte_perm(v.y, v.w, 0x5410);
  r[3] = __byte_perm(v.y, v.w, 0x7632);
}

template <int NT, int kWarps = 4>
__global__ void __launch_bounds__(32 * kWarps, stream::min_blocks(kWarps))
    matmul_ogs_stream_kernel(const MatmulOgsParams p) {
  using namespace stream;
  constexpr int BM = 8 * NT;  // tokens per work item
  // Weights loaded before any is used: the gate (one 8-token tile, few blocks, a long k loop)
  // takes 2 k steps.
  constexpr int kUnroll = NT > 1 ? 1 : 2;
  constexpr int kStride = 4 * kWarps;  // k blocks between a warp's consecutive steps
  __shared__ Partial<BM> partial[kWarps];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;  // the MMA's row group and k/column slot
  const int64_t tiles = tile_count<BM>(p);
  const int64_t work = tiles * ((p.N + kCols - 1) / kCols);
  const int64_t k_blocks = (p.K + 31) / 32;
  const bf16* x = static_cast<const bf16*>(p.x);
  const bf16* w = static_cast<const bf16*>(p.w);
  const uint4 nan8 = make_uint4(0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u);

  // Work items run column slab by column slab, so the token tiles of one expert that read the
  // same weights run side by side and the second read comes from L2.
  for (int64_t item = blockIdx.x; item < work; item += gridDim.x) {
    int e;
    int64_t row_begin, row_end;
    tile_at<BM>(p, item % tiles, e, row_begin, row_end);
    const int64_t n0 = item / tiles * kCols;
    int32_t gathered[NT];
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      const int64_t row = row_begin + i * 8 + g;
      gathered[i] = row < row_end && p.gather_idx ? p.gather_idx[row] : static_cast<int32_t>(row);
    }
    int64_t src[NT];
    token_sources<NT>(p, row_begin, row_end, g, gathered, src);
    const int64_t n_lo = n0 + g, n_hi = n0 + g + 8;  // this lane's two weight rows
    const int64_t w_lo = static_cast<int64_t>(e) * p.N + n_lo, w_hi = static_cast<int64_t>(e) * p.N + n_hi;

    // Raw weights of this lane's two rows for one k block: [row lo/hi][16-byte word].
    struct Raw {
      uint4 v[2][4];
    };
    auto load = [&](int64_t kb) {
      Raw raw;
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int64_t n = r ? n_hi : n_lo, row = r ? w_hi : w_lo;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          raw.v[r][i] = make_uint4(0, 0, 0, 0);
          // Read through L1, where a block's next items find them (streamed past L1, the gate
          // took 396 us for E = 128, T = 8192 on an H100).
          if (n < p.N && kb < k_blocks && kb * 32 + 8 * i < p.K) {
            raw.v[r][i] = __ldg(reinterpret_cast<const uint4*>(w + row * p.K + kb * 32 + 8 * i));
          }
        }
      }
      return raw;
    };

    float acc[NT][4] = {};
    auto compute = [&](int64_t kb, const Raw& raw) {
      const int64_t k0 = kb * 32;
      uint32_t a[2][4][4];  // [row lo/hi][8-element word][fragment register]
#pragma unroll
      for (int r = 0; r < 2; ++r) {
#pragma unroll
        for (int i = 0; i < 4; ++i) pair_bf16x8(raw.v[r][i], a[r][i]);
      }
      uint32_t b[NT][4][4];  // [token group][8-element word][register]
#pragma unroll
      for (int s = 0; s < NT; ++s) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          uint4 v = make_uint4(0, 0, 0, 0);
          if (src[s] >= 0 && k0 + 8 * i < p.K) v = __ldg(reinterpret_cast<const uint4*>(x + src[s] * p.K + k0 + 8 * i));
          else if (src[s] == -2) v = nan8;
          pair_bf16x8(v, b[s][i]);
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t frag[4] = {a[0][i][2 * h], a[1][i][2 * h], a[0][i][2 * h + 1], a[1][i][2 * h + 1]};
#pragma unroll
          for (int s = 0; s < NT; ++s) mma_bf16_m16n8k16(acc[s], frag, b[s][i][2 * h], b[s][i][2 * h + 1]);
        }
      }
    };

    for (int64_t kb0 = 4 * warp; kb0 < k_blocks; kb0 += kStride * kUnroll) {
      Raw raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) raw[u] = load(kb0 + kStride * u + t);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (kb0 + kStride * u < k_blocks) compute(kb0 + kStride * u + t, raw[u]);
      }
    }
    finish_item<NT, kWarps>(p, partial, acc, e, row_begin, row_end, n0);
  }
}

}  // namespace moekit::cuda
