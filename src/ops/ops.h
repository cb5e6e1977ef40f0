// Tensor-level operations: the only layer the model calls. Each checks shapes, splits work
// over threads and calls the CPU kernel table (a CUDA backend would switch here on device).
#pragma once
#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/tensor.h"

namespace llmq {

// Threads for kernels and OpenBLAS; 0 means all cores.
void ops_set_threads(int n);
int ops_threads();
// Prefill of bf16 weights with bf16 dot products (AVX512_BF16 CPUs): the activations are
// rounded to bf16 first, as PyTorch's bf16 matmul does (relative error <= 2^-9 per input),
// for twice the multiply rate of f32. On by default; off keeps f32 activations (exact
// products, f32 sums), as decode always does.
void ops_set_bf16_dot(bool on);
bool ops_bf16_dot();
// Batch-invariant products (llmq serve): a row's result does not depend on the other rows
// of the call. Integer-quantized weights always are (one kernel, per-row activation scales);
// this mode also sends float (f32/bf16/f16/FP8/HQQ axis-0) weights' products of any size to
// sgemm with f32 activations (no GEMV for decode, no bf16 dot products), at a cost in
// decode speed for float models (the weights converted/packed per call).
void ops_set_batch_invariant(bool on);

// out (n, M) f32 = x (n, K) f32 @ W^T, W (M, K) in f32, bf16, f16 or integer-quantized.
// Float weights: small n runs the GEMV kernels (weights read once per 4 rows of x); larger
// n uses OpenBLAS sgemm (16-bit weights converted to f32 a panel at a time; bf16 with
// bf16 dot products, see ops_set_bf16_dot). Quantized weights: the integer matrix product
// on int8-quantized activations, any n.
void op_matmul(Tensor& out, const Tensor& x, const Tensor& W);

// Several products of the same x (q/k/v, gate/up): each *o.out = x @ o.W^T, as op_matmul
// computes it. In decode the rows of all the weights are split over the threads in one
// parallel region and quantized activations are computed once.
struct MatmulOut {
  Tensor* out;
  const Tensor* W;
};
void op_matmuls(const Tensor& x, std::initializer_list<MatmulOut> outs);
// out (n, dim) = rmsnorm(x (n, dim)) * w (dim) f32
void op_rmsnorm(Tensor& out, const Tensor& x, const Tensor& w, float eps);
// out (n, f) = silu(gate) * up
void op_swiglu(Tensor& out, const Tensor& gate, const Tensor& up);
// x (n, heads*hd) rotated in place; cos/sin (n, hd/2) per row
void op_rope(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t head_dim);
// out (n, dim) f32 = rows `tokens` of table (vocab, dim) in f32/bf16/f16
void op_embedding(Tensor& out, const Tensor& table, const std::vector<int32_t>& tokens);
// x += y, both f32 of the same shape
void op_add(Tensor& x, const Tensor& y);
// Copies rows `idx` of src (n, d) into dst (idx.size(), d).
void op_gather_rows(Tensor& dst, const Tensor& src, const std::vector<int32_t>& idx);
// A paged KV cache's block tables (serving): block_size positions per block, tables[s] the
// blocks of sequence s in position order. Each row's arithmetic is the same paged or not.
struct KvPages {
  int64_t block_size = 0;
  const std::vector<std::vector<int32_t>>* tables = nullptr;
};
// Writes k, v rows (n, kv_dim) into the caches (n_seq, n_kv_heads, max_seq, hd) at (seq, pos).
// Cache dtype F32, BF16, I8 (int8), Q4 (int4, code + 8; byte j of a row holds element j in its
// low nibble and element j + hd/2 in its high one, so a row unpacks as two plain loops)
// or U8 (FP8 E4M3 codes); int8/int4/fp8 store each head's row divided by a scale (amax/127,
// amax/7, amax/448) kept in kscale/vscale (n_seq, n_kv_heads, max_seq); amax is the row's max
// |x|, or k_amax[head] / v_amax[head] when given (calibrated static ranges; values beyond them
// saturate). eps > 0 (int8/int4, QAT models): LLM-QAT's quantizer instead, s = qmax / (amax +
// eps), code = round(x s), scale 1 / (s + eps) (train/qat.h fq_sym_rows).
// Paged caches (pages given): the caches are (n_blocks, n_kv_heads, block_size, hd) and position
// t of sequence s lives in block tables[s][t / block_size], row t % block_size (scales alike).
void op_kv_store(Tensor& kcache, Tensor& vcache, const Tensor& k, const Tensor& v, const std::vector<int32_t>& seq,
                 const std::vector<int32_t>& pos, Tensor& kscale, Tensor& vscale, const float* k_amax = nullptr,
                 const float* v_amax = nullptr, float eps = 0, const KvPages* pages = nullptr);
// Causal grouped-query attention: row r (sequence seq[r], position pos[r]) attends to cache
// positions 0..pos[r] of its sequence. q, out: (n, n_heads*hd).
void op_attention(Tensor& out, const Tensor& q, const Tensor& kcache, const Tensor& vcache,
                  const std::vector<int32_t>& seq, const std::vector<int32_t>& pos, int64_t n_heads,
                  const Tensor& kscale, const Tensor& vscale, const KvPages* pages = nullptr);

}  // namespace llmq
