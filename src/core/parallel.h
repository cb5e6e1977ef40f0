// Loops split over OpenMP threads only when worth it. A `#pragma omp parallel for ... if (c)`
// whose condition is false still enters the OpenMP runtime and runs a team of one: about
// 3 us per loop on this host, paid ~100 times per decoded token (rmsnorm, swiglu and the
// activation quantization of every matmul have one row in decode). These branch in C++.
#pragma once
#include <omp.h>

#include <cstdint>

namespace llmq {

// fn(i) for i in [0, n): over `threads` threads (0: the OpenMP default) with a static
// schedule when `parallel`, else a plain loop on the calling thread.
template <class Fn>
inline void parallel_for_if(bool parallel, int64_t n, int threads, Fn&& fn) {
  if (!parallel) {
    for (int64_t i = 0; i < n; i++) fn(i);
    return;
  }
#pragma omp parallel for num_threads(threads > 0 ? threads : omp_get_max_threads()) schedule(static)
  for (int64_t i = 0; i < n; i++) fn(i);
}

}  // namespace llmq
