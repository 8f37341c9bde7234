// Whether the decode path's gate could live inside mlp1's launch (docs/kernels.md, issue 22's
// eager overhead): a probe of the gate computed by thread block clusters, against the gate
// kernel the layer launches today (moe_decode_gate_kernel), as the branch gate-in-mlp1 computes
// it. A cluster of C blocks (mlp1's shape: one block an SM, 22 warps) computes all E logits
// together: block r takes experts r, r + C, ..., whose rows one thread asks the copy engine for
// before anything else; a warp an expert (its lanes split H, a shuffle adds them, x's rows
// staged in shared memory beside the rows) stores each logit into every block's copy
// (distributed shared memory: each block arrives at the cluster's barrier as it starts, and
// waits for the others before its first store); one barrier more and every block holds every
// logit, as mlp1's routing would read them. The grid: C x the device's active clusters of that
// shape (cudaOccupancyMaxActiveClusters). No zeroed counter is needed, which a grid-wide
// barrier would need before the launch.
//
// Each row: E, T, the gate kernel's time and the probe's at C = 8 and 16, each per call in a
// CUDA graph with the L2 flushed before each call (the graph of flushes alone subtracted), and
// the largest difference of the probe's logits from the gate kernel's (float sums in other
// orders: ~1e-6 of their size). Arguments: pairs E T (default 32 1 128 1 128 8).
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I bench bench/cluster_gate.cu \
//        -o build/cluster_gate && build/cluster_gate
#include <cuda_bf16.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cuda/kernels/bulk_copy.cuh"
#include "cuda/kernels/cluster.cuh"
#include "cuda/kernels/moe/decode_gate.cuh"
#include "cuda/launch/launch_kernel.h"
#include "graph_timing.h"

using namespace moekit::cuda;

namespace {

constexpr int64_t kH = 2880;
constexpr int kWarps = 22, kMaxE = 128, kMaxT = moe_decode::kMaxTokens;
// Dynamic shared memory a block asks for: x's rows at the most tokens, then its gate rows (16 at
// E = 128, C = 8), and at least enough that one block takes an SM, as mlp1's blocks do.
template <int kC>
constexpr size_t block_smem() {
  const size_t bytes = size_t{kMaxT * kH * 2} + size_t{(kMaxE + kC - 1) / kC * kH * 2};
  return bytes > (size_t{120} << 10) ? bytes : size_t{120} << 10;
}

struct ProbeParams {
  const __nv_bfloat16* x;  // [T, H]
  const __nv_bfloat16* w;  // [E, H]
  const __nv_bfloat16* bias;  // [E]
  int T, E;
  float* logits;  // [T, E]: block 0's copy, for the check
};

template <int kC>
__global__ void __launch_bounds__(32 * kWarps, 1) cluster_gate_kernel(const ProbeParams p) {
#if MOEKIT_BULK_COPY  // clusters and the copy engine: sm_90
  cluster_arrive_relaxed();
  const int rank = cluster_block_rank();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  constexpr int64_t kWords = kH / 8;
  extern __shared__ uint4 xs[];  // [T][H / 8], then the block's gate rows
  __shared__ float all[kMaxT][kMaxE];  // every expert's logits, stored by the cluster's blocks
  __shared__ uint64_t rows_landed;
  uint4* rows = xs + kMaxT * kWords;
  // The block's gate rows (experts rank, rank + C, ...), asked of the copy engine by one thread
  // before anything else, as mlp1 would before its wait: those copies are the probe's latency.
  const int n = (p.E - rank + kC - 1) / kC;
  if (threadIdx.x == 0) {
    barrier_init(&rows_landed, 1);
    barrier_init_fence();
    barrier_arrive_expect(&rows_landed, static_cast<uint32_t>(n * kH * 2));
    for (int j = 0; j < n; ++j) bulk_copy<true>(rows + j * kWords, p.w + (rank + kC * j) * kH, kH * 2, &rows_landed);
  }
  const uint4* x = reinterpret_cast<const uint4*>(p.x);
  for (int64_t c = threadIdx.x; c < p.T * kWords; c += blockDim.x) xs[c] = __ldg(x + c);
  __syncthreads();
  cluster_wait();  // every block of the cluster has started: its shared memory takes stores
  barrier_wait(&rows_landed, 0);
  for (int j = warp; j < n; j += kWarps) {
    const int e = rank + kC * j;
    float acc[kMaxT] = {};
    for (int64_t c = lane; c < kWords; c += 32) {
      float w[8];
      bf16x8_to_floats(rows[j * kWords + c], w);
#pragma unroll
      for (int t = 0; t < kMaxT; ++t) {
        if (t >= p.T) break;
        float v[8];
        bf16x8_to_floats(xs[t * kWords + c], v);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[t] = fmaf(w[i], v[i], acc[t]);
      }
    }
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) {
      float v = acc[t];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane < kC && t < p.T) store_to_cluster_block(&all[t][e], lane, v + __bfloat162float(p.bias[e]));
    }
  }
  cluster_sync();  // `all` is whole; no block leaves while a peer may still store into it
  if (blockIdx.x == 0) {
    for (int i = threadIdx.x; i < p.T * p.E; i += blockDim.x) p.logits[i] = all[i / p.E][i % p.E];
  }
#endif
}

