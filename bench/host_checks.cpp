// The host's cost of moe_mlp's C++ acceptance at gpt-oss's shapes (H = I = 2880, k = 4, MXFP4
// experts, T = 1): check_moe_mlp_inputs, then the four steps' (accept_moe_mlp_steps), what runs
// before the first launch of every call. The tensors are CPU views of one buffer (the checks read
// no data; on a CUDA device the steps also choose their kernels). No GPU needed.
//   g++ -O2 -std=c++17 -I include -I src bench/host_checks.cpp build/python/libmoekit.a -o build/host_checks
//   (a build with the CUDA backend also needs -L/usr/local/cuda/lib64 -lcudart_static -ldl -lrt -lpthread)
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "core/accept.h"
#include "moekit/ops.h"

using namespace moekit;

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

int main() {
  const int64_t H = 2880, I = 2880, T = 1;
  std::vector<uint8_t> buffer(64 << 20);  // every view's data: nothing is read
  void* b = buffer.data();
  std::printf("%4s %30s %22s\n", "E", "check_moe_mlp_inputs us", "accept_moe_mlp_steps us");
  for (const int64_t E : {32, 128}) {
    MoeMlpArgs a;
    a.x = TensorView(b, DType::kBFloat16, {T, H});
    a.gate_weight = TensorView(b, DType::kBFloat16, {E, H});
    a.gate_bias = TensorView(b, DType::kBFloat16, {E});
    a.mlp1 = {TensorView(b, DType::kUInt8, {E, 2 * I, H / 32, 16}), TensorView(b, DType::kUInt8, {E, 2 * I, H / 32})};
    a.mlp1_bias = TensorView(b, DType::kBFloat16, {E, 2 * I});
    a.mlp2 = {TensorView(b, DType::kUInt8, {E, H, I / 32, 16}), TensorView(b, DType::kUInt8, {E, H, I / 32})};
    a.mlp2_bias = TensorView(b, DType::kBFloat16, {E, H});
    const MoeMlpProblem p = check_moe_mlp_inputs(a);
    a.y = TensorView(b, DType::kBFloat16, {T, H});
    a.workspace = TensorView(b, DType::kUInt8, {static_cast<int64_t>(p.workspace.total)});
    check_moe_mlp_outputs(p, a);
    volatile size_t sink = 0;
    const double inputs = us_per_call([&] { sink = sink + check_moe_mlp_inputs(a).workspace.total; });
    const double steps = us_per_call([&] { sink = sink + accept_moe_mlp_steps(p, a).mlp2_p.N; });
    std::printf("%4lld %30.3f %22.3f\n", static_cast<long long>(E), inputs, steps);
  }
  return 0;
}
