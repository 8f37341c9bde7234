// Facts of a CUDA device, queried once per device index (see src/core/device_info.h).
#pragma once

#include "../../core/device_info.h"

namespace moekit::cuda {

// The process's cache of real device facts; the first call for a device queries it.
const DeviceInfo& device_info(int device);

}  // namespace moekit::cuda
