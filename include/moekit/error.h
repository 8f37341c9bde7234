// The one exception type moekit throws. Messages name the op, the argument, what was
// expected and what came, e.g.
//   moekit.route: 'k' expected 1 <= k <= 32 (number of experts), got 40
#pragma once

#include <stdexcept>
#include <string>

namespace moekit {

class Error : public std::runtime_error {
 public:
  enum class Kind { kValue, kType, kDevice, kRuntime };
  Error(Kind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  Kind kind() const { return kind_; }

 private:
  Kind kind_;
};

}  // namespace moekit
