// GEMV throughput per kernel table and weight dtype on Llama 3.2 1B shapes, as GB/s of
// weights streamed, next to the read-only memory bandwidth measured in the same run.
// usage: bench_kernels [threads]
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/kernels.h"
#include "ops/ops.h"

using namespace llmq;

int main(int argc, char** argv) {
  ops_set_threads(argc > 1 ? std::atoi(argv[1]) : 0);
  const int threads = ops_threads();
  // (M, K) of the big matmuls of one 1B layer: gate/up (8192 x 2048), down (2048 x 8192), q (2048 x 2048).
  struct Shape { int64_t M, K; const char* name; };
  const Shape shapes[] = {{8192, 2048, "gate/up"}, {2048, 8192, "down"}, {2048, 2048, "q/o"}};
  // Enough distinct matrices (~1 GB) that nothing is served from cache.
  using clock = std::chrono::steady_clock;
  std::printf("%-8s %-6s %-8s %8s %12s %10s\n", "isa", "dtype", "shape", "n", "us/call", "GB/s");
  double best_bf16 = 0;
  for (const auto* k : cpu_kernels_supported()) {
    for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
      for (const auto& s : shapes) {
        const int copies = (int)((1ull << 30) / dtype_bytes(dt, s.M * s.K));
        std::vector<Tensor> W;
        for (int c = 0; c < copies; c++) {
          W.push_back(Tensor::empty(dt, {s.M, s.K}));
          std::vector<uint8_t> fill(W.back().nbytes(), 0x3c);
          std::memcpy(W.back().host_data(), fill.data(), fill.size());
        }
        for (int n : {1, 4}) {
          std::vector<float> x(n * s.K, 0.01f), y(n * s.M);
          double best = 1e30;
          for (int rep = 0; rep < 3; rep++) {
            auto t0 = clock::now();
            for (int c = 0; c < copies; c++) {
              const Tensor& w = W[c];
#pragma omp parallel num_threads(threads)
              {
                int t = omp_get_thread_num(), nt = omp_get_num_threads();
                int64_t per = (s.M + nt - 1) / nt, m0 = t * per, m1 = std::min(s.M, m0 + per);
                if (dt == DType::F32) k->gemv_f32(w.host<float>(), x.data(), y.data(), s.K, n, s.M, m0, m1);
                if (dt == DType::BF16) k->gemv_bf16(w.host<uint16_t>(), x.data(), y.data(), s.K, n, s.M, m0, m1);
                if (dt == DType::F16) k->gemv_f16(w.host<uint16_t>(), x.data(), y.data(), s.K, n, s.M, m0, m1);
              }
            }
            best = std::min(best, std::chrono::duration<double>(clock::now() - t0).count() / copies);
          }
          double gbs = dtype_bytes(dt, s.M * s.K) / best / 1e9;
          if (dt == DType::BF16 && n == 1 && std::string(k->isa) == cpu_kernels().isa && s.M == 8192) best_bf16 = gbs;
          std::printf("%-8s %-6s %-8s %8d %12.1f %10.1f\n", k->isa, std::string(dtype_name(dt)).c_str(), s.name, n,
                      best * 1e6, gbs);
        }
      }
    }
  }
  std::printf("summary: %s bf16 GEMV (8192x2048, n=1) streams %.1f GB/s with %d threads\n", cpu_kernels().isa, best_bf16,
              threads);
  return 0;
}
