// The decode path's k step without DRAM: what the expert kernels' decode and MMAs cost when no
// load waits (docs/kernels.md: their loop is bound by the SM, ~0.9 us a step at 22 warps an SM).
// Each of 22 warps of a block, one block an SM as the decode path runs, takes k steps shaped as
// the 8-row way's: a lane's two 16-byte code words, their scale bytes and the step's 4 words of
// x read from shared memory (16 slots of each, every warp reading the same), the codes decoded
// as decode_e2m1x8_strided does, 8 m16n8k16 MMAs into two accumulators. Variants move the
// decode's work between the ALU and FMA pipes, or drop the decode, so that the pipe which sets
// the loop's pace is measured rather than guessed:
//   0  the shipped decode: a mask, a multiply (FMA pipe), a mask, a bf16 multiply a code pair;
//   1  half the pairs' multiply by 0x1040 as two funnel shifts and an OR (the ALU pipe's);
//   2  every pair's that way;
//   3  the word's shift by 8 as the high word of a multiply (the FMA pipe's);
//   4  no decode: the code words go to the MMAs as they are (the MMAs and the shared loads of
//      the codes and x alone);
//   5  the shipped decode, its 8 products a step as wgmma.m64n8k16 with A in registers (each
//      warp's 16 rows, x from shared memory; the warpgroup waits for them at the step's end):
//      whether wgmma's tensor pipe takes the 8-column products cheaper than mma.sync does
//      (warps in multiples of 4; its checksum differs, x being read in another order).
// A step's instructions (sm_90a, nvcc 13.0, the fast path; ALU: LOP3, SHF, ISETP...; FMA: IMAD,
// HMUL2; the ALU / FMA split counts the loop with its ~17 instructions of epilogue): 0: 175,
// 84 ALU / 81 FMA; 1: 191, 116 / 65; 2: 207, 148 / 49; 3: 175, 78 / 87; 4: 57 (the kernel's
// step: 199).
// Prints the time a k step (a call's time over its steps) and each variant's accumulators'
// checksum (variants 0-3 compute the same bits, so their checksums agree).
// H200, 2026-12-04 (bench/results/moe_decode_guess_H200.txt): 0-4 at 22 warps 720-727, 887-895,
// 1058-1068, 788-795 and 337-340 ns a step; 0 at 16 and 24 warps 493 and 726 (~31-33 ns a warp's
// step of the SM's time whatever the warps: its issue, not latency, sets the pace), 5 at 16 and
// 24 warps 616 and 927. Every form with more instructions, or the same on the FMA pipe, is
// slower, and wgmma takes the 8-column products dearer than mma.sync.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I "$CUTE" -I bench \
//        bench/decode_pipes.cu -o build/decode_pipes && build/decode_pipes
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/kernels/gemm/mma.cuh"
#include "cuda/kernels/quant/e2m1_bf16.cuh"
#include "graph_timing.h"

using namespace moekit::cuda;

