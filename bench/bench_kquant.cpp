// k-quant GEMV/prefill throughput per kernel table and type on Llama 3.2 1B's gate/up shape
// (8192 x 2048): GB/s of weights streamed from memory (enough copies, ~1 GB, that nothing
// is served from cache) and from cache (one 512-row slice, repeated: the kernel's compute
// rate), and prefill GOP/s for 64 tokens. Activations are quantized outside the timed loop.
// usage: bench_kquant [threads]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/rng.h"
#include "kernels/cpu/kernels.h"
#include "io/gguf.h"
#include "ops/ops.h"
#include "quant/ggml_blocks.h"
#include "quant/quant.h"

using namespace llmq;

int main(int argc, char** argv) {
  ops_set_threads(argc > 1 ? std::atoi(argv[1]) : 0);
  const int threads = ops_threads();
  using clock = std::chrono::steady_clock;
  const int64_t M = 8192, K = 2048;
  std::printf("%-10s %-5s %6s %5s %12s %10s\n", "isa", "type", "where", "n", "us/call", "GB/s | GOP/s");
  double sum_q4 = 0, sum_q6 = 0;
  for (const auto* k : cpu_kernels_supported()) {
    if (std::string(k->isa) == "ref") continue;  // the scalar kernel: tests only
    for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
      const DType dt = kquant_dtype(t);
      const size_t bytes = dtype_bytes(dt, M * K);
      std::vector<float> w((size_t)K);
      std::vector<uint8_t> proto(bytes);
      const size_t rb = dtype_bytes(dt, K);
      for (int64_t r = 0; r < M; r++) {
        for (int64_t e = 0; e < K; e++) w[(size_t)e] = (float)rng_normal(r, (uint64_t)e) * 0.02f;
        quantize_row_kquant(t, w.data(), proto.data() + r * rb, K);
      }
      const int copies = (int)std::max<size_t>(2, (1ull << 30) / bytes);
      std::vector<std::vector<uint8_t>> W(copies, proto);
      for (int n : {1, 4, 64}) {
        std::vector<float> x((size_t)(n * K)), y((size_t)(n * M));
        for (size_t i = 0; i < x.size(); i++) x[i] = (float)rng_normal(7, i);
        KQActs a;
        quantize_acts_kq(x.data(), n, K, a);
        for (int hot = 0; hot < (n == 64 ? 1 : 2); hot++) {
          const int64_t rows = hot ? 512 : M;
          const int reps = hot ? 200 : copies;
          double best = 1e30;
          for (int rep = 0; rep < 3; rep++) {
            auto t0 = clock::now();
            for (int c = 0; c < reps; c++) {
              const KQMatView wv{W[hot ? 0 : c].data(), (int64_t)rb, K, (int)t};
#pragma omp parallel num_threads(threads)
              {
                const int th = omp_get_thread_num(), nt = omp_get_num_threads();
                const int64_t per = (rows + nt - 1) / nt, m0 = std::min(rows, th * per), m1 = std::min(rows, m0 + per);
                k->matmul_kq(wv, a.view(), y.data(), n, M, m0, m1);
              }
            }
            best = std::min(best, std::chrono::duration<double>(clock::now() - t0).count() / reps);
          }
          const double rate = n == 64 ? 2.0 * rows * K * n / best / 1e9 : (double)rows * rb / best / 1e9;
          if (n == 1 && !hot && std::string(k->isa) == cpu_kernels().isa)
            (t == GgmlType::Q4_K ? sum_q4 : sum_q6) = t == GgmlType::Q4_K || t == GgmlType::Q6_K ? rate : (t == GgmlType::Q4_K ? sum_q4 : sum_q6);
          std::printf("%-10s %-5s %6s %5d %12.1f %10.1f\n", k->isa, ggml_type_name(t), n == 64 ? "prefill" : hot ? "cache" : "memory",
                      n, best * 1e6, rate);
        }
      }
    }
  }
  std::printf("summary: %s k-quant GEMV (8192x2048, n=1, %d threads) streams %.1f GB/s (q4_k), %.1f GB/s (q6_k)\n",
              cpu_kernels().isa, threads, sum_q4, sum_q6);
  return 0;
}
