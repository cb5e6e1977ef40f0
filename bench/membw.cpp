// Memory bandwidth of this machine: STREAM triad (a = b + s*c; 3 arrays counted, as STREAM
// does) and a read-only sum (what a GEMV over weights does), with OpenMP threads.
// usage: bench_membw [MiB per array, default 512] [threads, default all]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ops/ops.h"

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 512;
  llmq::ops_set_threads(argc > 2 ? std::atoi(argv[2]) : 0);
  const int threads = llmq::ops_threads();
  const size_t n = mib * (1 << 20) / sizeof(float);
  float *a = (float*)std::aligned_alloc(64, n * 4), *b = (float*)std::aligned_alloc(64, n * 4),
        *c = (float*)std::aligned_alloc(64, n * 4);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (size_t i = 0; i < n; i++) a[i] = 0, b[i] = 1, c[i] = 2;
  using clock = std::chrono::steady_clock;
  double best_triad = 1e30, best_read = 1e30, sink = 0;
  for (int rep = 0; rep < 10; rep++) {
    auto t0 = clock::now();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = b[i] + 3.f * c[i];
    auto t1 = clock::now();
    float s = 0;
#pragma omp parallel for simd num_threads(threads) schedule(static) reduction(+ : s)
    for (size_t i = 0; i < n; i++) s += b[i] + c[i];
    auto t2 = clock::now();
    sink += s;
    best_triad = std::min(best_triad, std::chrono::duration<double>(t1 - t0).count());
    best_read = std::min(best_read, std::chrono::duration<double>(t2 - t1).count());
  }
  double triad = 3.0 * n * 4 / best_triad / 1e9, read = 2.0 * n * 4 / best_read / 1e9;
  std::printf("%-12s %8s %10s %12s\n", "test", "threads", "MiB/array", "GB/s (best)");
  std::printf("%-12s %8d %10zu %12.1f\n", "triad", threads, mib, triad);
  std::printf("%-12s %8d %10zu %12.1f\n", "read", threads, mib, read);
  std::printf("summary: triad %.1f GB/s, read-only %.1f GB/s with %d threads (checksum %g)\n", triad, read, threads,
              sink > 0 ? 1.0 : 0.0);
  return 0;
}
