// matmul_ogs_backward on CUDA: the gradients of include/moekit/ops.h, with the CPU backend's sums
// rearranged where that saves a matmul, each still in a fixed order (the same bits every run).
//
// The transposed product u[i] = g[a_row(i)] W[e] runs over rows i grouped by expert:
// - with scatter and no SwiGLU (mlp2), over the slots, sorted by the problem row they read:
//   g = grad_out, a_row = the slot's output row, and the slot's combine weight scales u[i] into
//   x's gradient; the combine weights' gradient is u[i] . x[row] + grad_out[t] . bias[e] (the
//   combined row h = x W^T + b, so h needs no recompute);
// - with SwiGLU (mlp1), over the problem rows: h is recomputed by the forward's own kernel, whose
//   epilogue writes g, the gradient at h, from each row's share of grad_out (g_a, summed from its
//   slots with scatter), and the SwiGLU output where the combine weights need it;
// - else over the problem rows with g = grad_out.
// Then x's gradient sums the u rows reading each x row (a stable sort lists them in order), and
// the bias's sums each expert's g rows.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>

#include "../../core/byte_layout.h"
#include "../../core/check.h"
#include "../../core/matmul_ogs_config.h"
#include "../kernels/gemm/matmul_ogs_backward.cuh"
#include "../kernels/gemm/matmul_ogs_simt.cuh"
#include "../kernels/gemm/matmul_ogs_wgmma.cuh"
#include "../runtime/device_guard.h"
#include "../runtime/device_info.h"
#include "../runtime/dynamic_smem.h"
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_util.h"
#include "matmul_ogs_launch.h"

namespace moekit::cuda {
namespace {

constexpr const char* kOp = "matmul_ogs_backward";

// Bits of a sort key up to `limit` (the invalid key).
int key_bits(int64_t limit) {
  int bits = 1;
  while ((int64_t{1} << bits) <= limit) ++bits;
  return bits;
}

// The stable sort of n (key, value) pairs, keys up to `limit`, with `bytes` of scratch at temp.
void sort_pairs(void* temp, size_t bytes, const uint32_t* keys_in, uint32_t* keys_out, const int32_t* values_in,
                int32_t* values_out, int64_t n, int64_t limit, cudaStream_t stream) {
  MOEKIT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, bytes, keys_in, keys_out, values_in, values_out,
                                                    static_cast<int>(n), 0, key_bits(limit), stream));
}

// The scratch bytes that sort needs (a query: it launches nothing).
size_t sort_bytes(int64_t n, int64_t limit) {
  size_t bytes = 0;
  MOEKIT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                                    static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                                    static_cast<int32_t*>(nullptr), static_cast<int>(n), 0,
                                                    key_bits(limit)));
  return bytes;
}

// The workspace's regions (byte offsets); each is sized 0 where the call does not use it.
struct BackwardLayout {
  size_t tiles, tile_count, sort_temp, keys, values, slot_row, slot_of, x_sorted, order, a_row, scale,
      row_offsets, row_start, x_start, grad_a, grad_h, act, u, total;
  size_t sort_bytes;
};

BackwardLayout backward_layout(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& b) {
  const bool slots = p.scatter && !p.swiglu, cw = b.forward.combine_weight.present();
  BackwardLayout l{};
  l.sort_bytes = std::max(p.scatter ? sort_bytes(p.P, p.P) : 0, sort_bytes(p.P, p.M));
  ByteLayout layout(kOp);
  const int64_t P = p.P;
  l.tiles = layout.take("x", check::add(kOp, "x", (P + kMinTileRows - 1) / kMinTileRows, p.E), 8);
  l.tile_count = layout.take("x", 1, 4);
  l.sort_temp = layout.take("x", static_cast<int64_t>(l.sort_bytes), 1);
  l.keys = layout.take("x", P, 4);
  l.values = layout.take("x", P, 4);
  l.slot_row = layout.take("scatter_idx", p.scatter ? P : 0, 4);
  l.slot_of = layout.take("scatter_idx", p.scatter ? P : 0, 4);
  l.x_sorted = layout.take("x", P, 4);
  l.order = layout.take("x", P, 4);
  l.a_row = layout.take("scatter_idx", slots ? P : 0, 4);
  l.scale = layout.take("scatter_idx", slots ? P : 0, 4);
  l.row_offsets = layout.take("expert_offsets", slots ? p.E + 1 : 0, 4);
  l.row_start = layout.take("scatter_idx", p.scatter && p.swiglu ? P + 1 : 0, 4);
  l.x_start = layout.take("x", p.M + 1, 4);
  const int64_t cells = check::mul(kOp, "w", P, p.out_cols);
  l.grad_a = layout.take("w", p.scatter && p.swiglu ? cells : 0, 4);
  l.grad_h = layout.take("w", p.swiglu ? check::mul(kOp, "w", P, p.N) : 0, dtype_size(b.forward.x.dtype));
  l.act = layout.take("w", p.swiglu && cw ? cells : 0, 4);
  l.u = layout.take("w", check::mul(kOp, "w", P, p.K), 4);
  l.total = layout.size();
  return l;
}

