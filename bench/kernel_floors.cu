// What a decode-sized kernel costs before any decoding, on one GPU: the floors the MoE decode
// path's expert kernels stand on (docs/kernels.md). Each row is a CUDA graph of 32 launches of
// one kernel, chained by programmatic dependent launch as the decode layer chains its kernels,
// one block an SM; the time per launch is the median of 5 replays.
//   - empty: wait for the previous kernel, let the next start, exit;
//   - route: the decode path's routing of T = 1 token over E = 32 experts in every block (k = 4),
//     then the trigger, in the expert kernels' order: the next launch waits for the routing;
//   - stream B MB: every block reads its share of B MB (16-byte loads, 8 in flight a thread,
//     each call a different buffer of 8 so that L2 holds none of it), after the wait;
//   - stream B MB, early: the same loads issued before the wait (weights do not depend on the
//     previous kernel), so they overlap the previous kernel's tail;
//   - stream 23.6 MB beside 184 KB a block: the stream (the output projection's weights) while
//     every block also reads the same 184 KB (a 32 x 2880 bf16 gate, 24 MB from L2 in all), as
//     mlp1's blocks would if each computed the gate's logits itself (docs/decode.md);
//   - bulk copies: every block brings its share of 35.3 MB into shared memory by cp.async.bulk
//     copies of S bytes (contiguous), issued by W warps (lane 0 of each, its own ring of slots
//     and mbarriers, ~128 KB a block in all), nothing read: what the copy engine delivers by copy
//     size and issuers (docs/kernels.md: row-sized copies could not feed the staged kernel);
//   - mlp1's loads: the codes and scale bytes the decode path's mlp1 reads at T = 1 (E = 32, 4
//     routed experts, 2 k ranges: 2880 units of 16 rows, 22 a block), loaded as its warps load
//     them (k steps ahead in registers) but not decoded, from the checkpoint's rows or from a
//     layout that puts each unit's k step in one contiguous KB.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I "$CUTE" bench/kernel_floors.cu \
//        -o build/kernel_floors && build/kernel_floors
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "cuda/kernels/bulk_copy.cuh"
#include "cuda/kernels/gemm/mma.cuh"
#include "cuda/kernels/moe/decode_route.cuh"
#include "cuda/launch/launch_kernel.h"
#include "graph_timing.h"
#include "stream_share.cuh"

using namespace moekit::cuda;

