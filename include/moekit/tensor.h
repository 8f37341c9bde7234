// Non-owning tensor views and the execution context: the whole vocabulary of moekit's C++ API.
// No torch here; the torch binding (python/csrc) translates at::Tensor into these.
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <string>

namespace moekit {

enum class DType : uint8_t { kFloat32, kBFloat16, kUInt8, kInt32 };
// kMeta: shapes and dtypes without data (torch's meta tensors); ops validate such calls but run
// none of them.
enum class DeviceType : uint8_t { kCPU, kCUDA, kMeta };

const char* dtype_name(DType dtype);
int64_t dtype_size(DType dtype);

struct Device {
  DeviceType type = DeviceType::kCPU;
  int index = 0;  // CUDA ordinal; 0 for the CPU
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;  // "cpu", "cuda:N" or "meta", as torch prints it
};

constexpr int kMaxDims = 6;

// A strided view of memory someone else owns. Ops read `data` only through the
// dtype they validated; an absent optional argument is a default-constructed view.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Device device;
  int ndim = -1;  // -1: absent
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};  // in elements

  TensorView() = default;
  // Contiguous view.
  TensorView(void* data, DType dtype, std::initializer_list<int64_t> shape, Device device = {});

  bool present() const { return ndim >= 0; }
  int64_t size(int dim) const { return shape[dim < 0 ? dim + ndim : dim]; }
  int64_t numel() const;  // throws moekit::Error if it does not fit in int64
  bool is_contiguous() const;
  std::string shape_str() const;  // "[2, 3]"
  // The same contiguous memory under another shape of equal numel; absent stays absent.
  TensorView reshape(std::initializer_list<int64_t> new_shape) const;

  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
};

// Where and how an op runs. CUDA ops launch on `cuda_stream`, a cudaStream_t of the tensors'
// device that the caller must name (set `cuda_stream_given`, or use on_stream); the torch
// binding names the current stream of that device, which may be torch's default stream.
// The CPU backend's loops run on `cpu_parallel` when it is set: it must call body(begin, end)
// on disjoint chunks covering [0, n), each of at least `grain` items but the last, and return
// once all have run (rethrowing a body's exception). The torch binding passes torch's intra-op
// pool, so moekit and torch share the cores instead of oversubscribing them. Unset, moekit runs
// its own std::threads, `cpu_threads` of them (<= 0: one per hardware thread). Results never
// depend on how the work is split. `sync_after_launch` is a debug switch: synchronise after
// every CUDA launch so a fault is reported by the op that caused it. `matmul_ogs_config`, when
// not empty, forces the CUDA matmul_ogs kernel it names (the names and what each needs:
// docs/kernels.md; refused where it cannot run the call), for tests and benchmarks; empty, the
// kernel is chosen from the problem and the device. The CPU backend ignores it.
// `batch_invariant` asks for outputs whose every row has the same bits whatever the other rows of
// the call (their number, their values, the row's place): matmul_ogs chooses one kernel family
// for every row count, and moe_mlp takes its general path at every T (docs/semantics.md, "Batch
// invariance"); a forced `matmul_ogs_config` takes precedence, and matmul_ogs_backward ignores
// it. The CPU backend is batch-invariant always.
struct ExecContext {
  using ParallelBody = std::function<void(int64_t begin, int64_t end)>;
  void* cuda_stream = nullptr;
  bool cuda_stream_given = false;
  std::function<void(int64_t n, int64_t grain, const ParallelBody& body)> cpu_parallel;
  int cpu_threads = 0;
  bool sync_after_launch = false;
  std::string matmul_ogs_config;
  bool batch_invariant = false;

  static ExecContext on_stream(void* stream) {
    ExecContext ctx;
    ctx.cuda_stream = stream;
    ctx.cuda_stream_given = true;
    return ctx;
  }
};

}  // namespace moekit
