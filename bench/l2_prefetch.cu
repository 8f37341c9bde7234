// Whether a decode step can read a projection's weights while DRAM would idle: while the kernel
// before the projection waits on latency (attention, a norm), a kernel on a side stream of the
// same CUDA graph asks L2 for the projection's weights (cp.async.bulk.prefetch.L2), and the
// projection (cuBLAS, as torch's F.linear calls it at batch 1) then reads them from L2.
// Each row is a graph of 24 "layers" (each with its own weights, so that L2 holds none of them
// when the layer starts); the time is per layer, the median of 5 replays.
//   - gemv N x K: the cuBLAS GEMV alone (weights from DRAM), and with one weight for all layers
//     (from L2 after the first);
//   - latency: a kernel of 72 blocks (the attention's grid at 20b) that waits S us;
//   - latency + gemv: the two in order, then with the side stream's prefetch forked before the
//     latency kernel (normal L2 priority, or evict_last);
//   - stream + gemv: a kernel streaming B MB (the MoE layer's bytes) at full speed before the
//     GEMV, with and without the prefetch beside it: the pessimistic case, the MoE kernels
//     leaving less of DRAM's bandwidth free than the decode's do;
//   - moe + gemv: the decode path's own expert kernels (mlp1 then mlp2 chained, E = 32, T = 1,
//     bench/moe_decode_setup.h; bound by the SM, streaming ~2.2 TB/s), a 2 us kernel for the
//     norm, then the QKV GEMV, the prefetch forked before mlp1: whether ~30 us of DRAM left
//     idle beside the expert kernels bring QKV's weights into L2 and keep them there while
//     53 MB of expert weights pass, and what it costs the expert kernels (16 layers, the
//     routings' counters zeroed once a graph); the fork also before mlp2.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I "$CUTE" bench/l2_prefetch.cu \
//        -lcublas -o build/mb/l2_prefetch && build/mb/l2_prefetch
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda/kernels/gemm/mma.cuh"
#include "graph_timing.h"
#include "moe_decode_setup.h"
#include "stream_share.cuh"

using namespace moekit::cuda;

namespace {

constexpr int kLayers = 24;

#define CUBLAS_CHECK(expr)                                                     \
  do {                                                                         \
    cublasStatus_t s_ = (expr);                                                \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                         \
      std::fprintf(stderr, "%s:%d %s: %d\n", __FILE__, __LINE__, #expr, s_); \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

__global__ void latency_kernel(int ns, float* out) {
  const uint64_t start = global_ns();
  while (global_ns() - start < static_cast<uint64_t>(ns)) {
  }
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = 0.0f;
}

// Every lane asks L2 for pieces of 16 KB.
template <bool kEvictLast>
__global__ void prefetch_kernel(const char* p, int64_t bytes) {
  constexpr int64_t kPiece = 16384;
  const int64_t lanes = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t at = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kPiece; at < bytes;
       at += lanes * kPiece) {
    const uint32_t size = static_cast<uint32_t>(bytes - at < kPiece ? bytes - at : kPiece);
    if constexpr (kEvictLast) {
      asm volatile(
          "{\n .reg .b64 policy;\n createpolicy.fractional.L2::evict_last.b64 policy, 1.0;\n"
          " cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, policy;\n}" ::"l"(p + at),
          "r"(size)
          : "memory");
    } else {
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + at), "r"(size) : "memory");
    }
  }
}

__global__ void stream_kernel(const uint4* w, int64_t words, float* out) {
  if (stream_share(w, words) == 0x12345678u) out[blockIdx.x] = 1.0f;  // never, but the compiler cannot know
}

struct Gemv {
  int64_t N, K;
  std::vector<__nv_bfloat16*> w;  // [N, K] a layer
  __nv_bfloat16 *x, *y;
};

