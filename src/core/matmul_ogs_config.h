// Which matmul_ogs kernel runs: a pure function of the problem and the device's facts, so it
// is tested on the CPU (tests/cpp/matmul_ogs_config_test.cpp).
#pragma once

#include <cstdint>
#include <string>

#include "device_info.h"
#include "problem.h"

namespace moekit {

// Shared memory the tiled kernels may use per block (dynamic, opted in; every sm_80+ GPU allows
// 99 KB or more).
constexpr int kTiledSharedMemoryBytes = 72 * 1024;
constexpr int kWgmmaSharedMemoryBytes = 113 * 1024;
constexpr int kSwapabSharedMemoryBytes = 211 * 1024;  // the swap-AB kernels' rings (the largest: 32 rows)
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
  kSimt,          // fp32 FMA; any dtypes, any K
  kStream8,       // bf16 MMA with weights streamed into fragments, 8-token tiles (decode)
  kStream8Wide,   //   the same with 16 warps splitting K: few, long work items (bf16 weights: the gate)
  kStream16,      //   the same, 16-token tiles
  kStream32,      //   the same, 32-token tiles
  kTiled64,       // MXFP4 weights: bf16 mma.sync on 64 x 128 tiles, cp.async pipeline (prefill)
  kWgmma128,      // MXFP4 weights on sm_90: wgmma on 128 x 128 tiles, decode overlapping the MMAs
  kWmma64,        // bf16 weights: nvcuda::wmma on 64 x 64 tiles staged in shared memory
  kGemv,          // one dense bf16 weight, a few rows of x (sm_90): weights copied in before the wait
  kSwapab16,      // MXFP4 weights repacked (repack_mxfp4) on sm_90: swap-AB wgmma, the weights decoded in
  kSwapab32,      //   registers as A (192 rows a work item), token tiles of 16, 32 or 80 rows as N, a
  kSwapab80,      //   producer warp's bulk copies into an mbarrier ring, persistent (80 rows: one tile
                  //   for experts of 65 to 80, where 64-row tiles would decode the weights twice)
};
constexpr MatmulOgsKernel kMatmulOgsKernels[] = {
    MatmulOgsKernel::kSimt,     MatmulOgsKernel::kStream8,  MatmulOgsKernel::kStream8Wide,
    MatmulOgsKernel::kStream16, MatmulOgsKernel::kStream32, MatmulOgsKernel::kTiled64,
    MatmulOgsKernel::kWgmma128, MatmulOgsKernel::kWmma64,   MatmulOgsKernel::kGemv,
    MatmulOgsKernel::kSwapab16, MatmulOgsKernel::kSwapab32, MatmulOgsKernel::kSwapab80};

// How a kernel's blocks cover the problem.
enum class MatmulOgsSchedule {
  kTileGrid,      // a block per (row tile, column tile): the planned tile list times the column tiles
  kPersistent,    // as many blocks as are resident at once, each walking (row tile, column tile) items
  kColumnShares,  // a block per SM at most, each a share of the output columns for every row (the GEMV)
};

// Everything a matmul_ogs launch needs: launchers read it and decide nothing. The kernels'
// compiled constants are checked against it (static_asserts in src/cuda/launch/matmul_ogs.cu).
struct MatmulOgsConfig {
  MatmulOgsKernel kernel = MatmulOgsKernel::kSimt;
  int tile_rows = 0;  // token rows of one expert per tile (work item)
  int tile_cols = 0;  // output columns per tile
  int tile_k = 0;     // k per main-loop step
  int stages = 1;     // k steps buffered in shared memory ahead of the MMAs (1: none)
  int warps = 0;      // per block
  int k_split = 1;    // ways a block's warps split each tile's k range (their sums added in a fixed order)
  int cluster = 1;    // blocks per cluster
  MatmulOgsSchedule schedule = MatmulOgsSchedule::kTileGrid;
};

// The name an override gives each kernel (ExecContext::matmul_ogs_config, matmul_ogs's `config`).
inline const char* matmul_ogs_kernel_name(MatmulOgsKernel k) {
  switch (k) {
    case MatmulOgsKernel::kSimt: return "simt";
    case MatmulOgsKernel::kStream8: return "stream8";
    case MatmulOgsKernel::kStream8Wide: return "stream8_wide";
    case MatmulOgsKernel::kStream16: return "stream16";
    case MatmulOgsKernel::kStream32: return "stream32";
    case MatmulOgsKernel::kTiled64: return "tiled64";
    case MatmulOgsKernel::kWgmma128: return "wgmma128";
    case MatmulOgsKernel::kWmma64: return "wmma64";
    case MatmulOgsKernel::kGemv: return "gemv";
    case MatmulOgsKernel::kSwapab16: return "swapab16";
    case MatmulOgsKernel::kSwapab32: return "swapab32";
    case MatmulOgsKernel::kSwapab80: return "swapab80";
  }
  return "?";
}

