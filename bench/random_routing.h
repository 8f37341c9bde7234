// A random routing grouped as route() groups it, for the C++ layer benchmarks in bench/.
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

// Each token's k experts drawn uniformly without repeats; slot s = t k + j. Rows grouped by expert,
// in token order within an expert: offsets [E + 1], gather [P] (the token of each row), scatter [P]
// (the row of each slot).
struct RandomRouting {
  std::vector<int32_t> offsets, gather, scatter;
};

inline RandomRouting random_routing(int T, int E, int k, std::mt19937& rng) {
  const int64_t P = static_cast<int64_t>(T) * k;
  std::vector<int32_t> choice(P), experts(E);
  for (int t = 0; t < T; ++t) {
    for (int e = 0; e < E; ++e) experts[e] = e;
    for (int j = 0; j < k; ++j) {
      std::swap(experts[j], experts[j + rng() % (E - j)]);
      choice[static_cast<int64_t>(t) * k + j] = experts[j];
    }
  }
  RandomRouting r{std::vector<int32_t>(E + 1, 0), std::vector<int32_t>(P), std::vector<int32_t>(P)};
  for (int32_t e : choice) ++r.offsets[e + 1];
  for (int e = 0; e < E; ++e) r.offsets[e + 1] += r.offsets[e];
  std::vector<int32_t> next(r.offsets.begin(), r.offsets.end() - 1);
  for (int64_t s = 0; s < P; ++s) {
    const int32_t row = next[choice[s]]++;
    r.gather[row] = static_cast<int32_t>(s / k);
    r.scatter[s] = row;
  }
  return r;
}