Gemv make_gemv(int64_t N, int64_t K) {
  Gemv g{N, K, std::vector<__nv_bfloat16*>(kLayers), nullptr, nullptr};
  for (auto& w : g.w) {
    CHECK(cudaMalloc(&w, N * K * 2));
    CHECK(cudaMemset(w, 0x3c, N * K * 2));
  }
  CHECK(cudaMalloc(&g.x, K * 2));
  CHECK(cudaMemset(g.x, 0x3c, K * 2));
  CHECK(cudaMalloc(&g.y, N * 2));
  return g;
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const unsigned sms = static_cast<unsigned>(prop.multiProcessorCount);
  std::printf("%s, %u SMs, L2 %d MB\n", prop.name, sms, prop.l2CacheSize >> 20);
  cudaStream_t stream, side;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CHECK(cudaStreamCreateWithFlags(&side, cudaStreamNonBlocking));
  cudaEvent_t fork, join;
  CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  cublasHandle_t handle;
  CUBLAS_CHECK(cublasCreate(&handle));
  CUBLAS_CHECK(cublasSetStream(handle, stream));
  void* workspace;
  CHECK(cudaMalloc(&workspace, 32 << 20));
  CUBLAS_CHECK(cublasSetWorkspace(handle, workspace, 32 << 20));
  float* out;
  CHECK(cudaMalloc(&out, sizeof(float) * sms));

  const auto gemv = [&](const Gemv& g, int layer) {
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(g.N), 1, static_cast<int>(g.K), &one,
                              g.w[layer], CUDA_R_16BF, static_cast<int>(g.K), g.x, CUDA_R_16BF, static_cast<int>(g.K),
                              &zero, g.y, CUDA_R_16BF, static_cast<int>(g.N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  // Forks the side stream's prefetch of `w` (bytes) off the main stream here.
  const auto prefetch = [&](const void* w, int64_t bytes, int mode) {
    CHECK(cudaEventRecord(fork, stream));
    CHECK(cudaStreamWaitEvent(side, fork));
    if (mode == 1) prefetch_kernel<false><<<60, 32, 0, side>>>(static_cast<const char*>(w), bytes);
    else prefetch_kernel<true><<<60, 32, 0, side>>>(static_cast<const char*>(w), bytes);
    CHECK(cudaEventRecord(join, side));
  };
  const auto joined = [&] { CHECK(cudaStreamWaitEvent(stream, join)); };
  const char* modes[] = {"no prefetch", "prefetch", "prefetch evict_last"};

  struct Case {
    int64_t N, K;
    int wait_us;
  };
  for (const Case c : {Case{2880, 4096, 8}, Case{5120, 2880, 8}, Case{2880, 4096, 4}}) {
    const int64_t N = c.N, K = c.K;
    const int wait_us = c.wait_us;
    Gemv g = make_gemv(N, K);
    const double mb = N * K * 2 / 1e6;
    const float dram = graph_us_per_call(stream, kLayers, [&](int l) { gemv(g, l); });
    const float l2 = graph_us_per_call(stream, kLayers, [&](int) { gemv(g, 0); });
    std::printf("gemv %5lld x %5lld (%.1f MB)      %7.2f us (%5.0f GB/s); one weight (L2) %7.2f us\n",
                static_cast<long long>(N), static_cast<long long>(K), mb, dram, mb * 1e3 / dram, l2);
    const float alone = graph_us_per_call(stream, kLayers, [&](int) {
      latency_kernel<<<72, 256, 0, stream>>>(wait_us * 1000, out);
    });
    std::printf("  latency %d us alone            %7.2f us\n", wait_us, alone);
    for (int mode = 0; mode < 3; ++mode) {
      const float t = graph_us_per_call(stream, kLayers, [&](int l) {
        if (mode) prefetch(g.w[l], N * K * 2, mode);
        latency_kernel<<<72, 256, 0, stream>>>(wait_us * 1000, out);
        gemv(g, l);
        if (mode) joined();
      });
      std::printf("  latency + gemv, %-20s %7.2f us (gemv %5.2f us after the latency)\n", modes[mode], t, t - alone);
    }
    for (auto w : g.w) CHECK(cudaFree(w));
    CHECK(cudaFree(g.x));
    CHECK(cudaFree(g.y));
  }

  // The pessimistic case: the QKV weights prefetched while a kernel streams the MoE's bytes.
  {
    Gemv g = make_gemv(5120, 2880);
    const int64_t words = static_cast<int64_t>(53e6) / 16;
    std::vector<uint4*> moe(kLayers);
    for (auto& b : moe) {
      CHECK(cudaMalloc(&b, words * 16));
      CHECK(cudaMemset(b, 1, words * 16));
    }
    const float alone = graph_us_per_call(stream, kLayers, [&](int l) {
      stream_kernel<<<sms, 704, 0, stream>>>(moe[l], words, out);
    });
    std::printf("stream 53 MB alone              %7.2f us\n", alone);
    for (int mode = 0; mode < 3; ++mode) {
      const float t = graph_us_per_call(stream, kLayers, [&](int l) {
        if (mode) prefetch(g.w[l], g.N * g.K * 2, mode);
        stream_kernel<<<sms, 704, 0, stream>>>(moe[l], words, out);
        latency_kernel<<<1, 256, 0, stream>>>(2000, out);
        gemv(g, l);
        if (mode) joined();
      });
      std::printf("  stream + 2 us + gemv 5120 x 2880, %-20s %7.2f us\n", modes[mode], t);
    }
    for (auto b : moe) CHECK(cudaFree(b));
  }

  // The expert kernels, as the step runs them at 20b, before the norm and QKV.
  {
    using namespace moe_decode_probe;
    constexpr int kMoeLayers = 2 * kRoutings, kHalves = 2, kSplits[2] = {1, 2};
    using Config = MoeDecodeExpertsConfig<moekit::kMoeDecodeWarps, 1>;
    std::mt19937 rng(0);
    Setup s = make_setup(32, 1, static_cast<int>(sms), rng);
    Gemv g = make_gemv(5120, 2880);
    const ExpertKernels<kHalves, Config> kernels(s);
    // mlp1 then mlp2; `before` (a kernel, or -1) gets the prefetch's fork ahead of it.
    const auto moe = [&](int l, int before, int mode) {
      if (l == 0) CHECK(cudaMemsetAsync(s.counters, 0, sizeof(int) * 2 * kMoeLayers * kMaxGroups, stream));
      for (int k = 0; k < 2; ++k) {
        if (k == before) prefetch(g.w[l], g.N * g.K * 2, mode);
        kernels.launch(s, k, kSplits[k], l, stream);
      }
    };
    const float alone = graph_us_per_call(stream, kMoeLayers, [&](int l) { moe(l, -1, 0); });
    std::printf("moe (mlp1 + mlp2, E = 32, T = 1) alone %7.2f us\n", alone);
    // The fork before mlp1 gives the prefetch ~30 us, before mlp2 ~13 us and 35 MB fewer expert
    // bytes through L2 after it.
    for (int before = 0; before < 2; ++before) {
      for (int mode = before; mode < 3; ++mode) {
        const float t = graph_us_per_call(stream, kMoeLayers, [&](int l) {
          moe(l, mode ? before : -1, mode);
          latency_kernel<<<1, 256, 0, stream>>>(2000, out);
          gemv(g, l);
          if (mode) joined();
        });
        std::printf("  moe + 2 us + gemv 5120 x 2880, %-20s %-12s %7.2f us\n", modes[mode],
                    mode ? (before ? "before mlp2" : "before mlp1") : "", t);
      }
    }
    for (auto w : g.w) CHECK(cudaFree(w));
    CHECK(cudaFree(g.x));
    CHECK(cudaFree(g.y));
    free_setup(s);
  }
  CUBLAS_CHECK(cublasDestroy(handle));
  return 0;
}
