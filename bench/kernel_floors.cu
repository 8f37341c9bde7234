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
//     previous kernel), so they overlap the previous kernel's tail.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include bench/kernel_floors.cu \
//        -o build/kernel_floors && build/kernel_floors
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

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

// Reads this block's share of the words (stream_share.cuh), before or after the wait.
template <bool kEarly>
__global__ void __launch_bounds__(kThreads, 1) stream_kernel(const uint4* w, int64_t words, float* out) {
  if (!kEarly) wait_for_previous_grid();
  const uint32_t sum = stream_share(w, words);
  if (kEarly) wait_for_previous_grid();
  let_next_grid_start();
  if (sum == 0x12345678u) out[blockIdx.x] = 1.0f;  // never, but the compiler cannot know
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
  CHECK(cudaFree(out));
  CHECK(cudaFree(logits));
  CHECK(cudaStreamDestroy(stream));
  return 0;
}
