// TMA descriptors (CUtensorMap) for the kernels' tensor copies (`cp.async.bulk.tensor`), built
// on the host through the driver's cuTensorMapEncodeTiled, which the runtime hands out (no link
// against libcuda).
#pragma once

#include <cuda.h>

#include <cstdint>

namespace moekit::cuda {

// Tiles of `box_rows` rows x 64 columns (128 bytes, the swizzle's span) of a row-major bf16
// matrix [rows, cols] (16-byte aligned, cols % 8 == 0), landing in shared memory in the 128-byte
// swizzle that wgmma's K-major operands read (the 16-byte piece c of a row at c ^ (row % 8) within
// each 1 KB of 8 rows). Rows and columns past the matrix read as zeros.
CUtensorMap bf16_row_tiles(const void* data, int64_t rows, int64_t cols, int box_rows);

}  // namespace moekit::cuda
