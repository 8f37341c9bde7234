// Shared helpers of the moekit gtest suite: host buffers that hand out TensorViews, bf16
// conversion, poisoning, random values and the error-checking helper.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "moekit/moekit.h"

namespace moekit::test {

inline Device cpu() { return {}; }
inline Device cuda(int index) { return {DeviceType::kCUDA, index}; }

// A view over `data` with any shape (contiguous strides), for shapes held in a vector.
inline TensorView make_view(void* data, DType dtype, const std::vector<int64_t>& shape, Device device = {}) {
  if (shape.size() > static_cast<size_t>(kMaxDims)) throw std::logic_error("make_view: too many dims");
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.device = device;
  v.ndim = static_cast<int>(shape.size());
  uint64_t st = 1;  // wraps for shapes too large to count, as TensorView's constructor does
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[d] = shape[d];
    v.stride[d] = static_cast<int64_t>(st);
    st *= static_cast<uint64_t>(shape[d]);
  }
  return v;
}

inline TensorView on(TensorView v, Device device) {
  v.device = device;
  return v;
}

// An owned, contiguous host tensor of any moekit dtype.
class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(DType dtype, std::vector<int64_t> shape) : dtype_(dtype), shape_(std::move(shape)) {
    int64_t n = 1;
    for (int64_t s : shape_) n *= s;
    numel_ = n;
    // No spare element: an empty tensor has a null data pointer, as torch gives it, so the suite
    // sees what a torch caller passes (ops must decide emptiness by shape, never by pointer).
    bytes_.assign(static_cast<size_t>(n * dtype_size(dtype)), 0);
  }

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const { return numel_; }
  void* data() { return bytes_.empty() ? nullptr : bytes_.data(); }
  template <class T>
  T* ptr() { return reinterpret_cast<T*>(bytes_.data()); }
  template <class T>
  const T* ptr() const { return reinterpret_cast<const T*>(bytes_.data()); }

  TensorView view(Device device = {}) { return make_view(data(), dtype_, shape_, device); }

  // Element i of a float32 or bfloat16 tensor, as float.
  float get(int64_t i) const {
    check_index(i);
    if (dtype_ == DType::kFloat32) return ptr<float>()[i];
    if (dtype_ == DType::kBFloat16) return bf16_to_float(ptr<uint16_t>()[i]);
    throw std::logic_error("HostTensor::get on a non-float tensor");
  }
  // Stores v (rounded to bf16 for a bf16 tensor).
  void set(int64_t i, float v) {
    check_index(i);
    if (dtype_ == DType::kFloat32) ptr<float>()[i] = v;
    else if (dtype_ == DType::kBFloat16) ptr<uint16_t>()[i] = float_to_bf16(v);
    else throw std::logic_error("HostTensor::set on a non-float tensor");
  }
  int32_t& i32(int64_t i) {
    check_index(i);
    if (dtype_ != DType::kInt32) throw std::logic_error("HostTensor::i32 on a non-int32 tensor");
    return ptr<int32_t>()[i];
  }
  uint8_t& u8(int64_t i) {
    check_index(i);
    if (dtype_ != DType::kUInt8) throw std::logic_error("HostTensor::u8 on a non-uint8 tensor");
    return ptr<uint8_t>()[i];
  }

  // Fills every element with a value no op would produce: NaN for float types, 0x7eadbeef for
  // int32, 0xa5 for uint8.
  void poison() {
    for (int64_t i = 0; i < numel_; ++i) {
      switch (dtype_) {
        case DType::kFloat32: ptr<float>()[i] = std::numeric_limits<float>::quiet_NaN(); break;
        case DType::kBFloat16: ptr<uint16_t>()[i] = 0x7fc1; break;
        case DType::kInt32: ptr<int32_t>()[i] = 0x7eadbeef; break;
        case DType::kUInt8: ptr<uint8_t>()[i] = 0xa5; break;
      }
    }
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  void check_index(int64_t i) const {
    if (i < 0 || i >= numel_) throw std::logic_error("HostTensor: index out of range");
  }
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  std::vector<uint8_t> bytes_;
};

// The six outputs of route, poisoned.
struct RouteBuffers {
  HostTensor idx, weight, counts, offsets, gather, scatter;
  RouteBuffers(int64_t T, int64_t E, int64_t k)
      : idx(DType::kInt32, {T, k}), weight(DType::kFloat32, {T, k}), counts(DType::kInt32, {E}),
        offsets(DType::kInt32, {E + 1}), gather(DType::kInt32, {T * k}), scatter(DType::kInt32, {T, k}) {
    for (HostTensor* t : all()) t->poison();
  }
  std::vector<HostTensor*> all() { return {&idx, &weight, &counts, &offsets, &gather, &scatter}; }
  RouteOutputs outputs(Device device = {}) {
    return {idx.view(device),     weight.view(device), counts.view(device),
            offsets.view(device), gather.view(device), scatter.view(device)};
  }
};

// ------------------------------------------------------------------------------ bf16 helpers

inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = float_to_bf16(v[i]);
  return out;
}

inline std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
  std::vector<float> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_to_float(v[i]);
  return out;
}

// The float a value becomes when stored in `dtype` (float32 or bfloat16).
inline float round_to(DType dtype, float v) { return dtype == DType::kBFloat16 ? bf16_to_float(float_to_bf16(v)) : v; }

inline uint32_t bits_of(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

inline float float_of_bits(uint32_t u) {
  float v;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

inline ExecContext with_threads(int cpu_threads) {
  ExecContext ctx;
  ctx.cpu_threads = cpu_threads;
  return ctx;
}

// ----------------------------------------------------------------------------------- mxfp4

// The e2m1 magnitudes (OCP MX table), written here independently of core/mxfp4.h.
constexpr float kE2m1Mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
inline double e2m1_value(uint8_t code) {
  return (code & 8) ? -double(kE2m1Mag[code & 7]) : double(kE2m1Mag[code & 7]);
}
inline double e8m0_value(uint8_t s) { return std::ldexp(1.0, int(s) - 127); }  // s < 255

// --------------------------------------------------------------------------------- random

// A uniformly random integer in [-max, -1] U [1, max]: never zero.
inline int nonzero_int(std::mt19937& rng, int max) {
  const int m = std::uniform_int_distribution<int>(1, max)(rng);
  return (rng() & 1) ? m : -m;
}

// A random float in +-[lo, hi] (never zero for lo > 0).
inline float nonzero_float(std::mt19937& rng, float lo, float hi) {
  const float m = std::uniform_real_distribution<float>(lo, hi)(rng);
  return (rng() & 1) ? m : -m;
}

// ---------------------------------------------------------------------------------- errors

inline const char* kind_name(Error::Kind k) {
  switch (k) {
    case Error::Kind::kValue: return "kValue";
    case Error::Kind::kType: return "kType";
    case Error::Kind::kDevice: return "kDevice";
    case Error::Kind::kRuntime: return "kRuntime";
  }
  return "?";
}

// Runs `fn`, which must throw moekit::Error of `kind` whose message contains every needle.
inline void expect_error(const std::function<void()>& fn, Error::Kind kind, std::initializer_list<std::string> needles) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_STREQ(kind_name(e.kind()), kind_name(kind)) << "message: " << msg;
    for (const std::string& n : needles) EXPECT_TRUE(msg.find(n) != std::string::npos) << "'" << n << "' not in: " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-moekit exception: " << e.what();
    return;
  } catch (...) {
    ADD_FAILURE() << "threw a non-std exception";
    return;
  }
  ADD_FAILURE() << "did not throw";
}

}  // namespace moekit::test