// The launch facts of `kernel` on problem p (the streaming kernels' MXFP4 items span two slabs).
constexpr MatmulOgsConfig matmul_ogs_config(MatmulOgsKernel kernel, bool mxfp4) {
  using S = MatmulOgsSchedule;
  const int slab_cols = mxfp4 ? 32 : 16;  // streaming items of 8 or 16 tokens: two slabs of 16 for MXFP4
  switch (kernel) {
    case MatmulOgsKernel::kSimt: return {kernel, 64, 64, 32, 1, 8, 1, 1, S::kTileGrid};
    case MatmulOgsKernel::kStream8: return {kernel, 8, slab_cols, 128, 1, 4, 4, 1, S::kPersistent};
    case MatmulOgsKernel::kStream8Wide: return {kernel, 8, 16, 128, 1, 16, 16, 1, S::kPersistent};
    case MatmulOgsKernel::kStream16: return {kernel, 16, slab_cols, 128, 1, 4, 4, 1, S::kPersistent};
    case MatmulOgsKernel::kStream32: return {kernel, 32, 16, 128, 1, 4, 4, 1, S::kPersistent};
    case MatmulOgsKernel::kTiled64: return {kernel, 64, 128, 32, 4, 4, 1, 1, S::kTileGrid};
    case MatmulOgsKernel::kWgmma128: return {kernel, 128, 128, 64, 3, 8, 1, 1, S::kTileGrid};
    case MatmulOgsKernel::kWmma64: return {kernel, 64, 64, 32, 1, 4, 1, 1, S::kTileGrid};
    case MatmulOgsKernel::kGemv: return {kernel, kGemvMaxRows, 0, 0, 1, kGemvWarps, 1, 1, S::kColumnShares};
    // 16 warps: three consumer warpgroups (a 64-row slab each) and the producer's; stages of 4 k
    // steps.
    case MatmulOgsKernel::kSwapab16: return {kernel, 16, 192, 64, 6, 16, 1, 1, S::kPersistent};
    case MatmulOgsKernel::kSwapab32: return {kernel, 32, 192, 64, 5, 16, 1, 1, S::kPersistent};
    case MatmulOgsKernel::kSwapab80: return {kernel, 80, 192, 64, 3, 16, 1, 1, S::kPersistent};
  }
  return {};
}

struct MatmulOgsOperands {
  bool x_bf16 = false;
  bool w_bf16 = false;          // float weights in bf16 (MXFP4 is in the problem)
  bool aligned_16 = false;      // x and w data start on 16-byte boundaries
  bool expert_offsets = false;  // given (else one expert)
  bool slabs = false;           // MXFP4 weights repacked (ExpertWeights::slab_codes); with a gather, x's staging room too
  bool batch_invariant = false; // asked for (ExecContext::batch_invariant): one kernel family at every row count
  bool recompute = false;       // matmul_ogs_backward's recompute of h (MatmulOgsParams::grad_a): no invariance asked
};

// Why the swap-AB kernels cannot run on `device`, or nullptr when they can (their operands aside).
inline const char* swapab_device_refusal(const DeviceInfo& device) {
  if (device.major != 9 || device.minor != 0) return "sm_90 (wgmma)";
  return device.max_smem_per_block_optin < kSwapabSharedMemoryBytes ? "211 KB of shared memory a block" : nullptr;
}

