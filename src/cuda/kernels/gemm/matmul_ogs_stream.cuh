// matmul_ogs for few rows per expert (decode), where the weights are the whole cost: each token
// tile reads its expert's weights once.
//
// The MMA's roles are swapped: mma.sync m16n8k16 takes 16 weight rows (output columns n) as
// its M and 8 tokens as its N, so one token still fills the MMA with weights. A block of kWarps
// warps (4; 16 for the gate's few, long items) owns one work item, (16 output columns) x (a tile
// of 8*NT tokens of one expert); its warps split K and add their partial sums in a fixed order
// (deterministic). The grid is persistent and walks the work items, so blocks never idle on
// empty tiles.
//
// MXFP4 weights are staged: the block copies the next step's codes and scales (a step is one
// item's weights for up to kChunkBlocks k blocks: all of K = 2880) into shared memory by
// cp.async while it computes the current one, so each SM keeps ~100 KB of weights in flight
// (direct loads into registers kept ~24 KB in flight and reached under half of DRAM bandwidth).
// bf16 weights (the gate) are read straight into fragments.
//
// k order: an MMA's k positions may hold any k as long as the weight (A) and token (B) fragments
// agree. Lane (g, t) owns the 32-wide k block t of every 4 consecutive blocks, so each weight row
// is one 16-byte word per lane (a whole MXFP4 block with one scale). Within 8 consecutive k, the
// lane puts elements (0,4), (1,5), (2,6), (3,7) in its four bf16x2 fragment registers: that pairs
// nibbles 16 bits apart in a code word, which decodes with shifts and masks, and the bf16 token
// values are paired the same way with one byte permute each.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../activation/swiglu.cuh"
#include "../quant/e2m1_bf16.cuh"
#include "../element.cuh"
#include "matmul_ogs_params.cuh"
#include "mma.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace stream {
constexpr int kCols = 16;  // output columns (weight rows) per work item: the MMA's M
// Resident blocks per SM (launch bounds cap the registers to fit them; shared memory caps staged
// MXFP4 blocks at 4 on an H100).
__host__ __device__ constexpr int min_blocks(int NT, bool mxfp4, int warps) {
  return warps == 16 ? 1 : (NT == 4 && mxfp4 ? 3 : 4);
}

// MXFP4 staging: one buffer holds a step's 16 rows x kChunkBlocks k blocks of codes, then their
// scales, each row's from the 4-byte word holding its first scale (cp.async copies aligned words).
constexpr int kChunkBlocks = 96;
// Code rows 100 words apart: lanes g and g + 1 of a quarter warp land on different banks.
constexpr int kCodeRowBytes = (kChunkBlocks + 4) * 16;
constexpr int kScaleRowBytes = kChunkBlocks + 4;
constexpr int kStageBytes = kCols * (kCodeRowBytes + kScaleRowBytes);
constexpr int kStagedSmemBytes = 2 * kStageBytes;  // double-buffered
__host__ __device__ constexpr int smem_bytes(bool mxfp4) { return mxfp4 ? kStagedSmemBytes : 0; }
}  // namespace stream

// 8 consecutive bf16 -> bf16x2 registers holding elements (0,4), (1,5), (2,6), (3,7), the
// pairing decode_e2m1x8_strided gives the weights.
__device__ __forceinline__ void pair_bf16x8(const uint4 v, uint32_t (&r)[4]) {
  r[0] = __byte_perm(v.x, v.z, 0x5410);
  r[1] = __byte_perm(v.x, v.z, 0x7632);
  r[2] = __byte_perm(v.y, v.w, 0x5410);
  r[3] = __byte_perm(v.y, v.w, 0x7632);
}

