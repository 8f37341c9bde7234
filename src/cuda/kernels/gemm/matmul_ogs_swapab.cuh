// matmul_ogs's Hopper main loop (issue 22; sm_90a): swap-AB. The MXFP4 weights are wgmma's A
// operand (M: 64 weight rows, one slab of repack_mxfp4's layout, per consumer warpgroup) decoded
// in registers, and a token tile of up to R rows of one expert is its N, from shared memory. So a
// tile of few tokens fills the tensor cores' M with weights instead of padding a 64- or 128-row
// token tile.
//
// Launches: plan_tiles_kernel lists the token tiles of R rows (tile_locate.cuh); with a gather,
// stage_x_kernel copies each tile's x rows (gathered) into the 128-byte swizzle layout wgmma
// reads, step by 64-k step (staged_x_offset), while rows read in place (mlp2's) come by a TMA
// descriptor's tiles, which land in that swizzle; the main kernel's persistent blocks (one an
// SM) walk (token tile, WG x 64 weight rows) items, token tile major, so the blocks at work at
// once share their x tiles through L2.
//
// A block (swapab::Shape: R, KS, S, WG; the library's configs have WG = 2): a producer warp
// streams chunks of KS k steps by bulk copies into a ring of S stages (mbarriers full/empty): the
// WG slabs' codes and scales of the chunk (each slab step's 2 KB and 128 B contiguous in
// repack_mxfp4's layout) and the tile's x rows of each step (one contiguous run of staged x, or
// one tile of x_rows, the TMA descriptor of x [P, K]). WG consumer warpgroups, holding the
// registers the producer's warpgroup gave up (setmaxnreg), each decode a k step of their slab
// into 16 bf16x2 A registers (two register sets, so a step decodes while the previous step's
// wgmmas run; a step's codes and scales are loaded from shared memory while the step before it
// decodes) and issue 4 wgmma.m64nRk16. The epilogue
// adds the bias and finishes each (n, n + 1) column pair, rows g and g + 1 of the MMA, through
// tile_io.cuh's store_output_pair (SwiGLU or plain rows). The backward's recompute never runs
// here (matmul_ogs_config_refusal refuses these configs for it): no branch for it.
#pragma once

#include <cuda.h>
#include <cuda_bf16.h>

#include <cstdint>

#include "../../../core/mxfp4_slabs.h"
#include "../../../core/problem.h"
#include "../../../core/swapab_ring.h"
#include "../bulk_copy.cuh"
#include "../element.cuh"
#include "../quant/e2m1_bf16.cuh"
#include "matmul_ogs_params.cuh"
#include "mma.cuh"
#include "tile_io.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace swapab {
namespace slabs = ::moekit::mxfp4_slabs;
constexpr int kStageThreads = 256;
constexpr int kProducerRegisters = 40;  // after setmaxnreg (the producer's warpgroup)

// A kernel's shape: R token rows a tile (wgmma's N); KS k steps a chunk (one ring stage; even, so
// that step ks of every chunk decodes into register set ks % 2); S stages; WG consumer
// warpgroups, a 64-row slab each (the work item's weight rows). The library's configs
// (matmul_ogs_config.h) are the Swapab* aliases below; bench/swapab_variants.cu times others.
template <int R, int KS, int S, int WG>
struct Shape {
  static constexpr int kRows = R, kChunkSteps = KS, kStages = S, kSlabs = WG;
  static constexpr int kTileCols = WG * slabs::kRows;  // weight rows (output columns) of a work item
  static constexpr int kThreads = 128 * (WG + 1);      // and the producer's warpgroup
  // Registers a consumer thread after setmaxnreg: what the producer leaves of the SM's 64 K, in
  // setmaxnreg's multiples of 8, at most its 256.
  static constexpr int kLeftRegisters = (65536 - 128 * kProducerRegisters) / (128 * WG) / 8 * 8;
  static constexpr int kConsumerRegisters = kLeftRegisters < 256 ? kLeftRegisters : 256;
  // A ring stage: the slabs' codes (a consumer warpgroup each), the x rows, the slabs' scales;
  // 1 KB multiples, so the x rows start where the swizzle's 8-row groups must (1 KB-aligned).
  static constexpr int kSlabCodes = slabs::kCodeBytes * KS, kSlabScales = slabs::kScaleBytes * KS;
  static constexpr int kCodes = WG * kSlabCodes;
  static constexpr int kX = R * 128 * KS;  // a 128-byte line a token a step
  static constexpr int kScales = (WG * kSlabScales + 1023) / 1024 * 1024;
  static constexpr int kStageBytes = kCodes + kX + kScales;
  static constexpr int kSmemBytes = S * kStageBytes + 1024;  // and slack to align the ring to 1 KB
  // Where in a stage the producer puts, and the consumers read: slab h's codes and scales of the
  // chunk, and step ks's x rows.
  __device__ static constexpr int codes_at(int h) { return h * kSlabCodes; }
  __device__ static constexpr int x_at(int ks) { return kCodes + ks * R * 128; }
  __device__ static constexpr int scales_at(int h) { return kCodes + kX + h * kSlabScales; }
  static_assert(R % 8 == 0 && R >= 8 && R <= 256, "wgmma's N");
  static_assert(KS % 2 == 0, "register sets by the step's parity in its chunk");
  static_assert(S >= 3, "a chunk of one step frees its stage a chunk late (see the consumers' release)");
  static_assert(kCodes % 1024 == 0 && kX % 1024 == 0, "1 KB-aligned parts");
  static_assert(kConsumerRegisters >= 24, "setmaxnreg's least");
};

