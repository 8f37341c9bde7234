// Probe for issue 22's main loop (not a library kernel): mlp1 of a routed gpt-oss layer (gather,
// bias, SwiGLU) through a swap-AB wgmma loop, the MXFP4 weights decoded in registers as wgmma's A
// operand and a tile of up to R rows of one expert as its N, beside the library's matmul_ogs on the
// same routing, weights and tokens.
//
// A first kernel gathers each token tile's rows (zeros past the tile's rows) into the layout the
// loop copies (128-byte swizzled lines, k step by k step). The loop's blocks are persistent and
// walk (token tile, 64 WG weight rows) items. A producer warp streams chunks of KS k steps by bulk
// copies into a ring of S stages (mbarriers full/empty): for each of the item's WG 64-row slabs
// its codes and scales in the library's repack_mxfp4 layout (a slab's steps contiguous; each
// consumer thread's 32 codes of a step 16 bytes laid out for decode_e2m1x8_strided's pairing),
// and the token tile's rows. WG consumer warpgroups (2 or 3, a slab each) decode a k step into 16
// bf16x2 A registers (two register sets, so a step decodes while the previous step's wgmmas run)
// and issue 4 wgmma.m64nRk16 with B (the tokens) from shared memory; with PF a step's codes and
// scales are loaded while the step before it decodes. The epilogue adds the bias and takes each
// (glu, linear) column pair, rows g and g + 1 of the MMA, through SwiGLU. Outputs are checked
// against a CPU sum on 2000 sampled elements, the library's too.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I bench bench/swapab_probe.cu \
//       build/python/libmoekit.a -o build/mb/swapab_probe
//   build/mb/swapab_probe [E T]     (default: 32 512)
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
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
#include "random_routing.h"

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

// A token tile: up to R expert-grouped rows of one expert.
struct TokenTiles {
  const int* expert;  // [Q]
  const int* row;     // [Q] its first row
  const int* rows;    // [Q] its rows, 1..R
  int count;          // Q
};

// The tokens of every tile gathered (rows past a tile's count zero) into the layout the loop copies:
// x_tiles [Q][chunks][KS steps][R rows x 128 bytes], 16-byte piece p of row r at p ^ (r % 8).
template <int R, int KS>
__global__ void stage_tokens_kernel(const __nv_bfloat16* x, const int* gather, TokenTiles tiles, int K,
                                    uint8_t* x_tiles) {
  const int pieces = K / 8;  // 16-byte pieces a row
  const int64_t n = static_cast<int64_t>(tiles.count) * R * pieces;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int piece = static_cast<int>(i % pieces), r = static_cast<int>(i / pieces % R);
    const int q = static_cast<int>(i / (static_cast<int64_t>(pieces) * R));
    uint4 v = make_uint4(0, 0, 0, 0);
    if (r < tiles.rows[q]) v = reinterpret_cast<const uint4*>(x + static_cast<int64_t>(gather[tiles.row[q] + r]) * K)[piece];
    const int step = piece / 8, p = piece % 8;  // 8 pieces a 64-k step
    const int64_t at = (static_cast<int64_t>(q) * (K / kStepK) + step) * R * 128 + r * 128 + (p ^ (r % 8)) * 16;
    *reinterpret_cast<uint4*>(x_tiles + at) = v;
  }
}

// mlp1 with SwiGLU: out [P][N/2] bf16 for the expert-grouped rows, h = x W[e]^T + bias[e] with
// h's columns (2j, 2j + 1) the pair (glu, linear) of output j. codes, scales: repack_mxfp4's
// [E][N/64][K/64][2048 or 128]; x_tiles: stage_tokens_kernel's.
// WG consumer warpgroups (64 weight rows each) and a producer warpgroup; PF: each step's codes and
// scales loaded from shared memory a step ahead (else right before their decode).
template <int R, int KS, int S, int WG, bool PF>
__global__ void __launch_bounds__(128 * (WG + 1), 1)
    swapab_kernel(const uint8_t* codes, const uint8_t* scales, const uint8_t* x_tiles, const __nv_bfloat16* bias,
                  TokenTiles token_tiles, __nv_bfloat16* out, int N, int chunks, float alpha, float limit) {
#if MOEKIT_WGMMA
  using C = Chunk<R, KS, WG>;
  constexpr int kStage = C::kStage, kTileRows = 64 * WG;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + (1024 - shared_address(smem_raw) % 1024) % 1024;
  __shared__ uint64_t full[S], empty[S];
  const int tiles = N / kTileRows, items = token_tiles.count * tiles;
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
      const int q = item / tiles, tile = item % tiles, e = token_tiles.expert[q];
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
        bulk_copy(st + C::kCodes, x_tiles + (static_cast<size_t>(q) * chunks + c) * C::kX, C::kX, &full[s]);
      }
    }
    return;
  }
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int row0 = wg * 64 + warp * 16 + g;  // this thread's weight rows in the tile: row0 and row0 + 8
  const int slab_row = warp * 16 + g;        // and in its warpgroup's slab
  int n = 0;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const int q = item / tiles, tile = item % tiles, e = token_tiles.expert[q];
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
    // acc[4u + 2h + i]: h's column row0 + 8h of the tile (a weight row), token 8u + 2t + i. Row g's
    // pair partner (g + 1: the linear half when g is even) is lane + 4's value.
    const int rows = token_tiles.rows[q], row_begin = token_tiles.row[q];
    const int col0 = tile * kTileRows + row0;
    float b[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) b[h] = __bfloat162float(bias[static_cast<size_t>(e) * N + col0 + 8 * h]);
