#include "moekit/tensor.h"

#include <string>

#include "moekit/error.h"

namespace moekit {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "float32";
    case DType::kBFloat16: return "bfloat16";
    case DType::kUInt8: return "uint8";
    case DType::kInt32: return "int32";
  }
  return "unknown";
}

int64_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kBFloat16: return 2;
    case DType::kUInt8: return 1;
    case DType::kInt32: return 4;
  }
  return 0;
}

std::string Device::str() const {
  switch (type) {
    case DeviceType::kCPU: return "cpu";
    case DeviceType::kCUDA: return "cuda:" + std::to_string(index);
    case DeviceType::kMeta: return "meta";
  }
  return "unknown";
}

TensorView::TensorView(void* data_, DType dtype_, std::initializer_list<int64_t> shape_, Device device_)
    : data(data_), dtype(dtype_), device(device_), ndim(static_cast<int>(shape_.size())) {
  int d = 0;
  for (int64_t s : shape_) shape[d++] = s;
  // Strides wrap (unsigned) for shapes too large to count; validation refuses those shapes.
  uint64_t st = 1;
  for (d = ndim - 1; d >= 0; --d) {
    stride[d] = static_cast<int64_t>(st);
    st *= static_cast<uint64_t>(shape[d]);
  }
}

int64_t TensorView::numel() const {
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] == 0) return 0;  // whatever the other sizes
  }
  int64_t n = 1;
  for (int d = 0; d < ndim; ++d) {
    if (__builtin_mul_overflow(n, shape[d], &n)) {
      throw Error(Error::Kind::kValue, "moekit: a tensor of shape " + shape_str() + " has more elements than int64 counts");
    }
  }
  return n;
}

bool TensorView::is_contiguous() const {
  if (numel() == 0) return true;  // as torch: no element, no layout
  int64_t st = 1;  // numel() fits, so every partial product does
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] != 1 && stride[d] != st) return false;
    st *= shape[d];
  }
  return true;
}

TensorView TensorView::reshape(std::initializer_list<int64_t> new_shape) const {
  if (!present()) return *this;
  return TensorView(data, dtype, new_shape, device);
}

std::string TensorView::shape_str() const {
  std::string s = "[";
  for (int d = 0; d < ndim; ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
  return s + "]";
}

}  // namespace moekit