// The grid of the probe at cluster size kC: kC x the active clusters of its shape.
template <int kC>
unsigned probe_grid() {
  if (kC > 8) CHECK(cudaFuncSetAttribute(cluster_gate_kernel<kC>, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  CHECK(cudaFuncSetAttribute(cluster_gate_kernel<kC>, cudaFuncAttributeMaxDynamicSharedMemorySize, block_smem<kC>()));
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(kC);
  config.blockDim = dim3(32 * kWarps);
  config.dynamicSmemBytes = block_smem<kC>();
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = kC;
  attribute.val.clusterDim.y = attribute.val.clusterDim.z = 1;
  config.attrs = &attribute;
  config.numAttrs = 1;
  int clusters = 0;
  CHECK(cudaOccupancyMaxActiveClusters(&clusters, cluster_gate_kernel<kC>, &config));
  return static_cast<unsigned>(clusters * kC);
}

std::vector<float> download(const float* dev, size_t n) {
  std::vector<float> host(n);
  CHECK(cudaMemcpy(host.data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost));
  return host;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> pairs;
  for (int i = 1; i < argc; ++i) pairs.push_back(std::atoi(argv[i]));
  if (pairs.empty()) pairs = {32, 1, 128, 1, 128, 8};
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  uint8_t* flush_buffer = device_buffer<uint8_t>(size_t{256} << 20);
  auto flush = [&] { CHECK(cudaMemsetAsync(flush_buffer, 0, size_t{256} << 20, stream)); };
  constexpr int kCalls = 20;
  const float flush_us = graph_us_per_call(stream, kCalls, [&](int) { flush(); });
  std::printf("%4s %2s %14s %14s %14s   (grids %u / %u; largest |probe - gate| / max |logit|)\n", "E", "T",
              "gate kernel us", "C = 8 us", "C = 16 us", probe_grid<8>(), probe_grid<16>());
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (size_t i = 0; i + 1 < pairs.size(); i += 2) {
    const int E = pairs[i], T = pairs[i + 1];
    if (E > kMaxE || T > kMaxT) {
      std::printf("E <= %d and T <= %d\n", kMaxE, kMaxT);
      return 1;
    }
    auto bf16s = [&](size_t n, float scale) {
      std::vector<__nv_bfloat16> v(n);
      for (auto& b : v) b = __float2bfloat16(normal(rng) * scale);
      return v;
    };
    const __nv_bfloat16* x = upload(bf16s(T * kH, 1.0f));
    const __nv_bfloat16* w = upload(bf16s(E * kH, 1.0f / std::sqrt(float(kH))));
    const __nv_bfloat16* bias = upload(bf16s(E, 0.1f));
    float* logits = device_buffer<float>(T * E);
    uint4* x_paired = device_buffer<uint4>(T * kH / 8);
    int* counters = device_buffer<int>(256);

    MoeDecodeGateParams g{};
    g.x = x;
    g.T = T;
    g.H = kH;
    g.w = w;
    g.w_bf16 = true;
    g.bias = bias;
    g.bias_bf16 = true;
    g.E = E;
    g.logits = logits;
    g.x_paired = x_paired;
    g.counters = counters;
    g.n_counters = 256;
    auto gate = [&] { launch_kernel(moe_decode_gate_kernel, E, 32 * moe_decode::kGateWarps, 0, stream, true, g); };
    gate();
    const std::vector<float> want = download(logits, T * E);
    const float gate_us = graph_us_per_call(stream, kCalls, [&](int) { flush(); gate(); }) - flush_us;

    const ProbeParams p{x, w, bias, T, E, logits};
    float probe_us[2];
    float worst = 0, scale = 0;
    auto probe = [&](auto cluster_size, int which) {
      constexpr int kC = decltype(cluster_size)::value;
      const unsigned grid = probe_grid<kC>();
      if (grid == 0) {  // no cluster of this size fits the device
        probe_us[which] = NAN;
        return;
      }
      auto launch = [&] {
        launch_kernel_in_clusters(cluster_gate_kernel<kC>, dim3(grid), dim3(kC), 32 * kWarps, block_smem<kC>(), stream,
                                  true, p);
      };
      CHECK(cudaMemsetAsync(logits, 0xff, T * E * sizeof(float), stream));  // NaN where nothing is written
      launch();
      const std::vector<float> got = download(logits, T * E);
      for (size_t j = 0; j < got.size(); ++j) {
        const float d = std::fabs(got[j] - want[j]);
        worst = std::isfinite(d) ? std::max(worst, d) : INFINITY;
        scale = std::max(scale, std::fabs(want[j]));
      }
      probe_us[which] = graph_us_per_call(stream, kCalls, [&](int) { flush(); launch(); }) - flush_us;
    };
    probe(std::integral_constant<int, 8>(), 0);
    probe(std::integral_constant<int, 16>(), 1);
    std::printf("%4d %2d %14.2f %14.2f %14.2f   %.2e\n", E, T, gate_us, probe_us[0], probe_us[1],
                worst / scale);
    for (const void* ptr : {static_cast<const void*>(x), static_cast<const void*>(w), static_cast<const void*>(bias),
                            static_cast<const void*>(logits), static_cast<const void*>(x_paired),
                            static_cast<const void*>(counters)}) {
      CHECK(cudaFree(const_cast<void*>(ptr)));
    }
  }
  CHECK(cudaFree(flush_buffer));
  CHECK(cudaStreamDestroy(stream));
  return 0;
}
