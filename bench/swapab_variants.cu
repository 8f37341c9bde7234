// Times shapes of the swap-AB kernel (matmul_ogs_swapab.cuh: token tile rows R, chunk steps KS,
// stages S, consumer warpgroups WG) beyond the library's three configs, on one gpt-oss layer's mlp1
// or mlp2 (mlp_layer.h), each beside the library's config of its R in the same run. Each shape
// runs the library's own launch (matmul_ogs_swapab_launch.h: tile list, staged x or x's TMA
// tiles, the loop) on the arguments matmul_ogs builds, and its output rows (mlp2: the float rows
// before the combine) are compared bit for bit with the library config's: the shapes change no
// sum's order. For mlp2 each library config also runs its x staged (through an identity gather)
// beside x read in place, the combined outputs compared bit for bit: what the TMA tiles save.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I "$CUTE" -I bench \
//       bench/swapab_variants.cu build/python/libmoekit.a -o build/mb/swapab_variants
//   build/mb/swapab_variants [--experts 32] [--tokens 512] [--mlp 1|2]
#include <cuda_runtime.h>

#include <cstdio>
#include <numeric>
#include <vector>

#include "core/problem.h"
#include "cuda/launch/matmul_ogs_launch.h"
#include "cuda/launch/matmul_ogs_swapab_launch.h"
#include "graph_timing.h"
#include "mlp_layer.h"
#include "moekit/error.h"

namespace {

using namespace moekit::cuda;

// The rows a call leaves before any combine: mlp1's output, mlp2's float rows in the workspace.
std::vector<uint8_t> rows_of(const MlpLayer& l, const MatmulOgsParams& params) {
  std::vector<uint8_t> host(l.mlp == 1 ? l.P * l.out_cols * 2 : l.P * l.N * 4);
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaMemcpy(host.data(), params.out, host.size(), cudaMemcpyDeviceToHost));
  return host;
}

struct Run {
  const MlpLayer& l;
  cudaStream_t stream;

  template <class Sh>
  void shape(const char* library_config) {
    const moekit::ExecContext ctx = moekit::ExecContext::on_stream(stream);
    moekit::ExecContext forced = ctx;
    forced.matmul_ogs_config = library_config;
    moekit::matmul_ogs(l.args(0), forced);
    const moekit::MatmulOgsProblem p = moekit::check_matmul_ogs_inputs(l.args(0));
    const std::vector<uint8_t> want = rows_of(l, matmul_ogs_forward_params(p, l.args(0)));
    const float library_us = graph_us_per_call(stream, 20, [&](int c) { moekit::matmul_ogs(l.args(c % l.copies), forced); });
    auto call = [&](int c) {
      const moekit::MatmulOgsArgs a = l.args(c % l.copies);
      launch_swapab<Sh>(p, matmul_ogs_forward_params(p, a), stream, ctx);
    };
    call(0);
    const bool same = rows_of(l, matmul_ogs_forward_params(p, l.args(0))) == want;
    const float us = graph_us_per_call(stream, 20, call);
    std::printf("R=%3d KS=%d S=%d WG=%d (%3d KB): %8.1f us (rows only) %6.2f TB/s %6.1f TFLOP/s; %s %8.1f us "
                "(with its combine); rows %s\n",
                Sh::kRows, Sh::kChunkSteps, Sh::kStages, Sh::kSlabs, Sh::kSmemBytes / 1024, us,
                l.weight_bytes() / us / 1e6, l.flops() / us / 1e6, library_config, library_us,
                same ? "bitwise equal" : "DIFFER");
  }
};

// mlp2's call with x read in place (TMA tiles) and the same rows through an identity gather
// (staged by stage_x_kernel, in a workspace sized for it), each library config.
void staged_beside_in_place(const MlpLayer& l, cudaStream_t stream) {
  std::vector<int32_t> iota(l.P);
  std::iota(iota.begin(), iota.end(), 0);
  int32_t* identity = upload(iota);
  const moekit::Device dev{moekit::DeviceType::kCUDA, 0};
  auto staged_args = [&](int c, uint8_t* ws, size_t bytes) {
    moekit::MatmulOgsArgs a = l.args(c % l.copies);
    a.gather_idx = moekit::TensorView(identity, moekit::DType::kInt32, {l.P}, dev);
    a.workspace = moekit::TensorView(ws, moekit::DType::kUInt8, {static_cast<int64_t>(bytes)}, dev);
    return a;
  };
  const size_t bytes = moekit::matmul_ogs_workspace_size(staged_args(0, nullptr, 0));
  uint8_t* ws = device_buffer<uint8_t>(bytes);
  auto combined = [&]() {
    std::vector<uint16_t> host(l.out_rows * l.out_cols);
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(host.data(), l.out, host.size() * 2, cudaMemcpyDeviceToHost));
    return host;
  };
  for (const char* config : {"swapab16", "swapab32", "swapab80"}) {
    moekit::ExecContext forced = moekit::ExecContext::on_stream(stream);
    forced.matmul_ogs_config = config;
    auto in_place = [&](int c) { moekit::matmul_ogs(l.args(c % l.copies), forced); };
    auto staged = [&](int c) { moekit::matmul_ogs(staged_args(c, ws, bytes), forced); };
    in_place(0);
    const std::vector<uint16_t> want = combined();
    staged(0);
    const bool same = combined() == want;
    const float in_place_us = graph_us_per_call(stream, 20, in_place), staged_us = graph_us_per_call(stream, 20, staged);
    std::printf("%-9s x in place (TMA) %8.1f us, staged %8.1f us (with the combine); outputs %s\n", config, in_place_us,
                staged_us, same ? "bitwise equal" : "DIFFER");
  }
}

}  // namespace

int main(int argc, char** argv) {
  int E = 32, T = 512, mlp = 1;
  if (!parse_layer_flags(argc, argv, E, T, mlp)) return 2;
  const MlpLayer l = make_mlp_layer(E, T, mlp);
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s: mlp%d E=%d T=%d (P=%lld, N=%lld, K=%lld), %d experts routed\n", prop.name, mlp, E, T,
              static_cast<long long>(l.P), static_cast<long long>(l.N), static_cast<long long>(l.K), l.used);
  Run run{l, stream};
  try {
    using swapab::Shape;
    // The library's shapes, then two consumer warpgroups where it has three (its shapes before
    // the three were measured faster); at 16 rows also four (at 32
    // rows four spill: 48 bytes, sm_90a); at 16 rows chunks of six steps (a chunk's own
    // instructions, its barrier wait and stage arithmetic, over more steps; at 32 rows they spill
    // 12 bytes); at 80 rows chunks of two steps in five stages beside its four in three.
    run.shape<swapab::Swapab16>("swapab16");
    run.shape<Shape<16, 4, 7, 2>>("swapab16");
    run.shape<Shape<16, 4, 5, 4>>("swapab16");
    run.shape<Shape<16, 6, 4, 3>>("swapab16");
    run.shape<swapab::Swapab32>("swapab32");
    run.shape<Shape<32, 4, 5, 2>>("swapab32");
    run.shape<swapab::Swapab80>("swapab80");
    run.shape<Shape<80, 2, 5, 3>>("swapab80");
    if (mlp == 2) staged_beside_in_place(l, stream);
  } catch (const moekit::Error& e) {
    std::printf("refused: %s\n", e.what());
    return 1;
  }
  return 0;
}
