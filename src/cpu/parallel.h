// The CPU backend's fork-join loop: the caller's pool (ExecContext::cpu_parallel; torch's
// intra-op pool in the binding), else contiguous chunks of at least `grain` items over up to
// ctx.cpu_threads std::threads (the caller's thread takes the first chunk). Results never
// depend on the split: each item is computed by one thread in a fixed order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "moekit/tensor.h"

namespace moekit::cpu {

inline int resolve_threads(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

template <class Fn>  // Fn(int64_t begin, int64_t end)
void parallel_for(int64_t n, int64_t grain, const ExecContext& ctx, Fn&& fn) {
  if (n <= 0) return;
  if (ctx.cpu_parallel) {
    ctx.cpu_parallel(n, std::max<int64_t>(grain, 1), fn);
    return;
  }
  const int threads = ctx.cpu_threads;
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(grain, 1));
  const int64_t chunks = std::min<int64_t>(resolve_threads(threads), max_chunks);
  if (chunks <= 1) {
    fn(int64_t{0}, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  std::vector<std::thread> workers;
  std::vector<std::exception_ptr> errors(chunks);
  auto run = [&](int64_t c) {
    try {
      fn(c * step, std::min(n, (c + 1) * step));
    } catch (...) {
      errors[c] = std::current_exception();
    }
  };
  workers.reserve(chunks - 1);
  for (int64_t c = 1; c < chunks && c * step < n; ++c) workers.emplace_back(run, c);
  run(0);
  for (auto& w : workers) w.join();
  for (auto& e : errors) if (e) std::rethrow_exception(e);
}

}  // namespace moekit::cpu
