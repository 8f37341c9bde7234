// The 32-bit shared-memory address of a generic pointer into shared memory, as PTX's `.shared`
// operands (ldmatrix, cp.async, mbarrier, wgmma descriptors) take it.
#pragma once

#include <cstdint>

namespace moekit::cuda {

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

}  // namespace moekit::cuda
