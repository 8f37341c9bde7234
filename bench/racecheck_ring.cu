// Which release of a bulk-copy ring compute-sanitizer's racecheck can see (issue 22). The swap-AB
// kernel's consumers read a stage with ld.shared and release it on an mbarrier; a producer
// thread waits for the release and bulk-copies the next chunk into the stage. racecheck reports
// those reads against that copy when one lane a warp arrives after a __syncwarp. This is the
// ring alone (four consumer warps, one producer thread, two stages), with the release in each
// form below, so one racecheck run a form says which it accepts; the last form does not wait
// for the release at all, a real race the tool must report. Every form checks its sums.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src bench/racecheck_ring.cu \
//       -o build/mb/racecheck_ring
//   compute-sanitizer --tool racecheck build/mb/racecheck_ring FORM   (FORM 0..4, below)
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/swapab_ring.h"
#include "cuda/kernels/bulk_copy.cuh"
#include "cuda/kernels/gemm/mma.cuh"

namespace {

namespace ring = moekit::swapab_ring;  // the kernel's stage and phase rules

enum Form : int {
  kLaneZeroAfterSyncwarp = 0,  // the library's: __syncwarp, then lane 0 arrives (empty counts 4)
  kEveryThread = 1,            // every consumer thread arrives (empty counts 128)
  kFenceLaneZero = 2,          // fence.proxy.async, __syncwarp, lane 0 arrives
  kFenceEveryThread = 3,       // fence.proxy.async, every thread arrives
  kNoWait = 4,                 // the producer never waits for a release: a real race
};

constexpr int kConsumers = 128, kStages = 2, kChunkBytes = kConsumers * 16, kChunks = 64;

__global__ void ring_kernel(const uint4* in, uint32_t* out, int form) {
#if MOEKIT_BULK_COPY
  __shared__ __align__(128) unsigned char stage[kStages][kChunkBytes];
  __shared__ uint64_t full[kStages], empty[kStages];
  const bool every_thread = form == kEveryThread || form == kFenceEveryThread;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      moekit::cuda::barrier_init(&full[s], 1);
      moekit::cuda::barrier_init(&empty[s], every_thread ? kConsumers : kConsumers / 32);
    }
    moekit::cuda::barrier_init_fence();
  }
  __syncthreads();
  if (threadIdx.x >= kConsumers) {  // the producer warp: one thread
    if (threadIdx.x != kConsumers) return;
    for (int n = 0; n < kChunks; ++n) {
      const int s = ring::stage(n, kStages);
      if (ring::producer_waits(n, kStages) && form != kNoWait) {
        moekit::cuda::barrier_wait(&empty[s], ring::empty_parity(n, kStages));
      }
      moekit::cuda::barrier_arrive_expect(&full[s], kChunkBytes);
      moekit::cuda::bulk_copy(stage[s], in + static_cast<size_t>(n) * kConsumers, kChunkBytes, &full[s]);
    }
    return;
  }
  uint32_t sum = 0;
  for (int n = 0; n < kChunks; ++n) {
    const int s = ring::stage(n, kStages);
    moekit::cuda::barrier_wait(&full[s], ring::full_parity(n, kStages));
    const uint4 v = reinterpret_cast<const uint4*>(stage[s])[threadIdx.x];
    sum += v.x + v.y + v.z + v.w;
    if (form == kFenceLaneZero || form == kFenceEveryThread) moekit::cuda::fence_proxy_async_shared();
    if (every_thread) {
      moekit::cuda::barrier_arrive(&empty[s]);
    } else {
      __syncwarp();
      if (threadIdx.x % 32 == 0) moekit::cuda::barrier_arrive(&empty[s]);
    }
  }
  out[threadIdx.x] = sum;
#else
  __trap();  // bulk copies need sm_90
#endif
}

}  // namespace

int main(int argc, char** argv) {
  const int form = argc > 1 ? std::atoi(argv[1]) : 0;
  if (form < 0 || form > kNoWait) {
    std::fprintf(stderr, "usage: racecheck_ring FORM (0..4)\n");
    return 2;
  }
  std::vector<uint32_t> in(static_cast<size_t>(kChunks) * kConsumers * 4), want(kConsumers, 0), got(kConsumers);
  uint32_t state = 12345;
  for (size_t i = 0; i < in.size(); ++i) {
    state = state * 1664525u + 1013904223u;
    in[i] = state;
    want[(i / 4) % kConsumers] += state;
  }
  uint4* d_in;
  uint32_t* d_out;
  if (cudaMalloc(&d_in, in.size() * 4) != cudaSuccess || cudaMalloc(&d_out, kConsumers * 4) != cudaSuccess) return 1;
  cudaMemcpy(d_in, in.data(), in.size() * 4, cudaMemcpyHostToDevice);
  ring_kernel<<<1, kConsumers + 32>>>(d_in, d_out, form);
  const cudaError_t err = cudaDeviceSynchronize();
  cudaMemcpy(got.data(), d_out, kConsumers * 4, cudaMemcpyDeviceToHost);
  int wrong = 0;
  for (int t = 0; t < kConsumers; ++t) wrong += got[t] != want[t];
  std::printf("form %d: %s, %d of %d sums wrong\n", form, cudaGetErrorString(err), wrong, kConsumers);
  return err == cudaSuccess && wrong == 0 ? 0 : 1;
}
