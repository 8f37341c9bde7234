#include "../../core/check.h"

#include "../kernels/attention/attention_decode_one.cuh"
#include "../runtime/cluster_size.h"
#include "../runtime/device_guard.h"
#include "../runtime/device_info.h"
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_kernel.h"
#include "launch_util.h"

namespace moekit::cuda {
namespace {

size_t smem_bytes(const AttentionDecodeProblem& p, int cluster_splits) {
  return static_cast<size_t>(attention_decode_smem_floats(p.Hq / p.Hkv, p.D, p.split.chunk, cluster_splits)) *
         sizeof(float);
}

}  // namespace

void can_implement_attention_decode(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a) {
  const char* op = "attention_decode";
  check::at_most(op, "sinks", "q heads per kv head", p.Hq / p.Hkv, kAttnMaxGroup, "the CUDA kernel's group size");
  check::at_most(op, "k_cache", "values per kv head group (q heads per kv head * D)", p.Hq / p.Hkv * p.D,
                 kAttnMaxGroupValues, "the CUDA kernel's outputs per block");
  check::at_most(op, "sinks", "q heads", p.Hq, 65535, "CUDA's grid limit for the merge's second dimension");
  if (p.workspace > 0) check::workspace(op, a.workspace, p.workspace);
}

namespace {

// `kernel` (an attention kernel over elements T), then the merge kernel where the splits do not
// merge in their cluster.
template <class T, auto kernel>
void launch_attention_with(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a, AttentionDecodeParams params,
                           const ExecContext& ctx, cudaStream_t stream, const char* name) {
  const int major = device_info(p.device.index).major;
  const bool chained = chains_on(major);
  const int splits = static_cast<int>(p.split.splits);
  params.cluster = attention_decode_merges_in_cluster(p.Hq / p.Hkv, p.D, p.split.chunk, splits) &&
                   splits <= max_cluster_blocks<kernel>(kAttnThreads, kAttnMaxSmemBytes, p.device.index, major);
  params.partial = splits > 1 && !params.cluster ? a.workspace.ptr<float>() : nullptr;
  const dim3 grid(static_cast<unsigned>(p.Hkv), static_cast<unsigned>(splits));
  launch_kernel_in_clusters(kernel, grid, dim3(1, params.cluster ? splits : 1, 1), kAttnThreads,
                            smem_bytes(p, params.cluster ? splits : 0), stream, chained, params);
  MOEKIT_CHECK_LAUNCH(ctx, stream, name);
  if (params.partial) {
    const dim3 merge_grid(static_cast<unsigned>(p.T), static_cast<unsigned>(p.Hq));
    const unsigned merge_threads = static_cast<unsigned>(p.D < 256 ? (p.D + 31) / 32 * 32 : 256);
    const size_t merge_smem = static_cast<size_t>(splits * (p.D + 2)) * sizeof(float);
    launch_kernel(attention_decode_merge_kernel<T>, merge_grid, merge_threads, merge_smem, stream, chained, params);
    MOEKIT_CHECK_LAUNCH(ctx, stream, "attention_decode_merge_kernel");
  }
}

// The attention kernel for element type T (16-byte row loads with kVec): attention_decode_one_kernel
// for one token where it fits, else attention_decode_kernel.
template <class T, bool kVec>
void launch_attention(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a, AttentionDecodeParams params,
                      const ExecContext& ctx, cudaStream_t stream) {
  if (attention_decode_one_fits(p.T, p.Hq / p.Hkv, p.D, p.split.chunk)) {
    launch_attention_with<T, &attention_decode_one_kernel<T, kVec>>(p, a, params, ctx, stream,
                                                                    "attention_decode_one_kernel");
  } else {
    launch_attention_with<T, &attention_decode_kernel<T, kVec>>(p, a, params, ctx, stream, "attention_decode_kernel");
  }
}

}  // namespace

void attention_decode(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a, const ExecContext& ctx) {
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of("attention_decode", p.device, ctx);
  const AttentionDecodeParams params{a.qkv.data, a.k_cache.data, a.v_cache.data, a.sinks.ptr<float>(),
                                     a.position.ptr<int32_t>(), a.inv_freq.ptr<float>(), a.out.data, nullptr, false,
                                     static_cast<int>(p.T), static_cast<int>(p.Hq), static_cast<int>(p.Hkv),
                                     static_cast<int>(p.D), static_cast<int>(p.L),
                                     // a window past the cache is no window at all
                                     static_cast<int>(p.window < p.L ? p.window : p.L),
                                     static_cast<int>(p.split.chunk), static_cast<int>(p.split.splits),
                                     p.rope_scale, p.sm_scale};
  // 16-byte loads of key and value rows when rows hold whole 16-byte vectors and start on them.
  const bool vec = (p.D * dtype_size(a.qkv.dtype)) % 16 == 0 && aligned(a.qkv, 16) && aligned(a.k_cache, 16) &&
                   aligned(a.v_cache, 16);
  if (a.qkv.dtype == DType::kBFloat16) {
    if (vec) launch_attention<bf16, true>(p, a, params, ctx, stream);
    else launch_attention<bf16, false>(p, a, params, ctx, stream);
  } else {
    if (vec) launch_attention<float, true>(p, a, params, ctx, stream);
    else launch_attention<float, false>(p, a, params, ctx, stream);
  }
}

}  // namespace moekit::cuda