namespace {

constexpr int kSlots = 16, kSteps = 1024, kCalls = 8;

// x << n as a funnel shift, which ptxas keeps on the ALU pipe (a plain << it may turn into an
// IMAD.SHL on the FMA pipe).
template <int kN>
__device__ __forceinline__ uint32_t shl_alu(uint32_t x) {
  uint32_t r;
  asm("shf.l.clamp.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(0u), "r"(x), "n"(kN));
  return r;
}

// Codes (kShift 0: 0 and 4 of a 16-bit half, 4: 1 and 5) -> bf16 bits before scaling, as
// e2m1_pair_bits, the copies made by shifts instead of a multiply.
template <int kShift>
__device__ __forceinline__ uint32_t pair_bits_by_shifts(uint32_t c) {
  const uint32_t x = c & (0x000f000fu << kShift);
  return (shl_alu<6 - kShift>(x) | shl_alu<12 - kShift>(x)) & 0x81c081c0u;
}

template <int kVariant>
__device__ __forceinline__ void decode_word(uint32_t c, uint32_t first, uint32_t (&r)[4]) {
  if constexpr (kVariant == 0) {
    decode_e2m1x8_strided(c, first, r);  // the shipped decode
    return;
  }
  uint32_t c8 = c >> 8;
  if constexpr (kVariant == 3) asm("mul.hi.u32 %0, %1, 16777216;" : "=r"(c8) : "r"(c));
  if constexpr (kVariant == 3) {
    r[0] = e2m1_pair_bits<0>(c), r[1] = e2m1_pair_bits<4>(c);
    r[2] = e2m1_pair_bits<0>(c8), r[3] = e2m1_pair_bits<4>(c8);
  } else if constexpr (kVariant == 1) {
    r[0] = pair_bits_by_shifts<0>(c), r[1] = e2m1_pair_bits<4>(c);
    r[2] = pair_bits_by_shifts<0>(c8), r[3] = e2m1_pair_bits<4>(c8);
  } else {
    r[0] = pair_bits_by_shifts<0>(c), r[1] = pair_bits_by_shifts<4>(c);
    r[2] = pair_bits_by_shifts<0>(c8), r[3] = pair_bits_by_shifts<4>(c8);
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) r[i] = bf16x2_mul(r[i], first);
}

#if MOEKIT_WGMMA
// d (64 x 8 per warpgroup) += a (this warp's 16 x 16 in registers, as mma.sync's A) * b (16 x 8,
// K-major in shared memory, no swizzle: two 8 x 16-byte core matrices 128 bytes apart).
__device__ __forceinline__ void wgmma_m64n8k16_rs(float (&d)[4], const uint32_t (&a)[4], uint64_t b) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
}
__device__ __forceinline__ uint64_t descriptor_no_swizzle(const void* smem) {
  return static_cast<uint64_t>((shared_address(smem) & 0x3ffff) >> 4) | (static_cast<uint64_t>(128 >> 4) << 16) |
         (static_cast<uint64_t>(256 >> 4) << 32);
}
#endif

template <int kVariant, int kWarps>
__global__ void __launch_bounds__(32 * kWarps, 1) k_steps(const uint4* codes, const uint8_t* scales, const uint4* x,
                                                          int steps, float* out) {
  __shared__ uint4 codes_s[kSlots][2][32];
  __shared__ uint32_t scales_s[kSlots][2][32];
  __shared__ uint4 x_s[kSlots][8][5];  // [slot][the lane's k block in the step][word], a word of padding
  __shared__ __align__(128) uint4 xb_s[kSlots / 2][8][16];  // variant 5's x: [slot][product][core matrices]
  for (int i = threadIdx.x; i < kSlots * 64; i += blockDim.x) {
    codes_s[i / 64][i / 32 % 2][i % 32] = codes[i];
    scales_s[i / 64][i / 32 % 2][i % 32] = scales[i];
  }
  // (as the kernels' padded x rows: a step's 8 blocks in distinct banks)
  for (int i = threadIdx.x; i < kSlots * 32; i += blockDim.x) x_s[i / 32][i / 4 % 8][i % 4] = x[i];
  for (int i = threadIdx.x; i < kSlots / 2 * 8 * 16; i += blockDim.x) xb_s[i / 128][i / 16 % 8][i % 16] = x[i % (kSlots * 32)];
#if MOEKIT_WGMMA
  fence_proxy_async_shared();
#endif
  __syncthreads();
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, block = 4 * (g % 2) + t;
  float acc[2][4] = {};
#pragma unroll 1
  for (int i = 0; i < steps; ++i) {
    const int slot = i % kSlots;
    uint4 b[4];
#pragma unroll
    for (int w = 0; w < 4; ++w) b[w] = x_s[slot][block][w];
    const uint4 raw[2] = {codes_s[slot][0][lane], codes_s[slot][1][lane]};
    const uint32_t scale[2] = {scales_s[slot][0][lane], scales_s[slot][1][lane]};
    const uint32_t cw[2][4] = {{raw[0].x, raw[0].y, raw[0].z, raw[0].w}, {raw[1].x, raw[1].y, raw[1].z, raw[1].w}};
    const uint32_t bw[4][4] = {{b[0].x, b[0].y, b[0].z, b[0].w}, {b[1].x, b[1].y, b[1].z, b[1].w},
                               {b[2].x, b[2].y, b[2].z, b[2].w}, {b[3].x, b[3].y, b[3].z, b[3].w}};
    // As the expert kernels' step: a warp without a scale above 128 runs it without the second
    // multiply (every scale here is at most 128).
    // Variant 5 keeps the step's fragments and issues its 8 products on wgmma after the decode.
    auto compute = [&](bool second) {
      uint32_t kept[4][2][4];
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        uint32_t a[2][4];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if constexpr (kVariant == 4) {
            a[h][0] = cw[h][w], a[h][1] = cw[h][w] >> 1, a[h][2] = cw[h][w] >> 2, a[h][3] = cw[h][w] >> 3;
          } else {
            const uint32_t first = second ? mxfp4_first_multiplier(scale[h]) : mxfp4_multiplier_upto_128(scale[h]);
            decode_word<kVariant == 5 ? 0 : kVariant>(cw[h][w], first, a[h]);
            if (second) apply_second_step(a[h], mxfp4_second_multiplier(scale[h]));
          }
        }
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const uint32_t frag[4] = {a[0][2 * h], a[1][2 * h], a[0][2 * h + 1], a[1][2 * h + 1]};
          if constexpr (kVariant == 5) {
#pragma unroll
            for (int r = 0; r < 4; ++r) kept[w][h][r] = frag[r];
          } else {
            mma_bf16_m16n8k16(acc[h], frag, bw[w][2 * h], bw[w][2 * h + 1]);
          }
        }
      }
#if MOEKIT_WGMMA
      if constexpr (kVariant == 5) {
        cute::warpgroup_arrive();
#pragma unroll
        for (int w = 0; w < 4; ++w) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            wgmma_m64n8k16_rs(acc[h], kept[w][h], descriptor_no_swizzle(&xb_s[slot % (kSlots / 2)][2 * w + h][0]));
          }
        }
        cute::warpgroup_commit_batch();
        cute::warpgroup_wait<0>();
      }
