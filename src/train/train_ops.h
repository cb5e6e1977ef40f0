// Training ops as explicit forward/backward pairs (llm.c's style), templated on the float
// type: float for training, double for the gradient checks against PyTorch. Parameter
// gradients accumulate (+=, so gradient accumulation is free); activation gradients are
// assigned (=). Shapes in comments: N = rows (batch x time), C = model dim.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "train/qat.h"

namespace llmq::train {

// out (N, C) = table[tok[n]]; table (V, C).
template <class T> void embedding_forward(T* out, const int32_t* tok, const T* table, int64_t N, int64_t C);
// dtable[tok[n]] += dout[n] (nothing when dtable is nullptr: frozen)
template <class T> void embedding_backward(T* dtable, const T* dout, const int32_t* tok, int64_t N, int64_t C);

// y += x (residual connections, gradient sums), over the threads.
template <class T> void add_into(T* y, const T* x, int64_t n);
// sum of x^2 in double over the threads, in fixed chunks summed in order, so the value does
// not depend on the thread count (the gradient norm; resumes compare it bit for bit).
double sum_squares(const float* x, int64_t n);
// x *= s over the threads (gradient clipping).
void scale_in_place(float* x, int64_t n, float s);

// out = x * rstd * w, rstd (N) = 1/sqrt(mean(x^2) + eps)
template <class T> void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t C, double eps);
// dx = rstd*w*dout - x * rstd^3/C * sum_j(dout_j w_j x_j);  dw += sum_n dout*x*rstd (dw nullptr: frozen)
template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N, int64_t C);

// The precision of the training matmuls. bf16: both operands of every product rounded to
// bfloat16 (round to nearest even), products exact, sums in f32 (AVX512_BF16's vdpbf16ps
// through CpuKernels::gemm_bf16_rows where the CPU has it; elsewhere the rounded operands go
// to sgemm, the same products). What is stored (weights, activations, gradients) stays f32.
// For T = double, bf16 rounds the operands and multiplies in double: the float64 reference.
enum class Precision { F32, BF16 };
Precision precision_parse(const std::string& s);  // throws a plain error on anything else

// out (N, M) = x (N, K) @ W (M, K)^T     (BLAS sgemm / dgemm, or bf16 products)
// W_packed: W already packed by pack_weight_bf16(W, M, K, false) (bf16 on a CPU with the
// bf16 product only; nullptr: packed here).
template <class T>
void matmul_forward(T* out, const T* x, const T* W, int64_t N, int64_t K, int64_t M, Precision prec = Precision::F32,
                    const uint16_t* W_packed = nullptr);
// dx (N, K) = dout @ W (dx may be nullptr: not needed);  dW (M, K) += dout^T @ x
// W_packed_t: pack_weight_bf16(W, M, K, true), as above.
template <class T>
void matmul_backward(T* dx, T* dW, const T* dout, const T* x, const T* W, int64_t N, int64_t K, int64_t M,
                     Precision prec = Precision::F32, const uint16_t* W_packed_t = nullptr);
// A weight (M, K) packed once for many bf16 products (the output head's row chunks, which
// otherwise repack all of it per chunk): for matmul_forward, or (transposed) for
// matmul_backward's dx. False, out untouched, where there is no bf16 product kernel.
bool pack_weight_bf16(const float* W, int64_t M, int64_t K, bool transposed, std::vector<uint16_t>& out);

// What a LoRA/DoRA adapter's forward keeps for its backward (one linear, one forward).
template <class T>
struct AdapterSaved {
  std::vector<T> u;     // (N, r): A xd
  std::vector<T> y0;    // DoRA: (N, out) W xd + s B A xd, the output before the magnitude scaling
  std::vector<T> norm;  // DoRA: (out) ||W + s B A|| per output row (detached from the gradient)
  std::vector<T> c;     // DoRA: (out) mag / norm
};

// A low-rank adapter beside a frozen linear, as PEFT defines it (xd = dropout(x), s = scale):
//   LoRA: y = W x + s B A xd
//   DoRA: y = W x + (c - 1) W xd + c s B A xd,  c = m / ||W + s B A||_row (the norm detached),
//         which is m (W + s B A) x / ||W + s B A|| when there is no dropout.
// The row norms come from ||W_j||^2 + 2 s B_j (W A^T)_j + s^2 B_j (A A^T) B_j^T: no dense
// B A (out x in) is formed. Adapter products run in f32 (double for T = double) whatever the
// base's precision: they are a few percent of the work.
template <class T>
struct Adapter {
  const T *A, *B;  // (r, in), (out, r)
  T *dA, *dB;      // accumulated (+=); nullptr: not trained
  int64_t r;
  double scale;                    // alpha / r, or alpha / sqrt(r) (rsLoRA)
  const T* mag = nullptr;          // DoRA: magnitude (out); nullptr: LoRA
  T* dmag = nullptr;               // DoRA: its gradient (+=)
  double dropout = 0;              // probability; the mask is a hash of (mask_seed, element)
  uint64_t mask_seed = 0;          // the same in forward and backward of one micro-batch
  AdapterSaved<T>* saved = nullptr;  // written by forward, read by backward
};

