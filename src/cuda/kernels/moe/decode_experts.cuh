// The decode layer's expert matmuls: mlp1 + SwiGLU and mlp2 + the weighted combine, for at most
// 8 tokens, where the routed experts' MXFP4 weights are the whole cost.
//
// Work units are (routed expert d, slab of weight rows, k range s of `splits`). A warp owns a
// unit and streams its weights from global memory straight into mma.sync fragments (roles
// swapped as in matmul_ogs_stream.cuh: weight rows are the MMA's M, the expert's tokens its N),
// loading the next k step's codes while it decodes one; the x rows (tokens or token-slots) sit
// in shared memory, copied while the block routes. Two ways to fill the MMA (kHalves):
// - 1 (5-8 tokens): 16 rows a slab, lane (g, t) holding rows g and g + 8 at k block 4s + t of
//   step s, the N columns the tokens;
// - 2 (up to 4 tokens): 8 rows a slab, a step the 128 bytes of each row at k blocks 8s .. 8s + 7:
//   lane (g, t) holds rows g / 2 and g / 2 + 4 at block 8s + 4 (g % 2) + t, so that each load
//   instruction asks for 4 runs of 128 bytes (the half runs of the first way took 1.3x as long
//   to stream: bench/kernel_floors.cu). MMA rows g of one parity hold one half of the step's
//   blocks, and column 2r + h carries token r's x over half h: the products of matching parity
//   are the halves of a row's sum, which the lane pairs (g, g + 1) add. The grid is one block per
// SM and unit u goes to block u % grid, so every SM gets the same number of units within one;
// the k ranges make about 22 units an SM at T = 1 (22 warps of 80 registers), because a warp's
// decode is a long chain of dependent instructions and the SM needs many warps to issue every
// cycle. Fewer warps with more loads in flight, and L2 prefetch, were slower (docs/kernels.md
// has every variant measured, bench/moe_decode_experts.cu times them).
//
// A unit that holds a whole sum (mlp1 with one k range) finishes its outputs itself. mlp1's k
// ranges of one (d, slab) run on consecutive warps of one block, which leave their sums in
// shared memory and meet at a named barrier; the group's last warp adds them in k order. mlp2's
// units write their partial sums to global memory, and the last unit of a slab to arrive (an
// atomic counter, zeroed by the gate kernel) adds the slab's sums (all experts and k ranges) in
// a fixed order: the combine. Nothing depends on which warp arrives last, so the outputs are the
// same run to run.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "../activation/swiglu.cuh"
#include "../element.cuh"
#include "../gemm/mma.cuh"
#include "../quant/e2m1_bf16.cuh"
#include "decode_route.cuh"
#include "moe_decode_params.cuh"

// Timestamps at the kernel's phases for bench/moe_decode_phases.cu (kCombine and n); nothing
// elsewhere.
#ifndef MOEKIT_MOE_DECODE_PHASE
#define MOEKIT_MOE_DECODE_PHASE(n)
#endif

namespace moekit::cuda {

__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;" ::"r"(id), "r"(threads) : "memory");
}