unsigned blocks_for(int64_t n, int threads) { return static_cast<unsigned>(ceil_div(n, threads)); }

// u = g W[e] over the rows of `params` (its x: g; out: u).
void launch_transposed(const MatmulOgsProblem& p, const MatmulOgsParams& params, bool g_bf16, bool w_bf16,
                       cudaStream_t stream, const ExecContext& ctx) {
  const bool aligned = reinterpret_cast<uintptr_t>(params.x) % 16 == 0 && reinterpret_cast<uintptr_t>(params.w) % 16 == 0;
  if (choose_matmul_ogs_transposed_kernel(p, g_bf16, aligned, device_info(p.device.index)) ==
      MatmulOgsTransposedKernel::kWgmma128) {
    plan_tiles<wg::kBM>(params, stream, ctx);
    const dim3 grid(static_cast<unsigned>(max_row_tiles(params, wg::kBM) * ceil_div(p.K, wg::kBN)));
    allow_dynamic_smem<matmul_ogs_wgmma_kernel<WgmmaForm::kTransposed>>(wg::kSmemBytes, p.device.index);
    matmul_ogs_wgmma_kernel<WgmmaForm::kTransposed><<<grid, wg::kThreads, wg::kSmemBytes, stream>>>(params);
  } else {
    plan_tiles<simt::kBM>(params, stream, ctx);
    const dim3 grid(static_cast<unsigned>(max_row_tiles(params, simt::kBM)), static_cast<unsigned>(ceil_div(p.K, simt::kBN)));
    auto launch = [&](auto g_type) {
      using G = decltype(g_type);
      if (p.mxfp4) matmul_ogs_simt_kernel<G, WeightKind::kMxfp4, true><<<grid, simt::kThreads, 0, stream>>>(params);
      else if (w_bf16) matmul_ogs_simt_kernel<G, WeightKind::kBFloat16, true><<<grid, simt::kThreads, 0, stream>>>(params);
      else matmul_ogs_simt_kernel<G, WeightKind::kFloat32, true><<<grid, simt::kThreads, 0, stream>>>(params);
    };
    if (g_bf16) launch(bf16{});
    else launch(float{});
  }
  MOEKIT_CHECK_LAUNCH(ctx, stream, "matmul_ogs transposed kernel");
}

}  // namespace

size_t matmul_ogs_backward_workspace_size(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& b) {
  DeviceGuard guard(p.device.index);  // CUB sizes its scratch for the current device
  return backward_layout(p, b).total;
}

void can_implement_matmul_ogs_backward(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& b) {
  check::workspace(kOp, b.workspace, matmul_ogs_backward_workspace_size(p, b));
  check::on_device(kOp, "workspace", b.workspace, p.device, "x");
  require_aligned(kOp, "workspace", b.workspace, 16);
  if (p.mxfp4) require_aligned(kOp, "w", b.forward.w.values, 16);
  check_matmul_ogs_grids(kOp, p, b.forward);
  constexpr int64_t kMaxGridY = 65535;
  const char* why = "the CUDA grid's limits";
  check::at_most(kOp, "x", "gradient column tiles of 64", ceil_div(p.K, 64), kMaxGridY, why);
  check::at_most(kOp, "w", "column chunks of 256", ceil_div(std::max(p.N, p.K), kElementwiseThreads), kMaxGridY, why);
}

