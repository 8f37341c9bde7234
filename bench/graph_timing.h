// What the C++ micro-benchmarks in bench/ share: a CUDA error check that ends the program, new
// device buffers (empty, or a copy of a host vector), the time per call of a CUDA graph that replays a
// number of calls, and the host's time of one call.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CHECK(expr)                                                                              \
  do {                                                                                           \
    cudaError_t e_ = (expr);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

// A new device buffer of n elements (freed by the caller).
template <class T>
T* device_buffer(size_t n) {
  T* dev = nullptr;
  CHECK(cudaMalloc(&dev, n * sizeof(T)));
  return dev;
}

// A new device buffer holding `host` (freed by the caller).
template <class T>
T* upload(const std::vector<T>& host) {
  T* dev = device_buffer<T>(host.size());
  CHECK(cudaMemcpy(dev, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return dev;
}

// Median time per call (us) over 5 replays (after one to warm up) of a graph of `calls` calls of
// capture(c), each of which enqueues its call on `stream`.
template <class Capture>
float graph_us_per_call(cudaStream_t stream, int calls, Capture&& capture) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int c = 0; c < calls; ++c) capture(c);
  CHECK(cudaStreamEndCapture(stream, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int rep = 0; rep < 6; ++rep) {
    CHECK(cudaEventRecord(start, stream));
    CHECK(cudaGraphLaunch(exec, stream));
    CHECK(cudaEventRecord(stop, stream));
    CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, start, stop));
    if (rep > 0) times.push_back(1000.0f * ms / calls);
  }
  std::sort(times.begin(), times.end());
  CHECK(cudaGraphExecDestroy(exec));
  CHECK(cudaGraphDestroy(graph));
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  return times[times.size() / 2];
}

// The median host time (us) of one call(), over 20000 after 200 to warm up, the stream drained
// every 64 calls so that a launch never waits for room in its queue.
template <class Call>
double host_us(cudaStream_t stream, Call&& call) {
  constexpr int kWarm = 200, kCalls = 20000;
  std::vector<double> times;
  for (int i = 0; i < kWarm + kCalls; ++i) {
    if (i % 64 == 0) CHECK(cudaStreamSynchronize(stream));
    const auto start = std::chrono::steady_clock::now();
    call();
    const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
    if (i >= kWarm) times.push_back(us);
  }
  CHECK(cudaStreamSynchronize(stream));
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}
