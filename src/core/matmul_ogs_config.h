// Which matmul_ogs kernel runs: a pure function of the problem and the device's facts, so it
// is tested on the CPU (tests/cpp/matmul_ogs_config_test.cpp).
#pragma once

#include <cstdint>

#include "device_info.h"
#include "problem.h"

namespace moekit {

// Shared memory the tiled kernels may use per block (dynamic, opted in; every sm_80+ GPU allows
// 99 KB or more).
constexpr int kTiledSharedMemoryBytes = 72 * 1024;
constexpr int kWgmmaSharedMemoryBytes = 113 * 1024;
// Rows from which the gate (bf16 weights, at most 256 columns) takes 32-token streaming items.
constexpr int64_t kGateTallRows = 4096;
// Rows of x up to which one dense bf16 weight (a decode step's projections) takes the GEMV.
constexpr int kGemvMaxRows = 8;
// 16 warps: once the weights have landed, the multiply is the GEMV's time after the kernel before
// it, and 8 warps left it latency-bound (bench/gemv_chain.cu, H200: the output projection +5.4 us
// after an attention-like kernel at 8 warps, +4.2 at 16; bench/results/gemv_warps_H200.txt).
constexpr int kGemvWarps = 16;
// Weight rows a GEMV block holds in shared memory at most (a barrier each, in the header); its
// other rows are read from global memory.
constexpr int64_t kGemvMaxSharedRows = 64;
constexpr int64_t kGemvHeaderBytes = kGemvMaxSharedRows * 8;
// A row takes K * 2 bytes plus 16 of padding (kept from an ldmatrix form of the kernel; its FMA
// loop reads one row an instruction, so nothing needs it now).
constexpr int64_t gemv_smem_bytes(int64_t shared_rows, int64_t x_rows, int64_t K) {
  return kGemvHeaderBytes + shared_rows * (K * 2 + 16) + x_rows * K * 2;
}
// The weight rows of a block of `block_rows` that the device's shared memory holds beside x.
inline int64_t gemv_shared_rows(const MatmulOgsProblem& p, const DeviceInfo& device, int64_t block_rows) {
  const int64_t room = device.max_smem_per_block_optin - gemv_smem_bytes(0, p.P, p.K);
  if (room <= 0 || p.K <= 0) return 0;
  const int64_t rows = room / (p.K * 2 + 16);
  return rows < block_rows ? (rows < kGemvMaxSharedRows ? rows : kGemvMaxSharedRows)
                           : (block_rows < kGemvMaxSharedRows ? block_rows : kGemvMaxSharedRows);
}

enum class MatmulOgsKernel {
  kSimt,           // fp32 FMA; any dtypes, any K
  kStream8,        // bf16 MMA with weights streamed into fragments, 8-token tiles (decode)
  kStream8Wide,    //   the same with 16 warps splitting K: few, long work items (the gate)
  kStream16,       //   the same, 16-token tiles
  kStream32,       //   the same, 32-token tiles
  kTiled64,        // MXFP4 weights: bf16 mma.sync on 64 x 128 tiles, cp.async pipeline (prefill)
  kWgmma128,       // MXFP4 weights on sm_90: wgmma on 128 x 128 tiles, decode overlapping the MMAs
  kTensorCore64,   // bf16 weights: bf16 HMMA, 64-row tiles staged in shared memory
  kGemv,           // one dense bf16 weight, a few rows of x (sm_90): weights copied in before the wait
};

struct MatmulOgsOperands {
  bool x_bf16 = false;
  bool w_bf16 = false;         // float weights in bf16 (MXFP4 is in the problem)
  bool aligned_16 = false;     // x and w data start on 16-byte boundaries
  bool expert_offsets = false;  // given (else one expert)
};

inline MatmulOgsKernel choose_matmul_ogs_kernel(const MatmulOgsProblem& p, const MatmulOgsOperands& o,
                                                const DeviceInfo& device) {
  // Tensor cores take bf16 operands exactly: bf16 x, and bf16 or MXFP4 weights (an e2m1 value
  // times a power of two is a bf16). 16-byte vector loads need K % 8 == 0 and aligned data.
  const bool tensor_cores = device.major >= 8 && o.x_bf16 && (p.mxfp4 || o.w_bf16) && p.K % 8 == 0 && o.aligned_16;
  if (!tensor_cores) return MatmulOgsKernel::kSimt;
  const int64_t groups = p.E < p.P ? p.E : (p.P > 0 ? p.P : 1);
  const int64_t rows_per_expert = (p.P + groups - 1) / groups;  // rounded up
  // Few output columns of bf16 weights (the gate: N = E): 64-row tiles would make a handful of
  // blocks (180 us for T = 128 on an H100); 8-token work items make the most, and 16 warps per
  // item split its long k loop. From 4096 rows, 32-token items with 4 warps: enough items, each
  // weight read once per 32 rows (measured on an H100 at T = 8192, the layer: E = 32, 4101 ->
  // 4046 us; E = 128, 4787 -> 4698 us, where 64-row wmma tiles had taken it).
  if (!p.mxfp4 && p.N <= 256) return p.P >= kGateTallRows ? MatmulOgsKernel::kStream32 : MatmulOgsKernel::kStream8Wide;
  // One dense bf16 weight against a few rows (torch's Linear in a decode step): the GEMV asks for
  // its block's whole share of the weight before it waits for the kernel before it.
  const bool dense = !p.mxfp4 && !o.expert_offsets && p.E == 1 && !p.gather && !p.scatter && !p.swiglu;
  if (dense && p.P <= kGemvMaxRows && device.major == 9 && gemv_shared_rows(p, device, 1) > 0) return MatmulOgsKernel::kGemv;
  // Up to 32 rows per expert the weights dominate the traffic: stream them once, in token tiles
  // that cover an average expert.
  if (rows_per_expert <= 8) return MatmulOgsKernel::kStream8;
  if (rows_per_expert <= 16) return MatmulOgsKernel::kStream16;
  if (rows_per_expert <= 32) return MatmulOgsKernel::kStream32;
  if (!p.mxfp4 || device.max_smem_per_block_optin < kTiledSharedMemoryBytes) return MatmulOgsKernel::kTensorCore64;
  // wgmma exists on sm_90 alone (the library carries sm_90a code for it); elsewhere, mma.sync
  // on 64-row tiles.
  const bool wgmma = device.major == 9 && device.minor == 0 && device.max_smem_per_block_optin >= kWgmmaSharedMemoryBytes;
  return wgmma ? MatmulOgsKernel::kWgmma128 : MatmulOgsKernel::kTiled64;
}

// matmul_ogs_backward's transposed product u = g W[e] (g: the gradient at h, rows of N).
enum class MatmulOgsTransposedKernel {
  kSimt,      // fp32 FMA; any dtypes
  kWgmma128,  // MXFP4 weights, bf16 g, sm_90: wgmma on 128 x 128 tiles, the decoded weights MN-major
};

// g_bf16: g in bf16; aligned_16: g and w data start on 16-byte boundaries.
inline MatmulOgsTransposedKernel choose_matmul_ogs_transposed_kernel(const MatmulOgsProblem& p, bool g_bf16,
                                                                     bool aligned_16, const DeviceInfo& device) {
  // g's rows are copied in 16-byte pieces: N % 8 == 0.
  const bool wgmma = p.mxfp4 && g_bf16 && aligned_16 && p.N % 8 == 0 && device.major == 9 && device.minor == 0 &&
                     device.max_smem_per_block_optin >= kWgmmaSharedMemoryBytes;
  return wgmma ? MatmulOgsTransposedKernel::kWgmma128 : MatmulOgsTransposedKernel::kSimt;
}

}  // namespace moekit