template <int NT, bool kMxfp4, int kWarps = 4>
__global__ void __launch_bounds__(32 * kWarps, stream::min_blocks(NT, kMxfp4, kWarps))
    matmul_ogs_stream_kernel(const MatmulOgsParams p) {
  using namespace stream;
  constexpr int BM = 8 * NT;  // tokens per work item
  // bf16 weights (the gate: one 8-token tile, few blocks, a long k loop) are loaded 2 k steps
  // before use.
  constexpr int kUnroll = kMxfp4 || NT > 1 ? 1 : 2;
  constexpr int kThreads = 32 * kWarps;
  constexpr int kStride = 4 * kWarps;  // k blocks between a warp's consecutive steps
  using Partial = float[kCols][BM + 1];
  static_assert(!kMxfp4 || kWarps * sizeof(Partial) <= kStageBytes, "partial sums reuse a staging buffer");
  extern __shared__ __align__(16) unsigned char stage[];  // MXFP4: smem_bytes(true)
  __shared__ Partial partial_bf16[kMxfp4 ? 1 : kWarps];

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int g = lane / 4, t = lane % 4;  // the MMA's row group and k/column slot
  const int64_t tiles = tile_count<BM>(p);
  const int64_t work = tiles * ((p.N + kCols - 1) / kCols);
  const int64_t k_blocks = (p.K + 31) / 32;
  // A step is one item's k blocks [chunk * chunk_blocks, +chunk_blocks); bf16 takes all K at once.
  const int64_t chunk_blocks = kMxfp4 ? kChunkBlocks : k_blocks;
  const int64_t chunks = (k_blocks + chunk_blocks - 1) / chunk_blocks;
  const int64_t items = work > blockIdx.x ? (work - 1 - blockIdx.x) / gridDim.x + 1 : 0;
  const bf16* x = static_cast<const bf16*>(p.x);
  const uint4 nan8 = make_uint4(0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u);

  // Work items run column slab by column slab, so the token tiles of one expert that read the
  // same weights run side by side and the second read comes from L2.
  auto item_of = [&](int64_t step) { return blockIdx.x + step / chunks * gridDim.x; };
  auto first_row = [&](int e, int64_t n) { return static_cast<int64_t>(e) * p.N + n; };  // weight row

  // An item's expert, token rows and columns; `gathered` holds the x row of this lane's token in
  // each 8-token group (if it has one), read but not yet checked, so the loads need not finish
  // before the weight copies are issued.
  struct Tile {
    int e;
    int64_t row_begin, row_end, n0;
    int32_t gathered[NT];
  };
  auto tile_of_step = [&](int64_t step) {
    const int64_t item = item_of(step);
    Tile tile;
    tile_at<BM>(p, item % tiles, tile.e, tile.row_begin, tile.row_end);
    tile.n0 = item / tiles * kCols;
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      const int64_t row = tile.row_begin + i * 8 + g;
      tile.gathered[i] = row < tile.row_end && p.gather_idx ? p.gather_idx[row] : static_cast<int32_t>(row);
    }
    return tile;
  };

  // MXFP4: copies step `s`'s weights into buffer s % 2 (nothing past the last step) and keeps its
  // tile in `staged`; always commits one cp.async group, so "all but the newest group" is the
  // current step.
  Tile staged{};
  auto stage_step = [&](int64_t s) {
    if constexpr (kMxfp4) {
      if (s < items * chunks) {
        staged = tile_of_step(s);
        const int64_t kb0 = s % chunks * kChunkBlocks;
        const int nkb = static_cast<int>(min(int64_t{kChunkBlocks}, k_blocks - kb0));
        const int rows = static_cast<int>(min(int64_t{kCols}, p.N - staged.n0));
        const int64_t row0 = first_row(staged.e, staged.n0);
        unsigned char* buf = stage + (s % 2) * kStageBytes;
        const uint8_t* codes = static_cast<const uint8_t*>(p.w) + (row0 * k_blocks + kb0) * 16;
        for (int i = threadIdx.x; i < rows * nkb; i += kThreads) {
          const int r = i / nkb, b = i % nkb;
          cp_async_16(buf + r * kCodeRowBytes + b * 16, codes + (static_cast<int64_t>(r) * k_blocks + b) * 16, 16);
        }
        constexpr int kWords = kScaleRowBytes / 4;
        for (int i = threadIdx.x; i < rows * kWords; i += kThreads) {
          const int r = i / kWords, word = i % kWords;
          const int64_t begin = (row0 + r) * k_blocks + kb0, end = begin + nkb;
          const int64_t at = (begin & ~int64_t{3}) + 4 * word;  // never before the (4-aligned) tensor
          if (at < end) {
            cp_async_4(buf + kCols * kCodeRowBytes + r * kScaleRowBytes + 4 * word, p.w_scales + at,
                       static_cast<int>(min(int64_t{4}, end - at)));
          }
        }
      }
      cp_async_commit();
    }
  };

  int e = 0;
  int64_t row_begin = 0, row_end = 0, n0 = 0;
  int64_t src[NT];  // x row of this lane's token in each 8-token group; -1: none; -2: bad index
  float acc[NT][4];

  // Raw weights of this lane's two rows (n0 + g, n0 + g + 8) for one k block.
  struct Raw {
    uint4 v[2][kMxfp4 ? 1 : 4];  // [row lo/hi][16-byte word]: MXFP4 codes, or bf16
    uint32_t scale[2];
  };
  auto load_x = [&](int64_t kb, uint4 (&v)[NT][4]) {
#pragma unroll
    for (int s = 0; s < NT; ++s) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        v[s][i] = make_uint4(0, 0, 0, 0);
        if (src[s] >= 0 && kb * 32 + 8 * i < p.K) v[s][i] = __ldg(reinterpret_cast<const uint4*>(x + src[s] * p.K + kb * 32 + 8 * i));
        else if (src[s] == -2) v[s][i] = nan8;
      }
    }
  };
  auto compute = [&](const Raw& raw, const uint4 (&xv)[NT][4]) {
    uint32_t a[2][4][4];  // [row lo/hi][8-element word][fragment register]
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if constexpr (kMxfp4) {
        const Mxfp4Multiplier m = mxfp4_multiplier(raw.scale[r]);
        decode_e2m1x8_strided(raw.v[r][0].x, m, a[r][0]);
        decode_e2m1x8_strided(raw.v[r][0].y, m, a[r][1]);
        decode_e2m1x8_strided(raw.v[r][0].z, m, a[r][2]);
        decode_e2m1x8_strided(raw.v[r][0].w, m, a[r][3]);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) pair_bf16x8(raw.v[r][i], a[r][i]);
      }
    }
    uint32_t b[NT][4][4];  // [token group][8-element word][register]
