// The per-device facts cache with synthetic devices: no GPU needed.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "core/device_info.h"
#include "moekit/error.h"

namespace {

moekit::DeviceInfo synthetic(int device) {
  moekit::DeviceInfo info;
  info.sm_count = 100 + device;  // every device different, so a mix-up shows
  info.major = 8 + device % 2;
  info.minor = device % 3;
  info.max_smem_per_block_optin = 1000 * (device + 1);
  info.l2_bytes = 1 << (20 + device % 4);
  return info;
}

TEST(DeviceInfoCache, EachDeviceHasItsOwnFacts) {
  std::atomic<int> queries{0};
  moekit::DeviceInfoCache cache([&](int d) { ++queries; return synthetic(d); });
  for (int d : {3, 0, 7, 1}) {
    const moekit::DeviceInfo& info = cache.get(d);
    EXPECT_EQ(info.sm_count, 100 + d);
    EXPECT_EQ(info.major, 8 + d % 2);
    EXPECT_EQ(info.max_smem_per_block_optin, 1000 * (d + 1));
  }
  EXPECT_EQ(cache.get(7).sm_count, 107);  // cached: no second query
  EXPECT_EQ(queries.load(), 4);
}

TEST(DeviceInfoCache, ConcurrentFirstUseQueriesOncePerDevice) {
  std::atomic<int> queries[8] = {};
  moekit::DeviceInfoCache cache([&](int d) {
    ++queries[d];
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // widen the race window
    return synthetic(d);
  });
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 32; ++t) {
    threads.emplace_back([&, t] {
      const int d = t % 8;
      if (cache.get(d).sm_count != 100 + d) ++wrong;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  for (int d = 0; d < 8; ++d) EXPECT_EQ(queries[d].load(), 1) << "device " << d;
}

TEST(DeviceInfoCache, FailedQueryIsRetriedAndIndexIsChecked) {
  int calls = 0;
  moekit::DeviceInfoCache cache([&](int d) {
    if (++calls == 1) throw moekit::Error(moekit::Error::Kind::kRuntime, "transient");
    return synthetic(d);
  });
  EXPECT_THROW(cache.get(2), moekit::Error);
  EXPECT_EQ(cache.get(2).sm_count, 102);
  EXPECT_THROW(cache.get(-1), moekit::Error);
  EXPECT_THROW(cache.get(moekit::DeviceInfoCache::kMaxDevices), moekit::Error);
}

}  // namespace