// A training linear layer, y (N, out) = x (N, in) @ W^T: the one place a block's products go
// through (DESIGN.md, invariant 3), so what a linear is (its precision; a frozen or
// quantized base with an adapter, fake quantizers) changes here and not in the block code.
template <class T>
struct Linear {
  const T* W;  // (out, in)
  T* dW;       // (out, in) gradient, accumulated; nullptr: frozen
  int64_t in, out;
  Precision prec = Precision::F32;
  const uint16_t* packed = nullptr;    // bf16: W packed for forward (pack_weight_bf16), or nullptr
  const uint16_t* packed_t = nullptr;  // bf16: W packed for backward's dx, or nullptr
  const Adapter<T>* ad = nullptr;      // LoRA/DoRA beside a frozen W (dW nullptr), or nullptr
  // QAT (train/qat.h): W per output channel and x per token pass through LLM-QAT's fake
  // quantizers (w_bits, a_bits; kv_bits is the attention's) with their straight-through
  // gradients; nullptr or all off: the plain product. Not with an adapter.
  const FakeQuant* fq = nullptr;
};
// DoRA's initial magnitude: the row norms ||W_j|| of the base the model runs (a dequantized
// one for a quantized base), summed exactly as forward sums them, so a fresh DoRA adapter
// (B = 0) scales every row by exactly 1 and changes no output bit.
template <class T> void dora_row_norms(const T* W, int64_t out, int64_t in, T* norm);
// ||W_j + s (B A)_j|| for every row j of W (out, in), A (r, in), B (out, r), without forming B A.
template <class T>
void dora_weight_norms(const T* W, const T* A, const T* B, int64_t r, double s, int64_t in, int64_t out, T* norm);
template <class T> void linear_forward(T* y, const T* x, const Linear<T>& L, int64_t N);
// dx (N, in) assigned (nullptr: not needed); L.dW += dy^T x.
template <class T> void linear_backward(T* dx, const T* dy, const T* x, const Linear<T>& L, int64_t N);
// Several linears of one input (q/k/v of ln1, gate/up of ln2), the same in and precision:
// y_i = x W_i^T; backward dx = sum_i dy_i W_i (assigned, summed inside the products: no
// temporary) and each W_i's dW += dy_i^T x. In bf16, x is converted once for all of them.
template <class T> struct LinearOut { T* y; const Linear<T>* L; };
template <class T> struct LinearGrad { const T* dy; const Linear<T>* L; };
template <class T> void linears_forward(std::initializer_list<LinearOut<T>> outs, const T* x, int64_t N);
template <class T> void linears_backward(T* dx, std::initializer_list<LinearGrad<T>> grads, const T* x, int64_t N);

// Rotate-half RoPE in place on x (N, heads, hd); row n has position pos[n]; cos/sin tables
// (max_pos, hd/2). backward rotates by the opposite angle (the rotation is orthogonal).
template <class T>
void rope_forward(T* x, const int32_t* pos, const T* cos, const T* sin, int64_t N, int64_t heads, int64_t hd);
template <class T>
void rope_backward(T* dx, const int32_t* pos, const T* cos, const T* sin, int64_t N, int64_t heads, int64_t hd);

// Causal grouped-query attention over B sequences of length Tn, in row tiles (train_ops.cpp):
// q (B, Tn, H, hd), k/v (B, Tn, KV, hd) -> out (B, Tn, H, hd); lse (B, H, Tn) keeps each
// row's log-sum-exp of its scores, from which backward recomputes the probabilities (no
// (T, T) matrix is kept).
template <class T>
void attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H, int64_t KV,
                       int64_t hd, Precision prec = Precision::F32);
// dq assigned; dk, dv assigned (summed over the heads that share them). out and lse are the
// forward's.
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q, const T* k, const T* v,
                        int64_t B, int64_t Tn, int64_t H, int64_t KV, int64_t hd, Precision prec = Precision::F32);

// out = silu(gate) * up
template <class T> void swiglu_forward(T* out, const T* gate, const T* up, int64_t n);
template <class T> void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n);

// Cross-entropy of logits (N, V) (left unchanged): lse[n] = log sum_v exp(logits[n, v]) for
// every row; returns the summed loss lse - logit[target] over rows whose target is >= 0
// (-1 = ignored) and counts them.
template <class T>
double cross_entropy_forward(const T* logits, const int32_t* targets, int64_t N, int64_t V, T* lse, int64_t* n_valid);
// The same logits (N, V) -> dlogits in place: (exp(logits - lse) - onehot(target)) * scale,
// the probabilities from forward's lse (one pass); ignored rows get 0.
template <class T>
void cross_entropy_backward(T* logits, const T* lse, const int32_t* targets, int64_t N, int64_t V, double scale);

}  // namespace llmq::train
