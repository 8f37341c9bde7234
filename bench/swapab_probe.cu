// Probe for issue 22's main loop (not a library kernel): how fast can MXFP4 weights stream
// through a swap-AB wgmma loop, the weights decoded in registers as wgmma's A operand and R tokens
// of one expert as its N (R = 8 to 128)?
//
// Each block is persistent and walks (expert, 64 WG weight rows) tiles. A producer warp streams
// chunks of KS k steps (64 k each) by bulk copies into a ring of S stages (mbarriers
// full/empty): for each of the tile's WG 64-row slabs its codes and scales in the library's
// repack_mxfp4 layout (a slab's steps are contiguous; each consumer thread's 32 codes of a step
// 16 bytes laid out for decode_e2m1x8_strided's pairing), and the tokens' bf16 rows, pre-arranged
// in wgmma's 128-byte swizzle (the library would gather them). WG consumer warpgroups (2 or 3, a
// slab each) decode a k step into 16 bf16x2 A registers (two register sets, so step i + 1 decodes
// while step i's wgmmas run) and issue 4 wgmma.m64nRk16 with A from registers and B (the tokens)
// from shared memory; with PF, a step's codes and scales are loaded while the step before it
// decodes. Outputs (bf16, [E][R][N]) are checked against a CPU sum on sampled elements.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I bench bench/swapab_probe.cu \
//       build/python/libmoekit.a -o build/mb/swapab_probe
//   build/mb/swapab_probe [E N K]     (default: 32 5760 2880, mlp1 of gpt-oss-20b)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <type_traits>
#include <vector>

#include "core/mxfp4_slabs.h"
#include "cuda/kernels/bulk_copy.cuh"
#include "cuda/kernels/gemm/mma.cuh"
#include "cuda/kernels/quant/e2m1_bf16.cuh"
#include "graph_timing.h"
#include "moekit/ops.h"

using namespace moekit::cuda;

namespace {

constexpr int kStepK = 64;

namespace slabs = moekit::mxfp4_slabs;

// A chunk of KS k steps for R tokens, in each ring stage: the WG slabs' codes (one a consumer
// warpgroup), the tokens, the slabs' scales (the stage 1 KB-aligned).
template <int R, int KS, int WG>
struct Chunk {
  static constexpr int kSlabCodes = slabs::kCodeBytes * KS, kSlabScales = slabs::kScaleBytes * KS;
  static constexpr int kCodes = WG * kSlabCodes;
  static constexpr int kScales = (WG * kSlabScales + 1023) / 1024 * 1024;
  static constexpr int kX = R * 128 * KS;  // a 128-byte line a token a step
  static constexpr int kStage = kCodes + kX + kScales;
};

#if MOEKIT_WGMMA
__device__ __forceinline__ void barrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(shared_address(bar)) : "memory");
}

