#include "device_info.h"

#include <string>

#include "moekit/error.h"

namespace moekit {

const DeviceInfo& DeviceInfoCache::get(int device) {
  if (device < 0 || device >= kMaxDevices) {
    throw Error(Error::Kind::kValue, "moekit: device index expected in [0, " + std::to_string(kMaxDevices) +
                                         "), got " + std::to_string(device));
  }
  Entry& e = entries_[device];
  std::call_once(e.once, [&] { e.info = query_(device); });
  return e.info;
}

}  // namespace moekit
