// Counter-based random numbers: element i of stream (seed, key) is the same whatever order
// or thread computes it, so parallel and streamed initialisation is reproducible.
#pragma once
#include <cmath>
#include <cstdint>
#include <string_view>

namespace llmq {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline uint64_t hash_str(std::string_view s) {  // FNV-1a
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

// Uniform in [0, 1) with 53 random bits.
inline double rng_uniform(uint64_t stream, uint64_t i) {
  return (double)(splitmix64(stream ^ splitmix64(i)) >> 11) * 0x1.0p-53;
}

// Standard normal by Box-Muller from two uniforms of the counter.
inline double rng_normal(uint64_t stream, uint64_t i) {
  double u1 = rng_uniform(stream, 2 * i), u2 = rng_uniform(stream, 2 * i + 1);
  return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(6.283185307179586 * u2);
}

// Sequential generator for sampling (state is one counter, trivially saved and restored).
struct Rng {
  uint64_t seed = 0, counter = 0;
  double uniform() { return rng_uniform(seed, counter++); }
};

}  // namespace llmq
