// A fork-join pool for the decode step's many short parallel regions.
//
// Why not OpenMP there: every libgomp barrier (the join of each region, explicit barriers)
// ends in a futex system call, even with OMP_WAIT_POLICY=active, and a system call is
// expensive under this host's hypervisor: a region costs ~3.2 us against a 0.12-0.17 us
// round trip of one cache line between the two cores. Decoding one token of Llama 3.2 1B
// runs ~80 regions (every matmul, attention per layer), some only 40 us long.
//
// Here the workers spin on a generation counter (pause loop) and sleep (futex) only after
// about a millisecond without work, and the caller is woken by no system call at all while
// they spin. A region is ~0.3-0.6 us. Prefill keeps OpenMP (OpenBLAS's sgemm uses its
// threads; two pools spinning at once on two cores would steal each other's time): use this
// only for work that is short and frequent.
#pragma once
#include <atomic>
#include <cstdint>

namespace llmq {

// fn(t, nt) on nt threads (the calling thread is t = 0); returns when all have returned.
// nt <= 1, or a call from inside a pool job or an OpenMP region, runs fn(0, 1) on the
// caller. An exception from any thread is rethrown here (the first one).
void spin_run(int nt, void (*call)(const void* ctx, int t, int nt), const void* ctx);

template <class Fn>
void spin_run(int nt, const Fn& fn) {
  spin_run(nt, [](const void* c, int t, int n) { (*static_cast<const Fn*>(c))(t, n); }, &fn);
}

// fn(i) for i in [0, n) on up to nt threads, items handed out one at a time from a shared
// counter (a thread slowed by a neighbour on a shared host takes fewer).
template <class Fn>
void spin_for_dynamic(int nt, int64_t n, const Fn& fn) {
  if (n <= 0) return;
  if (n == 1 || nt <= 1) {
    for (int64_t i = 0; i < n; i++) fn(i);
    return;
  }
  alignas(64) std::atomic<int64_t> next{0};
  spin_run(nt < n ? nt : (int)n, [&](int, int) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n; i = next.fetch_add(1, std::memory_order_relaxed))
      fn(i);
  });
}
}  // namespace llmq