#pragma unroll
    for (int u = 0; u < R / 8; ++u)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const float v = acc[4 * u + 2 * h + i] + b[h];
          const float linear = __shfl_down_sync(0xffffffffu, v, 4);
          const int token = 8 * u + 2 * t + i;
          if (g % 2 == 0 && token < rows) {
            const float glu = fminf(v, limit), lin = fminf(fmaxf(linear, -limit), limit);
            const float a = glu / (1.0f + __expf(-alpha * glu)) * (lin + 1.0f);
            out[static_cast<size_t>(row_begin + token) * (N / 2) + (col0 + 8 * h) / 2] = __float2bfloat16(a);
          }
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

// One routed layer's mlp1 (gpt-oss: k = 4, N = 2I = 5760, K = 2880), built once for every config.
struct Layer {
  int E, T, N, K;
  int64_t P;
  std::vector<uint8_t> code, scale;  // logical codes [E][N][K], scales [E][N][K/32]
  std::vector<float> x;              // [T][K], bf16 values
  std::vector<float> bias;           // [E][N], bf16 values
  std::vector<int32_t> offsets, gather;  // random_routing()'s grouping
  uint8_t *blocks_d, *ckpt_scales_d, *codes_d, *scales_d;
  __nv_bfloat16 *x_d, *bias_d;
  int32_t *offsets_d, *gather_d;
  uint8_t* workspace_d;
  size_t workspace_bytes;
  cudaStream_t stream;
};

constexpr float kAlpha = 1.702f, kLimit = 7.0f;
const moekit::Device kDev{moekit::DeviceType::kCUDA, 0};

Layer make_layer(int E, int T, int N, int K) {
  Layer l{E, T, N, K, static_cast<int64_t>(T) * 4};
  std::mt19937 rng(7);
  l.code.resize(static_cast<size_t>(E) * N * K);
  l.scale.resize(static_cast<size_t>(E) * N * (K / 32));
  for (auto& v : l.code) v = rng() & 15;
  for (auto& v : l.scale) v = static_cast<uint8_t>(119 + rng() % 4);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> xb(static_cast<size_t>(T) * K), bb(static_cast<size_t>(E) * N);
  l.x.resize(xb.size());
  l.bias.resize(bb.size());
  for (size_t i = 0; i < xb.size(); ++i) l.x[i] = bf16_value(xb[i] = bf16_bits(normal(rng)));
  for (size_t i = 0; i < bb.size(); ++i) l.bias[i] = bf16_value(bb[i] = bf16_bits(0.5f * normal(rng)));
  RandomRouting routing = random_routing(T, E, 4, rng);
  l.offsets = std::move(routing.offsets);
  l.gather = std::move(routing.gather);
  std::vector<uint8_t> blocks(l.code.size() / 2);
  for (size_t i = 0; i < blocks.size(); ++i) blocks[i] = static_cast<uint8_t>(l.code[2 * i] | (l.code[2 * i + 1] << 4));
  l.blocks_d = upload(blocks);
  l.ckpt_scales_d = upload(l.scale);
  l.x_d = reinterpret_cast<__nv_bfloat16*>(upload(xb));
  l.bias_d = reinterpret_cast<__nv_bfloat16*>(upload(bb));
  l.offsets_d = upload(l.offsets);
  l.gather_d = upload(l.gather);
  CHECK(cudaStreamCreate(&l.stream));
  const int64_t n_slabs = slabs::slabs(N), n_steps = slabs::steps(K);
  CHECK(cudaMalloc(&l.codes_d, static_cast<size_t>(E) * n_slabs * n_steps * slabs::kCodeBytes));
  CHECK(cudaMalloc(&l.scales_d, static_cast<size_t>(E) * n_slabs * n_steps * slabs::kScaleBytes));
  moekit::repack_mxfp4(moekit::TensorView(l.blocks_d, moekit::DType::kUInt8, {E, N, K / 32, 16}, kDev),
                       moekit::TensorView(l.ckpt_scales_d, moekit::DType::kUInt8, {E, N, K / 32}, kDev),
                       moekit::TensorView(l.codes_d, moekit::DType::kUInt8, {E, n_slabs, n_steps, slabs::kCodeBytes}, kDev),
                       moekit::TensorView(l.scales_d, moekit::DType::kUInt8, {E, n_slabs, n_steps, slabs::kScaleBytes}, kDev),
                       moekit::ExecContext::on_stream(l.stream));
  CHECK(cudaStreamSynchronize(l.stream));
  return l;
}

