#include <gtest/gtest.h>
#include "moekit/moekit.h"
TEST(Smoke, Builds) { EXPECT_STREQ(moekit::dtype_name(moekit::DType::kInt32), "int32"); }