void matmul_ogs_backward(const MatmulOgsProblem& p, const MatmulOgsBackwardArgs& b, const ExecContext& ctx) {
  const MatmulOgsArgs& a = b.forward;
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of(kOp, p.device, ctx);
  const BackwardLayout l = backward_layout(p, b);
  char* ws = static_cast<char*>(b.workspace.data);
  auto at = [ws](size_t offset) { return ws + offset; };
  const int64_t P = p.P, M = p.M, K = p.K, N = p.N, cols = p.out_cols;
  const int k = static_cast<int>(p.k);
  const bool slots = p.scatter && !p.swiglu;
  const bool want_x = b.grad_x.present(), want_cw = b.grad_combine_weight.present(), want_bias = b.grad_bias.present();
  const bool x_bf16 = a.x.dtype == DType::kBFloat16, grad_out_bf16 = b.grad_out.dtype == DType::kBFloat16;
  const int32_t* gather = p.gather ? a.gather_idx.ptr<int32_t>() : nullptr;
  const float* cw = a.combine_weight.present() ? a.combine_weight.ptr<float>() : nullptr;
  const int32_t* offsets = a.expert_offsets.present() ? a.expert_offsets.ptr<int32_t>() : nullptr;
  auto check_launch = [&](const char* kernel) { MOEKIT_CHECK_LAUNCH(ctx, stream, kernel); };
  constexpr int kThreads = kElementwiseThreads;

  if (P == 0) {  // nothing reads x and every sum is empty
    if (want_x && M * K > 0) {
      MOEKIT_CUDA_CHECK(cudaMemsetAsync(b.grad_x.data, 0, static_cast<size_t>(M * K * dtype_size(b.grad_x.dtype)), stream));
    }
    if (want_bias && p.E * N > 0) {
      MOEKIT_CUDA_CHECK(cudaMemsetAsync(b.grad_bias.data, 0, static_cast<size_t>(p.E * N * dtype_size(b.grad_bias.dtype)), stream));
    }
    return;
  }
  auto* keys = reinterpret_cast<uint32_t*>(at(l.keys));
  auto* values = reinterpret_cast<int32_t*>(at(l.values));

  // The slots sorted by the problem row they read.
  auto* slot_row = reinterpret_cast<uint32_t*>(at(l.slot_row));
  auto* slot_of = reinterpret_cast<int32_t*>(at(l.slot_of));
  if (p.scatter) {
    sort_keys_kernel<<<blocks_for(P, kThreads), kThreads, 0, stream>>>(a.scatter_idx.ptr<int32_t>(), P, P, keys, values);
    check_launch("sort_keys_kernel");
    sort_pairs(at(l.sort_temp), l.sort_bytes, keys, slot_row, values, slot_of, P, P, stream);
  }

  // The transposed product's rows: their g row, weight, expert ranges, and x row (sorted).
  MatmulOgsParams t = matmul_ogs_params(p, a);
  t.tile_items = reinterpret_cast<int2*>(at(l.tiles));
  t.tile_count = reinterpret_cast<int*>(at(l.tile_count));
  t.swiglu = false;
  t.bias = nullptr;
  const float* scale = nullptr;
  if (slots) {
    SlotRows s{slot_of, slot_row, P, M, k, gather, cw, reinterpret_cast<int32_t*>(at(l.a_row)),
               reinterpret_cast<float*>(at(l.scale)), keys, values};
    slot_rows_kernel<<<blocks_for(P, kThreads), kThreads, 0, stream>>>(s);
    check_launch("slot_rows_kernel");
    scale = s.scale;
    t.gather_idx = s.a_row;
    t.M = p.T;
    if (offsets) {  // the experts' slot ranges
      int32_t* row_offsets = reinterpret_cast<int32_t*>(at(l.row_offsets));
      run_starts_kernel<<<blocks_for(p.E + 1, kThreads), kThreads, 0, stream>>>(slot_row, P, offsets, P, p.E + 1,
                                                                                 row_offsets);
      check_launch("run_starts_kernel");
      t.expert_offsets = row_offsets;
    }
  } else {
    sort_keys_kernel<<<blocks_for(P, kThreads), kThreads, 0, stream>>>(gather, P, M, keys, values);
    check_launch("sort_keys_kernel");
    t.gather_idx = nullptr;
    t.M = P;
  }
  auto* x_sorted = reinterpret_cast<uint32_t*>(at(l.x_sorted));
  auto* order = reinterpret_cast<int32_t*>(at(l.order));
  auto* x_start = reinterpret_cast<int32_t*>(at(l.x_start));
  if (want_x) {
    sort_pairs(at(l.sort_temp), l.sort_bytes, keys, x_sorted, values, order, P, M, stream);
    run_starts_kernel<<<blocks_for(M + 1, kThreads), kThreads, 0, stream>>>(x_sorted, P, nullptr, M, M + 1, x_start);
    check_launch("run_starts_kernel");
  }

  // g: grad_out's rows, or the gradient at h from the recompute.
  const void* g = b.grad_out.data;
  bool g_bf16 = grad_out_bf16;
  float* act = nullptr;
  if (p.swiglu) {
    MatmulOgsParams h = matmul_ogs_params(p, a);
    h.tile_items = t.tile_items;
    h.tile_count = t.tile_count;
    h.grad_a = b.grad_out.data;
    h.grad_a_bf16 = grad_out_bf16;
    if (p.scatter) {  // each row's share of grad_out, from its slots in order
      int32_t* row_start = reinterpret_cast<int32_t*>(at(l.row_start));
      float* g_a = reinterpret_cast<float*>(at(l.grad_a));
      run_starts_kernel<<<blocks_for(P + 1, kThreads), kThreads, 0, stream>>>(slot_row, P, nullptr, P, P + 1, row_start);
      check_launch("run_starts_kernel");
      if (cols > 0) {
        row_share_kernel<<<dim3(static_cast<unsigned>(P), blocks_for(cols, kThreads)), kThreads, 0, stream>>>(
            b.grad_out.data, grad_out_bf16, cols, row_start, slot_of, cw, k, g_a);
        check_launch("row_share_kernel");
      }
      h.grad_a = g_a;
      h.grad_a_bf16 = false;
    }
    if (want_cw) act = reinterpret_cast<float*>(at(l.act));
    h.act = act;
    h.out = at(l.grad_h);
    h.out_bf16 = x_bf16;
    if (N > 0) launch_matmul_ogs_rows(p, a, h, stream, ctx);
    g = h.out;
    g_bf16 = x_bf16;
  }
  t.x = g;
  float* u = reinterpret_cast<float*>(at(l.u));
  t.out = u;
  if (K > 0 && (want_x || (slots && want_cw))) {
    launch_transposed(p, t, g_bf16, a.w.values.dtype == DType::kBFloat16, stream, ctx);
  }

  if (want_cw) {
    float* grad_cw = b.grad_combine_weight.ptr<float>();
    if (slots) {
      const SlotCombineGrad c{u, slot_of, slot_row, gather, offsets, static_cast<int>(p.E), k, P, M, K, N,
                              a.x.data, x_bf16, b.grad_out.data, grad_out_bf16,
                              a.bias.present() ? a.bias.data : nullptr, a.bias.present() && a.bias.dtype == DType::kBFloat16,
                              grad_cw};
      slot_combine_grad_kernel<<<blocks_for(P, kDotWarps), 32 * kDotWarps, 0, stream>>>(c);
      check_launch("slot_combine_grad_kernel");
    } else {
      act_combine_grad_kernel<<<blocks_for(P, kDotWarps), 32 * kDotWarps, 0, stream>>>(
          act, b.grad_out.data, grad_out_bf16, a.scatter_idx.ptr<int32_t>(), P, cols, k, grad_cw);
      check_launch("act_combine_grad_kernel");
    }
  }
  if (want_bias && N > 0) {
    bias_grad_kernel<<<dim3(static_cast<unsigned>(p.E), blocks_for(N, kThreads)), kThreads, 0, stream>>>(
        g, g_bf16, N, t.gather_idx, scale, t.expert_offsets, P, b.grad_bias.data,
        b.grad_bias.dtype == DType::kBFloat16);
    check_launch("bias_grad_kernel");
  }
  if (want_x && M > 0 && K > 0) {
    const int vec = K % 4 == 0 ? 4 : 1;  // u's rows start 16 bytes apart (the workspace region is 256-aligned)
    const dim3 grid(static_cast<unsigned>(M), blocks_for(ceil_div(K, vec), kThreads));
    if (vec == 4) x_grad_kernel<4><<<grid, kThreads, 0, stream>>>(u, K, order, x_start, scale, b.grad_x.data, x_bf16);
    else x_grad_kernel<1><<<grid, kThreads, 0, stream>>>(u, K, order, x_start, scale, b.grad_x.data, x_bf16);
    check_launch("x_grad_kernel");
  }
}

}  // namespace moekit::cuda