// Why `kernel` cannot run problem p on `device`, or nullptr when it can: a forced config is
// refused with this, and every automatic choice passes it (tests/cpp/matmul_ogs_config_test.cpp).
inline const char* matmul_ogs_config_refusal(MatmulOgsKernel kernel, const MatmulOgsProblem& p,
                                             const MatmulOgsOperands& o, const DeviceInfo& device) {
  if (kernel == MatmulOgsKernel::kSimt) return nullptr;
  // Tensor cores take bf16 operands exactly: bf16 x, and bf16 or MXFP4 weights (an e2m1 value
  // times a power of two is a bf16). 16-byte vector loads need K % 8 == 0 and aligned data.
  if (device.major < 8) return "tensor cores of sm_80 or later";
  if (!o.x_bf16) return "bf16 x";
  if (!p.mxfp4 && !o.w_bf16) return "bf16 or MXFP4 weights";
  if (p.K % 8 != 0) return "K a multiple of 8";
  if (!o.aligned_16) return "x and w data on 16-byte boundaries";
  const bool sm90 = device.major == 9 && device.minor == 0;
  switch (kernel) {
    case MatmulOgsKernel::kStream8Wide:
      return p.mxfp4 ? "bf16 weights" : nullptr;
    case MatmulOgsKernel::kTiled64:
      if (!p.mxfp4) return "MXFP4 weights";
      return device.max_smem_per_block_optin < kTiledSharedMemoryBytes ? "72 KB of shared memory a block" : nullptr;
    case MatmulOgsKernel::kWgmma128:
      if (!p.mxfp4) return "MXFP4 weights";
      if (!sm90) return "sm_90 (wgmma)";
      return device.max_smem_per_block_optin < kWgmmaSharedMemoryBytes ? "113 KB of shared memory a block" : nullptr;
    case MatmulOgsKernel::kWmma64:
      return p.mxfp4 ? "bf16 weights" : nullptr;
    case MatmulOgsKernel::kGemv:
      if (p.mxfp4 || o.expert_offsets || p.E != 1 || p.gather || p.scatter || p.swiglu) {
        return "one dense bf16 weight without expert offsets, gather, scatter or SwiGLU";
      }
      if (p.P > kGemvMaxRows) return "at most 8 rows";
      if (!sm90) return "sm_90 (bulk copies)";
      return gemv_shared_rows(p, device, 1) > 0 ? nullptr : "a weight row and x in shared memory";
    case MatmulOgsKernel::kSwapab16:
    case MatmulOgsKernel::kSwapab32:
    case MatmulOgsKernel::kSwapab80:
      if (!p.mxfp4) return "MXFP4 weights";
      if (o.recompute) return "a forward call (its epilogue has no backward recompute)";
      if (!o.slabs) return "the weights repacked by repack_mxfp4 (slab codes and scales) and matmul_ogs's workspace";
      return swapab_device_refusal(device);
    default:
      return nullptr;
  }
}

