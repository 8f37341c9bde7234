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
#include <cstdlib>
#include <vector>

#include "core/accept.h"
#include "core/mxfp4_slabs.h"
#include "moekit/ops.h"
#if defined(MOEKIT_WITH_CUDA)
#include <cuda_runtime_api.h>
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

// Where each tensor of the layer lies: one buffer (views only) or one allocation each.
struct Memory {
  virtual ~Memory() = default;
  virtual void* take(size_t bytes) = 0;
};

struct OneBuffer : Memory {
  std::vector<uint8_t> bytes = std::vector<uint8_t>(64 << 20);
  void* take(size_t) override { return bytes.data(); }
};

MoeMlpArgs layer_args(Memory& m, int64_t E, Device d) {
  const auto t = [&](DType dtype, std::initializer_list<int64_t> shape) {
    TensorView v(nullptr, dtype, shape, d);
    v.data = m.take(static_cast<size_t>(v.numel() * dtype_size(dtype)));
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

#if defined(MOEKIT_WITH_CUDA)
#define CHECK(expr)                                                                      \
  do {                                                                                   \
    if (const cudaError_t e = (expr); e != cudaSuccess) {                               \
      std::printf("%s: %s\n", #expr, cudaGetErrorString(e));                            \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

struct DeviceMemory : Memory {
  std::vector<void*> taken;
  ~DeviceMemory() override {
    for (void* p : taken) cudaFree(p);
  }
  void* take(size_t bytes) override {  // zeros: the kernels run on them (every logit ties)
    void* p = nullptr;
    CHECK(cudaMalloc(&p, std::max<size_t>(bytes, 1)));
    CHECK(cudaMemset(p, 0, std::max<size_t>(bytes, 1)));
    taken.push_back(p);
    return p;
  }
};

// The median host time (us) of one fn(), the stream drained every 64 calls.
template <class Fn>
double host_us(cudaStream_t stream, Fn&& fn) {
  std::vector<double> times;
  for (int i = 0; i < 20200; ++i) {
    if (i % 64 == 0) CHECK(cudaStreamSynchronize(stream));
    const auto start = std::chrono::steady_clock::now();
    fn();
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    if (i >= 200) times.push_back(us);
  }
  CHECK(cudaStreamSynchronize(stream));
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}

bool has_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}
#endif

}  // namespace

int main() {
  bool cuda = false;
#if defined(MOEKIT_WITH_CUDA)
  cuda = has_gpu();
#endif
  std::printf("%4s %30s %22s%s\n", "E", "check_moe_mlp_inputs us", "accept_moe_mlp_steps us",
              cuda ? "   run_moe_mlp us (host, one token)" : "");
  for (const int64_t E : {32, 128}) {
    volatile size_t sink = 0;
    MoeMlpArgs a;
    MoeMlpProblem p;
    const auto time_checks = [&] {
      const double inputs = us_per_call([&] { sink = sink + check_moe_mlp_inputs(a).workspace.total; });
      const double steps = us_per_call([&] { sink = sink + accept_moe_mlp_steps(p, a).mlp2_p.N; });
      std::printf("%4lld %30.3f %22.3f", static_cast<long long>(E), inputs, steps);
    };
    if (!cuda) {
      OneBuffer m;
      a = layer_args(m, E, Device{});
      p = check_moe_mlp_inputs(a);
      check_moe_mlp_outputs(p, a);
      time_checks();
    }
#if defined(MOEKIT_WITH_CUDA)
    if (cuda) {
      DeviceMemory m;
      a = layer_args(m, E, Device{DeviceType::kCUDA, 0});
      p = check_moe_mlp_inputs(a);
      check_moe_mlp_outputs(p, a);
      time_checks();
      cudaStream_t stream;
      CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
      const ExecContext ctx = ExecContext::on_stream(stream);
      std::printf(" %34.3f", host_us(stream, [&] { run_moe_mlp(p, a, ctx); }));
      CHECK(cudaStreamDestroy(stream));
    }
#endif
    std::printf("\n");
  }
  return 0;
}
