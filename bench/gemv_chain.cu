// The attention projections' GEMV (matmul_ogs_gemv.cuh) in the chains of the decode step, beside
// cuBLAS as torch calls it: the output projection (2880 x 4096) after an attention-like kernel
// (72 blocks that spin S us, letting the next kernel start at once) and a merge-like one (the
// same, 64 small blocks); QKV (5120 x 2880) after an mlp2-like kernel (132 blocks of 704 threads
// and 25 KB of shared memory, 15 us, letting the next start after 2 us) and a norm-like one.
// Kernels chain as the step chains them (programmatic dependent launch; cuBLAS does not chain).
// A graph of 24 layers, each with its own weight; time per layer, median of 5 replays; the
// GEMV's outputs against cuBLAS's on random values.
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I "$CUTE" -I bench bench/gemv_chain.cu \
//        -lcublas -o build/mb/gemv_chain && build/mb/gemv_chain
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <vector>

#include "cuda/kernels/gemm/matmul_ogs_gemv.cuh"
#include "cuda/launch/launch_kernel.h"
#include "graph_timing.h"

using namespace moekit::cuda;
using namespace moekit;

namespace {
constexpr int kLayers = 24;

// Spins on the SM's own clock (~1.98 cycles a ns): %globaltimer is read from outside the SM.
__device__ void spin(int ns) {
  const long long s = clock64();
  while (clock64() - s < static_cast<long long>(ns) * 198 / 100) {
  }
}
// trigger_ns < 0: lets the next kernel start before the wait; else after waiting and spinning
// trigger_ns.
__global__ void busy_kernel(int ns, int trigger_ns, float* out) {
  if (trigger_ns < 0) let_next_grid_start();
  wait_for_previous_grid();
  if (trigger_ns >= 0) {
    spin(trigger_ns);
    let_next_grid_start();
    spin(ns - trigger_ns);
  } else {
    spin(ns);
  }
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = 0.0f;
}
}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs, smem optin %zu\n", prop.name, sms, prop.sharedMemPerBlockOptin);
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t handle;
  cublasCreate(&handle);
  cublasSetStream(handle, stream);
  void* ws;
  CHECK(cudaMalloc(&ws, 32 << 20));
  cublasSetWorkspace(handle, ws, 32 << 20);
  float* out;
  CHECK(cudaMalloc(&out, 4096));
  CHECK(cudaFuncSetAttribute(busy_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 << 10));

  struct Case {
    const char* name;
    int64_t N, K;
    int pre_blocks, pre_threads, pre_smem, pre_ns, pre_trigger, mid_blocks, mid_ns;
  };
  for (const Case c : {Case{"out after attention+merge", 2880, 4096, 72, 256, 40 << 10, 8000, -1, 64, 1500},
                       Case{"qkv after mlp2+norm", 5120, 2880, 132, 704, 25 << 10, 15000, 2000, 1, 1500},
                       Case{"out after attention+merge (4 us)", 2880, 4096, 72, 256, 40 << 10, 4000, -1, 64, 1500}}) {
    std::vector<__nv_bfloat16*> w(kLayers);
    for (auto& x : w) {
      CHECK(cudaMalloc(&x, c.N * c.K * 2));
      CHECK(cudaMemset(x, 0x3c, c.N * c.K * 2));
    }
    __nv_bfloat16 *x, *y;
    CHECK(cudaMalloc(&x, c.K * 2));
    {
      std::vector<uint16_t> hw(c.N * c.K), hx(c.K);
      uint32_t seed = 12345;
      auto rnd = [&] { seed = seed * 1664525u + 1013904223u; return static_cast<uint16_t>(0x3c00 + (seed >> 20) % 0x300) | ((seed >> 8) & 1 ? 0x8000 : 0); };
      for (auto& v : hw) v = rnd();
      for (auto& v : hx) v = rnd();
      CHECK(cudaMemcpy(w[0], hw.data(), hw.size() * 2, cudaMemcpyHostToDevice));
      CHECK(cudaMemcpy(x, hx.data(), hx.size() * 2, cudaMemcpyHostToDevice));
    }
    CHECK(cudaMalloc(&y, c.N * 2));
    const int64_t grid = std::min<int64_t>(sms, c.N);
    MatmulOgsProblem problem;
    problem.P = 1;
    problem.K = c.K;
    DeviceInfo device;
    device.max_smem_per_block_optin = static_cast<int>(prop.sharedMemPerBlockOptin);
    const int64_t shared_rows = gemv_shared_rows(problem, device, (c.N + grid - 1) / grid);
    const size_t smem = gemv_smem_bytes(shared_rows, 1, c.K);
    CHECK(cudaFuncSetAttribute(matmul_ogs_gemv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    auto ours = [&](int l) {
      MatmulOgsParams p{};
      p.x = x;
      p.M = 1;
      p.K = c.K;
      p.w = w[l];
      p.E = 1;
      p.N = c.N;
      p.P = 1;
      p.out = y;
      p.out_bf16 = true;
      p.out_cols = c.N;
      p.gemv_shared_rows = shared_rows;
      launch_kernel(matmul_ogs_gemv_kernel, static_cast<unsigned>(grid), 32 * kGemvWarps, smem, stream, true, p);
    };
    auto cublas = [&](int l) {
      const float one = 1.0f, zero = 0.0f;
      cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(c.N), 1, static_cast<int>(c.K), &one, w[l],
                   CUDA_R_16BF, static_cast<int>(c.K), x, CUDA_R_16BF, static_cast<int>(c.K), &zero, y, CUDA_R_16BF,
                   static_cast<int>(c.N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    };
    auto before = [&] {
      launch_kernel(busy_kernel, c.pre_blocks, c.pre_threads, c.pre_smem, stream, true, c.pre_ns, c.pre_trigger, out);
      launch_kernel(busy_kernel, c.mid_blocks, 64, 0, stream, true, c.mid_ns, -1, out);
    };
    const float t_before = graph_us_per_call(stream, kLayers, [&](int) { before(); });
    const float t_cublas_alone = graph_us_per_call(stream, kLayers, [&](int l) { cublas(l); });
    const float t_ours_alone = graph_us_per_call(stream, kLayers, [&](int l) { ours(l); });
    const float t_cublas = graph_us_per_call(stream, kLayers, [&](int l) {
      before();
      cublas(l);
    });
    const float t_ours = graph_us_per_call(stream, kLayers, [&](int l) {
      before();
      ours(l);
    });
    std::printf("%s: %lld x %lld, %lld of a block's rows in shared memory (%zu bytes)\n", c.name, (long long)c.N,
                (long long)c.K, (long long)shared_rows, smem);
    std::printf("  kernels before alone %.2f us; alone: cuBLAS %.2f, GEMV %.2f; after them: cuBLAS %.2f (+%.2f), GEMV %.2f (+%.2f)\n",
                t_before, t_cublas_alone, t_ours_alone, t_cublas, t_cublas - t_before, t_ours, t_ours - t_before);
    std::vector<uint16_t> mine(c.N), theirs(c.N);
    ours(0);
    CHECK(cudaMemcpyAsync(mine.data(), y, c.N * 2, cudaMemcpyDeviceToHost, stream));
    cublas(0);
    CHECK(cudaMemcpyAsync(theirs.data(), y, c.N * 2, cudaMemcpyDeviceToHost, stream));
    CHECK(cudaStreamSynchronize(stream));
    auto f = [](uint16_t h) {
      const uint32_t u = uint32_t{h} << 16;
      float v;
      std::memcpy(&v, &u, 4);
      return v;
    };
    int differ = 0;
    for (int64_t i = 0; i < c.N; ++i) differ += std::fabs(f(mine[i]) - f(theirs[i])) > 2e-2f * std::fabs(f(theirs[i])) + 0.5f;
    std::printf("  outputs beyond 2%% of cuBLAS's: %d of %lld\n", differ, (long long)c.N);
    for (auto p : w) CHECK(cudaFree(p));
    CHECK(cudaFree(x));
    CHECK(cudaFree(y));
  }
  return 0;
}