#pragma unroll
    for (int s = 0; s < NT; ++s) {
#pragma unroll
      for (int i = 0; i < 4; ++i) pair_bf16x8(xv[s][i], b[s][i]);
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

  stage_step(0);
  for (int64_t s = 0; s < items * chunks; ++s) {
    const int64_t chunk = s % chunks;
    if (chunk == 0) {  // a new item
      const Tile tile = kMxfp4 ? staged : tile_of_step(s);
      e = tile.e;
      row_begin = tile.row_begin;
      row_end = tile.row_end;
      n0 = tile.n0;
#pragma unroll
      for (int i = 0; i < NT; ++i) {
        src[i] = -1;
        if (row_begin + i * 8 + g < row_end) src[i] = tile.gathered[i] < 0 || tile.gathered[i] >= p.M ? -2 : tile.gathered[i];
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
      }
    }
    const int64_t kb_begin = chunk * chunk_blocks, kb_end = min(k_blocks, kb_begin + chunk_blocks);
    const bool valid_lo = n0 + g < p.N, valid_hi = n0 + g + 8 < p.N;

    if constexpr (kMxfp4) {
      stage_step(s + 1);
      cp_async_wait<1>();
      __syncthreads();  // every thread's copies of step s have landed
      const unsigned char* buf = stage + (s % 2) * kStageBytes;
      const unsigned char* scales = buf + kCols * kCodeRowBytes;
      // Where each of this lane's rows' scales start in its staged word-aligned run.
      const int skew_lo = static_cast<int>((first_row(e, n0 + g) * k_blocks + kb_begin) & 3);
      const int skew_hi = static_cast<int>((first_row(e, n0 + g + 8) * k_blocks + kb_begin) & 3);
      uint4 xv[NT][4];
      load_x(kb_begin + 4 * warp + t, xv);
      for (int64_t kb0 = kb_begin + 4 * warp; kb0 < kb_end; kb0 += kStride) {
        uint4 xn[NT][4];  // the next step's token values, loaded while this one computes
        load_x(kb0 + kStride + t, xn);
        const int b = static_cast<int>(kb0 + t - kb_begin);
        const bool in_k = kb0 + t < kb_end;
        Raw raw;
        raw.v[0][0] = raw.v[1][0] = make_uint4(0, 0, 0, 0);
        raw.scale[0] = raw.scale[1] = 127;
        if (in_k && valid_lo) {
          raw.v[0][0] = *reinterpret_cast<const uint4*>(buf + g * kCodeRowBytes + b * 16);
          raw.scale[0] = scales[g * kScaleRowBytes + skew_lo + b];
        }
        if (in_k && valid_hi) {
          raw.v[1][0] = *reinterpret_cast<const uint4*>(buf + (g + 8) * kCodeRowBytes + b * 16);
          raw.scale[1] = scales[(g + 8) * kScaleRowBytes + skew_hi + b];
        }
        compute(raw, xv);
#pragma unroll
        for (int i = 0; i < NT; ++i) {
#pragma unroll
          for (int j = 0; j < 4; ++j) xv[i][j] = xn[i][j];
        }
      }
      __syncthreads();  // buffer s % 2 is read; the next step refills it, or partial sums reuse it
    } else {
      const bf16* w = static_cast<const bf16*>(p.w);
      auto load = [&](int64_t kb) {
        Raw raw;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int64_t row = first_row(e, n0 + g + 8 * r);
          raw.scale[r] = 127;
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            raw.v[r][i] = make_uint4(0, 0, 0, 0);
            // Read through L1, where a block's next items find them (streamed past L1, the gate
            // took 396 us for E = 128, T = 8192 on an H100).
            if ((r ? valid_hi : valid_lo) && kb < k_blocks && kb * 32 + 8 * i < p.K) {
              raw.v[r][i] = __ldg(reinterpret_cast<const uint4*>(w + row * p.K + kb * 32 + 8 * i));
            }
          }
        }
        return raw;
      };
      for (int64_t kb0 = kb_begin + 4 * warp; kb0 < kb_end; kb0 += kStride * kUnroll) {
        Raw raw[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) raw[u] = load(kb0 + kStride * u + t);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (kb0 + kStride * u < kb_end) {
            uint4 xv[NT][4];
            load_x(kb0 + kStride * u + t, xv);
            compute(raw[u], xv);
          }
        }
      }
    }
    if (chunk != chunks - 1) continue;

    // The item's last step: partial sums, then the outputs.
    // acc[i]: (column g, tokens 2t and 2t+1) and (column g+8, same tokens) of group i.
    Partial* partial = partial_bf16;
    if constexpr (kMxfp4) partial = reinterpret_cast<Partial*>(stage + (s % 2) * kStageBytes);
