// Umbrella header for moekit's public C++ API.
#pragma once

#include "moekit/error.h"
#include "moekit/ops.h"
#include "moekit/tensor.h"
