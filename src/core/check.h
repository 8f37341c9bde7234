// Argument validation shared by every op and backend. Each check throws moekit::Error with
// "moekit.<op>: '<arg>' expected <what>, got <what came>".
#pragma once

#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "moekit/error.h"
#include "moekit/tensor.h"

namespace moekit::check {

// The elements a check reads, owned by the caller (a braced list, a vector): a check's argument
// only, so that checking a call allocates nothing.
template <class T>
class Span {
 public:
  Span(std::initializer_list<T> list) : data_(list.begin()), size_(list.size()) {}
  Span(const std::vector<T>& v) : data_(v.data()), size_(v.size()) {}  // NOLINT: implicit, as the list's
  const T* begin() const { return data_; }
  const T* end() const { return data_ + size_; }
  size_t size() const { return size_; }
  const T& operator[](size_t i) const { return data_[i]; }

 private:
  const T* data_;
  size_t size_;
};
using NamedTensors = Span<std::pair<const char*, const TensorView*>>;

[[noreturn]] void fail(Error::Kind kind, const char* op, const char* arg, const std::string& expected,
                       const std::string& got);

// A tensor was given, its sizes are not negative, and its element and byte counts fit in int64.
void present(const char* op, const char* arg, const TensorView& t);
void dtype(const char* op, const char* arg, const TensorView& t, std::initializer_list<DType> allowed);
void ndim(const char* op, const char* arg, const TensorView& t, int n);
// Exact shape; -1 in `expected` matches any size.
void shape(const char* op, const char* arg, const TensorView& t, Span<int64_t> expected);
void contiguous(const char* op, const char* arg, const TensorView& t);
// All present tensors on one device; returns it. The first tensor sets the device.
Device same_device(const char* op, NamedTensors tensors);

// `t` must be on `device`, the device of argument `reference`.
void on_device(const char* op, const char* arg, const TensorView& t, const Device& device, const char* reference);

std::string shape_str(Span<int64_t> shape);

// A workspace: a contiguous 1-D uint8 buffer of at least `bytes` bytes.
void workspace(const char* op, const TensorView& t, size_t bytes);

// Size arithmetic that refuses overflow: every element count, byte size, offset and workspace
// size goes through these, so a shape too large to count is refused (naming the op and the
// argument it came from) instead of wrapping around.
int64_t mul(const char* op, const char* arg, int64_t a, int64_t b);
int64_t add(const char* op, const char* arg, int64_t a, int64_t b);
// `value` <= `limit`, where `what` says what value counts (e.g. "T * k token-slots") and `why`
// why the limit exists.
void at_most(const char* op, const char* arg, const char* what, int64_t value, int64_t limit, const char* why);
// `value` as printf's %g prints it ("-7", "nan", "1e+39").
std::string format_number(double value);
// A finite float (the name says which), and with `positive`, one > 0.
void finite(const char* op, const char* arg, float value, bool positive);

}  // namespace moekit::check
