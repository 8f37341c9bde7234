#include "check.h"

#include <cmath>
#include <cstdio>

namespace moekit::check {

void fail(Error::Kind kind, const char* op, const char* arg, const std::string& expected, const std::string& got) {
  throw Error(kind, std::string("moekit.") + op + ": '" + arg + "' expected " + expected + ", got " + got);
}

void present(const char* op, const char* arg, const TensorView& t) {
  if (!t.present()) fail(Error::Kind::kValue, op, arg, "a tensor", "None");
  bool empty = false;
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] < 0) fail(Error::Kind::kValue, op, arg, "non-negative sizes", "shape " + t.shape_str());
    empty = empty || t.shape[d] == 0;
  }
  int64_t bytes = dtype_size(t.dtype);
  for (int d = 0; d < t.ndim && !empty; ++d) {
    if (__builtin_mul_overflow(bytes, t.shape[d], &bytes)) {
      fail(Error::Kind::kValue, op, arg, "a size in bytes that fits in 64 bits", "shape " + t.shape_str());
    }
  }
}

int64_t mul(const char* op, const char* arg, int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) {
    fail(Error::Kind::kValue, op, arg, "sizes whose product fits in 64 bits",
         std::to_string(a) + " * " + std::to_string(b));
  }
  return r;
}

int64_t add(const char* op, const char* arg, int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) {
    fail(Error::Kind::kValue, op, arg, "sizes whose sum fits in 64 bits", std::to_string(a) + " + " + std::to_string(b));
  }
  return r;
}

void at_most(const char* op, const char* arg, const char* what, int64_t value, int64_t limit, const char* why) {
  if (value > limit) {
    fail(Error::Kind::kValue, op, arg, std::string("at most ") + std::to_string(limit) + " " + what + " (" + why + ")",
         std::to_string(value));
  }
}

void finite(const char* op, const char* arg, float value, bool positive) {
  if (std::isfinite(value) && (!positive || value > 0.0f)) return;
  fail(Error::Kind::kValue, op, arg, positive ? "a finite number > 0" : "a finite number", format_number(value));
}

// snprintf, not an ostream: formatting a float through std::ostream crashed (SIGSEGV) in the
// extension on the GPU machine's image, where another libstdc++ may be loaded first.
std::string format_number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%g", value);
  return text;
}

void dtype(const char* op, const char* arg, const TensorView& t, std::initializer_list<DType> allowed) {
  for (DType d : allowed) {
    if (t.dtype == d) return;
  }
  std::string names;  // only for the message: an accepted call builds no string
  for (DType d : allowed) {
    const std::string name = dtype_name(d);
    if (names.find(name) == std::string::npos) names += (names.empty() ? "" : " or ") + name;
  }
  fail(Error::Kind::kType, op, arg, "dtype " + names, dtype_name(t.dtype));
}

void ndim(const char* op, const char* arg, const TensorView& t, int n) {
  if (t.ndim != n) {
    fail(Error::Kind::kValue, op, arg, std::to_string(n) + " dimensions",
         std::to_string(t.ndim) + " (shape " + t.shape_str() + ")");
  }
}

std::string shape_str(Span<int64_t> shape) {
  std::string s = "[";
  for (size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + (shape[d] < 0 ? "*" : std::to_string(shape[d]));
  return s + "]";
}

void shape(const char* op, const char* arg, const TensorView& t, Span<int64_t> expected) {
  bool ok = t.ndim == static_cast<int>(expected.size());
  for (int d = 0; ok && d < t.ndim; ++d) ok = expected[d] < 0 || expected[d] == t.shape[d];
  if (!ok) fail(Error::Kind::kValue, op, arg, "shape " + shape_str(expected), t.shape_str());
}

void contiguous(const char* op, const char* arg, const TensorView& t) {
  if (!t.is_contiguous()) fail(Error::Kind::kValue, op, arg, "a contiguous tensor", "strides that are not");
}

void workspace(const char* op, const TensorView& t, size_t bytes) {
  present(op, "workspace", t);
  dtype(op, "workspace", t, {DType::kUInt8});
  contiguous(op, "workspace", t);
  if (t.ndim != 1 || static_cast<size_t>(t.numel()) < bytes) {
    fail(Error::Kind::kValue, op, "workspace", "a 1-D buffer of at least " + std::to_string(bytes) + " bytes",
         t.shape_str());
  }
}

Device same_device(const char* op, NamedTensors tensors) {
  const char* first_name = nullptr;
  Device dev;
  for (const auto& [name, t] : tensors) {
    if (!t->present()) continue;
    if (!first_name) {
      first_name = name;
      dev = t->device;
    } else if (t->device != dev) {
      fail(Error::Kind::kDevice, op, name, "device " + dev.str() + " (the device of '" + first_name + "')",
           t->device.str());
    }
  }
  return dev;
}

void on_device(const char* op, const char* arg, const TensorView& t, const Device& device, const char* reference) {
  if (t.device != device) {
    fail(Error::Kind::kDevice, op, arg, "device " + device.str() + " (the device of '" + reference + "')", t.device.str());
  }
}

}  // namespace moekit::check