// The library's configs (matmul_ogs_config.h), as many stages as fit, three consumer warpgroups
// (to 64 rows on an H200 10-12% faster than two: bench/results/swapab_variants_H200.txt).
using Swapab16 = Shape<16, 4, 6, 3>;
using Swapab32 = Shape<32, 4, 5, 3>;
using Swapab80 = Shape<80, 4, 3, 3>;
}  // namespace swapab

// Where staged x holds 16-byte piece c (0..7) of k step s of problem row r: rows of 128 bytes,
// step-major ([steps][swapab_staged_rows(P)][128]), so that R rows from a tile's first row are one
// contiguous run a step; the piece at c ^ ((r - tile's first row) % 8), the 128-byte swizzle of
// the tile's own rows (rows past the tile, read with it, only feed columns nobody stores; past P
// they are zeros).
__device__ __forceinline__ int64_t staged_x_offset(const MatmulOgsParams& p, int64_t step, int64_t row, int phase,
                                                   int c) {
  return (step * swapab_staged_rows(p.P) + row) * 128 + ((c ^ phase) * 16);
}

// x's rows of every token tile of R rows into staged x (calls with a gather): zeros past K and for bad gather
// indices (the epilogue makes those rows NaN), every k step of the row. The rows past P that the
// last tiles' copies read (up to R) get zeros too, so the loop reads no byte left unwritten (the
// tiles that reach them write the same zeros). A block copies 8 rows of one tile (grid: the most
// tiles there can be, times R / 8), a warp a row, its lanes the row's 16-byte pieces in turn, four
// loads in flight before their stores.
template <int R>
__global__ void __launch_bounds__(swapab::kStageThreads) stage_x_kernel(const MatmulOgsParams p) {
  static_assert(swapab::kStageThreads == 8 * 32, "a warp a row of the block's 8");
  constexpr int kGroups = R / 8, kBatch = 4;
  const int64_t q = blockIdx.x / kGroups;
  if (q >= tile_count<R>(p)) return;
  int e;
  int64_t row_begin, row_end;
  tile_at<R>(p, q, e, row_begin, row_end);
  const int r = static_cast<int>(blockIdx.x % kGroups) * 8 + static_cast<int>(threadIdx.x / 32);  // the tile's row
  const int64_t row = row_begin + r;
  if (row >= row_end && row < p.P) return;           // another tile's row
  const int64_t src = source_row(p, row, row_end);  // kNoRow past the tile: zeros
  const int pieces = static_cast<int>((p.K + 63) / 64) * 8;  // of a staged row
  const int filled = src >= 0 ? static_cast<int>(p.K / 8) : 0;  // pieces read from x
  const uint4* from = reinterpret_cast<const uint4*>(static_cast<const bf16*>(p.x) + (src >= 0 ? src * p.K : 0));
  for (int base = threadIdx.x % 32; base < pieces; base += 32 * kBatch) {
    uint4 v[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int piece = base + 32 * j;
      v[j] = piece < filled ? from[piece] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const int piece = base + 32 * j;
      if (piece < pieces) {
        *reinterpret_cast<uint4*>(p.x_staged + staged_x_offset(p, piece / 8, row, r % 8, piece % 8)) = v[j];
      }
    }
  }
}

