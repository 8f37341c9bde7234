// The swap-AB kernel's ring protocol (src/core/swapab_ring.h), simulated on the CPU: one producer
// and several consumer warps, interleaved at random, each following the kernel's rules, with
// mbarrier parity waits modelled as the hardware answers them. A protocol error would hang the
// GPU; here it fails with the schedule that found it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/swapab_ring.h"

namespace {

namespace ring = moekit::swapab_ring;

// An mbarrier: `count` arrivals complete a phase. try_wait.parity(p) passes once the phase of
// parity p has completed, i.e. while the current phase's parity differs from p.
struct Barrier {
  int count = 0, arrived = 0, phases = 0;
  bool passes(uint32_t parity) const { return (static_cast<uint32_t>(phases) & 1u) != parity; }
  void arrive() {
    if (++arrived == count) arrived = 0, ++phases;
  }
};

struct Shape {
  int chunk_steps, stages, steps, items, warps;
  std::string str() const {
    return "KS " + std::to_string(chunk_steps) + " S " + std::to_string(stages) + " steps " + std::to_string(steps) +
           " items " + std::to_string(items) + " warps " + std::to_string(warps);
  }
};

// A consumer warp, one action a turn, as the kernel's loop: wait for the chunk's full phase;
// then per step: warpgroup_wait<1> (only the previous step's group stays pending), maybe release,
// commit a group reading the chunk's stage and register set ks % 2; warpgroup_wait<0> after an item.
struct Warp {
  int n = 0, ks = -1, released = 0;
  std::vector<std::pair<int, int>> pending;  // committed wgmma groups: (chunk, register set)
};

// Runs one random schedule; returns "" or what went wrong.
std::string simulate(const Shape& sh, uint32_t seed) {
  const int chunks_per_item = (sh.steps + sh.chunk_steps - 1) / sh.chunk_steps;
  std::vector<int> steps_of;  // the block's chunks in order
  for (int item = 0; item < sh.items; ++item) {
    for (int c = 0; c < chunks_per_item; ++c) steps_of.push_back(std::min(sh.chunk_steps, sh.steps - c * sh.chunk_steps));
  }
  const int chunks = static_cast<int>(steps_of.size());
  std::vector<Barrier> full(sh.stages), empty(sh.stages);
  for (auto& b : full) b.count = 1;
  for (auto& b : empty) b.count = sh.warps;
  std::vector<int> filled(sh.stages, -1);  // the chunk each stage holds
  std::vector<Warp> warps(sh.warps);
  int produced = 0;
  std::mt19937 rng(seed);
  for (int turn = 0;; ++turn) {
    std::vector<int> ready;  // -1: the producer
    if (produced < chunks) {
      const int s = ring::stage(produced, sh.stages);
      if (!ring::producer_waits(produced, sh.stages) || empty[s].passes(ring::empty_parity(produced, sh.stages))) {
        ready.push_back(-1);
      }
    }
    for (int w = 0; w < sh.warps; ++w) {
      const Warp& warp = warps[w];
      if (warp.n == chunks) continue;
      if (warp.ks >= 0 || full[ring::stage(warp.n, sh.stages)].passes(ring::full_parity(warp.n, sh.stages))) {
        ready.push_back(w);
      }
    }
    const bool done = produced == chunks && std::all_of(warps.begin(), warps.end(), [&](const Warp& w) { return w.n == chunks; });
    if (done) return "";
    if (ready.empty()) return "deadlock at turn " + std::to_string(turn) + ", produced " + std::to_string(produced);
    const int who = ready[rng() % ready.size()];
    if (who < 0) {  // the producer fills its next chunk's stage (its copies land at once)
      const int n = produced, s = ring::stage(n, sh.stages);
      if (ring::producer_waits(n, sh.stages) && empty[s].phases != n / sh.stages) {
        return "the producer passed the wrong empty phase at chunk " + std::to_string(n);
      }
      for (const Warp& w : warps) {
        for (const auto& g : w.pending) {
          if (g.first == filled[s]) return "chunk " + std::to_string(n) + " overwrote a stage a wgmma still reads";
        }
        if (filled[s] >= 0 && w.released <= filled[s]) return "chunk " + std::to_string(n) + " overwrote an unreleased stage";
      }
      filled[s] = n;
      full[s].arrive();
      ++produced;
      continue;
    }
    Warp& w = warps[who];
    const int s = ring::stage(w.n, sh.stages);
    if (w.ks < 0) {  // past the full wait
      if (full[s].phases != w.n / sh.stages + 1 || filled[s] != w.n) {
        return "a warp passed the wrong full phase at chunk " + std::to_string(w.n);
      }
      w.ks = 0;
      continue;
    }
    if (w.pending.size() > 1) w.pending.erase(w.pending.begin(), w.pending.end() - 1);  // warpgroup_wait<1>
    const int set = w.ks % 2;
    if (!w.pending.empty() && w.pending.back().second == set) {
      return "step " + std::to_string(w.ks) + " of chunk " + std::to_string(w.n) + " decodes into a register set in use";
    }
    if (ring::release_due(w.ks, w.released, w.n)) {
      for (const auto& g : w.pending) {
        if (g.first <= w.released) return "chunk " + std::to_string(w.released) + " released under a pending wgmma";
      }
      empty[ring::stage(w.released, sh.stages)].arrive();
      ++w.released;
    }
    w.pending.emplace_back(w.n, set);
    if (++w.ks == steps_of[w.n]) {
      w.ks = -1;
      ++w.n;
      if (w.n % chunks_per_item == 0) w.pending.clear();  // the epilogue's warpgroup_wait<0>
    }
  }
}

TEST(SwapabRing, EveryScheduleOfEveryShapeRunsToTheEndSafely) {
  // The library's shapes (KS, S) and bench/swapab_variants.cu's, with S down to 3; 1 to 13 k steps
  // (one-step chunks, short last chunks), blocks of 0 to 6 items, 8, 12 and 16 consumer warps (two
  // to four warpgroups).
  const int shapes[][2] = {{4, 7}, {4, 5}, {4, 4}, {2, 5}, {2, 12}, {4, 6}, {4, 3}, {2, 8}, {2, 3}, {6, 4}};
  for (const auto& ks_s : shapes) {
    for (int steps = 1; steps <= 13; ++steps) {
      for (int items = 0; items <= 6; ++items) {
        for (int warps : {8, 12, 16}) {
          const Shape sh{ks_s[0], ks_s[1], steps, items, warps};
          for (uint32_t seed = 0; seed < 4; ++seed) ASSERT_EQ(simulate(sh, seed), "") << sh.str() << " seed " << seed;
        }
      }
    }
  }
}

TEST(SwapabRing, TwoStagesWouldNotDo) {
  // The release a chunk late needs a third stage: with two, a one-step item's chunks wait on each
  // other (the reason for the kernel's static_assert S >= 3).
  bool failed = false;
  for (uint32_t seed = 0; seed < 8 && !failed; ++seed) failed = !simulate({4, 2, 1, 4, 8}, seed).empty();
  EXPECT_TRUE(failed);
}

}  // namespace
