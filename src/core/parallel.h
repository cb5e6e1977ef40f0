// Parallel loops, and which machinery runs them.
//
// Two backends: OpenMP for long loops (prefill, training, conversion), the spin pool
// (core/spin_pool.h) for the decode step's short, frequent ones, where libgomp's ~3 us per
// region (a futex system call at every join, costly under this host's hypervisor) is a
// tenth of a small matmul. A step uses one or the other throughout: workers of both
// spinning at once would take turns on the same cores. Ops choose by the number of rows
// (tokens) in the batch: up to kDecodeMaxRows is decode-sized.
//
// And no parallel region for a loop not worth it: a `#pragma omp parallel for ... if (c)`
// whose condition is false still enters the OpenMP runtime and runs a team of one: about
// 3 us per loop on this host, paid ~100 times per decoded token (rmsnorm, swiglu and the
// activation quantization of every matmul have one row in decode). These branch in C++.
#pragma once
#include <omp.h>

#include <cstdint>

#include "core/spin_pool.h"

namespace llmq {

// Batches of at most this many rows (tokens) are decode-sized: GEMV kernels, spin pool.
constexpr int64_t kDecodeMaxRows = 16;

// fn(i) for i in [0, n): over `threads` threads (0: the OpenMP default) in contiguous
// equal shares when `parallel` (on the spin pool when `spin`, else OpenMP's static
// schedule), else a plain loop on the calling thread.
template <class Fn>
inline void parallel_for_if(bool parallel, int64_t n, int threads, Fn&& fn, bool spin = false) {
  if (!parallel) {
    for (int64_t i = 0; i < n; i++) fn(i);
    return;
  }
  const int nt = threads > 0 ? threads : omp_get_max_threads();
  if (spin) {
    spin_run(nt, [&](int t, int T) {
      for (int64_t i = n * t / T; i < n * (t + 1) / T; i++) fn(i);
    });
    return;
  }
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; i++) fn(i);
}

}  // namespace llmq
