#include <algorithm>
#include <string>

#include "../../core/check.h"
#include "../../core/matmul_ogs_config.h"
#include "../kernels/gemm/combine.cuh"
#include "../kernels/gemm/matmul_ogs_gemv.cuh"
#include "../kernels/gemm/matmul_ogs_simt.cuh"
#include "../kernels/gemm/matmul_ogs_stream.cuh"
#include "../kernels/gemm/matmul_ogs_tiled.cuh"
#include "../kernels/gemm/matmul_ogs_wgmma.cuh"
#include "../kernels/gemm/matmul_ogs_wmma.cuh"
#include "../runtime/device_guard.h"
#include "../runtime/device_info.h"
#include "../runtime/dynamic_smem.h"
#include "../runtime/occupancy.h"
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_kernel.h"
#include "launch_util.h"
#include "matmul_ogs_launch.h"
#include "matmul_ogs_swapab_launch.h"

namespace moekit::cuda {
namespace {

// The config table (src/core) and the kernels' compiled constants agree.
constexpr MatmulOgsConfig config_of(MatmulOgsKernel k, bool mxfp4 = true) { return matmul_ogs_config(k, mxfp4); }
static_assert(config_of(MatmulOgsKernel::kSimt).tile_rows == simt::kBM && config_of(MatmulOgsKernel::kSimt).tile_cols ==
                  simt::kBN && config_of(MatmulOgsKernel::kSimt).warps * 32 == simt::kThreads, "simt");
static_assert(config_of(MatmulOgsKernel::kTiled64).tile_rows == tiled::kBM &&
                  config_of(MatmulOgsKernel::kTiled64).tile_cols == tiled::kBN &&
                  config_of(MatmulOgsKernel::kTiled64).stages == tiled::kStages &&
                  config_of(MatmulOgsKernel::kTiled64).warps * 32 == tiled::kThreads, "tiled64");
static_assert(config_of(MatmulOgsKernel::kWgmma128).tile_rows == wg::kBM &&
                  config_of(MatmulOgsKernel::kWgmma128).tile_cols == wg::kBN &&
                  config_of(MatmulOgsKernel::kWgmma128).tile_k == wg::kBK &&
                  config_of(MatmulOgsKernel::kWgmma128).stages == wg::kStages &&
                  config_of(MatmulOgsKernel::kWgmma128).warps * 32 == wg::kThreads, "wgmma128");
static_assert(config_of(MatmulOgsKernel::kWmma64, false).tile_rows == tc::kBM &&
                  config_of(MatmulOgsKernel::kWmma64, false).tile_cols == tc::kBN &&
                  config_of(MatmulOgsKernel::kWmma64, false).warps * 32 == tc::kThreads, "wmma64");
static_assert(config_of(MatmulOgsKernel::kStream8).tile_cols == stream::kCols * stream::slabs(1, true) &&
                  config_of(MatmulOgsKernel::kStream8, false).tile_cols == stream::kCols * stream::slabs(1, false) &&
                  config_of(MatmulOgsKernel::kStream16).tile_cols == stream::kCols * stream::slabs(2, true) &&
                  config_of(MatmulOgsKernel::kStream32).tile_cols == stream::kCols * stream::slabs(4, true), "stream");
template <class Sh>
constexpr bool swapab_config_is(MatmulOgsKernel k) {
  const MatmulOgsConfig c = config_of(k);
  return c.tile_rows == Sh::kRows && c.tile_cols == Sh::kTileCols && c.tile_k == mxfp4_slabs::kStepK &&
         c.stages == Sh::kStages && c.warps * 32 == Sh::kThreads && Sh::kSmemBytes <= kSwapabSharedMemoryBytes &&
         Sh::kRows >= kMinTileRows;
}
static_assert(swapab_config_is<swapab::Swapab16>(MatmulOgsKernel::kSwapab16) &&
                  swapab_config_is<swapab::Swapab32>(MatmulOgsKernel::kSwapab32) &&
                  swapab_config_is<swapab::Swapab80>(MatmulOgsKernel::kSwapab80), "swapab");

// A block per (row tile, column tile) of the planned list.
dim3 tile_grid(const MatmulOgsProblem& p, const MatmulOgsParams& params, const MatmulOgsConfig& c) {
  return dim3(static_cast<unsigned>(max_row_tiles(params, c.tile_rows) * ceil_div(p.N, c.tile_cols)));
}

template <class XT>
void launch_simt(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const MatmulOgsConfig& c, MatmulOgsParams params,
                 cudaStream_t stream, const ExecContext& ctx) {
  plan_tiles<simt::kBM>(params, stream, ctx);
  const dim3 grid(static_cast<unsigned>(max_row_tiles(params, c.tile_rows)), static_cast<unsigned>(ceil_div(p.N, c.tile_cols)));
  if (p.mxfp4) {
    matmul_ogs_simt_kernel<XT, WeightKind::kMxfp4, false><<<grid, simt::kThreads, 0, stream>>>(params);
  } else if (a.w.values.dtype == DType::kBFloat16) {
    matmul_ogs_simt_kernel<XT, WeightKind::kBFloat16, false><<<grid, simt::kThreads, 0, stream>>>(params);
  } else {
    matmul_ogs_simt_kernel<XT, WeightKind::kFloat32, false><<<grid, simt::kThreads, 0, stream>>>(params);
  }
}

void launch_wmma(const MatmulOgsProblem& p, const MatmulOgsConfig& c, MatmulOgsParams params, cudaStream_t stream,
                 const ExecContext& ctx) {
  plan_tiles<tc::kBM>(params, stream, ctx);
  const dim3 grid(static_cast<unsigned>(max_row_tiles(params, c.tile_rows)), static_cast<unsigned>(ceil_div(p.N, c.tile_cols)));
  matmul_ogs_wmma_kernel<<<grid, tc::kThreads, 0, stream>>>(params);
}

void launch_tiled(const MatmulOgsProblem& p, const MatmulOgsConfig& c, MatmulOgsParams params, cudaStream_t stream,
                  const ExecContext& ctx) {
  plan_tiles<tiled::kBM>(params, stream, ctx);
  static_assert(tiled::kSmemBytes + tiled::kBM * 8 <= kTiledSharedMemoryBytes, "the kernel choice assumes this budget");
  allow_dynamic_smem<matmul_ogs_tiled_kernel>(tiled::kSmemBytes, p.device.index);
  matmul_ogs_tiled_kernel<<<tile_grid(p, params, c), tiled::kThreads, tiled::kSmemBytes, stream>>>(params);
}

void launch_wgmma(const MatmulOgsProblem& p, const MatmulOgsConfig& c, MatmulOgsParams params, cudaStream_t stream,
                  const ExecContext& ctx) {
  plan_tiles<wg::kBM>(params, stream, ctx);
  const dim3 grid = tile_grid(p, params, c);
  static_assert(wg::kSmemBytes + wg::kBM * 8 <= kWgmmaSharedMemoryBytes, "the kernel choice assumes this budget");
  if (params.grad_a) {  // the backward's recompute: its own form, so the forward's epilogue has no branch for it
    allow_dynamic_smem<matmul_ogs_wgmma_kernel<WgmmaForm::kRecompute>>(wg::kSmemBytes, p.device.index);
    matmul_ogs_wgmma_kernel<WgmmaForm::kRecompute><<<grid, wg::kThreads, wg::kSmemBytes, stream>>>(params);
  } else {
    allow_dynamic_smem<matmul_ogs_wgmma_kernel<WgmmaForm::kForward>>(wg::kSmemBytes, p.device.index);
    matmul_ogs_wgmma_kernel<WgmmaForm::kForward><<<grid, wg::kThreads, wg::kSmemBytes, stream>>>(params);
  }
}

// A persistent grid over (token tile, output columns) work items: as many blocks as are resident
// on the device at once (the occupancy API), never more than there can be items.
template <int NT, bool kMxfp4, int kWarps>
void launch_stream(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const MatmulOgsConfig& c, MatmulOgsParams params,
                   cudaStream_t stream, const ExecContext& ctx) {
  constexpr auto* kernel = matmul_ogs_stream_kernel<NT, kMxfp4, kWarps>;
  static_assert(8 * NT == config_of(NT == 1 ? MatmulOgsKernel::kStream8 : NT == 2 ? MatmulOgsKernel::kStream16
                                                                                  : MatmulOgsKernel::kStream32).tile_rows);
  if (!blocks_scan_tiles(a.expert_offsets.present(), p.E, p.P)) plan_tiles<8 * NT>(params, stream, ctx);
  const int64_t max_items = max_row_tiles(params, c.tile_rows) * ceil_div(p.N, c.tile_cols);
  const int64_t resident = static_cast<int64_t>(device_info(p.device.index).sm_count) *
                           resident_blocks_per_sm<kernel>(32 * kWarps, 0, p.device.index);
  const dim3 grid(static_cast<unsigned>(std::min(max_items, resident)));
  kernel<<<grid, 32 * kWarps, 0, stream>>>(params);
}

template <int NT>
void launch_stream(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const MatmulOgsConfig& c, MatmulOgsParams params,
                   cudaStream_t stream, const ExecContext& ctx) {
  if (p.mxfp4) launch_stream<NT, true, 4>(p, a, c, params, stream, ctx);
  else launch_stream<NT, false, 4>(p, a, c, params, stream, ctx);
}

// One block an SM at most, each holding its rows of the weight in shared memory where they fit.
void launch_gemv(const MatmulOgsProblem& p, MatmulOgsParams params, cudaStream_t stream) {
  const DeviceInfo& device = device_info(p.device.index);
  const int64_t grid = std::min<int64_t>(device.sm_count, p.N);
  params.gemv_shared_rows = gemv_shared_rows(p, device, ceil_div(p.N, grid));
  const int smem = static_cast<int>(gemv_smem_bytes(params.gemv_shared_rows, p.P, p.K));
  allow_dynamic_smem<matmul_ogs_gemv_kernel>(smem, p.device.index);
  launch_kernel(matmul_ogs_gemv_kernel, static_cast<unsigned>(grid), 32 * kGemvWarps, static_cast<size_t>(smem),
                stream, chains_on(device.major), params);
}

bool aligned_16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

void can_implement_matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a) {
  const char* op = "matmul_ogs";
  check::workspace(op, a.workspace, p.workspace.total);
  check::on_device(op, "workspace", a.workspace, p.device, "x");
  require_aligned(op, "workspace", a.workspace, 16);
  if (p.mxfp4) require_aligned(op, "w", a.w.values, 16);
  if (p.slabs) {  // the swap-AB kernels' bulk copies
    require_aligned(op, "w_codes", a.w.slab_codes, 16);
    require_aligned(op, "w_slab_scales", a.w.slab_scales, 16);
  }
  check_matmul_ogs_grids(op, p, a);
}

void check_matmul_ogs_grids(const char* op, const MatmulOgsProblem& p, const MatmulOgsArgs& a) {
  constexpr int64_t kMaxGridX = 2147483647, kMaxGridY = 65535;
  const char* why = "the CUDA grid's limits";
  check::at_most(op, "w", "output column tiles of 64", ceil_div(p.N, 64), kMaxGridY, why);
  const int64_t tiles = ceil_div(p.P, tiled::kBM) + (a.expert_offsets.present() ? p.E : 0);
  check::at_most(op, "w", "blocks of 64 x 128 outputs", check::mul(op, "w", tiles, ceil_div(p.N, tiled::kBN)),
                 kMaxGridX, why);
  if (p.scatter) {
    check::at_most(op, "scatter_idx", "combined outputs", p.T * p.out_cols, kMaxGridX * kElementwiseThreads, why);
  }
}

MatmulOgsParams matmul_ogs_params(const MatmulOgsProblem& p, const MatmulOgsArgs& a) {
  MatmulOgsParams params{};
  params.x = a.x.data;
  params.M = p.M;
  params.K = p.K;
  params.w = a.w.values.data;
  params.w_scales = p.mxfp4 ? a.w.scales.ptr<uint8_t>() : nullptr;
  params.bias = a.bias.present() ? a.bias.data : nullptr;
  params.bias_bf16 = a.bias.present() && a.bias.dtype == DType::kBFloat16;
  params.expert_offsets = a.expert_offsets.present() ? a.expert_offsets.ptr<int32_t>() : nullptr;
  params.E = static_cast<int>(p.E);
  params.N = p.N;
  params.gather_idx = p.gather ? a.gather_idx.ptr<int32_t>() : nullptr;
  params.P = p.P;
  params.swiglu = p.swiglu;
  params.alpha = a.swiglu.alpha;
  params.limit = a.swiglu.limit;
  params.out_cols = p.out_cols;
  params.slab_codes = a.w.slab_codes.present() ? a.w.slab_codes.ptr<uint8_t>() : nullptr;
  params.slab_scales = a.w.slab_scales.present() ? a.w.slab_scales.ptr<uint8_t>() : nullptr;
  return params;
}

void launch_matmul_ogs_rows(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const MatmulOgsParams& params,
                            cudaStream_t stream, const ExecContext& ctx) {
  const bool slabs = params.slab_codes != nullptr && (params.gather_idx == nullptr || params.x_staged != nullptr);
  const MatmulOgsOperands operands{a.x.dtype == DType::kBFloat16, a.w.values.dtype == DType::kBFloat16,
                                   aligned_16(a.x.data) && aligned_16(a.w.values.data), a.expert_offsets.present(),
                                   slabs, ctx.batch_invariant, params.grad_a != nullptr};
  const MatmulOgsConfig c = matmul_ogs_launch_config(p, operands, device_info(p.device.index), ctx.matmul_ogs_config);
  switch (c.kernel) {
    case MatmulOgsKernel::kStream8: launch_stream<1>(p, a, c, params, stream, ctx); break;
    case MatmulOgsKernel::kStream8Wide: launch_stream<1, false, 16>(p, a, c, params, stream, ctx); break;
    case MatmulOgsKernel::kStream16: launch_stream<2>(p, a, c, params, stream, ctx); break;
    case MatmulOgsKernel::kStream32: launch_stream<4>(p, a, c, params, stream, ctx); break;
    case MatmulOgsKernel::kTiled64: launch_tiled(p, c, params, stream, ctx); break;
    case MatmulOgsKernel::kWgmma128: launch_wgmma(p, c, params, stream, ctx); break;
    case MatmulOgsKernel::kWmma64: launch_wmma(p, c, params, stream, ctx); break;
    case MatmulOgsKernel::kGemv: launch_gemv(p, params, stream); break;
    case MatmulOgsKernel::kSwapab16: launch_swapab<swapab::Swapab16>(p, params, stream, ctx); break;
    case MatmulOgsKernel::kSwapab32: launch_swapab<swapab::Swapab32>(p, params, stream, ctx); break;
    case MatmulOgsKernel::kSwapab80: launch_swapab<swapab::Swapab80>(p, params, stream, ctx); break;
    case MatmulOgsKernel::kSimt:
      if (a.x.dtype == DType::kBFloat16) launch_simt<bf16>(p, a, c, params, stream, ctx);
      else launch_simt<float>(p, a, c, params, stream, ctx);
      break;
  }
  MOEKIT_CHECK_LAUNCH(ctx, stream, "matmul_ogs kernel");
}

MatmulOgsParams matmul_ogs_forward_params(const MatmulOgsProblem& p, const MatmulOgsArgs& a) {
  const MatmulOgsWorkspace& ws = p.workspace;
  MatmulOgsParams params = matmul_ogs_params(p, a);
  char* ws_base = static_cast<char*>(a.workspace.data);
  params.tile_items = reinterpret_cast<int2*>(ws_base + ws.tiles);  // written by plan_tiles_kernel
  params.tile_count = reinterpret_cast<int*>(ws_base + ws.tile_count);
  params.x_staged = p.slabs && p.gather ? reinterpret_cast<uint8_t*>(ws_base + ws.staged) : nullptr;
  // With scatter, rows go to the workspace as float32 and the combine writes `out`.
  params.out = p.scatter ? static_cast<void*>(ws_base + ws.combine) : a.out.data;
  params.out_bf16 = !p.scatter && a.out.dtype == DType::kBFloat16;
  return params;
}

void matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const ExecContext& ctx) {
  const char* op = "matmul_ogs";
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of(op, p.device, ctx);
  const MatmulOgsParams params = matmul_ogs_forward_params(p, a);
  if (p.P > 0) launch_matmul_ogs_rows(p, a, params, stream, ctx);
  if (p.scatter) {
    const int64_t n = p.T * p.out_cols;
    combine_kernel<<<static_cast<unsigned>(ceil_div(n, kElementwiseThreads)), kElementwiseThreads, 0, stream>>>(
        static_cast<const float*>(params.out), a.scatter_idx.ptr<int32_t>(),
        a.combine_weight.present() ? a.combine_weight.ptr<float>() : nullptr, p.T, static_cast<int>(p.k), p.out_cols,
        p.P, a.out.data, a.out.dtype == DType::kBFloat16);
    MOEKIT_CHECK_LAUNCH(ctx, stream, "combine_kernel");
  }
}

}  // namespace moekit::cuda