inline MatmulOgsKernel choose_matmul_ogs_kernel(const MatmulOgsProblem& p, const MatmulOgsOperands& o,
                                                const DeviceInfo& device) {
  const auto fits = [&](MatmulOgsKernel k) { return matmul_ogs_config_refusal(k, p, o, device) == nullptr; };
  if (!fits(MatmulOgsKernel::kStream8)) return MatmulOgsKernel::kSimt;  // no tensor cores for these operands
  const int64_t groups = p.E < p.P ? p.E : (p.P > 0 ? p.P : 1);
  const int64_t rows_per_expert = (p.P + groups - 1) / groups;  // rounded up
  // Batch-invariant: kernels whose row sums never depend on the other rows, the same at every row
  // count. The swap-AB loop (a token is a column of wgmma's N: one k order, no split; its tile
  // height should not change a column's bits, which the GPU tests check) for repacked MXFP4; the
  // 8-token streaming items with their fixed 16-way k split for bf16 weights (the gate); else
  // the SIMT kernel. The tile heights are the fastest swap-AB ones of the sweeps: 16 rows at up
  // to 8 rows per expert, 32 at 16 (H200, bench/results/matmul_ogs_configs_H200.json: 1.18-1.27x
  // faster than 16 there), 80 from 64 (H100, bench/results/matmul_ogs_configs_swapab80_H100.json:
  // at 64 rows per expert 1.20-1.32x faster than 64-row tiles, which decode the weights again for
  // the experts past 64 rows; at 256 and 1024 1.05-1.16x faster than 128-row tiles).
  const MatmulOgsKernel swapab = rows_per_expert <= 8    ? MatmulOgsKernel::kSwapab16
                                 : rows_per_expert <= 32 ? MatmulOgsKernel::kSwapab32
                                                         : MatmulOgsKernel::kSwapab80;
  if (o.batch_invariant && !o.recompute) {
    if (!p.mxfp4) return fits(MatmulOgsKernel::kStream8Wide) ? MatmulOgsKernel::kStream8Wide : MatmulOgsKernel::kSimt;
    return fits(swapab) ? swapab : MatmulOgsKernel::kSimt;
  }
  // Few output columns of bf16 weights (the gate: N = E): 64-row tiles would make a handful of
  // blocks (180 us for T = 128 on an H100); 8-token work items make the most, and 16 warps per
  // item split its long k loop. From 4096 rows, 32-token items with 4 warps: enough items, each
  // weight read once per 32 rows (measured on an H100 at T = 8192, the layer: E = 32, 4101 ->
  // 4046 us; E = 128, 4787 -> 4698 us, where 64-row wmma tiles had taken it).
  if (!p.mxfp4 && p.N <= 256) return p.P >= kGateTallRows ? MatmulOgsKernel::kStream32 : MatmulOgsKernel::kStream8Wide;
  // One dense bf16 weight against a few rows (torch's Linear in a decode step): the GEMV asks for
  // its block's whole share of the weight before it waits for the kernel before it.
  if (fits(MatmulOgsKernel::kGemv)) return MatmulOgsKernel::kGemv;
  // Weights repacked for the swap-AB loop (sm_90), as the sweeps measured it on gpt-oss's layers
  // (three consumer warpgroups): the batch-invariant choice's tile height up to 64 rows per
  // expert (H200: 16 rows 1.05-1.19x faster than stream8 from 1 to 4 rows, 0.98-1.07x at 0.25;
  // 32 rows at 16, 1.41-1.57x stream16; H100: 80 rows at 64, 1.44-1.68x wgmma128); past that
  // 80-row tiles with x read in place (mlp2; H100 1.12-1.20x wgmma128), but with a gather (mlp1)
  // wgmma128, which gathers as it loads where the loop first stages the rows (H100: 1.00-1.03x
  // faster than swapab80 from 256 rows).
  if (fits(swapab) && (rows_per_expert <= 64 || !p.gather)) return swapab;
  // Up to 32 rows per expert the weights dominate the traffic: stream them once, in token tiles
  // that cover an average expert.
  if (rows_per_expert <= 8) return MatmulOgsKernel::kStream8;
  if (rows_per_expert <= 16) return MatmulOgsKernel::kStream16;
  if (rows_per_expert <= 32) return MatmulOgsKernel::kStream32;
  if (!p.mxfp4) return MatmulOgsKernel::kWmma64;
  // wgmma exists on sm_90 alone (the library carries sm_90a code for it); elsewhere, mma.sync on
  // 64-row tiles (every sm_80+ GPU lets a block take the 72 KB; where one would not, the SIMT
  // kernel, which needs no opt-in).
  if (fits(MatmulOgsKernel::kWgmma128)) return MatmulOgsKernel::kWgmma128;
  return fits(MatmulOgsKernel::kTiled64) ? MatmulOgsKernel::kTiled64 : MatmulOgsKernel::kSimt;
}

// The most tokens moe_mlp's CUDA decode path (src/cuda/kernels/moe) takes for problem p on
// `device`; past it the layer runs its four steps through matmul_ogs. With both mlps' weights
// repacked, where the swap-AB loop runs (sm_90 with its shared memory), the loop is the faster
// past the decode kernels' 8-row units (H100, the layer at 920bc68, tk / moekit with the decode
// kernels against the loop: E = 32 T = 5..8 1.04-1.33 against 1.31-1.51, E = 128 0.98-1.09
// against 1.22-1.33; at T = 4 1.57 / 1.59 and 1.54 / 1.51, at 1..3 the decode kernels 1.07-1.31x
// ahead: bench/results/moe_layer_H100_decode_vs_loop.txt).
inline int64_t moe_decode_max_tokens(const MoeMlpProblem& p, const DeviceInfo& device) {
  const bool loop = p.slabs1 && p.slabs2 && swapab_device_refusal(device) == nullptr;
  return loop ? kMoeDecodeHalvesMaxTokens : kMoeDecodeMaxTokens;
}

// The kernel an override names; refused, listing the names, when none has it.
MatmulOgsKernel matmul_ogs_kernel_named(const std::string& name);

// The config a launch runs: the one `forced` names (refused with the reason where it cannot run
// the problem, or where no kernel has that name), else the choice above.
MatmulOgsConfig matmul_ogs_launch_config(const MatmulOgsProblem& p, const MatmulOgsOperands& o,
                                         const DeviceInfo& device, const std::string& forced);

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