#endif
    };
    if (warp_needs_second_step(scale[0] > 128 || scale[1] > 128)) compute(true);
    else compute(false);
  }
  float s = 0.0f;
#pragma unroll
  for (int i = 0; i < 4; ++i) s += acc[0][i] + acc[1][i];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

template <int kVariant, int kWarps = 22>
void run(const char* name, int sms, cudaStream_t stream, const uint4* codes, const uint8_t* scales, const uint4* x,
         float* out) {
  const float us = graph_us_per_call(stream, kCalls, [&](int) {
    k_steps<kVariant, kWarps><<<sms, 32 * kWarps, 0, stream>>>(codes, scales, x, kSteps, out);
  });
  CHECK(cudaGetLastError());
  std::vector<float> h(static_cast<size_t>(sms) * 32 * kWarps);
  CHECK(cudaMemcpy(h.data(), out, h.size() * sizeof(float), cudaMemcpyDeviceToHost));
  double sum = 0;
  for (float v : h) sum += v;
  std::printf("%d %-44s %2d warps %7.1f ns a k step  (checksum %.6e)\n", kVariant, name, kWarps, 1e3 * us / kSteps, sum);
}

}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s, %d SMs, %d k steps a call\n", prop.name, prop.multiProcessorCount, kSteps);
  std::mt19937 rng(0);
  std::vector<uint4> codes(kSlots * 64), x(kSlots * 32);
  std::vector<uint8_t> scales(kSlots * 64);
  for (uint4& c : codes) c = make_uint4(rng(), rng(), rng(), rng());
  for (uint8_t& s : scales) s = static_cast<uint8_t>(124 + rng() % 5);  // 2^-3 .. 2^1: no second step
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  auto bf16_pair = [&] {
    uint32_t r = 0;
    for (int h = 0; h < 2; ++h) {
      const float f = uni(rng);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      r |= (bits >> 16) << (16 * h);
    }
    return r;
  };
  for (uint4& v : x) v = make_uint4(bf16_pair(), bf16_pair(), bf16_pair(), bf16_pair());
  uint4* codes_d = upload(codes);
  uint4* x_d = upload(x);
  uint8_t* scales_d = upload(scales);
  float* out;
  CHECK(cudaMalloc(&out, sizeof(float) * prop.multiProcessorCount * 32 * 24));
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  const int sms = prop.multiProcessorCount;
  run<0>("shipped (mask, multiply, mask, bf16 multiply)", sms, stream, codes_d, scales_d, x_d, out);
  run<1>("half the pairs' copies by shifts", sms, stream, codes_d, scales_d, x_d, out);
  run<2>("every pair's copies by shifts", sms, stream, codes_d, scales_d, x_d, out);
  run<3>("the shift by 8 as mul.hi", sms, stream, codes_d, scales_d, x_d, out);
  run<4>("no decode (MMAs, shared loads, the vote)", sms, stream, codes_d, scales_d, x_d, out);
  run<0, 16>("shipped", sms, stream, codes_d, scales_d, x_d, out);
  run<0, 24>("shipped", sms, stream, codes_d, scales_d, x_d, out);
  run<5, 16>("shipped decode, products on wgmma", sms, stream, codes_d, scales_d, x_d, out);
  run<5, 24>("shipped decode, products on wgmma", sms, stream, codes_d, scales_d, x_d, out);
  CHECK(cudaFree(codes_d));
  CHECK(cudaFree(x_d));
  CHECK(cudaFree(scales_d));
  CHECK(cudaFree(out));
  CHECK(cudaStreamDestroy(stream));
  return 0;
}