// A thread's 32 codes of a k step (its four words of the slab step) and their scale bytes (s0: row
// g's blocks 0 and 1, s1: row g + 8's) into its four A fragments of the step's k16 steps
// (mxfp4_slabs.h: word q is row g + 8 (q % 2), block q / 2; its pairs 0..3 are registers 0 and 2
// of k16 step 2 (q / 2), then of 2 (q / 2) + 1). kWide: scale bytes of 128 or more, two
// multiplies.
template <bool kWide>
__device__ __forceinline__ void decode_step(const uint4 w, uint32_t s0, uint32_t s1, uint32_t (&a)[4][4]) {
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
  const uint32_t scales[4] = {s0 & 0xff, s1 & 0xff, s0 >> 8, s1 >> 8};
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    uint32_t r[4];
    decode_e2m1x8_slab(words[q], kWide ? mxfp4_first_multiplier(scales[q]) : mxfp4_multiplier_upto_128(scales[q]), r);
    if (kWide) apply_second_step(r, mxfp4_second_multiplier(scales[q]));
    const int j = 2 * (q / 2), reg = q % 2;
    a[j][reg] = r[0];
    a[j][reg + 2] = r[1];
    a[j + 1][reg] = r[2];
    a[j + 1][reg + 2] = r[3];
  }
}

// x_rows: x's tiles of R rows x 64 k (tensor_map.h's bf16_row_tiles) where p has no gather;
// unused with one.
template <class Sh>
__global__ void __launch_bounds__(Sh::kThreads, 1)
    matmul_ogs_swapab_kernel(const MatmulOgsParams p, const __grid_constant__ CUtensorMap x_rows) {
#if MOEKIT_WGMMA
  using namespace swapab;
  constexpr int R = Sh::kRows, KS = Sh::kChunkSteps, S = Sh::kStages, WG = Sh::kSlabs;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + (1024 - shared_address(smem_raw) % 1024) % 1024;
  __shared__ uint64_t full[S], empty[S];
  const int steps = static_cast<int>((p.K + 63) / 64), chunks = (steps + KS - 1) / KS;
  const int n_slabs = static_cast<int>((p.N + 63) / 64), tiles = (n_slabs + WG - 1) / WG;
  const int64_t items = tile_count<R>(p) * tiles;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      barrier_init(&full[s], 1);
      // One arrival per consumer thread: an arrival releases only its own thread's reads of the
      // stage (a warp's lane 0 arriving after a __syncwarp left racecheck reporting the other
      // lanes' loads against the producer's next copy into the stage).
      barrier_init(&empty[s], 128 * WG);
    }
    barrier_init_fence();
  }
  __syncthreads();
  const int wg = threadIdx.x / 128;
  // The producer's warpgroup gives registers to the consumers': with the launch's share each (168
  // at two consumer warpgroups), ptxas serializes the consumers' wgmmas (C7511: no room for two
  // register sets in flight).
  if (wg == WG) {  // the producer: one thread
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kProducerRegisters));
    if (threadIdx.x != 128 * WG) return;
    const bool staged = p.gather_idx != nullptr;
    if (!staged) prefetch_tensor_map(&x_rows);
    int n = 0;  // chunks issued by this block
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
      const int tile = static_cast<int>(item % tiles);
      int e;
      int64_t row_begin, row_end;
      tile_at<R>(p, item / tiles, e, row_begin, row_end);
      for (int c = 0; c < chunks; ++c, ++n) {
        const int s = swapab_ring::stage(n, S), nst = min(KS, steps - c * KS);
        if (swapab_ring::producer_waits(n, S)) barrier_wait(&empty[s], swapab_ring::empty_parity(n, S));
        unsigned char* st = smem + s * Sh::kStageBytes;
        barrier_arrive_expect(&full[s], nst * (WG * (slabs::kCodeBytes + slabs::kScaleBytes) + R * 128));
        for (int h = 0; h < WG; ++h) {
          // The last tile of an odd slab count repeats the last slab; its columns are not stored.
          const int slab = min(WG * tile + h, n_slabs - 1);
          const int64_t step0 = (static_cast<int64_t>(e) * n_slabs + slab) * steps + c * KS;
          bulk_copy(st + Sh::codes_at(h), p.slab_codes + step0 * slabs::kCodeBytes, nst * slabs::kCodeBytes,
                    &full[s]);
          bulk_copy(st + Sh::scales_at(h), p.slab_scales + step0 * slabs::kScaleBytes,
                    nst * slabs::kScaleBytes, &full[s]);
        }
        for (int ks = 0; ks < nst; ++ks) {
          unsigned char* x_tile = st + Sh::x_at(ks);
          const int step = c * KS + ks;
          if (staged) bulk_copy<true>(x_tile, p.x_staged + staged_x_offset(p, step, row_begin, 0, 0), R * 128, &full[s]);
          else tensor_copy_2d<true>(x_tile, &x_rows, step * slabs::kStepK, static_cast<int>(row_begin), &full[s]);
        }
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(Sh::kConsumerRegisters));
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int slab_row = warp * 16 + g;  // this thread's weight rows in its slab: slab_row and slab_row + 8
  int n = 0;         // chunks consumed by this block
  int released = 0;  // chunks whose stage this warp has given back
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
    const int tile = static_cast<int>(item % tiles);
    int e;
    int64_t row_begin, row_end;
    tile_at<R>(p, item / tiles, e, row_begin, row_end);
    float acc[R / 2];
