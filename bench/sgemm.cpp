// OpenBLAS sgemm throughput on the prefill shapes of Llama 3.2 1B (512 tokens): the peak
// that `llmq bench` prefill GFLOP/s is compared with.
// usage: bench_sgemm [threads]
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "ops/ops.h"

int main(int argc, char** argv) {
  llmq::ops_set_threads(argc > 1 ? std::atoi(argv[1]) : 0);
  struct S { int n, m, k; const char* name; };
  const S shapes[] = {{512, 2048, 2048, "q/o"}, {512, 8192, 2048, "gate/up"}, {512, 2048, 8192, "down"}};
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  std::printf("%-8s %6s %6s %6s %10s\n", "shape", "n", "M", "K", "GFLOP/s");
  double best_all = 0;
  for (const auto& s : shapes) {
    std::vector<float> x((size_t)s.n * s.k, 0.01f), w((size_t)s.m * s.k, 0.02f), y((size_t)s.n * s.m);
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
      auto t0 = std::chrono::steady_clock::now();
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.n, s.m, s.k, 1.f, x.data(), s.k, w.data(), s.k, 0.f,
                  y.data(), s.m);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    double gf = 2.0 * s.n * s.m * s.k / best / 1e9;
    best_all = std::max(best_all, gf);
    std::printf("%-8s %6d %6d %6d %10.1f\n", s.name, s.n, s.m, s.k, gf);
  }
  std::printf("summary: sgemm peak %.1f GFLOP/s with %d threads (OPENBLAS_CORETYPE=%s)\n", best_all,
              llmq::ops_threads(), core ? core : "unset");
  return 0;
}