// d (64 x R, f32) += a (64 x 16, bf16 in registers, mma.sync's A layout) * b (16 x R, K-major smem).
template <int R>
__device__ __forceinline__ void wgmma_rs(float (&d)[R / 2], const uint32_t (&a)[4], uint64_t b);
template <>
__device__ __forceinline__ void wgmma_rs<8>(float (&d)[4], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <>
__device__ __forceinline__ void wgmma_rs<16>(float (&d)[8], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, {%8, %9, %10, %11}, "
      "%12, p, 1, 1, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <>
__device__ __forceinline__ void wgmma_rs<32>(float (&d)[16], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, "
      "%13, %14, %15}, {%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <>
__device__ __forceinline__ void wgmma_rs<64>(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, "
      "%13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
      "{%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
template <>
__device__ __forceinline__ void wgmma_rs<128>(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
      "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
#endif

// codes, scales: repack_mxfp4's [E][N/64][K/64][2048 or 128]; x: [E][chunks][R rows x 128 bytes x
// KS, swizzled]; out: [E][R][N].
// WG consumer warpgroups (64 weight rows each) and a producer warpgroup; PF: each step's codes and
// scales loaded from shared memory a step ahead (else right before their decode).
template <int R, int KS, int S, int WG, bool PF>
__global__ void __launch_bounds__(128 * (WG + 1), 1)
    swapab_kernel(const uint8_t* codes, const uint8_t* scales, const uint8_t* x, __nv_bfloat16* out, int E, int N,
                  int chunks) {
#if MOEKIT_WGMMA
  using C = Chunk<R, KS, WG>;
  constexpr int kStage = C::kStage, kTileRows = 64 * WG;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + (1024 - shared_address(smem_raw) % 1024) % 1024;
  __shared__ uint64_t full[S], empty[S];
  const int tiles = N / kTileRows, items = E * tiles;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      barrier_init(&full[s], 1);
      barrier_init(&empty[s], 4 * WG);  // one arrival per consumer warp
    }
    barrier_init_fence();
  }
  __syncthreads();
  const int wg = threadIdx.x / 128;
  if (wg == WG) {  // producer
    if (threadIdx.x != 128 * WG) return;
    int n = 0;
    for (int item = blockIdx.x; item < items; item += gridDim.x) {
      const int e = item / tiles, tile = item % tiles;
      for (int c = 0; c < chunks; ++c, ++n) {
        const int s = n % S;
        if (n >= S) barrier_wait(&empty[s], ((n / S) - 1) & 1);
        unsigned char* st = smem + s * kStage;
        barrier_arrive_expect(&full[s], C::kCodes + C::kX + WG * C::kSlabScales);
        for (int h = 0; h < WG; ++h) {  // the tile's slabs
          const size_t step0 = (static_cast<size_t>(e) * WG * tiles + WG * tile + h) * (chunks * KS) + c * KS;
          bulk_copy(st + h * C::kSlabCodes, codes + step0 * slabs::kCodeBytes, C::kSlabCodes, &full[s]);
          bulk_copy(st + C::kCodes + C::kX + h * C::kSlabScales, scales + step0 * slabs::kScaleBytes, C::kSlabScales,
                    &full[s]);
        }
        bulk_copy(st + C::kCodes, x + (static_cast<size_t>(e) * chunks + c) * C::kX, C::kX, &full[s]);
      }
    }
    return;
  }
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = wg * 64 + warp * 16 + g;  // this thread's weight rows in the tile: row0 and row0 + 8
  const int slab_row = warp * 16 + g;        // and in its warpgroup's slab
  int n = 0;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const int e = item / tiles, tile = item % tiles;
    float acc[R / 2];
#pragma unroll
    for (int i = 0; i < R / 2; ++i) acc[i] = 0.0f;
    uint32_t a[2][4][4];  // [register set][k16 step j][fragment register]
    int i = 0;            // the tile's k step: set i % 2 (the sets alternate across chunks too)
    for (int c = 0; c < chunks; ++c, ++n) {
      const int s = n % S;
      barrier_wait(&full[s], (n / S) & 1);
      const unsigned char* st = smem + s * kStage;
      const uint64_t b0 = wgmma_descriptor_sw128(st + C::kCodes);
      struct StepLoad {
        uint4 w;
        uint32_t s0, s1;
      };
      auto load = [&](int ks) {
        const unsigned char* sc = st + C::kCodes + C::kX + wg * C::kSlabScales + ks * slabs::kScaleBytes;
        return StepLoad{*reinterpret_cast<const uint4*>(st + wg * C::kSlabCodes + ks * slabs::kCodeBytes +
                                                        (threadIdx.x % 128) * 16),
                        *reinterpret_cast<const uint16_t*>(sc + slab_row * 2),
                        *reinterpret_cast<const uint16_t*>(sc + (slab_row + 8) * 2)};
      };
      auto step = [&](int ks, auto set_c, const StepLoad& l) {
        constexpr int set = decltype(set_c)::value;
        const uint4 w = l.w;
        const uint32_t s0 = l.s0, s1 = l.s1;
        wgmma_wait<1>();  // step i - 2's wgmmas (which read this register set) are done
        uint32_t r[4];
        decode_e2m1x8_strided(w.x, mxfp4_multiplier_upto_128(s0 & 0xff), r);  // row g, block 0
        a[set][0][0] = r[0]; a[set][0][2] = r[1]; a[set][1][0] = r[2]; a[set][1][2] = r[3];
        decode_e2m1x8_strided(w.y, mxfp4_multiplier_upto_128(s1 & 0xff), r);  // row g + 8, block 0
        a[set][0][1] = r[0]; a[set][0][3] = r[1]; a[set][1][1] = r[2]; a[set][1][3] = r[3];
        decode_e2m1x8_strided(w.z, mxfp4_multiplier_upto_128(s0 >> 8), r);  // row g, block 1
        a[set][2][0] = r[0]; a[set][2][2] = r[1]; a[set][3][0] = r[2]; a[set][3][2] = r[3];
        decode_e2m1x8_strided(w.w, mxfp4_multiplier_upto_128(s1 >> 8), r);  // row g + 8, block 1
        a[set][2][1] = r[0]; a[set][2][3] = r[1]; a[set][3][1] = r[2]; a[set][3][3] = r[3];
        // At step 1 of a chunk only step 0's wgmmas may be pending: the previous chunk's stage is free.
        if (ks == 1 && n > 0 && lane == 0) barrier_arrive(&empty[(n + S - 1) % S]);
        wgmma_fence();
#pragma unroll
        for (int j = 0; j < 4; ++j) wgmma_rs<R>(acc, a[set][j], wgmma_descriptor_advance(b0, ks * R * 128 + 32 * j));
        wgmma_commit();
      };
      StepLoad cur = load(0), next{};
#pragma unroll
      for (int ks = 0; ks < KS; ++ks, ++i) {
        if (PF && ks + 1 < KS) next = load(ks + 1);
        if (i % 2 == 0) step(ks, std::integral_constant<int, 0>(), cur);
        else step(ks, std::integral_constant<int, 1>(), cur);
        if (ks + 1 < KS) cur = PF ? next : load(ks + 1);
      }
    }
    wgmma_wait<0>();
    // acc[4q + 2h + i]: weight row row0 + 8h, token 8q + 2t + i.
#pragma unroll
    for (int q = 0; q < R / 8; ++q)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int token = 8 * q + 2 * t + i, col = tile * kTileRows + row0 + 8 * h;
          out[(static_cast<size_t>(e) * R + token) * N + col] = __float2bfloat16(acc[4 * q + 2 * h + i]);
        }
  }
  // The last chunk's stage: released so the ring's bookkeeping is whole (nothing waits on it).
  if (lane == 0 && n > 0) barrier_arrive(&empty[(n + S - 1) % S]);
#else
  __trap();
#endif
}

float e2m1(int code) {
  const float mag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  return (code & 8 ? -1.0f : 1.0f) * mag[code & 7];
}

template <int R, int KS, int S, int WG, bool PF>
void run(int E, int N, int K, int sms) {
  using C = Chunk<R, KS, WG>;
  if (K % (kStepK * KS) != 0 || N % (64 * WG) != 0) {
    std::printf("R=%d KS=%d WG=%d: K %% %d or N %% %d != 0, skipped\n", R, KS, WG, kStepK * KS, 64 * WG);
    return;
  }
  const int chunks = K / (kStepK * KS);
  std::mt19937 rng(7);
  // Logical codes [E][N][K] (4 bits), scales [E][N][K/32], x [E][R][K].
  std::vector<uint8_t> code(static_cast<size_t>(E) * N * K), scale(static_cast<size_t>(E) * N * (K / 32));
  for (auto& v : code) v = rng() & 15;
  for (auto& v : scale) v = static_cast<uint8_t>(119 + rng() % 6);
  std::vector<float> xf(static_cast<size_t>(E) * R * K);
  std::vector<uint16_t> xb(xf.size());
  std::normal_distribution<float> normal;
  for (size_t i = 0; i < xf.size(); ++i) {
    const __nv_bfloat16 b = __float2bfloat16(normal(rng));
    xf[i] = __bfloat162float(b);
    std::memcpy(&xb[i], &b, 2);
  }
  // The checkpoint layout, repacked on the device by the library (repack_mxfp4).
  std::vector<uint8_t> blocks(code.size() / 2);
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<uint8_t>(code[2 * i] | (code[2 * i + 1] << 4));
  uint8_t* blocks_d = upload(blocks);
  uint8_t* ckpt_scales_d = upload(scale);
  const int64_t n_slabs = slabs::slabs(N), n_steps = slabs::steps(K);
  uint8_t *codes_d = nullptr, *scales_d = nullptr;
  CHECK(cudaMalloc(&codes_d, static_cast<size_t>(E) * n_slabs * n_steps * slabs::kCodeBytes));
  CHECK(cudaMalloc(&scales_d, static_cast<size_t>(E) * n_slabs * n_steps * slabs::kScaleBytes));
  const moekit::Device dev{moekit::DeviceType::kCUDA, 0};
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  moekit::repack_mxfp4(moekit::TensorView(blocks_d, moekit::DType::kUInt8, {E, N, K / 32, 16}, dev),
                       moekit::TensorView(ckpt_scales_d, moekit::DType::kUInt8, {E, N, K / 32}, dev),
                       moekit::TensorView(codes_d, moekit::DType::kUInt8, {E, n_slabs, n_steps, slabs::kCodeBytes}, dev),
                       moekit::TensorView(scales_d, moekit::DType::kUInt8, {E, n_slabs, n_steps, slabs::kScaleBytes}, dev),
                       moekit::ExecContext::on_stream(stream));
  CHECK(cudaStreamSynchronize(stream));
  CHECK(cudaFree(blocks_d));
  CHECK(cudaFree(ckpt_scales_d));
  // x: per (expert, chunk, step) R rows of 128 bytes, 16-byte piece p of row r at p ^ (r % 8).
  std::vector<uint8_t> packed_x(static_cast<size_t>(E) * chunks * C::kX);
  for (int e = 0; e < E; ++e)
    for (int c = 0; c < chunks; ++c)
      for (int ks = 0; ks < KS; ++ks)
        for (int r = 0; r < R; ++r)
          for (int p = 0; p < 8; ++p) {
            const size_t dst = (static_cast<size_t>(e) * chunks + c) * C::kX + ks * R * 128 +
                               r * 128 + ((p ^ (r % 8)) * 16);
            const size_t src = (static_cast<size_t>(e) * R + r) * K + (c * KS + ks) * kStepK + 8 * p;
            std::memcpy(&packed_x[dst], &xb[src], 16);
          }
  uint8_t* x_d = upload(packed_x);
  __nv_bfloat16* out_d = nullptr;
  CHECK(cudaMalloc(&out_d, static_cast<size_t>(E) * R * N * 2));
  constexpr int smem = S * C::kStage + 1024;
  auto kernel = swapab_kernel<R, KS, S, WG, PF>;
  constexpr int kThreads = 128 * (WG + 1);
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kernel<<<sms, kThreads, smem, stream>>>(codes_d, scales_d, x_d, out_d, E, N, chunks);
  CHECK(cudaStreamSynchronize(stream));
  CHECK(cudaGetLastError());
  std::vector<uint16_t> out(static_cast<size_t>(E) * R * N);
  CHECK(cudaMemcpy(out.data(), out_d, out.size() * 2, cudaMemcpyDeviceToHost));
  double worst = 0;
  for (int sample = 0; sample < 2000; ++sample) {
    const int e = rng() % E, r = rng() % R, n = rng() % N;
    double want = 0, size = 0;
    for (int k = 0; k < K; ++k) {
      const double w = e2m1(code[(static_cast<size_t>(e) * N + n) * K + k]) *
                       std::ldexp(1.0, scale[(static_cast<size_t>(e) * N + n) * (K / 32) + k / 32] - 127);
      want += w * xf[(static_cast<size_t>(e) * R + r) * K + k];
      size += std::fabs(w * xf[(static_cast<size_t>(e) * R + r) * K + k]);
    }
    __nv_bfloat16 got_b;
    std::memcpy(&got_b, &out[(static_cast<size_t>(e) * R + r) * N + n], 2);
    worst = std::max(worst, std::fabs(__bfloat162float(got_b) - want) / (size + 1e-30));
  }
  const float us = graph_us_per_call(stream, 20, [&](int) {
    kernel<<<sms, kThreads, smem, stream>>>(codes_d, scales_d, x_d, out_d, E, N, chunks);
  });
  const double weight_bytes = static_cast<double>(E) * N * K * (0.5 + 1.0 / 32);
  std::printf("R=%3d KS=%d S=%d WG=%d PF=%d smem %3d KB: %8.1f us  %5.2f TB/s of weights  %6.1f TFLOP/s  worst |err|/sum|terms| %.1e%s\n",
              R, KS, S, WG, PF ? 1 : 0, smem / 1024, us, weight_bytes / us / 1e6, 2.0 * E * R * N * K / us / 1e6, worst,
              worst < 8e-3 ? "" : "  WRONG");
  CHECK(cudaFree(codes_d));
  CHECK(cudaFree(scales_d));
  CHECK(cudaFree(x_d));
  CHECK(cudaFree(out_d));
  CHECK(cudaStreamDestroy(stream));
}

}  // namespace

