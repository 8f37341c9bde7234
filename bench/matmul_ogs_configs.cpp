// Times matmul_ogs on one gpt-oss layer's mlp1 or mlp2 with each config forced
// (ExecContext::matmul_ogs_config), through the library's public C++ API (and its host bf16
// conversion, core/bf16.h): no Python, and it builds in seconds against the library already built
// by `make install`:
//
//   g++ -O2 -std=c++17 -I include -I src -I /usr/local/cuda/include bench/matmul_ogs_configs.cpp \
//       build/python/libmoekit.a -L /usr/local/cuda/lib64 -lcudart -lpthread -o build/mb/matmul_ogs_configs
//   build/mb/matmul_ogs_configs [--experts 32] [--tokens 512] [--mlp 1|2] [--configs wgmma128,stream32]
//
// The layer: mlp_layer.h (random routing, the weights in both layouts, so the swap-AB configs run
// beside the others). Each config: the median time per call of a CUDA graph of 20 calls, the
// routed experts' weight bytes per second, the useful FLOP/s (2 P N K), and the largest
// difference from the first config's output relative to that output's largest magnitude (kernels
// sum in different orders, so a few bf16 units).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "graph_timing.h"
#include "moekit/error.h"
#include "mlp_layer.h"
#include "moekit/ops.h"

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at <= s.size()) {
    const size_t comma = s.find(',', at);
    out.push_back(s.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
    if (comma == std::string::npos) break;
    at = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  int E = 32, T = 512, mlp = 1;
  std::string configs = "simt,stream8,stream16,stream32,tiled64,wgmma128,swapab16,swapab32,swapab80";
  if (!parse_layer_flags(argc, argv, E, T, mlp, {{"--configs", &configs}})) return 2;
  const MlpLayer l = make_mlp_layer(E, T, mlp);

  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s: mlp%d E=%d T=%d (P=%lld, N=%lld, K=%lld), %d experts routed, %d weight copies\n", prop.name, mlp, E,
              T, static_cast<long long>(l.P), static_cast<long long>(l.N), static_cast<long long>(l.K), l.used, l.copies);
  std::vector<float> first;
  for (const std::string& config : split(configs)) {
    moekit::ExecContext ctx = moekit::ExecContext::on_stream(stream);
    ctx.matmul_ogs_config = config;
    auto call = [&](int c) { moekit::matmul_ogs(l.args(c % l.copies), ctx); };
    try {
      call(0);  // refusals surface here, before any capture
    } catch (const moekit::Error& e) {
      std::printf("%-14s refused: %s\n", config.c_str(), e.what());
      continue;
    }
    CHECK(cudaStreamSynchronize(stream));
    std::vector<uint16_t> out(l.out_rows * l.out_cols);
    CHECK(cudaMemcpy(out.data(), l.out, out.size() * 2, cudaMemcpyDeviceToHost));
    double diff = 0, scale = 0;
    if (first.empty()) {
      for (uint16_t b : out) first.push_back(moekit::bf16_to_float(b));
    }
    for (size_t i = 0; i < out.size(); ++i) {
      diff = std::max(diff, static_cast<double>(std::fabs(moekit::bf16_to_float(out[i]) - first[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(first[i])));
    }
    const float us = graph_us_per_call(stream, 20, call);
    std::printf("%-14s %9.1f us  %6.2f TB/s of weights  %6.1f TFLOP/s  max diff %.2e of max |out|\n", config.c_str(),
                us, l.weight_bytes() / us / 1e6, l.flops() / us / 1e6, scale > 0 ? diff / scale : diff);
  }
  return 0;
}
