// Facts about one CUDA device, and a cache of them per device index: filled on first use of
// each device (never at static-initialisation time), once, safe under concurrent first use.
// The cache takes its query as an argument so tests can feed it synthetic devices.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

namespace moekit {

struct DeviceInfo {
  int sm_count = 0;
  int major = 0, minor = 0;            // compute capability
  int max_smem_per_block_optin = 0;    // bytes, after raising the kernel attribute
  int l2_bytes = 0;
};

class DeviceInfoCache {
 public:
  static constexpr int kMaxDevices = 64;
  using Query = std::function<DeviceInfo(int device)>;

  explicit DeviceInfoCache(Query query) : query_(std::move(query)) {}
  DeviceInfoCache(const DeviceInfoCache&) = delete;
  DeviceInfoCache& operator=(const DeviceInfoCache&) = delete;

  // Throws moekit::Error for an index outside [0, kMaxDevices); propagates the query's errors
  // (a failed query is retried on the next call).
  const DeviceInfo& get(int device);

 private:
  struct Entry {
    std::once_flag once;
    DeviceInfo info;
  };
  Query query_;
  std::array<Entry, kMaxDevices> entries_;
};

}  // namespace moekit