int main(int argc, char** argv) {
  const int E = argc > 1 ? std::atoi(argv[1]) : 32, N = argc > 2 ? std::atoi(argv[2]) : 5760,
            K = argc > 3 ? std::atoi(argv[3]) : 2880;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, E=%d N=%d K=%d, %d blocks\n", prop.name, E, N, K, prop.multiProcessorCount);
  const int sms = prop.multiProcessorCount;
  // Two consumer warpgroups, loads right before their decode (the first probe's loop), then loads
  // a step ahead, then three consumer warpgroups (192 rows a tile), both ways.
  run<8, 5, 8, 2, true>(E, N, K, sms);
  run<16, 5, 6, 2, false>(E, N, K, sms);
  run<16, 5, 6, 2, true>(E, N, K, sms);
  run<16, 5, 5, 3, false>(E, N, K, sms);
  run<16, 5, 5, 3, true>(E, N, K, sms);
  run<32, 5, 4, 2, false>(E, N, K, sms);
  run<32, 5, 4, 2, true>(E, N, K, sms);
  run<32, 5, 4, 3, true>(E, N, K, sms);
  run<64, 5, 3, 2, false>(E, N, K, sms);
  run<64, 5, 3, 2, true>(E, N, K, sms);
  run<64, 5, 3, 3, true>(E, N, K, sms);
  run<128, 3, 3, 2, false>(E, N, K, sms);
  run<128, 3, 3, 2, true>(E, N, K, sms);
  return 0;
}
