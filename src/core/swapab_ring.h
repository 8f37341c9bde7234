// The ring protocol of the swap-AB kernel (src/cuda/kernels/gemm/matmul_ogs_swapab.cuh), as the
// functions both the kernel and the CPU's simulation of it (tests/cpp/swapab_ring_test.cpp) run.
//
// A block's chunks (KS k steps each; an item's last may have fewer) go through S stages: chunk n
// uses stage n % S. The producer fills a stage and its `full` barrier completes a phase; the
// consumer threads read it and each arrives on the stage's `empty` barrier once it is done with the
// chunk, completing a phase when all have. A barrier wait names the parity of the phase it waits
// for (mbarrier.try_wait.parity), so neither side may run two phases ahead: the simulation checks
// that each wait passes at the exact phase meant.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace moekit::swapab_ring {

MOEKIT_HD constexpr int stage(int n, int stages) { return n % stages; }

// The parity of the `full` phase that chunk n's copies complete (the consumers wait for it).
MOEKIT_HD constexpr uint32_t full_parity(int n, int stages) { return static_cast<uint32_t>(n / stages) & 1u; }

// Before filling chunk n's stage the producer waits for the consumers to release chunk n - S,
// the `empty` phase of this parity; the first S chunks find their stages free.
MOEKIT_HD constexpr bool producer_waits(int n, int stages) { return n >= stages; }
MOEKIT_HD constexpr uint32_t empty_parity(int n, int stages) { return static_cast<uint32_t>(n / stages - 1) & 1u; }

// A consumer warp at k step ks of chunk n, right after waiting for all but the last committed
// wgmma group (so only the previous step's may still read shared memory), with `released` of
// its chunks released so far: whether it releases the next one now. At step 1 chunk n - 1 is
// done; at step 0 chunk n - 2 is (pending only when chunk n - 1, an item's last, had one step).
// Needs S >= 3: a chunk can be released a chunk late.
MOEKIT_HD constexpr bool release_due(int ks, int released, int n) { return ks <= 1 && released < n - 1 + ks; }

}  // namespace moekit::swapab_ring
