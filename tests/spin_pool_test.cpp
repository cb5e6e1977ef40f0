// The decode step's fork-join pool (core/spin_pool.h): every item runs exactly once, on
// the threads asked for; nested calls, calls from OpenMP regions and from a second thread
// while the pool is busy run inline; an exception in any thread reaches the caller; workers
// that went to sleep after idling wake for the next job.
#include <gtest/gtest.h>
#include <omp.h>

#include <atomic>
#include <chrono>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/parallel.h"
#include "core/spin_pool.h"

namespace llmq {
namespace {

TEST(SpinPool, EveryItemOnceAnyCounts) {
  for (int nt : {1, 2, 3, 5})
    for (int64_t n : {0, 1, 2, 3, 7, 64, 1000}) {
      std::vector<std::atomic<int>> hits(n);
      spin_for_dynamic(nt, n, [&](int64_t i) { hits[i].fetch_add(1); });
      for (int64_t i = 0; i < n; i++) ASSERT_EQ(hits[i].load(), 1) << "nt " << nt << " n " << n << " item " << i;
      std::vector<std::atomic<int>> hits2(n);
      parallel_for_if(true, n, nt, [&](int64_t i) { hits2[i].fetch_add(1); }, true);
      for (int64_t i = 0; i < n; i++) ASSERT_EQ(hits2[i].load(), 1) << "static nt " << nt << " n " << n;
    }
}

TEST(SpinPool, RunsOnTheThreadsAskedFor) {
  for (int nt : {2, 3, 4}) {
    std::vector<std::atomic<int>> seen(nt);
    std::atomic<int> teams{0};
    std::vector<std::thread::id> ids(nt);
    spin_run(nt, [&](int t, int T) {
      ASSERT_EQ(T, nt);
      seen[t].fetch_add(1);
      ids[t] = std::this_thread::get_id();
      teams.fetch_add(1);
    });
    EXPECT_EQ(teams.load(), nt);
    std::set<std::thread::id> distinct(ids.begin(), ids.end());
    EXPECT_EQ((int)distinct.size(), nt);
    EXPECT_EQ(ids[0], std::this_thread::get_id());  // the caller is thread 0
    for (int t = 0; t < nt; t++) EXPECT_EQ(seen[t].load(), 1);
  }
}

TEST(SpinPool, NestedAndOpenMpCallsRunInline) {
  std::atomic<int> inner_teams{0}, inner_max{0};
  spin_run(2, [&](int, int) {
    spin_run(2, [&](int t, int T) {
      inner_teams.fetch_add(1);
      inner_max.store(std::max(inner_max.load(), T));
      EXPECT_EQ(t, 0);
    });
  });
  EXPECT_EQ(inner_teams.load(), 2);  // once per outer thread, each a team of one
  EXPECT_EQ(inner_max.load(), 1);
  std::atomic<int> from_omp{0};
#pragma omp parallel num_threads(2)
  spin_run(2, [&](int, int T) {
    EXPECT_EQ(T, 1);
    from_omp.fetch_add(1);
  });
  EXPECT_EQ(from_omp.load(), omp_get_max_threads() >= 2 ? 2 : 1);
}

TEST(SpinPool, ExceptionReachesTheCaller) {
  for (int thrower : {0, 1}) {
    EXPECT_THROW(spin_run(2,
                          [&](int t, int) {
                            if (t == thrower) throw std::runtime_error("boom");
                          }),
                 std::runtime_error);
    // The pool still works afterwards.
    std::atomic<int> n{0};
    spin_run(2, [&](int, int) { n.fetch_add(1); });
    EXPECT_EQ(n.load(), 2);
  }
}

TEST(SpinPool, ConcurrentCallersAndSleepingWorkers) {
  // Two threads calling at once: one gets the pool, the other runs inline; every item once.
  std::vector<std::atomic<int>> a(5000), b(5000);
  std::thread other([&] {
    for (int r = 0; r < 20; r++) spin_for_dynamic(2, 250, [&](int64_t i) { b[r * 250 + i].fetch_add(1); });
  });
  for (int r = 0; r < 20; r++) spin_for_dynamic(2, 250, [&](int64_t i) { a[r * 250 + i].fetch_add(1); });
  other.join();
  for (int i = 0; i < 5000; i++) ASSERT_TRUE(a[i].load() == 1 && b[i].load() == 1) << i;
  // Idle past the spin time (1 ms): the worker sleeps and must be woken.
  for (int r = 0; r < 3; r++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    std::atomic<int> n{0};
    spin_run(2, [&](int, int) { n.fetch_add(1); });
    EXPECT_EQ(n.load(), 2);
  }
}

}  // namespace
}  // namespace llmq
