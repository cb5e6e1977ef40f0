// Memory bandwidth of this machine: STREAM triad (a = b + s*c; 3 arrays counted, as STREAM
// does) and two read-only sums (what a GEMV over weights does), with OpenMP threads: b + c
// element by element (two streams per thread), and four streams per thread (each thread
// sums the halves of its share of b and of c side by side, prefetching 1 KiB or 2 KiB ahead,
// the way the decode kernels read weights; 1 KiB read ~5-10% faster here). The summary's
// read-only figure, the floor the decode benchmarks divide by, is the fastest of the three.
// usage: bench_membw [MiB per array, default 512] [threads, default all]
#include <omp.h>

#include <algorithm>
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
  double best_triad = 1e30, best_read = 1e30, best_read4[2] = {1e30, 1e30}, sink = 0;
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
    for (int d = 0; d < 2; d++) {  // prefetch distance 1 KiB, 2 KiB
      const size_t ahead = d == 0 ? 256 : 512;  // floats
      auto t3 = clock::now();
      float s4 = 0;
#pragma omp parallel num_threads(threads) reduction(+ : s4)
      {
        const size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        const size_t per = n / nt / 32 * 16;  // half of this thread's share, whole 64-byte lines
        const float* q[4] = {b + t * 2 * per, b + t * 2 * per + per, c + t * 2 * per, c + t * 2 * per + per};
        float acc[4][16] = {};
        for (size_t i = 0; i < per; i += 16) {
          for (int j = 0; j < 4; j++) {
            __builtin_prefetch(q[j] + i + ahead);
#pragma omp simd
            for (int l = 0; l < 16; l++) acc[j][l] += q[j][i + l];
          }
        }
        for (int j = 0; j < 4; j++)
          for (int l = 0; l < 16; l++) s4 += acc[j][l];
      }
      auto t4 = clock::now();
      sink += s4;
      best_read4[d] = std::min(best_read4[d], std::chrono::duration<double>(t4 - t3).count());
    }
    best_triad = std::min(best_triad, std::chrono::duration<double>(t1 - t0).count());
    best_read = std::min(best_read, std::chrono::duration<double>(t2 - t1).count());
  }
  const size_t read4_floats = 4 * (n / threads / 32 * 16) * threads;
  double triad = 3.0 * n * 4 / best_triad / 1e9, read2 = 2.0 * n * 4 / best_read / 1e9,
         read4 = 4.0 * read4_floats / best_read4[0] / 1e9, read4b = 4.0 * read4_floats / best_read4[1] / 1e9,
         read = std::max({read2, read4, read4b});
  std::printf("%-12s %8s %10s %12s\n", "test", "threads", "MiB/array", "GB/s (best)");
  std::printf("%-12s %8d %10zu %12.1f\n", "triad", threads, mib, triad);
  std::printf("%-12s %8d %10zu %12.1f\n", "read", threads, mib, read2);
  std::printf("%-12s %8d %10zu %12.1f\n", "read 4x 1K", threads, mib, read4);
  std::printf("%-12s %8d %10zu %12.1f\n", "read 4x 2K", threads, mib, read4b);
  std::printf("summary: triad %.1f GB/s, read-only %.1f GB/s with %d threads (checksum %g)\n", triad, read, threads,
              sink > 0 ? 1.0 : 0.0);
  return 0;
}
