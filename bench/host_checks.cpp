// The host's cost of moe_mlp's C++ at gpt-oss's shapes (H = I = 2880, k = 4, MXFP4 experts with
// repack_mxfp4's layout too, T = 1): check_moe_mlp_inputs, then the four steps' acceptance
// (accept_moe_mlp_steps), what runs before the first launch of every call. Without a GPU the
// tensors are CPU views of one buffer (the checks read no data). With one (a build with the CUDA
// backend) they are CUDA tensors (zeros), and the whole C++ call is timed too, run_moe_mlp on a
// stream: the checks, the decode path's three launches (the median of single calls, the stream
// drained every 64 so a launch never waits for room): what the torch binding adds to it is
// Python, the dispatcher and the allocations (bench/host_calls.py).
//   g++ -O2 -std=c++17 -I include -I src bench/host_checks.cpp build/python/libmoekit.a -o build/host_checks
//   (a build with the CUDA backend also needs -DMOEKIT_WITH_CUDA=1 -I/usr/local/cuda/include first and
//   -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -lpthread last)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

#include "core/accept.h"
#include "core/mxfp4_slabs.h"
#include "moekit/ops.h"
#if defined(MOEKIT_WITH_CUDA)
#include "graph_timing.h"
#endif

using namespace moekit;

namespace {

template <class Fn>
double us_per_call(Fn&& fn) {
  constexpr int kCalls = 200000;
  double best = 1e9;
  for (int run = 0; run < 5; ++run) {  // the fastest of five runs: the machine's noise only adds
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls; ++i) fn();
    best = std::min(best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / kCalls);
  }
  return best;
}

constexpr int64_t H = 2880, I = 2880, T = 1;

// The layer's arguments on device d, each tensor's data from take(bytes).
MoeMlpArgs layer_args(const std::function<void*(size_t)>& take, int64_t E, Device d) {
  const auto t = [&](DType dtype, std::initializer_list<int64_t> shape) {
    TensorView v(nullptr, dtype, shape, d);
    v.data = take(static_cast<size_t>(v.numel() * dtype_size(dtype)));
    return v;
  };
  const auto experts = [&](int64_t N, int64_t K) {
    const int64_t slabs = mxfp4_slabs::slabs(N), steps = mxfp4_slabs::steps(K);
    return ExpertWeights{t(DType::kUInt8, {E, N, K / 32, 16}), t(DType::kUInt8, {E, N, K / 32}),
                         t(DType::kUInt8, {E, slabs, steps, mxfp4_slabs::kCodeBytes}),
                         t(DType::kUInt8, {E, slabs, steps, mxfp4_slabs::kScaleBytes})};
  };
  MoeMlpArgs a;
  a.x = t(DType::kBFloat16, {T, H});
  a.gate_weight = t(DType::kBFloat16, {E, H});
  a.gate_bias = t(DType::kBFloat16, {E});
  a.mlp1 = experts(2 * I, H);
  a.mlp1_bias = t(DType::kBFloat16, {E, 2 * I});
  a.mlp2 = experts(H, I);
  a.mlp2_bias = t(DType::kBFloat16, {E, H});
  const MoeMlpProblem p = check_moe_mlp_inputs(a);
  a.y = t(DType::kBFloat16, {T, H});
  a.workspace = t(DType::kUInt8, {static_cast<int64_t>(p.workspace.total)});
  return a;
}

bool has_gpu() {
#if defined(MOEKIT_WITH_CUDA)
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return false;
#endif
}

}  // namespace

int main() {
  const bool cuda = has_gpu();
  std::printf("%4s %30s %22s%s\n", "E", "check_moe_mlp_inputs us", "accept_moe_mlp_steps us",
              cuda ? "   run_moe_mlp us (host, one token)" : "");
  std::vector<uint8_t> buffer(64 << 20);  // without a GPU, every view's data: nothing is read
  for (const int64_t E : {32, 128}) {
    std::vector<void*> taken;  // with one, zeros on it: the kernels run on them (every logit ties)
    const auto take = [&](size_t bytes) -> void* {
#if defined(MOEKIT_WITH_CUDA)
      if (cuda) {
        uint8_t* p = device_buffer<uint8_t>(std::max<size_t>(bytes, 1));
        CHECK(cudaMemset(p, 0, std::max<size_t>(bytes, 1)));
        taken.push_back(p);
        return p;
      }
#endif
      (void)bytes;
      return buffer.data();
    };
    const MoeMlpArgs a = layer_args(take, E, cuda ? Device{DeviceType::kCUDA, 0} : Device{});
    const MoeMlpProblem p = check_moe_mlp_inputs(a);
    check_moe_mlp_outputs(p, a);
    volatile size_t sink = 0;
    const double inputs = us_per_call([&] { sink = sink + check_moe_mlp_inputs(a).workspace.total; });
    const double steps = us_per_call([&] { sink = sink + accept_moe_mlp_steps(p, a).mlp2_p.N; });
    std::printf("%4lld %30.3f %22.3f", static_cast<long long>(E), inputs, steps);
#if defined(MOEKIT_WITH_CUDA)
    if (cuda) {
      cudaStream_t stream;
      CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      const ExecContext ctx = ExecContext::on_stream(stream);
      std::printf(" %34.3f", host_us(stream, [&] { run_moe_mlp(p, a, ctx); }));
      CHECK(cudaStreamDestroy(stream));
      for (void* q : taken) CHECK(cudaFree(q));
    }
#endif
    std::printf("\n");
  }
  return 0;
}
