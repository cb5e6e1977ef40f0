// spin_pool.h: workers spinning on a generation counter, a futex sleep after ~1 ms idle.
#include "core/spin_pool.h"

#include <immintrin.h>
#include <omp.h>
#include <pthread.h>

#include <chrono>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace llmq {

namespace {

struct Pool {
  // One cache line for a job's hand-over: the job (written by the caller before it bumps
  // gen, read by the workers after they see it), gen and the count of workers yet to
  // finish. Each crossing between the cores moves this one line (~0.1 us here).
  struct alignas(64) {
    void (*call)(const void*, int, int) = nullptr;
    const void* ctx = nullptr;
    int nt = 0;
    std::atomic<uint32_t> gen{0};
    std::atomic<int> pending{0};
  } job;
  int workers = 0;
  std::atomic<bool> oversubscribed{false};  // more threads (workers + caller) than cores
  alignas(64) std::atomic<int> sleepers{0};
  std::mutex err_mu;
  std::exception_ptr err;
};

Pool* g_pool = nullptr;        // leaked at exit (workers may be asleep in it)
std::mutex g_run_mu;           // one caller at a time; others run their job alone
thread_local bool tl_in_job = false;

// A worker idle this long sleeps until woken (its next job then pays one system call).
constexpr auto kSpinFor = std::chrono::milliseconds(1);

void record(Pool& p) {
  std::lock_guard<std::mutex> lk(p.err_mu);
  if (!p.err) p.err = std::current_exception();
}

void worker(Pool* p, int t, uint32_t seen) {
  tl_in_job = true;  // a worker's own nested spin_run calls run inline
  for (;;) {
    uint32_t g;
    unsigned spins = 0;
    auto idle_since = std::chrono::steady_clock::now();
    while ((g = p->job.gen.load(std::memory_order_acquire)) == seen) {
      if (p->oversubscribed.load(std::memory_order_relaxed)) std::this_thread::yield();  // more threads than cores: let them run
      else _mm_pause();
      if (++spins % 4096 == 0 && std::chrono::steady_clock::now() - idle_since > kSpinFor) {
        // Dekker with spin_run: the caller bumps gen then reads sleepers (both seq_cst), so
        // either it sees this sleeper and notifies, or this wait sees the new gen.
        p->sleepers.fetch_add(1, std::memory_order_seq_cst);
        p->job.gen.wait(seen, std::memory_order_seq_cst);
        p->sleepers.fetch_sub(1, std::memory_order_seq_cst);
        idle_since = std::chrono::steady_clock::now();
      }
    }
    seen = g;
    if (t < p->job.nt) {
      try {
        p->job.call(p->job.ctx, t, p->job.nt);
      } catch (...) {
        record(*p);
      }
    }
    // Every worker acknowledges every job (also those it sits out), so none can lag behind
    // into the next job's fields.
    p->job.pending.fetch_sub(1, std::memory_order_release);
  }
}

// The pool with at least n workers (called with g_run_mu held, no job running).
Pool& pool_with(int n) {
  if (!g_pool) {
    g_pool = new Pool();
    static bool once = [] {
      // A forked child has none of the parent's threads: start a fresh pool there.
      pthread_atfork(nullptr, nullptr, [] { g_pool = nullptr; });
      return true;
    }();
    (void)once;
  }
  Pool& p = *g_pool;
  while (p.workers < n) {
    p.oversubscribed.store(p.workers + 2 > (int)std::thread::hardware_concurrency(), std::memory_order_relaxed);
    std::thread(worker, &p, p.workers + 1, p.job.gen.load()).detach();
    p.workers++;
  }
  return p;
}

}  // namespace

void spin_run(int nt, void (*call)(const void*, int, int), const void* ctx) {
  std::unique_lock<std::mutex> lk(g_run_mu, std::defer_lock);
  if (nt <= 1 || tl_in_job || omp_in_parallel() || !lk.try_lock()) return call(ctx, 0, 1);
  Pool& p = pool_with(nt - 1);
  p.job.call = call;
  p.job.ctx = ctx;
  p.job.nt = nt;
  p.err = nullptr;
  p.job.pending.store(p.workers, std::memory_order_relaxed);
  p.job.gen.fetch_add(1, std::memory_order_seq_cst);
  if (p.sleepers.load(std::memory_order_seq_cst) > 0) p.job.gen.notify_all();
  tl_in_job = true;
  try {
    call(ctx, 0, nt);
  } catch (...) {
    record(p);
  }
  tl_in_job = false;
  while (p.job.pending.load(std::memory_order_acquire) > 0) _mm_pause();
  if (p.err) std::rethrow_exception(p.err);
}

}  // namespace llmq