#pragma unroll
    for (int i = 0; i < NT; ++i) {
      partial[warp][g][i * 8 + 2 * t] = acc[i][0];
      partial[warp][g][i * 8 + 2 * t + 1] = acc[i][1];
      partial[warp][g + 8][i * 8 + 2 * t] = acc[i][2];
      partial[warp][g + 8][i * 8 + 2 * t + 1] = acc[i][3];
    }
    __syncthreads();
    auto column = [&](int c, int token) {
      float h = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) h += partial[w][c][token];
      if (p.bias) h += load_float(p.bias, p.bias_bf16, static_cast<int64_t>(e) * p.N + n0 + c);
      return h;
    };
    if (p.swiglu) {  // column pairs (glu, linear); N is even
      for (int v = threadIdx.x; v < BM * kCols / 2; v += kThreads) {
        const int token = v / (kCols / 2), c = 2 * (v % (kCols / 2));
        const int64_t row = row_begin + token, n = n0 + c;
        if (row < row_end && n < p.N) {
          store_float(p.out, p.out_bf16, row * p.out_cols + n / 2,
                      swiglu(column(c, token), column(c + 1, token), p.alpha, p.limit));
        }
      }
    } else {
      for (int v = threadIdx.x; v < BM * kCols; v += kThreads) {
        const int token = v / kCols, c = v % kCols;
        const int64_t row = row_begin + token, n = n0 + c;
        if (row < row_end && n < p.N) store_float(p.out, p.out_bf16, row * p.out_cols + n, column(c, token));
      }
    }
    __syncthreads();  // `partial` is reused by the next item (MXFP4: its buffer is refilled)
  }
  if constexpr (kMxfp4) cp_async_wait<0>();  // no copy outlives the block (the last group is empty)
}

}  // namespace moekit::cuda
