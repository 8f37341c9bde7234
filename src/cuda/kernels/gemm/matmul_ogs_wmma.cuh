// matmul_ogs on tensor cores (bf16 HMMA through nvcuda::wmma, fp32 accumulation), for bf16 x and
// bf16 weights with more rows per expert than the streaming kernels take (MXFP4 weights take the
// tiled or wgmma kernels on every sm_80+ GPU). One 64 x 64 output tile of one expert per block (4
// warps), k-steps of 32; tiles are found and epilogues applied as in the SIMT kernel.
#pragma once

#include <mma.h>

#include <cstdint>

#include "../element.cuh"
#include "matmul_ogs_params.cuh"
#include "tile_io.cuh"
#include "tile_locate.cuh"

namespace moekit::cuda {

namespace tc {
constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 128, kPad = 8;  // pad keeps rows 16-byte aligned
}

__global__ void __launch_bounds__(tc::kThreads) matmul_ogs_wmma_kernel(const MatmulOgsParams p) {
  using namespace nvcuda;
  using namespace tc;
  constexpr int BM = kBM;
  static_assert(BM % 32 == 0, "2 x 2 warps of 16-row fragments");
  constexpr int kWarpsM = 2, kWarpsN = 2;
  constexpr int kFragsM = BM / kWarpsM / 16, kFragsN = kBN / kWarpsN / 16;
  constexpr int kLd = kBK + kPad;

  int e;
  int64_t row_begin, row_end;
  if (!locate_tile<BM>(p, e, row_begin, row_end)) return;
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kBN;

  __shared__ __align__(32) bf16 As[BM][kLd];
  __shared__ __align__(32) bf16 Bs[kBN][kLd];
  __shared__ __align__(32) float Cs[BM][kBN + 4];
  __shared__ int64_t src_row[BM];  // x row of each tile row; kNoRow: zeros; kBadRow: NaN

  const int tid = threadIdx.x, warp = tid / 32;
  gather_rows<BM>(p, row_begin, row_end, src_row);
  __syncthreads();

  const bf16* x = static_cast<const bf16*>(p.x);
  const int wm = warp / kWarpsN, wn = warp % kWarpsN;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kFragsM][kFragsN];
#pragma unroll
  for (int i = 0; i < kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < kFragsN; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  const uint4 nan8 = make_uint4(0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u);  // 8 bf16 NaNs
  for (int64_t k0 = 0; k0 < p.K; k0 += kBK) {
    // A: BM rows x 32 k, as 8-element (16-byte) vectors; K % 8 == 0 on this path.
    for (int v = tid; v < BM * (kBK / 8); v += kThreads) {
      const int r = v / (kBK / 8), c = (v % (kBK / 8)) * 8;
      const int64_t src = src_row[r];
      uint4 val = make_uint4(0, 0, 0, 0);
      if (src >= 0 && k0 + c < p.K) val = *reinterpret_cast<const uint4*>(x + src * p.K + k0 + c);
      else if (src == kBadRow) val = nan8;
      *reinterpret_cast<uint4*>(&As[r][c]) = val;
    }
    // B: 64 weight rows x 32 k.
    const bf16* w = static_cast<const bf16*>(p.w);
    for (int v = tid; v < kBN * (kBK / 8); v += kThreads) {
      const int r = v / (kBK / 8), c = (v % (kBK / 8)) * 8;
      const int64_t n = n0 + r;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (n < p.N && k0 + c < p.K) val = *reinterpret_cast<const uint4*>(w + (static_cast<int64_t>(e) * p.N + n) * p.K + k0 + c);
      *reinterpret_cast<uint4*>(&Bs[r][c]) = val;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> a[kFragsM];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> b[kFragsN];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) wmma::load_matrix_sync(a[i], &As[(wm * kFragsM + i) * 16][kk], kLd);
#pragma unroll
      for (int j = 0; j < kFragsN; ++j) wmma::load_matrix_sync(b[j], &Bs[(wn * kFragsN + j) * 16][kk], kLd);
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < kFragsN; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < kFragsN; ++j)
      wmma::store_matrix_sync(&Cs[(wm * kFragsM + i) * 16][(wn * kFragsN + j) * 16], acc[i][j], kBN + 4,
                              wmma::mem_row_major);
  __syncthreads();

  // Epilogue over column pairs (a bad row is NaN already).
  for (int v = tid; v < BM * (kBN / 2); v += kThreads) {
    const int r = v / (kBN / 2), c = (v % (kBN / 2)) * 2;
    const int64_t row = row_begin + r, n = n0 + c;
    if (row < row_end && n < p.N) store_output_pair(p, e, row, n, false, Cs[r][c], Cs[r][c + 1]);
  }
}

}  // namespace moekit::cuda