#pragma unroll
    for (int i = 0; i < R / 2; ++i) acc[i] = 0.0f;
    uint32_t a[2][4][4];  // [register set: the step's parity][k16 step j][fragment register]
    for (int c = 0; c < chunks; ++c, ++n) {
      const int s = swapab_ring::stage(n, S), nst = min(KS, steps - c * KS);
      barrier_wait(&full[s], swapab_ring::full_parity(n, S));
      const unsigned char* st = smem + s * Sh::kStageBytes;
      const uint64_t b0 = wgmma_descriptor_sw128(st + Sh::x_at(0));
      struct StepLoad {
        uint4 w;
        uint32_t s0, s1;  // the scale bytes of rows slab_row and slab_row + 8, blocks 0 and 1 of the step
      };
      auto load = [&](int ks) {
        const unsigned char* sc = st + Sh::scales_at(wg) + ks * slabs::kScaleBytes;
        return StepLoad{*reinterpret_cast<const uint4*>(st + Sh::codes_at(wg) + ks * slabs::kCodeBytes +
                                                        (threadIdx.x % 128) * 16),
                        *reinterpret_cast<const uint16_t*>(sc + slab_row * 2),
                        *reinterpret_cast<const uint16_t*>(sc + (slab_row + 8) * 2)};
      };
      auto step = [&](int ks, const StepLoad& l) {
        const int set = ks % 2;  // ks is a constant of the unrolled loop
        cute::warpgroup_wait<1>();  // the wgmmas of two steps ago (which read this register set) are done
        // A scale byte of 128 or more anywhere in the warp (rare) takes the two-multiply decode.
        if (warp_needs_second_step(((l.s0 | l.s1) & 0x8080u) != 0)) decode_step<true>(l.w, l.s0, l.s1, a[set]);
        else decode_step<false>(l.w, l.s0, l.s1, a[set]);
        // After the wait only the previous step's wgmmas may run (swapab_ring.h's release rule).
        if (swapab_ring::release_due(ks, released, n)) {
          barrier_arrive(&empty[swapab_ring::stage(released, S)]);
          ++released;
        }
        cute::warpgroup_arrive();
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmma_rs<R>(acc, a[set][j], wgmma_descriptor_advance(b0, Sh::x_at(ks) - Sh::x_at(0) + 32 * j));
        cute::warpgroup_commit_batch();
      };
      StepLoad cur = load(0), next{};
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        if (ks >= nst) break;
        // Unconditional (a load only where nst allowed it cost six register copies a step): past a
        // short last chunk's steps it reads its stage's unused slot, in bounds and not yet
        // released, and never decodes it.
        if (ks + 1 < KS) next = load(ks + 1);
        step(ks, cur);
        cur = next;
      }
    }
    cute::warpgroup_wait<0>();
    // acc[4u + 2h + i]: weight row slab_row + 8h of the slab (output column n_h), token 8u + 2t + i
    // of the tile. Column n_h + 1 (row g + 1, when g is even) is lane + 4's value. The bias and
    // the bad-gather-index flags of this thread's R / 4 tokens are read before any store (a load
    // cannot move above a store that might alias it: one a token, between stores, waited out its
    // latency each time).
    const int64_t n0 = static_cast<int64_t>(tile) * Sh::kTileCols + wg * slabs::kRows + slab_row;
    float b[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t col = n0 + 8 * h;
      b[h] = p.bias && col < p.N ? load_float(p.bias, p.bias_bf16, static_cast<int64_t>(e) * p.N + col) : 0.0f;
    }
    static_assert(R / 4 <= 32, "a flag bit a token of this thread");
    uint32_t bad = 0;  // bit 2u + k: token 8u + 2t + k
    if (p.gather_idx) {
#pragma unroll
      for (int u = 0; u < R / 8; ++u)
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          bad |= static_cast<uint32_t>(source_row(p, row_begin + 8 * u + 2 * t + k, row_end) == kBadRow) << (2 * u + k);
        }
    }
#pragma unroll
    for (int u = 0; u < R / 8; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const float v = acc[4 * u + 2 * h + k] + b[h];
          const float next_col = __shfl_down_sync(0xffffffffu, v, 4);
          const int64_t row = row_begin + 8 * u + 2 * t + k, col = n0 + 8 * h;
          if (g % 2 == 0 && row < row_end && col < p.N) {
            store_output_pair<false>(p, e, row, col, (bad >> (2 * u + k)) & 1, v, next_col, /*add_bias=*/false);
          }
        }
  }
#else
  __trap();  // chosen on sm_90 only: a build without sm_90a code must not write nothing silently
#endif
}

}  // namespace moekit::cuda
