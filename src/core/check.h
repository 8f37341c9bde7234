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

[[noreturn]] void fail(Error::Kind kind, const char* op, const char* arg, const std::string& expected,
                       const std::string& got);

// A tensor was given, and its sizes are not negative.
void present(const char* op, const char* arg, const TensorView& t);
void dtype(const char* op, const char* arg, const TensorView& t, std::initializer_list<DType> allowed);
void ndim(const char* op, const char* arg, const TensorView& t, int n);
// Exact shape; -1 in `expected` matches any size.
void shape(const char* op, const char* arg, const TensorView& t, const std::vector<int64_t>& expected);
void contiguous(const char* op, const char* arg, const TensorView& t);
// All present tensors on one device; returns it. The first tensor sets the device.
Device same_device(const char* op, std::initializer_list<std::pair<const char*, const TensorView*>> tensors);

// `t` must be on `device`, the device of argument `reference`.
void on_device(const char* op, const char* arg, const TensorView& t, const Device& device, const char* reference);

std::string shape_str(const std::vector<int64_t>& shape);

}  // namespace moekit::check