// The library's matmul_ogs on the same layer (its own choice of config), writing out_d [P][N/2].
moekit::MatmulOgsArgs library_args(const Layer& l, __nv_bfloat16* out_d) {
  moekit::MatmulOgsArgs a;
  a.x = moekit::TensorView(l.x_d, moekit::DType::kBFloat16, {l.T, l.K}, kDev);
  a.w.values = moekit::TensorView(l.blocks_d, moekit::DType::kUInt8, {l.E, l.N, l.K / 32, 16}, kDev);
  a.w.scales = moekit::TensorView(l.ckpt_scales_d, moekit::DType::kUInt8, {l.E, l.N, l.K / 32}, kDev);
  a.bias = moekit::TensorView(l.bias_d, moekit::DType::kBFloat16, {l.E, l.N}, kDev);
  a.expert_offsets = moekit::TensorView(l.offsets_d, moekit::DType::kInt32, {l.E + 1}, kDev);
  a.gather_idx = moekit::TensorView(l.gather_d, moekit::DType::kInt32, {l.P}, kDev);
  a.swiglu = {true, kAlpha, kLimit};
  a.out = moekit::TensorView(out_d, moekit::DType::kBFloat16, {l.P, l.N / 2}, kDev);
  return a;
}

// The largest |got - want| over 2000 sampled outputs, relative to the samples' RMS.
double sampled_error(const Layer& l, const std::vector<uint16_t>& out) {
  std::mt19937 rng(11);
  std::vector<double> want(2000), got(2000);
  double rms = 0;
  for (int i = 0; i < 2000; ++i) {
    const int64_t p = rng() % l.P;
    const int j = rng() % (l.N / 2);
    int e = 0;
    while (l.offsets[e + 1] <= p) ++e;
    double h[2];
    for (int c = 0; c < 2; ++c) {
      const int64_t n = 2 * j + c;
      double sum = l.bias[static_cast<size_t>(e) * l.N + n];
      for (int k = 0; k < l.K; ++k) {
        sum += e2m1(l.code[(static_cast<size_t>(e) * l.N + n) * l.K + k]) *
               std::ldexp(1.0, l.scale[(static_cast<size_t>(e) * l.N + n) * (l.K / 32) + k / 32] - 127) *
               l.x[static_cast<size_t>(l.gather[p]) * l.K + k];
      }
      h[c] = sum;
    }
    const double glu = std::min(h[0], double(kLimit)), lin = std::clamp(h[1], -double(kLimit), double(kLimit));
    want[i] = glu / (1.0 + std::exp(-kAlpha * glu)) * (lin + 1.0);
    got[i] = bf16_value(out[p * (l.N / 2) + j]);
    rms += want[i] * want[i];
  }
  rms = std::sqrt(rms / 2000);
  double worst = 0;
  for (int i = 0; i < 2000; ++i) worst = std::max(worst, std::fabs(got[i] - want[i]) / rms);
  return worst;
}

