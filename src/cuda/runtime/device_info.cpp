#include "device_info.h"

#include "check.h"

namespace moekit::cuda {
namespace {

DeviceInfo query_device(int device) {
  DeviceInfo info;
  MOEKIT_CUDA_CHECK(cudaDeviceGetAttribute(&info.sm_count, cudaDevAttrMultiProcessorCount, device));
  MOEKIT_CUDA_CHECK(cudaDeviceGetAttribute(&info.major, cudaDevAttrComputeCapabilityMajor, device));
  MOEKIT_CUDA_CHECK(cudaDeviceGetAttribute(&info.minor, cudaDevAttrComputeCapabilityMinor, device));
  MOEKIT_CUDA_CHECK(cudaDeviceGetAttribute(&info.max_smem_per_block_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  MOEKIT_CUDA_CHECK(cudaDeviceGetAttribute(&info.l2_bytes, cudaDevAttrL2CacheSize, device));
  return info;
}

}  // namespace

const DeviceInfo& device_info(int device) {
  static DeviceInfoCache cache(query_device);  // constructed on first use: no CUDA call at load time
  return cache.get(device);
}

}  // namespace moekit::cuda
