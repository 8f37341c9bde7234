// Carves a workspace into regions, each starting on a 256-byte boundary; sizes that do not fit
// in int64 are refused, naming the op and the argument whose size they come from.
#pragma once

#include <cstddef>
#include <cstdint>

#include "check.h"

namespace moekit {

class ByteLayout {
 public:
  explicit ByteLayout(const char* op) : op_(op) {}
  // count * element_bytes bytes, for argument `arg`.
  size_t take(const char* arg, int64_t count, int64_t element_bytes) {
    const int64_t bytes = check::mul(op_, arg, count, element_bytes);
    const int64_t here = size_;
    size_ = check::add(op_, arg, size_, check::add(op_, arg, bytes, 255) / 256 * 256);
    return static_cast<size_t>(here);
  }
  size_t size() const { return static_cast<size_t>(size_); }

 private:
  const char* op_;
  int64_t size_ = 0;
};

}  // namespace moekit
