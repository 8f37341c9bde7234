// What one launch costs the host, and what an idle GPU waits for, as moe_mlp's decode path
// launches (src/cuda/launch/launch_kernel.h): eager minus graph at T = 1 reads as the host's
// time up to mlp1's launch (docs/kernels.md), of which the gate's launch is one part. Timed on
// a kernel that does nothing, with a parameter block of the decode kernels' size:
// - the host's time per launch (the median over calls, the queue drained every 64 launches so a
//   launch never waits for room): <<<>>>, cudaLaunchKernelEx bare, chained (programmatic
//   dependent launch), chained and checked (cudaGetLastError after it, as MOEKIT_CHECK_LAUNCH),
//   and in clusters of 8 (the grid 128 blocks);
// - from an idle GPU, event to event: one launch, and three chained ones (the decode path's
//   count), each the median of 200 calls;
// - the two ways to take launches off that path, timed alike: the three as one CUDA graph whose
//   kernel nodes get the call's parameters first (cudaGraphExecKernelNodeSetParams, then
//   cudaGraphLaunch), and one cooperative launch (whether the driver takes it chained too).
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I src -I include -I bench bench/launch_cost.cu \
//        -o build/launch_cost && build/launch_cost
#include <cstdio>
#include <vector>

#include "cuda/launch/launch_kernel.h"
#include "graph_timing.h"

namespace {

struct Params {  // about MoeDecodeExpertsParams' size
  const void* pointers[12];
  long long sizes[6];
  float values[4];
};

__global__ void empty_kernel(const Params p) {
  if (p.values[0] == 1.0f && threadIdx.x == 1024) printf("never\n");  // keeps p alive
}

// The median GPU time (us, event to event) of calls() started on an idle GPU.
template <class Calls>
float idle_start_us(cudaStream_t stream, Calls&& calls) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int i = 0; i < 220; ++i) {
    CHECK(cudaStreamSynchronize(stream));
    CHECK(cudaEventRecord(start, stream));
    calls();
    CHECK(cudaEventRecord(stop, stream));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (i >= 20) times.push_back(1000.0f * ms);
  }
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main() {
  using moekit::cuda::launch_kernel;
  using moekit::cuda::launch_kernel_in_clusters;
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  Params p{};
  const unsigned grid = 132, threads = 704;
  empty_kernel<<<grid, threads, 0, stream>>>(p);
  CHECK(cudaStreamSynchronize(stream));

  const double chevrons = host_us(stream, [&] { empty_kernel<<<grid, threads, 0, stream>>>(p); });
  const double bare = host_us(stream, [&] { launch_kernel(empty_kernel, grid, threads, 0, stream, false, p); });
  const double chained = host_us(stream, [&] { launch_kernel(empty_kernel, grid, threads, 0, stream, true, p); });
  const double checked = host_us(stream, [&] {
    launch_kernel(empty_kernel, grid, threads, 0, stream, true, p);
    CHECK(cudaGetLastError());
  });
  const double clusters = host_us(stream, [&] {
    launch_kernel_in_clusters(empty_kernel, dim3(128), dim3(8), threads, 0, stream, true, p);
  });
  std::printf("host us a launch: <<<>>> %.2f, cudaLaunchKernelEx %.2f, chained %.2f, chained + cudaGetLastError %.2f, "
              "chained in clusters of 8 %.2f\n", chevrons, bare, chained, checked, clusters);

  const float one = idle_start_us(stream, [&] { launch_kernel(empty_kernel, grid, threads, 0, stream, true, p); });
  const float three = idle_start_us(stream, [&] {
    for (int i = 0; i < 3; ++i) launch_kernel(empty_kernel, grid, threads, 0, stream, true, p);
  });
  std::printf("from an idle GPU, event to event: one chained launch %.2f us, three %.2f us\n", one, three);

  // The three captured as a graph; each call sets the nodes' parameters (its pointers) again.
  cudaGraph_t graph;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < 3; ++i) launch_kernel(empty_kernel, grid, threads, 0, stream, true, p);
  CHECK(cudaStreamEndCapture(stream, &graph));
  size_t n = 3;
  cudaGraphNode_t nodes[3];
  CHECK(cudaGraphGetNodes(graph, nodes, &n));
  cudaGraphExec_t exec;
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaKernelNodeParams node_params[3];
  for (int i = 0; i < 3; ++i) CHECK(cudaGraphKernelNodeGetParams(nodes[i], &node_params[i]));
  Params call_params[3] = {p, p, p};
  void* args[3][1] = {{&call_params[0]}, {&call_params[1]}, {&call_params[2]}};
  const auto graph_call = [&] {
    for (int i = 0; i < 3; ++i) {
      call_params[i].pointers[0] = &call_params[i];  // a new pointer each call, as x and y are
      node_params[i].kernelParams = args[i];
      CHECK(cudaGraphExecKernelNodeSetParams(exec, nodes[i], &node_params[i]));
    }
    CHECK(cudaGraphLaunch(exec, stream));
  };
  const double set_one = host_us(stream, [&] {
    node_params[0].kernelParams = args[0];
    CHECK(cudaGraphExecKernelNodeSetParams(exec, nodes[0], &node_params[0]));
  });
  const double graph_host = host_us(stream, graph_call);
  const float graph_idle = idle_start_us(stream, graph_call);
  std::printf("three as a graph: host us a node's parameters set %.2f, the three set and the graph launched %.2f; "
              "from an idle GPU %.2f us\n", set_one, graph_host, graph_idle);

  // One cooperative launch (its grid may meet at a grid-wide barrier), bare and chained.
  const auto cooperative = [&](bool chained) {
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(grid);
    config.blockDim = dim3(threads);
    config.stream = stream;
    cudaLaunchAttribute attributes[2]{};
    attributes[config.numAttrs].id = cudaLaunchAttributeCooperative;
    attributes[config.numAttrs++].val.cooperative = 1;
    if (chained) {
      attributes[config.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attributes[config.numAttrs++].val.programmaticStreamSerializationAllowed = 1;
    }
    config.attrs = attributes;
    return cudaLaunchKernelEx(&config, empty_kernel, p);
  };
  for (const bool chained : {false, true}) {
    const cudaError_t e = cooperative(chained);
    CHECK(cudaStreamSynchronize(stream));
    if (e != cudaSuccess) {
      std::printf("cooperative%s: refused (%s)\n", chained ? " and chained" : "", cudaGetErrorString(e));
      (void)cudaGetLastError();
      continue;
    }
    const double host = host_us(stream, [&] { CHECK(cooperative(chained)); });
    const float idle = idle_start_us(stream, [&] { CHECK(cooperative(chained)); });
    std::printf("one cooperative launch%s: host us %.2f; from an idle GPU %.2f us\n", chained ? ", chained" : "", host,
                idle);
  }
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  CHECK(cudaStreamDestroy(stream));
  return 0;
}