namespace {

constexpr int kThreads = 704, kCalls = 32, kBuffers = 8;

__global__ void __launch_bounds__(kThreads, 1) empty_kernel(float* out) {
  wait_for_previous_grid();
  let_next_grid_start();
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = 0.0f;
}

__global__ void __launch_bounds__(kThreads, 1) route_kernel(const float* logits, float* out) {
  __shared__ DecodeRoute route;
  wait_for_previous_grid();
  route_in_block(logits, 1, 32, 4, route);
  let_next_grid_start();
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = route.weight[0];
}

// mlp1 at T = 1 of the 20b layer: [E, N, K / 32] blocks of 16 code bytes.
constexpr int64_t kN = 5760, kK = 2880, kKBlocks = kK / 32, kSteps = (kKBlocks + 3) / 4, kE = 32;
constexpr int64_t kRows = moe_decode::kSlabRows, kSlabs = kN / kRows, kSplits = 2;

// Loads (and xors) what the decode path's mlp1 unit u = (routed expert d, slab, k range) loads
// for its lane: kAhead k steps ahead, each the 16 bytes of rows n0 and n0 + 8 at k block
// 4 * step + t and their scale bytes. kContiguous: a unit's step is one KB of codes, lane by
// lane (the scale bytes stay in the checkpoint's rows: 1/32 of the bytes). kLines: units of 8
// rows and the whole of K, a step the 128-byte line of each row at k blocks 8 * step .. + 7,
// lane (g, t) reading row g / 2 + 4h at k block 8 * step + 4 * (g % 2) + t, so that each load
// instruction asks for 4 whole lines (the checkpoint's rows; the other layouts ask for 8 half
// lines or 4 lines of one contiguous KB).
enum Mlp1Layout { kRowsLayout, kContiguousLayout, kLinesLayout };
template <int kLayout, int kAhead>
__global__ void __launch_bounds__(kThreads, 1) mlp1_loads_kernel(const uint4* w, const uint8_t* scales, int call,
                                                               float* out) {
  wait_for_previous_grid();
  let_next_grid_start();
  constexpr bool kContiguous = kLayout == kContiguousLayout, kLines = kLayout == kLinesLayout;
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  // Units (expert, slab, k range): kLines 8-row slabs and one k range, else 16-row slabs and two.
  constexpr int64_t slabs = kLines ? kN / 8 : kSlabs, splits = kLines ? 1 : kSplits;
  constexpr int64_t steps = kLines ? (kKBlocks + 7) / 8 : kSteps;
  uint32_t sum = 0;
  for (int64_t u = blockIdx.x + static_cast<int64_t>(threadIdx.x / 32) * gridDim.x; u < 4 * slabs * splits;
       u += warps) {
    const int64_t d = u / (slabs * splits), s = u % splits, slab = u / splits % slabs;
    const int64_t e = (4 * call + d) % kE;  // each call other experts, mostly out of L2
    const int64_t first = steps * s / splits;
    const int n = static_cast<int>(steps * (s + 1) / splits - first);
    const int64_t row = kLines ? slab * 8 + g / 2 : slab * kRows + g;
    const int64_t kb0 = kLines ? 8 * first + 4 * (g % 2) + t : 4 * first + t;
    const int64_t per_step = kLines ? 8 : 4;
    const int lane_steps =
        static_cast<int>(min(static_cast<int64_t>(n), max(kKBlocks - kb0 + per_step - 1, int64_t{0}) / per_step));
    const int64_t row_hi = kLines ? 4 : 8;  // rows from h = 0 to h = 1
    const uint8_t* sc = scales + (e * kN + row) * kKBlocks + kb0;
    const uint4* codes = kContiguous ? w + ((e * kSlabs + slab) * kSteps + first) * 64 + lane
                                     : w + (e * kN + row) * kKBlocks + kb0;
    const int64_t step = kContiguous ? 64 : per_step, hi = kContiguous ? 32 : row_hi * kKBlocks;
    auto load = [&](int i, uint4 (&v)[2], uint32_t (&q)[2]) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        v[h] = i < lane_steps ? load_streaming<128>(codes + step * i + h * hi) : make_uint4(0, 0, 0, 0);
        q[h] = i < lane_steps ? sc[per_step * i + h * row_hi * kKBlocks] : 0u;
      }
    };
    uint4 ring[kAhead][2];
    uint32_t ring_scales[kAhead][2];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) load(j, ring[j], ring_scales[j]);
    for (int base = 0; base < n; base += kAhead) {
#pragma unroll
      for (int j = 0; j < kAhead; ++j) {
        if (base + j >= n) break;
#pragma unroll
        for (int h = 0; h < 2; ++h) sum ^= ring[j][h].x ^ ring[j][h].y ^ ring[j][h].z ^ ring[j][h].w ^ ring_scales[j][h];
        load(base + j + kAhead, ring[j], ring_scales[j]);
      }
    }
  }
  if (sum == 0x12345678u) out[blockIdx.x] = 1.0f;  // never, but the compiler cannot know
}

// Reads this block's share of the words (stream_share.cuh), before or after the wait.
template <bool kEarly>
__global__ void __launch_bounds__(kThreads, 1) stream_kernel(const uint4* w, int64_t words, float* out) {
  if (!kEarly) wait_for_previous_grid();
  const uint32_t sum = stream_share(w, words);
  if (kEarly) wait_for_previous_grid();
  let_next_grid_start();
  if (sum == 0x12345678u) out[blockIdx.x] = 1.0f;  // never, but the compiler cannot know
}

