// GPTQ on one layer: Hessian accumulation from calibration batches, then the quantization,
// timed, for comparison with bench/gptq_peer.py (the same algorithm in PyTorch).
// usage: bench_gptq [M K] [samples seq_len] [bits group]    (defaults 4096 4096 128 2048 4 128)
// Inputs: a pool of 16 random batches of seq_len x K (generated before timing), cycled
// through `samples` times, as the reference adds one calibration sequence at a time.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "ops/ops.h"
#include "quant/gptq.h"

int main(int argc, char** argv) {
  using namespace llmq;
  const int64_t M = argc > 2 ? std::atoll(argv[1]) : 4096, K = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int64_t S = argc > 4 ? std::atoll(argv[3]) : 128, T = argc > 4 ? std::atoll(argv[4]) : 2048;
  const int bits = argc > 6 ? std::atoi(argv[5]) : 4;
  const int64_t group = argc > 6 ? std::atoll(argv[6]) : 128;
  ops_set_threads(0);
  std::mt19937_64 rng(1);
  std::normal_distribution<float> nd;
  std::vector<float> W((size_t)(M * K));
  for (auto& v : W) v = 0.02f * nd(rng);
  const int pool = 16;
  std::vector<std::vector<float>> X(pool, std::vector<float>((size_t)(T * K)));
  for (auto& b : X)
    for (auto& v : b) v = nd(rng);
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  GptqHessian H(K);
  for (int64_t s = 0; s < S; s++) H.add(X[s % pool].data(), T);
  const auto t1 = clock::now();
  GptqOptions o;
  o.bits = bits;
  o.group = group;
  const GptqResult r = gptq_quantize(W.data(), M, K, H, o);
  const auto t2 = clock::now();
  const double th = std::chrono::duration<double>(t1 - t0).count(), tq = std::chrono::duration<double>(t2 - t1).count();
  std::printf("%-10s %8s %8s %10s %10s %10s\n", "engine", "M", "K", "tokens", "hessian s", "quant s");
  std::printf("%-10s %8ld %8ld %10ld %10.2f %10.2f\n", "llmq", (long)M, (long)K, (long)(S * T), th, tq);
  std::printf("summary: llmq gptq %ldx%ld, %ld tokens, %d-bit g%ld: %.2f s (hessian %.2f s, quantize %.2f s) with %d threads, loss %.4g\n",
              (long)M, (long)K, (long)(S * T), bits, (long)group, th + tq, th, tq, ops_threads(), r.loss);
  return 0;
}