template <bool kCombine, int kHalves, class Config>
__global__ void __launch_bounds__(32 * Config::kWarps, 1) moe_decode_experts_kernel(const MoeDecodeExpertsParams p) {
  using namespace moe_decode;
  static_assert(kHalves == 1 || kHalves == 2, "16 rows a slab, or 8 rows in two halves of the k step");
  constexpr int kRows = moe_decode_slab_rows(kHalves), kStepBlocks = moe_decode_step_k(kHalves) / 32;  // as the plan's
  static_assert(Config::kWarps / 2 < 16, "a named barrier for each group of two warps or more");
  __shared__ DecodeRoute route;
  extern __shared__ uint4 x_shared[];  // [x rows][p.x_stride] (moe_decode_x_stride), then mlp1's group sums
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int g = lane / 4, t = lane % 4;  // the MMA's row group and k / token-pair slot
  const int lane_row = g / kHalves, half = g % kHalves;  // the lane's first row in a slab, its k half
  const uint4 zero = make_uint4(0, 0, 0, 0);

  // Where a warp's units lie (expert d of the routing, slab, k range) is arithmetic on the shapes
  // alone: the first unit's goes before the wait, off the critical path (22 warps doing it at once
  // after the wait took ~1 us of issue). Unit indices in 32 bits: a 64-bit division is a call.
  const int k_blocks = static_cast<int>(p.K / 32), steps = (k_blocks + kStepBlocks - 1) / kStepBlocks;
  const int slabs = static_cast<int>((p.N + kRows - 1) / kRows);
  const int S = p.splits;
  const bool whole = !kCombine && S == 1;  // the unit finishes its own outputs
  // mlp1 with k ranges: groups of S warps take the S units of an (expert, slab) together.
  const bool grouped = !kCombine && S > 1;
  const int group_warps = grouped ? S : 1, groups_here = warps / group_warps;
  const int my_group = warp / group_warps, member = warp % group_warps;
  struct Place {
    int u, d, slab, s, first_step, n;  // unit u = (d * slabs + slab) * S + s: steps first_step ..+ n
  };
  auto place = [&](int local) {  // the local-th unit (or group of S) of the block's warp
    Place at;
    at.u = (blockIdx.x + local * gridDim.x) * group_warps + member;
    const int ds = at.u / S;
    at.s = at.u - ds * S;
    at.d = ds / slabs;
    at.slab = ds - at.d * slabs;
    at.first_step = steps * at.s / S;
    at.n = steps * (at.s + 1) / S - at.first_step;
    return at;
  };
  Place at = place(my_group);
  // Keeps the compiler from sinking that arithmetic past the wait.
  asm volatile("" : "+r"(at.u), "+r"(at.d), "+r"(at.slab), "+r"(at.s), "+r"(at.first_step), "+r"(at.n));

  // A unit's weights as a cursor over its steps: this lane's rows n0 and n0 + kRows / 2 at the
  // next step's k block (kb0 + kStepBlocks * i), and how many of its steps are left (K may end
  // within the last). Each load moves it a step on, so a step's addresses are two pointer adds,
  // not the whole index arithmetic again (15 of 215 instructions a step, sm_90a).
  struct Stream {
    const uint4* codes;
    const uint8_t* scales;
    int lane_steps;  // left, from the cursor
    bool row_ok[2];
  };
  const int hi = kRows / 2 * k_blocks;  // from row n0 to row n0 + kRows / 2
  // The lane's first row (n0) and its first step's k block (kb0) in a unit.
  auto first_row = [&](const Place& at) { return at.slab * kRows + lane_row; };
  auto first_block = [&](const Place& at) { return kStepBlocks * at.first_step + 4 * half + t; };
  auto stream_of = [&](const Place& at, int e) {
    Stream w;
    const int n0 = first_row(at), kb0 = first_block(at);
    w.row_ok[0] = n0 < p.N;
    w.row_ok[1] = n0 + kRows / 2 < p.N;
    w.lane_steps = min(at.n, max(k_blocks - kb0 + kStepBlocks - 1, 0) / kStepBlocks);
    const int64_t at0 = (static_cast<int64_t>(e) * p.N + n0) * k_blocks + kb0;  // code word and scale byte
    w.codes = reinterpret_cast<const uint4*>(p.w) + at0;
    w.scales = p.w_scales + at0;
    return w;
  };
  struct Raw {
    uint4 codes[2];
    uint32_t scale[2];
  };
  auto load = [&](Stream& w, bool whole_line) {
    Raw r;
    const bool in = w.lane_steps > 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool ok = in && w.row_ok[h];
      const int at = h * hi;
      r.codes[h] = !ok ? zero : whole_line ? load_streaming<128>(w.codes + at) : load_streaming(w.codes + at);
      r.scale[h] = ok ? w.scales[at] : 127u;
    }
    w.codes += kStepBlocks;
    w.scales += kStepBlocks;
    --w.lane_steps;
    return r;
  };
  // The weights come from DRAM, kAhead steps ahead (asking L2 for whole lines, whose other half
  // the next step reads, except for a unit's first step: every warp starts at once, and half the
  // bytes in that burst brought the first step 0.5-0.8 us sooner); the token values from shared
  // memory, at the step.
  constexpr int kAhead = Config::kAhead;
  Raw ring[kAhead];
  Stream next;  // the warp's unit, at the step its next load asks for
  auto start = [&](int e) {
    next = stream_of(at, e);
#pragma unroll
    for (int j = 0; j < kAhead; ++j) ring[j] = load(next, j > 0);
  };

  // The expert whose weights the warp's first unit has asked for before the block's barrier
  // (-1: none); the loop asks again where the routing holds another.
  int started = -1;
  // mlp2's blocks take the SMs as mlp1's leave, long after mlp1's block 0 wrote the routing: a
  // warp asks for its first unit's weights before the wait, at the expert that routing most
  // likely holds.
  if (kCombine && my_group < groups_here && at.d < moe_decode::kMaxPairs) {
    const int e = guess_before_wait(&static_cast<const DecodeRoute*>(p.route)->expert[at.d]);
    if (e >= 0 && e < p.E) {
      started = e;
      start(e);
    }
  }
  MOEKIT_MOE_DECODE_PHASE(0);
  wait_for_previous_grid();
  MOEKIT_MOE_DECODE_PHASE(1);
  // k past K reads zeros; word c at moe_decode_x_word_at (padded, with halves).
  const int64_t words = p.K / 8, row_words = moe_decode_x_words(p.K, kHalves);
  for (int r = 0; r < (kCombine ? p.T * p.k : p.T); ++r) {
    for (int64_t c = threadIdx.x; c < row_words; c += blockDim.x) {
      uint4* to = x_shared + r * p.x_stride + moe_decode_x_word_at(c, kHalves);
      if (c < words) cp_async_16(to, p.x + r * words + c, 16);
      else *to = zero;
    }
  }
  cp_async_commit();

  // mlp1 routes while its x rows arrive, and its block 0 leaves the routing for mlp2, which
  // reads it while its own x rows arrive: one round trip instead of a routing after mlp1 ends.
  if constexpr (kCombine) {
    copy_route(*static_cast<const DecodeRoute*>(p.route), route);
  } else if (p.T == 1) {
    // One token: every warp ranks it itself, so that it knows its first unit's expert without
    // waiting for the block, and asks for that unit's weights at once.
    const WarpRoute mine = route_token_in_warp(p.logits, p.E, p.k);
    if (my_group < groups_here && at.u - member < p.k * slabs * S) {
      started = mine.expert_at(at.d, p.k);
      start(started);
      MOEKIT_MOE_DECODE_PHASE(4);  // the first unit's first loads issued
    }
    if (warp == 0) write_token_route(mine, p.k, route);
    __syncthreads();
    if (blockIdx.x == 0) copy_route(route, *static_cast<DecodeRoute*>(p.route));
  } else {
    route_in_block(p.logits, p.T, p.E, p.k, route);
    if (blockIdx.x == 0) copy_route(route, *static_cast<DecodeRoute*>(p.route));
  }
  MOEKIT_MOE_DECODE_PHASE(2);  // routed, or the routing copied
  cp_async_wait<0>();
  __syncthreads();
  let_next_grid_start();
  MOEKIT_MOE_DECODE_PHASE(3);  // x landed

  const int units = route.experts * slabs * S;
  // [2 (iteration parity)][warps][kUnitFloats]: a group's sums, read by its last warp.
  float* group_sums = reinterpret_cast<float*>(x_shared + p.T * p.x_stride);
  if (groups_here == 0) __trap();  // the launcher gives mlp1 a group's warps at least
  if (S > kMaxSplits) __trap();     // moe_decode_plan bounds the k ranges
  if (my_group >= groups_here) return;  // no barrier of the block follows
  // mlp1's output: the SwiGLU of rows (n, n + 1) of routed expert d for its token-slot `rank`,
  // into the act row of that slot, in paired order for mlp2's fragments.
  auto store_act = [&](int d, int rank, int64_t n, float glu, float lin) {
    p.act[route.slot[d][rank] * (p.N / 2) + paired_index(n / 2)] = __float2bfloat16_rn(swiglu(glu, lin, p.alpha, p.limit));
  };

  int parity = 0;
  for (int local = my_group;; local += groups_here, parity ^= 1, at = place(local)) {
    if (at.u - member >= units) break;  // the group's first unit is past the last
    const int u = at.u, d = at.d, slab = at.slab, n = at.n;
    const int e = route.expert[d], count = route.count[d];
    const int n0 = first_row(at), kb0 = first_block(at);
    if (started != e) {
      start(e);
      if (local == my_group) MOEKIT_MOE_DECODE_PHASE(4);  // the first unit's first loads issued
    }
    started = -1;
    // Column g: the x row of the expert's token-slot g / kHalves over the lane's k blocks (a
    // lane without a token-slot reads row 0: its MMA columns are never stored).
    const int rank_g = g / kHalves;
    const int x_row = rank_g < count ? (kCombine ? route.slot[d][rank_g] : route.slot[d][rank_g] / p.k) : 0;
    const uint4* x_s = x_shared + x_row * p.x_stride + moe_decode_x_word_at(4 * kb0, kHalves);
    auto load_x = [&](int i, uint4 (&b)[4]) {
#pragma unroll
      for (int w = 0; w < 4; ++w) b[w] = x_s[moe_decode_x_word_at(4 * kStepBlocks * i, kHalves) + w];
    };

    // Two accumulators, so that a step's 8 MMAs form two chains of 4.
    // The first k range's first chain starts from the rows' bias (the same for every token-slot
    // column), so that no epilogue waits on a bias load: asked for here, with the unit's first
    // weights, and added by the unit's own MMAs.
    // With halves, only the first half's lanes take it.
    float acc[2][4] = {};
    if (p.bias && at.s == 0 && half == 0) {
      const int64_t row0 = static_cast<int64_t>(e) * p.N + n0;
      const float b0 = next.row_ok[0] ? load_float(p.bias, p.bias_bf16, row0) : 0.0f;
      const float b1 = next.row_ok[1] ? load_float(p.bias, p.bias_bf16, row0 + kRows / 2) : 0.0f;
      acc[0][0] = acc[0][1] = b0;
      acc[0][2] = acc[0][3] = b1;
    }
    // One k step: the lane's two 32-code blocks, word by word (8 codes of each row) decoded
    // into A fragments for 2 MMAs.
    auto compute = [&](const Raw& raw, const uint4 (&b)[4], bool second_step) {
      uint32_t first[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        first[h] = second_step ? mxfp4_first_multiplier(raw.scale[h]) : mxfp4_multiplier_upto_128(raw.scale[h]);
      }
      const uint32_t cw[2][4] = {{raw.codes[0].x, raw.codes[0].y, raw.codes[0].z, raw.codes[0].w},
                                 {raw.codes[1].x, raw.codes[1].y, raw.codes[1].z, raw.codes[1].w}};
      const uint32_t bw[4][4] = {{b[0].x, b[0].y, b[0].z, b[0].w}, {b[1].x, b[1].y, b[1].z, b[1].w},
                                 {b[2].x, b[2].y, b[2].z, b[2].w}, {b[3].x, b[3].y, b[3].z, b[3].w}};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        uint32_t a[2][4];  // [row lo / hi][register]
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          decode_e2m1x8_strided(cw[h][i], first[h], a[h]);
          if (second_step) apply_second_step(a[h], mxfp4_second_multiplier(raw.scale[h]));
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t frag[4] = {a[0][2 * h], a[1][2 * h], a[0][2 * h + 1], a[1][2 * h + 1]};
          mma_bf16_m16n8k16(acc[h], frag, bw[i][2 * h], bw[i][2 * h + 1]);
        }
      }
    };

    for (int base = 0; base < n; base += kAhead) {
#pragma unroll
      for (int j = 0; j < kAhead; ++j) {
        const int i = base + j;
        if (i >= n) break;
        uint4 b[4];
        load_x(i, b);
        const Raw raw = ring[j];
        ring[j] = load(next, true);
        // Scales above 128 take a second multiply (e2m1_bf16.cuh); real checkpoints have none,
        // so a warp runs the step without it unless one of its lanes needs it.
        if (warp_needs_second_step(raw.scale[0] > 128 || raw.scale[1] > 128)) compute(raw, b, true);
        else compute(raw, b, false);
        if (i == 0 && local == my_group) MOEKIT_MOE_DECODE_PHASE(5);  // its first step multiplied
      }
    }
    MOEKIT_MOE_DECODE_PHASE(6);  // this unit's steps done
    // acc: (row n0, columns 2t and 2t + 1) and (row n0 + kRows / 2, same columns). With halves,
    // an even g's lane adds the second half of its rows' sums from lane g + 1: its column 2t is
    // token-slot t's first half, and the odd lane's 2t + 1 the second.
    float sum[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) sum[i] = acc[0][i] + acc[1][i];
    if constexpr (kHalves == 2) {
#pragma unroll
      for (int i = 0; i < 4; i += 2) sum[i] += __shfl_down_sync(0xffffffffu, sum[i + 1], 4);
    }
    // sum[i] is row n0 + kRows / 2 * (i / 2) for token-slot rank_of(i), where the lane holds it.
    auto holds = [&](int i) { return kHalves == 1 || (half == 0 && i % 2 == 0); };
    auto rank_of = [&](int i) { return kHalves == 1 ? 2 * t + i % 2 : t; };

    if (whole) {
      // SwiGLU pairs rows (2i, 2i + 1): the lane of an even row takes its partner from the lane
      // of the next row (g + kHalves).
      float partner[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) partner[i] = __shfl_down_sync(0xffffffffu, sum[i], 4 * kHalves);
      if (lane_row % 2 == 0) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int rank = rank_of(i);
          const int64_t nn = n0 + kRows / 2 * (i / 2);
          if (!holds(i) || rank >= count || nn >= p.N) continue;
          store_act(d, rank, nn, sum[i], partner[i]);
        }
      }
      continue;
    }

    // A row's sum over the k ranges (S sums kUnitFloats apart from `at`, in order; the first
    // holds the bias).
    auto row_sum = [&](const float* at) {
      float h = 0.0f;
      for (int ss = 0; ss < S; ++ss) h += at[ss * kUnitFloats];
      return h;
    };
    auto sum_at = [&](int64_t nn, int rank) { return (nn - slab * kRows) * kMaxTokens + rank; };  // in a unit's sums
    auto store_sums = [&](float* mine) {
      if constexpr (kHalves == 1) {
        *reinterpret_cast<float2*>(mine + g * kMaxTokens + 2 * t) = make_float2(sum[0], sum[1]);
        *reinterpret_cast<float2*>(mine + (g + 8) * kMaxTokens + 2 * t) = make_float2(sum[2], sum[3]);
      } else if (half == 0) {
        mine[lane_row * kMaxTokens + t] = sum[0];
        mine[(lane_row + kRows / 2) * kMaxTokens + t] = sum[2];
      }
    };

    if constexpr (!kCombine) {
      // The group's sums meet in shared memory. The other buffer is free: the group's last warp
      // read it before it came to this barrier.
      float* sums = group_sums + parity * warps * kUnitFloats;
      store_sums(sums + warp * kUnitFloats);
      named_barrier_sync(1 + my_group, 32 * S);
      if (member != S - 1) continue;
      const float* first = sums + my_group * S * kUnitFloats;
      for (int item = lane; item < count * (kRows / 2); item += 32) {
        const int rank = item / (kRows / 2);
        const int64_t nn = slab * kRows + 2 * (item % (kRows / 2));
        if (nn >= p.N) continue;
        store_act(d, rank, nn, row_sum(first + sum_at(nn, rank)), row_sum(first + sum_at(nn + 1, rank)));
      }
    } else {
      store_sums(p.partials + u * kUnitFloats);
      __syncwarp();  // orders the warp's stores before lane 0's release
      int arrived = 0;
      if (lane == 0) {
        asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;" : "=r"(arrived) : "l"(p.counters + slab) : "memory");
      }
      arrived = __shfl_sync(0xffffffffu, arrived, 0);
      __syncwarp();  // the other lanes' loads after lane 0's acquire
      if (arrived != route.experts * S - 1) continue;
      // y[t, n] = sum_j weight[t, j] * h[t * k + j, n], in slot order (the combine op's order).
      // A batch of slots' sums (every k range; the first holds the bias) is asked for at once:
      // one round trip to L2 a batch, where a slot at a time took two (~4 us of mlp2's tail).
      constexpr int kBatch = 4;
      for (int item = lane; item < p.T * kRows; item += 32) {
        const int token = item / kRows;
        const int64_t nn = slab * kRows + item % kRows;
        if (nn >= p.N) continue;
        float v = 0.0f;
        for (int j0 = 0; j0 < p.k; j0 += kBatch) {
          float part[kBatch][kMaxSplits];
#pragma unroll
          for (int b = 0; b < kBatch; ++b) {
            const int ts = token * p.k + min(j0 + b, p.k - 1), dd = route.slot_expert[ts];
            const float* at = p.partials + (dd * slabs + slab) * S * kUnitFloats + sum_at(nn, route.slot_rank[ts]);
#pragma unroll
            for (int ss = 0; ss < kMaxSplits; ++ss) part[b][ss] = ss < S ? __ldcg(at + ss * kUnitFloats) : 0.0f;
          }
#pragma unroll
          for (int b = 0; b < kBatch; ++b) {
            if (j0 + b >= p.k) break;
            float h = 0.0f;  // the k ranges in order
#pragma unroll
            for (int ss = 0; ss < kMaxSplits; ++ss) {
              if (ss < S) h += part[b][ss];
            }
            v += route.weight[token * p.k + j0 + b] * h;
          }
        }
        p.y[token * p.N + nn] = __float2bfloat16_rn(v);
      }
    }
  }
  MOEKIT_MOE_DECODE_PHASE(7);  // the warp's units and their epilogues done
}

}  // namespace moekit::cuda