// Every block reads all of `shared` (the same bytes for every block: from L2 after the first),
// then its share of `w`.
__global__ void __launch_bounds__(kThreads, 1) stream_beside_shared_kernel(const uint4* w, int64_t words,
                                                                           const uint4* shared, int64_t shared_words,
                                                                           float* out) {
  wait_for_previous_grid();
  uint32_t sum = 0;
#pragma unroll 16
  for (int64_t i = threadIdx.x; i < shared_words; i += blockDim.x) {  // all of a thread's loads in flight
    const uint4 v = __ldg(shared + i);
    sum ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  sum ^= stream_share(w, words);
  let_next_grid_start();
  if (sum == 0x12345678u) out[blockIdx.x] = 1.0f;  // never, but the compiler cannot know
}

constexpr int kMaxBarriers = 2048;  // slots of all issuing warps

// This block's share of `bytes` (whole pieces of kBytes) into shared memory: warp w < issuers
// copies pieces w, w + issuers, ... into its ring of `slots`, waiting for a slot's last copy to
// land before reusing it, and for all of them at the end.
template <int kBytes>
__global__ void __launch_bounds__(kThreads, 1) bulk_stream_kernel(const uint8_t* w, int64_t bytes, int issuers, int slots) {
  extern __shared__ uint4 ring[];  // [issuers][slots][kBytes]
  __shared__ uint64_t landed[kMaxBarriers];
  wait_for_previous_grid();
  let_next_grid_start();
#if MOEKIT_BULK_COPY
  const int warp = threadIdx.x / 32;
  if (warp >= issuers || threadIdx.x % 32 != 0) return;
  const int64_t pieces = bytes / kBytes, first = pieces * blockIdx.x / gridDim.x, last = pieces * (blockIdx.x + 1) / gridDim.x;
  uint64_t* bar = landed + warp * slots;
  uint4* mine = ring + static_cast<int64_t>(warp) * slots * (kBytes / 16);
  for (int j = 0; j < slots; ++j) barrier_init(bar + j, 1);
  barrier_init_fence();
  int64_t k = 0;
  for (int64_t piece = first + warp; piece < last; piece += issuers, ++k) {
    const int slot = static_cast<int>(k % slots);
    if (k >= slots) barrier_wait(bar + slot, static_cast<uint32_t>(k / slots - 1) & 1u);
    barrier_arrive_expect(bar + slot, kBytes);
    bulk_copy(mine + slot * (kBytes / 16), w + piece * kBytes, kBytes, bar + slot);
  }
  for (int64_t j = k > slots ? k - slots : 0; j < k; ++j) barrier_wait(bar + j % slots, static_cast<uint32_t>(j / slots) & 1u);
#endif
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const unsigned sms = static_cast<unsigned>(prop.multiProcessorCount);
  std::printf("%s, %u SMs, %d threads a block\n", prop.name, sms, kThreads);
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  float* out;
  CHECK(cudaMalloc(&out, sizeof(float) * sms));
  std::vector<float> host_logits(32);
  for (int e = 0; e < 32; ++e) host_logits[e] = static_cast<float>((e * 7) % 32);
  float* logits;
  CHECK(cudaMalloc(&logits, sizeof(float) * 32));
  CHECK(cudaMemcpy(logits, host_logits.data(), sizeof(float) * 32, cudaMemcpyHostToDevice));

  std::printf("%-28s %8.2f us\n", "empty", graph_us_per_call(stream, kCalls, [&](int) {
                launch_kernel(empty_kernel, sms, kThreads, 0, stream, true, out);
              }));
  std::printf("%-28s %8.2f us\n", "route (T=1, E=32, k=4)", graph_us_per_call(stream, kCalls, [&](int) {
                launch_kernel(route_kernel, sms, kThreads, 0, stream, true, logits, out);
              }));
  for (double mb : {4.4, 17.6, 35.3, 70.6}) {
    const int64_t words = static_cast<int64_t>(mb * 1e6) / 16;
    std::vector<uint4*> buffers(kBuffers);
    for (auto& b : buffers) {
      CHECK(cudaMalloc(&b, words * 16));
      CHECK(cudaMemset(b, 1, words * 16));
    }
    const float late = graph_us_per_call(stream, kCalls, [&](int c) {
      launch_kernel(stream_kernel<false>, sms, kThreads, 0, stream, true, buffers[c % kBuffers], words, out);
    });
    const float early = graph_us_per_call(stream, kCalls, [&](int c) {
      launch_kernel(stream_kernel<true>, sms, kThreads, 0, stream, true, buffers[c % kBuffers], words, out);
    });
    std::printf("stream %5.1f MB              %8.2f us (%5.0f GB/s); loads before the wait %8.2f us (%5.0f GB/s)\n",
                mb, late, mb * 1e3 / late, early, mb * 1e3 / early);
    for (auto b : buffers) CHECK(cudaFree(b));
  }

  {
    const int64_t words = static_cast<int64_t>(23.6e6) / 16, shared_words = 32 * 2880 * 2 / 16;
    std::vector<uint4*> buffers(kBuffers);
    for (auto& b : buffers) {
      CHECK(cudaMalloc(&b, words * 16));
      CHECK(cudaMemset(b, 1, words * 16));
    }
    uint4* shared;
    CHECK(cudaMalloc(&shared, shared_words * 16));
    CHECK(cudaMemset(shared, 1, shared_words * 16));
    const float alone = graph_us_per_call(stream, kCalls, [&](int c) {
      launch_kernel(stream_kernel<false>, sms, kThreads, 0, stream, true, buffers[c % kBuffers], words, out);
    });
    const float beside = graph_us_per_call(stream, kCalls, [&](int c) {
      launch_kernel(stream_beside_shared_kernel, sms, kThreads, 0, stream, true, buffers[c % kBuffers], words, shared,
                    shared_words, out);
    });
    const float shared_only = graph_us_per_call(stream, kCalls, [&](int c) {
      launch_kernel(stream_beside_shared_kernel, sms, kThreads, 0, stream, true, buffers[c % kBuffers], int64_t{0},
                    shared, shared_words, out);
    });
    std::printf("stream 23.6 MB %8.2f us; beside 184 KB a block from L2 %8.2f us; the 184 KB alone %8.2f us\n", alone,
                beside, shared_only);
    for (auto b : buffers) CHECK(cudaFree(b));
    CHECK(cudaFree(shared));
  }

  {
    const int64_t bytes = static_cast<int64_t>(35.3e6) / 16384 * 16384;
    std::vector<uint8_t*> buffers(kBuffers);
    for (auto& b : buffers) {
      CHECK(cudaMalloc(&b, bytes));
      CHECK(cudaMemset(b, 1, bytes));
    }
    auto bulk_row = [&](auto bytes_per_copy, int issuers) {
      constexpr int piece = decltype(bytes_per_copy)::value;
      auto* kernel = bulk_stream_kernel<piece>;
      const int slots = std::max(1, std::min(kMaxBarriers / issuers, (128 << 10) / issuers / piece));
      const int smem = issuers * slots * piece;
      if (smem > 200 << 10) return;
      CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
      const float us = graph_us_per_call(stream, kCalls, [&](int c) {
        launch_kernel(kernel, sms, kThreads, smem, stream, true, buffers[c % kBuffers], bytes, issuers, slots);
      });
      std::printf("bulk copies %5d B, %2d issuing warps x %2d slots %8.2f us (%5.0f GB/s)\n", piece, issuers, slots, us,
                  bytes / 1e3 / us);
    };
    for (int issuers : {1, 4, 22}) {
      bulk_row(std::integral_constant<int, 192>{}, issuers);
      bulk_row(std::integral_constant<int, 1024>{}, issuers);
      bulk_row(std::integral_constant<int, 3072>{}, issuers);
      bulk_row(std::integral_constant<int, 16384>{}, issuers);
    }
    for (auto b : buffers) CHECK(cudaFree(b));
  }

  // Room for both layouts (the contiguous one pads K's last step); codes and scales of 1s.
  const size_t code_bytes = kE * kSlabs * kSteps * 1024, scale_bytes = kE * kN * kKBlocks;
  uint4* codes;
  uint8_t* scales;
  CHECK(cudaMalloc(&codes, code_bytes));
  CHECK(cudaMalloc(&scales, scale_bytes));
  CHECK(cudaMemset(codes, 1, code_bytes));
  CHECK(cudaMemset(scales, 1, scale_bytes));
  const double mb = 4.0 * kN * kK * (0.5 + 1.0 / 32) / 1e6;
  auto mlp1_row = [&](const char* name, auto kernel) {
    const float us = graph_us_per_call(stream, kCalls, [&](int c) {
      launch_kernel(kernel, sms, kThreads, 0, stream, true, codes, scales, c, out);
    });
    std::printf("mlp1's loads (%.1f MB), %-28s %8.2f us (%5.0f GB/s)\n", mb, name, us, mb * 1e3 / us);
  };
  mlp1_row("checkpoint rows, 1 ahead", mlp1_loads_kernel<kRowsLayout, 1>);
  mlp1_row("checkpoint rows, 2 ahead", mlp1_loads_kernel<kRowsLayout, 2>);
  mlp1_row("unit steps contiguous, 1 ahead", mlp1_loads_kernel<kContiguousLayout, 1>);
  mlp1_row("unit steps contiguous, 2 ahead", mlp1_loads_kernel<kContiguousLayout, 2>);
  mlp1_row("whole lines, 1 ahead", mlp1_loads_kernel<kLinesLayout, 1>);
  mlp1_row("whole lines, 2 ahead", mlp1_loads_kernel<kLinesLayout, 2>);
  CHECK(cudaFree(codes));
  CHECK(cudaFree(scales));
  CHECK(cudaFree(out));
  CHECK(cudaFree(logits));
  CHECK(cudaStreamDestroy(stream));
  return 0;
}
