// Tensor-core and async-copy primitives the matmul kernels share (sm_80+ PTX). The MMAs and
// ldmatrix are CuTe's atoms, unpacked from moekit's register arrays (the same SASS as the
// hand-written forms they replaced: docs/kernels.md). cp.async and the streaming loads stay
// written here: CuTe's zero-filling cp.async adds an L2::128B prefetch hint (other machine code,
// not measured) and its wait has no memory clobber (the shared loads after it must stay after it).
#pragma once

// Every wgmma N that is a multiple of 8 (80 among them), not only CuTe's default ones.
#ifndef CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#define CUTE_SM90_EXTENDED_MMA_SHAPES_ENABLED
#endif
#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/mma_sm80.hpp>
#include <cute/arch/mma_sm90.hpp>

#include <cstdint>
#include <utility>

#include "../shared_address.cuh"

namespace moekit::cuda {

// d += a (16x16, row) * b (16x8, col), bf16 in, float32 accumulation. Fragment layout (lane =
// 4 * g + t): a = {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)}, b = {(k 2t.., n g),
// (k 2t+8.., n g)}, d = {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}.
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  cute::SM80_16x8x16_F32BF16BF16F32_TN::fma(d[0], d[1], d[2], d[3], a[0], a[1], a[2], a[3], b0, b1, d[0], d[1], d[2], d[3]);
}

// Four 8x8 bf16 matrices from shared memory; lane i gives the address of row i % 8 of matrix i / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  cute::SM75_U32x4_LDSM_N::copy(*reinterpret_cast<const cute::uint128_t*>(smem_row), r[0], r[1], r[2], r[3]);
}

// 16 bytes global -> shared without registers; src_bytes = 0 writes zeros (and reads nothing).
__device__ __forceinline__ void cp_async_16(void* smem, const void* global, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(smem)), "l"(global), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");  // later shared loads stay after it
}

// Weight loads that bypass L1: each byte is used once, and L1 is better spent on token rows.
// kL2Bytes 128 asks L2 for the whole line around the access (the loads that follow along the
// row then find it in L2).
template <int kL2Bytes = 0>
__device__ __forceinline__ uint4 load_streaming(const void* ptr) {
  static_assert(kL2Bytes == 0 || kL2Bytes == 128, "L2 fetch span: the access alone or its line");
  uint4 v;
  if constexpr (kL2Bytes == 128) {
    asm volatile("ld.global.nc.L1::no_allocate.L2::128B.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(ptr));
  } else {
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(ptr));
  }
  return v;
}

// ------------------------------------------------------------------ wgmma (sm_90a only)
// Callers compile these only where MOEKIT_WGMMA is true (sm_90a device code).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define MOEKIT_WGMMA 1
#else
#define MOEKIT_WGMMA 0
#endif

// A shared-memory matrix descriptor for a K-major bf16 operand in the 128-byte swizzle layout:
// rows of 64 elements (128 bytes) one after another, the 16-byte chunk c of row r stored at chunk
// c ^ (r % 8), 8-row groups 1 KB apart; groups must start 1 KB-aligned. A k offset within the
// 64 is added to the start address unswizzled (the hardware applies the swizzle).
__device__ __forceinline__ uint64_t wgmma_descriptor_sw128(const void* smem) {
  const uint32_t addr = shared_address(smem);
  return static_cast<uint64_t>((addr & 0x3ffff) >> 4) | (static_cast<uint64_t>(16 >> 4) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}

// The same for an MN-major operand (B with its N along the 128-byte lines, wgmma's transposed
// B): rows of 64 N-elements, one per k, in the same swizzle, 8-row groups 1 KB apart along k, and
// the next 64 N-elements `n_block_bytes` further on.
__device__ __forceinline__ uint64_t wgmma_descriptor_mn_sw128(const void* smem, uint32_t n_block_bytes) {
  const uint32_t addr = shared_address(smem);
  return static_cast<uint64_t>((addr & 0x3ffff) >> 4) | (static_cast<uint64_t>(n_block_bytes >> 4) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}

// The descriptor of the operand `bytes` (a multiple of 16) further on: the start address field,
// bits 0..13, holds address / 16, and shared memory ends below 2^18 bytes, so nothing carries.
__device__ __forceinline__ uint64_t wgmma_descriptor_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// Byte offset of 16-byte chunk `chunk` (0..7) of row `row` in that layout.
__device__ __forceinline__ int sw128_offset(int row, int chunk) { return row * 128 + ((chunk ^ (row % 8)) * 16); }

#if MOEKIT_WGMMA
// CuTe's wgmma atoms (cute/arch/mma_sm90_gmma*.hpp) take each register as its own argument:
// this unpacks moekit's arrays. The fence, commit and wait around them are CuTe's too
// (cute::warpgroup_arrive, warpgroup_commit_batch, warpgroup_wait<N>).
template <class Atom, size_t... I, class... Operands>
__device__ __forceinline__ void wgmma_unpacked(float* d, std::index_sequence<I...>, const Operands&... operands) {
  static_assert(sizeof(typename Atom::CRegisters) == sizeof...(I) * sizeof(float), "one atom for the whole tile");
  Atom::fma(operands..., d[I]..., cute::SM90::GMMA::ScaleOut::One);
}

// d (64 x 128 per warpgroup, float32) += a (64 x 16) * b (16 x 128) in shared memory, a K-major,
// b K-major or, with kTransposeB, MN-major.
// Thread layout of d: warp w of the warpgroup holds rows 16w .. 16w + 15; d[4j .. 4j + 3] are
// (row g, columns 8j + 2t, 8j + 2t + 1) and (row g + 8, same columns), as mma.sync's m16n8.
template <int kTransposeB = 0>
__device__ __forceinline__ void wgmma_m64n128k16_bf16(float (&d)[64], uint64_t a, uint64_t b) {
  using namespace cute::SM90::GMMA;
  using Atom = MMA_64x128x16_F32BF16BF16_SS<Major::K, kTransposeB ? Major::MN : Major::K>;
  wgmma_unpacked<Atom>(d, std::make_index_sequence<64>{}, a, b);
}

// d (64 x R per warpgroup, float32) += a (64 x 16 bf16 in registers, mma.sync's m16n8k16 A fragment
// layout) * b (16 x R, K-major in shared memory): the register-A form, for weights decoded in
// registers. d[4u + 2h + i] is (row g + 8h, column 8u + 2t + i) of warp w's rows 16w ...
// CuTe's selector takes the largest atom whose N divides R; R = 80 needs its extended shapes.
template <int R>
__device__ __forceinline__ void wgmma_rs(float (&d)[R / 2], const uint32_t (&a)[4], uint64_t b) {
  using Atom = decltype(cute::SM90::GMMA::rs_op_selector<cute::bfloat16_t, cute::bfloat16_t, float,
                                                            cute::Shape<cute::_64, cute::Int<R>, cute::_16>>());
  wgmma_unpacked<Atom>(d, std::make_index_sequence<R / 2>{}, a[0], a[1], a[2], a[3], b);
}
// Makes this thread's generic-proxy shared-memory writes visible to wgmma (the async proxy).
__device__ __forceinline__ void fence_proxy_async_shared() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
#endif

}  // namespace moekit::cuda
