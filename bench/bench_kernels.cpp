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
#include "quant/quant.h"
#include <cstring>
#include <string>

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
                int64_t per = (s.M / kQPanel + nt - 1) / nt * kQPanel, m0 = std::min(s.M, t * per), m1 = std::min(s.M, m0 + per);
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
  // Integer-quantized GEMV: 8-bit per-channel and 4-bit group-128 codes (bytes streamed =
  // codes + scales + zero terms), int8 activation blocks quantized once per call outside the
  // timed loop, as op_matmul does per token.
  double best_q4 = 0, best_q8 = 0;
  for (const auto* k : cpu_kernels_supported()) {
    for (int bits : {8, 4}) {
      for (const auto& s : shapes) {
        const int64_t G = bits == 8 ? s.K : 128, ng = s.K / G;
        std::vector<uint8_t> codes(s.M * s.K);
        for (size_t i = 0; i < codes.size(); i++) codes[i] = (uint8_t)((i * 2654435761u >> 7) & ((1u << bits) - 1));
        // f16 scales (as checkpoints store them), so the compact scale layout is measured.
        std::vector<float> sc(s.M * ng, f16_to_f32(f32_to_f16(0.01f))), z(s.M * ng, (float)(1 << (bits - 1)));
        const Tensor proto = make_quant_tensor(s.M, s.K, bits, G, true, false, codes.data(), sc.data(), z.data());
        const size_t bytes = (size_t)weight_bytes(proto);
        const int copies = (int)std::max<size_t>(2, (1ull << 30) / bytes);
        std::vector<Tensor> W;
        for (int c = 0; c < copies; c++) {
          Tensor t = Tensor::empty(proto.dtype(), proto.shape());
          std::memcpy(t.host_data(), proto.host_data(), proto.nbytes());
          t.set_quant(std::make_shared<QuantInfo>(*proto.quant()));
          W.push_back(t);
        }
        for (int n : {1, 4}) {
          std::vector<float> x(n * s.K), y(n * s.M);
          for (size_t i = 0; i < x.size(); i++) x[i] = (float)((int)(i % 17) - 8) * 0.01f;
          QActs a;
          quantize_acts(x.data(), n, s.K, G, false, a);
          const QActView av = a.view(0, s.K, G);
          double best = 1e30;
          for (int rep = 0; rep < 3; rep++) {
            auto t0 = clock::now();
            for (int c = 0; c < copies; c++) {
              const QMatView wv = quant_view(W[c]);
#pragma omp parallel num_threads(threads)
              {
                int t = omp_get_thread_num(), nt = omp_get_num_threads();
                int64_t per = (s.M / kQPanel + nt - 1) / nt * kQPanel, m0 = std::min(s.M, t * per), m1 = std::min(s.M, m0 + per);
                k->matmul_q(wv, av, y.data(), n, s.M, m0, m1);
              }
            }
            best = std::min(best, std::chrono::duration<double>(clock::now() - t0).count() / copies);
          }
          const double gbs = (double)bytes / best / 1e9;
          if (n == 1 && std::string(k->isa) == cpu_kernels().isa && s.M == 8192) (bits == 4 ? best_q4 : best_q8) = gbs;
          std::printf("%-8s %-6s %-8s %8d %12.1f %10.1f\n", k->isa, bits == 8 ? "q8" : "q4g128", s.name, n, best * 1e6, gbs);
        }
      }
    }
  }
  std::printf("summary: %s quantized GEMV (8192x2048, n=1) streams %.1f GB/s (q8), %.1f GB/s (q4 g128)\n",
              cpu_kernels().isa, best_q8, best_q4);
  std::printf("summary: %s bf16 GEMV (8192x2048, n=1) streams %.1f GB/s with %d threads\n", cpu_kernels().isa, best_bf16,
              threads);
  return 0;
}
