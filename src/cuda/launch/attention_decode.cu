#include "../../core/check.h"

#include "../kernels/attention/attention_decode.cuh"
#include "../runtime/device_guard.h"
#include "../runtime/device_info.h"
#include "../runtime/stream.h"
#include "backend.h"
#include "launch_kernel.h"
#include "launch_util.h"

namespace moekit::cuda {
namespace {

size_t smem_bytes(const AttentionDecodeProblem& p) {
  const int64_t group = p.Hq / p.Hkv, chunk = p.split.chunk;
  return static_cast<size_t>(chunk * (2 * p.D + 1) + group * (2 * p.D + chunk + 3) + p.D) * sizeof(float);
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

void attention_decode(const AttentionDecodeProblem& p, const AttentionDecodeArgs& a, const ExecContext& ctx) {
  DeviceGuard guard(p.device.index);
  const cudaStream_t stream = stream_of("attention_decode", p.device, ctx);
  AttentionDecodeParams params{a.qkv.data, a.k_cache.data, a.v_cache.data, a.sinks.ptr<float>(),
                               a.position.ptr<int32_t>(), a.inv_freq.ptr<float>(), a.out.data,
                               p.split.splits > 1 ? a.workspace.ptr<float>() : nullptr,
                               static_cast<int>(p.T), static_cast<int>(p.Hq), static_cast<int>(p.Hkv),
                               static_cast<int>(p.D), static_cast<int>(p.L),
                               // a window past the cache is no window at all
                               static_cast<int>(p.window < p.L ? p.window : p.L),
                               static_cast<int>(p.split.chunk), static_cast<int>(p.split.splits),
                               p.rope_scale, p.sm_scale};
  const dim3 grid(static_cast<unsigned>(p.Hkv), static_cast<unsigned>(p.split.splits));
  const dim3 merge_grid(static_cast<unsigned>(p.T), static_cast<unsigned>(p.Hq));
  const unsigned merge_threads = static_cast<unsigned>(p.D < 256 ? (p.D + 31) / 32 * 32 : 256);
  // 16-byte loads of key and value rows when rows hold whole 16-byte vectors and start on them.
  const int64_t elem = dtype_size(a.qkv.dtype);
  const bool vec = (p.D * elem) % 16 == 0 && aligned(a.qkv, 16) &&
                   aligned(a.k_cache, 16) && aligned(a.v_cache, 16);
  const bool chained = chains_on(device_info(p.device.index).major);
  auto launch = [&](auto element) {
    using T = decltype(element);
    // <= 45 KB of shared memory: no opt-in needed
    launch_kernel(vec ? attention_decode_kernel<T, true> : attention_decode_kernel<T, false>, grid, kAttnThreads,
                  smem_bytes(p), stream, chained, params);
    MOEKIT_CHECK_LAUNCH(ctx, stream, "attention_decode_kernel");
    if (p.split.splits > 1) {
      const size_t merge_smem = static_cast<size_t>(p.split.splits * (p.D + 2)) * sizeof(float);
      launch_kernel(attention_decode_merge_kernel<T>, merge_grid, merge_threads, merge_smem, stream, chained, params);
      MOEKIT_CHECK_LAUNCH(ctx, stream, "attention_decode_merge_kernel");
    }
  };
  if (a.qkv.dtype == DType::kBFloat16) launch(bf16());
  else launch(float());
}

}  // namespace moekit::cuda
