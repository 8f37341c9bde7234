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
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_kernel.h"
#include "launch_util.h"
#include "matmul_ogs_launch.h"

namespace moekit::cuda {
namespace {

template <class XT>
void launch_simt(const MatmulOgsProblem& p, const MatmulOgsArgs& a, MatmulOgsParams params, cudaStream_t stream,
                 const ExecContext& ctx) {
  plan_tiles<simt::kBM>(params, stream, ctx);
  const dim3 grid(static_cast<unsigned>(max_row_tiles(params, simt::kBM)), static_cast<unsigned>(ceil_div(p.N, simt::kBN)));
  if (p.mxfp4) {
    matmul_ogs_simt_kernel<XT, WeightKind::kMxfp4, false><<<grid, simt::kThreads, 0, stream>>>(params);
  } else if (a.w.values.dtype == DType::kBFloat16) {
    matmul_ogs_simt_kernel<XT, WeightKind::kBFloat16, false><<<grid, simt::kThreads, 0, stream>>>(params);
  } else {
    matmul_ogs_simt_kernel<XT, WeightKind::kFloat32, false><<<grid, simt::kThreads, 0, stream>>>(params);
  }
}

template <int BM>
void launch_tensor_core(const MatmulOgsProblem& p, const MatmulOgsArgs& a, MatmulOgsParams params,
                        cudaStream_t stream, const ExecContext& ctx) {
  plan_tiles<BM>(params, stream, ctx);
  const dim3 grid(static_cast<unsigned>(max_row_tiles(params, BM)), static_cast<unsigned>(ceil_div(p.N, tc::kBN)));
  if (p.mxfp4) matmul_ogs_wmma_kernel<BM, true><<<grid, tc::kThreads, 0, stream>>>(params);
  else matmul_ogs_wmma_kernel<BM, false><<<grid, tc::kThreads, 0, stream>>>(params);
}

void launch_tiled(const MatmulOgsProblem& p, const MatmulOgsArgs& a, MatmulOgsParams params, cudaStream_t stream,
                  const ExecContext& ctx) {
  plan_tiles<tiled::kBM>(params, stream, ctx);
  const dim3 grid(static_cast<unsigned>(max_row_tiles(params, tiled::kBM) * ceil_div(p.N, tiled::kBN)));
  static_assert(tiled::kSmemBytes + tiled::kBM * 8 <= kTiledSharedMemoryBytes, "the kernel choice assumes this budget");
  allow_dynamic_smem<matmul_ogs_tiled_kernel>(tiled::kSmemBytes, p.device.index);
  matmul_ogs_tiled_kernel<<<grid, tiled::kThreads, tiled::kSmemBytes, stream>>>(params);
}

void launch_wgmma(const MatmulOgsProblem& p, const MatmulOgsArgs& a, MatmulOgsParams params, cudaStream_t stream,
                  const ExecContext& ctx) {
  plan_tiles<wg::kBM>(params, stream, ctx);
  const dim3 grid(static_cast<unsigned>(max_row_tiles(params, wg::kBM) * ceil_div(p.N, wg::kBN)));
  static_assert(wg::kSmemBytes + wg::kBM * 8 <= kWgmmaSharedMemoryBytes, "the kernel choice assumes this budget");
  if (params.grad_a) {  // the backward's recompute: its own form, so the forward's epilogue has no branch for it
    allow_dynamic_smem<matmul_ogs_wgmma_kernel<WgmmaForm::kRecompute>>(wg::kSmemBytes, p.device.index);
    matmul_ogs_wgmma_kernel<WgmmaForm::kRecompute><<<grid, wg::kThreads, wg::kSmemBytes, stream>>>(params);
  } else {
    allow_dynamic_smem<matmul_ogs_wgmma_kernel<WgmmaForm::kForward>>(wg::kSmemBytes, p.device.index);
    matmul_ogs_wgmma_kernel<WgmmaForm::kForward><<<grid, wg::kThreads, wg::kSmemBytes, stream>>>(params);
  }
}

// A persistent grid over (token tile, 16 output columns) work items: as many blocks as fit on
// the device at once, never more than there can be items.
template <int NT, int kWarps = 4>
void launch_stream(const MatmulOgsProblem& p, const MatmulOgsArgs& a, MatmulOgsParams params, cudaStream_t stream,
                   const ExecContext& ctx) {
  constexpr int BM = 8 * NT;
  if (!blocks_scan_tiles(a.expert_offsets.present(), p.E, p.P)) plan_tiles<BM>(params, stream, ctx);
  const int64_t max_items = max_row_tiles(params, BM) * ceil_div(p.N, stream::kCols * stream::slabs(NT, p.mxfp4));
  const int64_t resident =
      static_cast<int64_t>(device_info(p.device.index).sm_count) * stream::min_blocks(NT, p.mxfp4, kWarps);
  const dim3 grid(static_cast<unsigned>(std::min(max_items, resident)));
  if (!p.mxfp4) {
    matmul_ogs_stream_kernel<NT, false, kWarps><<<grid, 32 * kWarps, 0, stream>>>(params);
  } else if constexpr (kWarps == 4) {  // the 16-warp form is the gate's (bf16 weights)
    matmul_ogs_stream_kernel<NT, true, kWarps><<<grid, 32 * kWarps, 0, stream>>>(params);
  } else {
    throw Error(Error::Kind::kRuntime, "moekit.matmul_ogs: internal error: the 16-warp streaming kernel takes bf16 weights");
  }
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
  return params;
}

void launch_matmul_ogs_rows(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const MatmulOgsParams& params,
                            cudaStream_t stream, const ExecContext& ctx) {
  const MatmulOgsOperands operands{a.x.dtype == DType::kBFloat16, a.w.values.dtype == DType::kBFloat16,
                                   aligned_16(a.x.data) && aligned_16(a.w.values.data), a.expert_offsets.present()};
  switch (choose_matmul_ogs_kernel(p, operands, device_info(p.device.index))) {
    case MatmulOgsKernel::kStream8: launch_stream<1>(p, a, params, stream, ctx); break;
    case MatmulOgsKernel::kStream8Wide: launch_stream<1, 16>(p, a, params, stream, ctx); break;
    case MatmulOgsKernel::kStream16: launch_stream<2>(p, a, params, stream, ctx); break;
    case MatmulOgsKernel::kStream32: launch_stream<4>(p, a, params, stream, ctx); break;
    case MatmulOgsKernel::kTiled64: launch_tiled(p, a, params, stream, ctx); break;
    case MatmulOgsKernel::kWgmma128: launch_wgmma(p, a, params, stream, ctx); break;
    case MatmulOgsKernel::kTensorCore64: launch_tensor_core<64>(p, a, params, stream, ctx); break;
    case MatmulOgsKernel::kGemv: launch_gemv(p, params, stream); break;
    case MatmulOgsKernel::kSimt:
      if (a.x.dtype == DType::kBFloat16) launch_simt<bf16>(p, a, params, stream, ctx);
      else launch_simt<float>(p, a, params, stream, ctx);
      break;
  }
  MOEKIT_CHECK_LAUNCH(ctx, stream, "matmul_ogs kernel");
}

void matmul_ogs(const MatmulOgsProblem& p, const MatmulOgsArgs& a, const ExecContext& ctx) {
  const char* op = "matmul_ogs";
  const MatmulOgsWorkspace& ws = p.workspace;
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of(op, p.device, ctx);

  MatmulOgsParams params = matmul_ogs_params(p, a);
  char* ws_base = static_cast<char*>(a.workspace.data);
  params.tile_items = reinterpret_cast<int2*>(ws_base + ws.tiles);  // written by plan_tiles_kernel
  params.tile_count = reinterpret_cast<int*>(ws_base + ws.tile_count);
  // With scatter, rows go to the workspace as float32 and the combine writes `out`.
  float* combine_rows = reinterpret_cast<float*>(ws_base + ws.combine);
  params.out = p.scatter ? static_cast<void*>(combine_rows) : a.out.data;
  params.out_bf16 = !p.scatter && a.out.dtype == DType::kBFloat16;

  if (p.P > 0) launch_matmul_ogs_rows(p, a, params, stream, ctx);
  if (p.scatter) {
    const int64_t n = p.T * p.out_cols;
    combine_kernel<<<static_cast<unsigned>(ceil_div(n, kElementwiseThreads)), kElementwiseThreads, 0, stream>>>(
        combine_rows, a.scatter_idx.ptr<int32_t>(),
        a.combine_weight.present() ? a.combine_weight.ptr<float>() : nullptr, p.T, static_cast<int>(p.k), p.out_cols,
        p.P, a.out.data, a.out.dtype == DType::kBFloat16);
    MOEKIT_CHECK_LAUNCH(ctx, stream, "combine_kernel");
  }
}

}  // namespace moekit::cuda