template <int R, int KS, int S, int WG, bool PF>
void run(const Layer& l, int sms, float library_us) {
  using C = Chunk<R, KS, WG>;
  if (l.K % (kStepK * KS) != 0 || l.N % (64 * WG) != 0) {
    std::printf("R=%d KS=%d WG=%d: K %% %d or N %% %d != 0, skipped\n", R, KS, WG, kStepK * KS, 64 * WG);
    return;
  }
  const int chunks = l.K / (kStepK * KS);
  std::vector<int> tile_expert, tile_row, tile_rows;
  for (int e = 0; e < l.E; ++e) {
    for (int r = l.offsets[e]; r < l.offsets[e + 1]; r += R) {
      tile_expert.push_back(e);
      tile_row.push_back(r);
      tile_rows.push_back(std::min(R, l.offsets[e + 1] - r));
    }
  }
  const int Q = static_cast<int>(tile_expert.size());
  int* te = upload(tile_expert);
  int* tr = upload(tile_row);
  int* tn = upload(tile_rows);
  const TokenTiles tiles{te, tr, tn, Q};
  uint8_t* x_tiles = nullptr;
  CHECK(cudaMalloc(&x_tiles, std::max<size_t>(16, static_cast<size_t>(Q) * chunks * C::kX)));
  __nv_bfloat16* out_d = nullptr;
  CHECK(cudaMalloc(&out_d, static_cast<size_t>(l.P) * (l.N / 2) * 2));
  CHECK(cudaMemset(out_d, 0xff, static_cast<size_t>(l.P) * (l.N / 2) * 2));  // NaNs where nothing is written
  constexpr int smem = S * C::kStage + 1024;
  auto kernel = swapab_kernel<R, KS, S, WG, PF>;
  constexpr int kThreads = 128 * (WG + 1);
  CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  auto stage = [&] {
    stage_tokens_kernel<R, KS><<<4 * sms, 256, 0, l.stream>>>(l.x_d, l.gather_d, tiles, l.K, x_tiles);
  };
  auto loop = [&] {
    kernel<<<sms, kThreads, smem, l.stream>>>(l.codes_d, l.scales_d, x_tiles, l.bias_d, tiles, out_d, l.N, chunks,
                                              kAlpha, kLimit);
  };
  stage();
  loop();
  CHECK(cudaStreamSynchronize(l.stream));
  CHECK(cudaGetLastError());
  std::vector<uint16_t> out(static_cast<size_t>(l.P) * (l.N / 2));
  CHECK(cudaMemcpy(out.data(), out_d, out.size() * 2, cudaMemcpyDeviceToHost));
  const double err = sampled_error(l, out);
  const float stage_us = graph_us_per_call(l.stream, 20, [&](int) { stage(); });
  const float loop_us = graph_us_per_call(l.stream, 20, [&](int) { loop(); });
  const float both_us = graph_us_per_call(l.stream, 20, [&](int) {
    stage();
    loop();
  });
  std::printf("R=%3d KS=%d S=%d WG=%d PF=%d (%4d token tiles, smem %3d KB): staging %6.1f + loop %7.1f = %7.1f us, "
              "library / probe %.2f, max error %.1e of RMS%s\n",
              R, KS, S, WG, PF ? 1 : 0, Q, smem / 1024, stage_us, loop_us, both_us, library_us / both_us, err,
              err < 2e-2 ? "" : "  WRONG");
  for (void* p : {static_cast<void*>(te), static_cast<void*>(tr), static_cast<void*>(tn), static_cast<void*>(x_tiles),
                  static_cast<void*>(out_d)}) {
    CHECK(cudaFree(p));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int E = argc > 1 ? std::atoi(argv[1]) : 32, T = argc > 2 ? std::atoi(argv[2]) : 512;
  constexpr int N = 5760, K = 2880;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  Layer l = make_layer(E, T, N, K);
  __nv_bfloat16* lib_out = nullptr;
  CHECK(cudaMalloc(&lib_out, static_cast<size_t>(l.P) * (N / 2) * 2));
  moekit::MatmulOgsArgs a = library_args(l, lib_out);
  const size_t ws_bytes = moekit::matmul_ogs_workspace_size(a);
  uint8_t* ws = nullptr;
  CHECK(cudaMalloc(&ws, std::max<size_t>(16, ws_bytes)));
  a.workspace = moekit::TensorView(ws, moekit::DType::kUInt8, {static_cast<int64_t>(ws_bytes)}, kDev);
  const moekit::ExecContext ctx = moekit::ExecContext::on_stream(l.stream);
  moekit::matmul_ogs(a, ctx);
  CHECK(cudaStreamSynchronize(l.stream));
  std::vector<uint16_t> lib(static_cast<size_t>(l.P) * (N / 2));
  CHECK(cudaMemcpy(lib.data(), lib_out, lib.size() * 2, cudaMemcpyDeviceToHost));
  const float library_us = graph_us_per_call(l.stream, 20, [&](int) { moekit::matmul_ogs(a, ctx); });
  std::printf("%s: mlp1 E=%d T=%d (P=%lld rows, N=%d, K=%d), routed at random; the library's matmul_ogs %.1f us, "
              "max error %.1e of RMS\n", prop.name, E, T, static_cast<long long>(l.P), N, K, library_us,
              sampled_error(l, lib));
  // Two consumer warpgroups, loads right before their decode (the first probe's loop), then loads
  // a step ahead, then three consumer warpgroups (192 rows a tile).
  run<16, 5, 6, 2, false>(l, sms, library_us);
  run<16, 5, 6, 2, true>(l, sms, library_us);
  run<16, 5, 5, 3, true>(l, sms, library_us);
  run<32, 5, 4, 2, false>(l, sms, library_us);
  run<32, 5, 4, 2, true>(l, sms, library_us);
  run<32, 5, 4, 3, true>(l, sms, library_us);
  run<64, 5, 3, 2, true>(l, sms, library_us);
  run<64, 5, 3, 3, true>(l, sms, library_us);
  run<128, 3, 3, 2, true>(l, sms, library_us);
  return 0;
}
