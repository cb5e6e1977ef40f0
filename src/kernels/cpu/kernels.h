// The CPU kernel table: one struct of function pointers per instruction set. Kernels are
// single-threaded and work on raw host arrays; threading and shapes live in the ops layer.
#pragma once
#include <cstdint>
#include <vector>

namespace llmq {

// Most activation vectors a GEMV call handles in one pass over the weights.
constexpr int kGemvMaxBatch = 4;

struct CpuKernels {
  const char* isa;  // "ref", "avx2", "avx512"

  // Y[i*ldy + m] = sum_k W[m*K + k] * X[i*K + k]   for i < n (1..kGemvMaxBatch), m in [m0, m1).
  // W is row-major (M, K) in f32, bf16 or f16; X and Y are f32.
  void (*gemv_f32)(const float* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1);
  void (*gemv_bf16)(const uint16_t* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1);
  void (*gemv_f16)(const uint16_t* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1);

  void (*cvt_bf16_f32)(const uint16_t* x, float* y, int64_t n);
  void (*cvt_f16_f32)(const uint16_t* x, float* y, int64_t n);

  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);  // y += a*x
  // out = x / sqrt(mean(x^2) + eps) * w   (Llama RMSNorm; w may be nullptr for no weight)
  void (*rmsnorm)(const float* x, const float* w, float* out, int64_t n, float eps);
  void (*softmax)(float* x, int64_t n);  // in place, max-subtracted
  // out = silu(gate) * up, silu(g) = g / (1 + exp(-g))
  void (*swiglu)(const float* gate, const float* up, float* out, int64_t n);
  // Rotary embedding in rotate-half order (the Hugging Face q/k row order): for each head,
  // pairs (j, j + d/2) rotate by the angle whose cos/sin are cos[j], sin[j], j < d/2.
  void (*rope)(float* x, const float* cos, const float* sin, int n_heads, int head_dim);
};

const CpuKernels& cpu_kernels_ref();
const CpuKernels* cpu_kernels_avx2();    // compiled for AVX2+FMA+F16C
const CpuKernels* cpu_kernels_avx512();  // compiled for AVX-512 F/BW/VL/DQ

// The table chosen for this CPU (dispatch.cpp, the only place that reads CPU features).
// LLMQ_ISA=ref|avx2|avx512 in the environment overrides the choice, for tests and benchmarks.
const CpuKernels& cpu_kernels();
// Every table this CPU can run, reference first (for tests and benchmarks).
std::vector<const CpuKernels*> cpu_kernels_supported();

}  // namespace llmq
