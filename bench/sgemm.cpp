// Matrix-product throughput on the prefill shapes of Llama 3.2 1B: OpenBLAS sgemm on f32
// weights (the peak that `llmq bench` prefill GFLOP/s is compared with) and, in the same
// run, llmq's op_matmul on bf16 weights (bf16 dot products on AVX512_BF16 CPUs, else
// panels converted for sgemm), at 128 tokens (the bench prompt) and 512.
// usage: bench_sgemm [threads]
#include <cblas.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "kernels/cpu/kernels.h"
#include "ops/ops.h"

using namespace llmq;

namespace {
template <class Fn>
double best_seconds(Fn fn, int reps) {
  double best = 1e30;
  for (int rep = 0; rep < reps; rep++) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
}  // namespace

int main(int argc, char** argv) {
  ops_set_threads(argc > 1 ? std::atoi(argv[1]) : 0);
  struct S { int n, m, k; const char* name; };
  const S shapes[] = {{128, 2048, 2048, "q/o"},    {128, 8192, 2048, "gate/up"}, {128, 2048, 8192, "down"},
                      {512, 2048, 2048, "q/o"},    {512, 8192, 2048, "gate/up"}, {512, 2048, 8192, "down"}};
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  std::printf("%-8s %6s %6s %6s %14s %14s %8s\n", "shape", "n", "M", "K", "sgemm GFLOP/s", "bf16 GFLOP/s", "ratio");
  double best_all = 0, best_bf16 = 0, sum_ratio = 0;
  for (const auto& s : shapes) {
    std::vector<float> x((size_t)s.n * s.k), w((size_t)s.m * s.k), y((size_t)s.n * s.m);
    for (size_t i = 0; i < x.size(); i++) x[i] = 0.01f * (float)((i * 7919) % 201) - 1.f;
    for (size_t i = 0; i < w.size(); i++) w[i] = 0.001f * (float)((i * 104729) % 401) - 0.2f;
    const double sg = best_seconds([&] {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.n, s.m, s.k, 1.f, x.data(), s.k, w.data(), s.k, 0.f,
                  y.data(), s.m);
    }, 5);
    Tensor wb = Tensor::empty(DType::BF16, {s.m, s.k}), xt = Tensor::empty(DType::F32, {s.n, s.k}),
           yt = Tensor::empty(DType::F32, {s.n, s.m});
    for (size_t i = 0; i < w.size(); i++) wb.host<uint16_t>()[i] = f32_to_bf16(w[i]);
    std::copy(x.begin(), x.end(), xt.host<float>());
    const double bf = best_seconds([&] { op_matmul(yt, xt, wb); }, 5);
    const double flop = 2.0 * s.n * s.m * s.k, gs = flop / sg / 1e9, gb = flop / bf / 1e9;
    best_all = std::max(best_all, gs);
    best_bf16 = std::max(best_bf16, gb);
    sum_ratio += gb / gs;
    std::printf("%-8s %6d %6d %6d %14.1f %14.1f %7.2fx\n", s.name, s.n, s.m, s.k, gs, gb, gb / gs);
  }
  std::printf("summary: sgemm peak %.1f GFLOP/s, bf16 op_matmul peak %.1f GFLOP/s (%s, mean %.2fx sgemm) with %d "
              "threads (OPENBLAS_CORETYPE=%s)\n",
              best_all, best_bf16, cpu_kernels().gemm_bf16 && ops_bf16_dot() ? "bf16 dot products" : "f32 panels",
              sum_ratio / (sizeof(shapes) / sizeof(shapes[0])), ops_threads(), core ? core : "unset");
  return 0;
}
