// CPU implementation of the ops: shape checks, OpenMP work split, kernel-table calls.
#include "ops/ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/parallel.h"
#include "kernels/cpu/kernels.h"
#include "quant/quant.h"

extern "C" void openblas_set_num_threads(int);

namespace llmq {

namespace {
int g_threads = 0;
bool g_bf16_dot = true;
bool g_invariant = false;
// Products of up to this many rows run the GEMV kernels (float weights), larger ones sgemm.
// Batch-invariant mode runs every product on the GEMV kernels, whose sums for a row are the
// same whatever the other rows (OpenBLAS sgemm's are not: they change with the row count).
int64_t gemv_max_rows() { return g_invariant ? INT64_MAX : kDecodeMaxRows; }

// Above this many rows of x, sgemm beats re-reading the weights once per 4 rows (and the
// step is no longer decode-sized: OpenMP rather than the spin pool, core/parallel.h).
constexpr int64_t kGemvMaxRows = kDecodeMaxRows;
// Chunks per thread for the integer-quantized GEMV (decode): its kernel streams faster over
// long runs of rows (w4a16 llama3.2-1b decode, one run: 74-83 tok/s with 2 chunks per
// thread, 67-75 with 8), and a thread slowed by a neighbour still hands over half its rows.
// The float GEMV measured faster with the default 8 (bf16: 16-20 tok/s against 16-18).
constexpr int kQuantGemvChunks = 2;

void expect(bool ok, const char* op, const char* what) {
  if (!ok) fail("{}: {}", op, what);
}
void expect_f32(const Tensor& t, const char* op, const char* name) {
  if (t.dtype() != DType::F32) fail("{}: {} must be f32, got {}", op, name, dtype_name(t.dtype()));
}

// Rows per chunk, multiples of 16 rows (the quantized panel), at least 64, `per` chunks per
// thread: 8 by default; 2 for the integer GEMV of decode (kQuantGemvChunks).
int64_t row_chunk(int64_t M, int nt, int per) {
  const int64_t chunk = std::max<int64_t>(64, (M + per * nt - 1) / (per * nt));
  return (chunk + 15) / 16 * 16;
}
// Splits [0, M) into row_chunk()s handed out dynamically: a thread slowed by a neighbour on
// the shared host does not hold the others at the barrier. Per-call set-up in the kernel
// (the bf16 x permutation, K floats) is small next to a chunk's 64+ rows of K weights.
// `spin`: a decode-sized product, on the spin pool (core/parallel.h).
template <class Fn>
void parallel_rows(int64_t M, Fn fn, int per, bool spin) {
  const int nt = ops_threads();
  const int64_t chunk = row_chunk(M, nt, per);
  const int64_t n_chunks = (M + chunk - 1) / chunk;
  if (n_chunks == 1) return fn(0, M);  // no OpenMP team of one (core/parallel.h)
  if (spin) return spin_for_dynamic(nt, n_chunks, [&](int64_t c) { fn(c * chunk, std::min(M, (c + 1) * chunk)); });
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t c = 0; c < n_chunks; c++) fn(c * chunk, std::min(M, (c + 1) * chunk));
}

// Rows [m0, m1) of Y (n, M) = X @ W^T for float weights (E4M3 bytes: their values, before
// the fp8 scales), up to 4 rows of X per pass.
void gemv_rows(const CpuKernels& k, float* Y, const float* X, const Tensor& W, int64_t n, int64_t K, int64_t M,
               int64_t m0, int64_t m1) {
  for (int64_t i = 0; i < n; i += kGemvMaxBatch) {
    int nb = (int)std::min<int64_t>(kGemvMaxBatch, n - i);
    switch (W.dtype()) {
      case DType::F32: k.gemv_f32(W.host<float>(), X + i * K, Y + i * M, K, nb, M, m0, m1); break;
      case DType::BF16: k.gemv_bf16(W.host<uint16_t>(), X + i * K, Y + i * M, K, nb, M, m0, m1); break;
      case DType::F16: k.gemv_f16(W.host<uint16_t>(), X + i * K, Y + i * M, K, nb, M, m0, m1); break;
      case DType::F8E4M3: k.gemv_e4m3(W.host<uint8_t>(), X + i * K, Y + i * M, K, nb, M, m0, m1); break;  // unscaled
      default: break;
    }
  }
}
void gemv(const CpuKernels& k, float* Y, const float* X, const Tensor& W, int64_t n, int64_t K, int64_t M) {
  parallel_rows(M, [&](int64_t m0, int64_t m1) { gemv_rows(k, Y, X, W, n, K, M, m0, m1); }, 8, true);
}

void sgemm_nt(const float* X, const float* W, float* Y, int64_t n, int64_t m, int64_t K, int64_t ldy) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)m, (int)K, 1.f, X, (int)K, W, (int)K, 0.f, Y,
              (int)ldy);
}
// Y (n, M) = X @ W^T for weights held in another type: a panel of rows (about 4 MB of f32)
// at a time converted by row(r, dst) (K floats, rows split over the threads), then sgemm.
template <class RowFn>
void sgemm_f32_panels(const float* X, float* Y, int64_t n, int64_t K, int64_t M, RowFn row) {
  const int64_t panel = std::clamp<int64_t>((int64_t(1) << 20) / K, 64, M);
  thread_local std::vector<float> tl_buf;
  float* b = (tl_buf.resize((size_t)(panel * K)), tl_buf.data());  // the caller's buffer
  for (int64_t m0 = 0; m0 < M; m0 += panel) {
    const int64_t mp = std::min(panel, M - m0);
#pragma omp parallel for num_threads(ops_threads()) schedule(static)
    for (int64_t r = 0; r < mp; r++) row(m0 + r, b + r * K);
    sgemm_nt(X, b, Y + m0, n, mp, K, M);
  }
}

// FP8 weights: activations scaled and rounded to E4M3 (per token or per tensor, dynamic),
// the products of E4M3 values summed in f32 (decode: the E4M3 GEMV; prefill: the weights
// converted a panel at a time for sgemm), then both scales applied.
void matmul_fp8(const CpuKernels& k, float* Y, const float* X, const Tensor& W, int64_t n, int64_t K, int64_t M) {
  const QuantInfo& qi = *W.quant();
  thread_local std::vector<float> tl_xe, tl_sx;
  std::vector<float>& xe = tl_xe;  // the caller's buffers, read by the worker threads
  std::vector<float>& sx = tl_sx;
  quantize_acts_fp8(X, n, K, qi.act_per_token, xe, sx, qi.act_scale);
  const uint8_t* w8 = W.host<uint8_t>();
  if (n <= gemv_max_rows()) {
    gemv(k, Y, xe.data(), W, n, K, M);
  } else {
    sgemm_f32_panels(xe.data(), Y, n, K, M, [&](int64_t r, float* dst) {
      for (int64_t c = 0; c < K; c++) dst[c] = e4m3_to_f32(w8[r * K + c]);
    });
  }
  const float* sw = qi.scale.data();
  parallel_for_if(n > 1, n, ops_threads(), [&](int64_t i) {
    for (int64_t m = 0; m < M; m++) Y[i * M + m] *= sx[i] * sw[m];
  }, n <= kDecodeMaxRows);
}

// HQQ axis 0 (QuantInfo::axis0_*): the scale varies along each row, so it is folded into the
// activations. Decode: per row class c (rows c, c+P, ...; stored together as `group` rows),
// x_c = s[c] * x quantized to int8 blocks, the integer product over that class's rows, minus
// sum_k s z x. Prefill: rows dequantized a panel at a time for sgemm.
void matmul_axis0(const CpuKernels& k, float* Y, const float* X, const Tensor& W, int64_t n, int64_t K, int64_t M) {
  const QuantInfo& qi = *W.quant();
  const int64_t C = qi.axis0_classes, G = M / C;
  const float *S = qi.axis0_scale.data(), *SZ = qi.axis0_sz.data();
  if (n > gemv_max_rows()) {
    sgemm_f32_panels(X, Y, n, K, M, [&](int64_t r, float* dst) {
      thread_local std::vector<uint8_t> codes;
      codes.resize((size_t)K);
      const int64_t c = r % C;
      tensor_row_codes(W, c * G + r / C, codes.data());
      for (int64_t j = 0; j < K; j++) dst[j] = S[c * K + j] * (float)codes[j] - SZ[c * K + j];
    });
    return;
  }
  const QMatView wv = quant_view(W);
  alignas(64) std::atomic<int64_t> next{0};
  spin_run(ops_threads(), [&](int, int) {
    std::vector<float> xs((size_t)(n * K)), ys((size_t)(n * G));
    QActs acts;
    for (int64_t c = next.fetch_add(1, std::memory_order_relaxed); c < C; c = next.fetch_add(1, std::memory_order_relaxed)) {
      const float *s = S + c * K, *sz = SZ + c * K;
      for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < K; j++) xs[i * K + j] = s[j] * X[i * K + j];
      quantize_acts(xs.data(), n, K, K, false, acts);
      const QMatView sub = wv.from_row(c * G);  // group K: one scale per row
      k.matmul_q(sub, acts.view(0, K, K), ys.data(), n, G, 0, G);
      for (int64_t i = 0; i < n; i++) {
        const float b = k.dot(sz, X + i * K, K);
        for (int64_t g = 0; g < G; g++) Y[i * M + c + g * C] = ys[i * G + g] - b;
      }
    }
  });
}

// Integer-quantized weights: activations to int8 blocks of 32 (per token for w8a8), then the
// integer matrix product, decode and prefill alike, rows split over the threads in
// multiples of the 16-row panel.
void matmul_quant(const CpuKernels& k, float* Y, const float* X, const Tensor& W, int64_t n, int64_t K, int64_t M) {
  const QuantInfo& qi = *W.quant();
  if (qi.axis0_classes) return matmul_axis0(k, Y, X, W, n, K, M);
  if (qi.act_float)  // rows in input-column order: X as it is
    return sgemm_f32_panels(X, Y, n, K, M, [&](int64_t r, float* dst) { dequantize_tensor_rows(W, r, r + 1, dst); });
  if (!qi.perm.empty()) {  // act-order: the activations in the weights' column order
    thread_local std::vector<float> tl_xp;
    float* xp = (tl_xp.resize((size_t)(n * K)), tl_xp.data());
    const int32_t* perm = qi.perm.data();
    for (int64_t i = 0; i < n; i++)
      for (int64_t j = 0; j < K; j++) xp[i * K + j] = X[i * K + perm[j]];
    X = xp;
  }
  if (qi.fp8) return matmul_fp8(k, Y, X, W, n, K, M);
  thread_local QActs tl_acts;
  QActs& acts = tl_acts;  // the calling thread's buffers, also read by the worker threads
  quantize_acts(X, n, K, qi.group, qi.act_per_token, acts, qi.act_per_tensor, qi.act_eps);
  const QMatView wv = quant_view(W);
  const QActView av = acts.view(0, K, qi.group);
  parallel_rows(M, [&](int64_t m0, int64_t m1) { k.matmul_q(wv, av, Y, n, M, m0, m1); },
                n <= kGemvMaxRows ? kQuantGemvChunks : 8, n <= kGemvMaxRows);
}
// GGUF k-quant weights (Q2_K..Q6_K as the file stores them): activations to int8 blocks of
// 256 (ggml's Q8_K), then the k-quant product, decode and prefill alike.
void matmul_kquant(const CpuKernels& k, float* Y, const float* X, const Tensor& W, int64_t n, int64_t K, int64_t M) {
  thread_local KQActs tl_acts;
  KQActs& acts = tl_acts;  // the calling thread's buffers, also read by the worker threads
  quantize_acts_kq(X, n, K, acts, W.dtype() == DType::Q4K || W.dtype() == DType::Q5K);
  const KQMatView wv = kquant_view(W);
  const KQActView av = acts.view();
  parallel_rows(M, [&](int64_t m0, int64_t m1) { k.matmul_kq(wv, av, Y, n, M, m0, m1); },
                n <= kGemvMaxRows ? kQuantGemvChunks : 8, n <= kGemvMaxRows);
}
// bf16 weights on a CPU with bf16 dot products: activations rounded to bf16 (as a bf16
// PyTorch model computes) and packed once (kernels.h), products summed in f32, twice
// sgemm's multiply rate.
bool bf16_dot_applies(const CpuKernels& k, const Tensor& W) {
  return W.dtype() == DType::BF16 && !W.quant() && k.gemm_bf16 && g_bf16_dot && !g_invariant;
}
const uint16_t* pack_bf16_acts(const float* X, int64_t n, int64_t K) {
  thread_local std::vector<uint16_t> tl_xp;  // the caller's buffer, read by all threads
  tl_xp.resize((size_t)gemm_bf16_packed_size(n, K));
  uint16_t* xp = tl_xp.data();
  const int64_t panels = (n + 15) / 16;
  parallel_for_if(panels > 1, panels, ops_threads(), [&](int64_t p) { gemm_bf16_pack_x(X, n, K, xp, p, p + 1); });
  return xp;
}
void gemm_bf16(const CpuKernels& k, const uint16_t* xp, const Tensor& W, float* Y, int64_t n, int64_t K, int64_t M) {
  const uint16_t* w16 = W.host<uint16_t>();
  parallel_rows(M, [&](int64_t m0, int64_t m1) { k.gemm_bf16(w16, xp, Y, K, n, M, m0, m1); }, 8, false);
}

}  // namespace

void ops_set_threads(int n) {
  g_threads = n > 0 ? n : omp_get_num_procs();
  omp_set_num_threads(g_threads);
  openblas_set_num_threads(g_threads);
}
void ops_set_bf16_dot(bool on) { g_bf16_dot = on; }
void ops_set_batch_invariant(bool on) { g_invariant = on; }
bool ops_bf16_dot() { return g_bf16_dot; }

int ops_threads() {
  if (!g_threads) ops_set_threads(0);
  return g_threads;
}


namespace {
void check_matmul(const Tensor& out, const Tensor& x, const Tensor& W) {
  expect_f32(x, "matmul", "x");
  expect_f32(out, "matmul", "out");
  expect(x.ndim() == 2 && W.ndim() == 2 && out.ndim() == 2, "matmul", "x, W and out must be 2-D");
  if (W.dim(1) != x.dim(1) || out.dim(0) != x.dim(0) || out.dim(1) != W.dim(0))
    fail("matmul: shapes x {} W {} out {} do not agree", shape_str(x.shape()), shape_str(W.shape()),
         shape_str(out.shape()));
  if (!W.quant() && W.dtype() != DType::F32 && W.dtype() != DType::BF16 && W.dtype() != DType::F16 &&
      !dtype_is_kquant(W.dtype()))
    fail("matmul: weight dtype {} not supported", dtype_name(W.dtype()));
}
}  // namespace

void op_matmuls(const Tensor& x, std::initializer_list<MatmulOut> outs) {
  for (const auto& o : outs) check_matmul(*o.out, x, *o.W);
  const int64_t n = x.dim(0), K = x.dim(1);
  const Tensor& W0 = *outs.begin()->W;
  const QuantInfo* q0 = W0.quant();
  const bool kq = dtype_is_kquant(W0.dtype());  // all k-quants (any types): one Q8_K quantization
  bool same = true;  // all quantized alike (one activation quantization) or all float
  for (const auto& o : outs) {
    const QuantInfo* q = o.W->quant();
    same = same && dtype_is_kquant(o.W->dtype()) == kq && (q == nullptr) == (q0 == nullptr) &&
           (!q || (!q->fp8 && q->perm.empty() && !q->axis0_classes && q->group == q0->group && q->act_per_token == q0->act_per_token && q->act_eps == q0->act_eps && !q->act_float &&
                    q->act_per_tensor == q0->act_per_tensor));
  }
  if (n == 0) return;
  const CpuKernels& k = cpu_kernels();
  const float* X = x.host<float>();
  bool all_bf16_dot = n > kGemvMaxRows;
  for (const auto& o : outs) all_bf16_dot = all_bf16_dot && bf16_dot_applies(k, *o.W);
  if (all_bf16_dot) {  // prefill of bf16 weights: the activations packed once for all
    const uint16_t* xp = pack_bf16_acts(X, n, K);
    for (const auto& o : outs) gemm_bf16(k, xp, *o.W, o.out->host<float>(), n, K, o.W->dim(0));
    return;
  }
  // Quantized products are the same arithmetic either way; float ones keep to GEMV in
  // batch-invariant mode.
  if (n > (q0 || kq ? kGemvMaxRows : gemv_max_rows()) || !same) {
    for (const auto& o : outs) op_matmul(*o.out, x, *o.W);
    return;
  }
  // Decode: the weights' rows as one row space (each matrix's rows padded to whole 16-row
  // panels) cut into chunks sized for the largest matrix, a chunk running on into the next
  // matrix: q/k/v (2048 + 512 + 512 rows for Llama 3.2 1B) are six chunks of 512 rows
  // rather than four of 512 for q and four of 128 for each of k and v, whose short runs of
  // rows stream slowly; gate/up stay eight chunks of 2048.
  thread_local QActs tl_acts;
  QActs& acts = tl_acts;
  if (q0) quantize_acts(X, n, K, q0->group, q0->act_per_token, acts, q0->act_per_tensor, q0->act_eps);
  thread_local KQActs tl_kacts;
  KQActs& kacts = tl_kacts;
  if (kq) {
    bool q45 = false;  // the Q4_K/Q5_K kernels' activation order, only when one of them reads it
    for (const auto& o : outs) q45 = q45 || o.W->dtype() == DType::Q4K || o.W->dtype() == DType::Q5K;
    quantize_acts_kq(X, n, K, kacts, q45);
  }
  const int nt = ops_threads();
  int64_t rows = 0, max_rows = 0;
  for (const auto& o : outs) {
    rows += (o.W->dim(0) + kQPanel - 1) / kQPanel * kQPanel;
    max_rows = std::max(max_rows, o.W->dim(0));
  }
  const int64_t chunk = row_chunk(max_rows, nt, q0 || kq ? kQuantGemvChunks : 8), n_chunks = (rows + chunk - 1) / chunk;
  // Rows [r0, r1) of the row space, matrix by matrix.
  auto run = [&](int64_t r0, int64_t r1) {
    int64_t base = 0;
    for (const auto& o : outs) {
      const Tensor& W = *o.W;
      const int64_t M = W.dim(0), end = base + (M + kQPanel - 1) / kQPanel * kQPanel;
      const int64_t m0 = std::max(r0, base) - base, m1 = std::min({r1, end, base + M}) - base;
      if (m0 < m1) {
        float* Y = o.out->host<float>();
        if (q0) k.matmul_q(quant_view(W), acts.view(0, K, W.quant()->group), Y, n, M, m0, m1);
        else if (kq) k.matmul_kq(kquant_view(W), kacts.view(), Y, n, M, m0, m1);
        else gemv_rows(k, Y, X, W, n, K, M, m0, m1);
      }
      base = end;
    }
  };
  spin_for_dynamic(nt, n_chunks, [&](int64_t c) { run(c * chunk, std::min(rows, (c + 1) * chunk)); });
}

void op_matmul(Tensor& out, const Tensor& x, const Tensor& W) {
  check_matmul(out, x, W);
  const int64_t n = x.dim(0), K = x.dim(1), M = W.dim(0);
  if (n == 0) return;
  const CpuKernels& k = cpu_kernels();
  float* Y = out.host<float>();
  const float* X = x.host<float>();
  if (W.quant()) return matmul_quant(k, Y, X, W, n, K, M);
  if (dtype_is_kquant(W.dtype())) return matmul_kquant(k, Y, X, W, n, K, M);
  if (n <= gemv_max_rows()) return gemv(k, Y, X, W, n, K, M);
  if (W.dtype() == DType::F32) return sgemm_nt(X, W.host<float>(), Y, n, M, K, M);
  if (bf16_dot_applies(k, W)) {
    const uint16_t* xp = pack_bf16_acts(X, n, K);
    return gemm_bf16(k, xp, W, Y, n, K, M);
  }
  // 16-bit weights: a panel of rows at a time in f32 for sgemm.
  const uint16_t* w16 = W.host<uint16_t>();
  const auto cvt = W.dtype() == DType::BF16 ? k.cvt_bf16_f32 : k.cvt_f16_f32;
  sgemm_f32_panels(X, Y, n, K, M, [&](int64_t r, float* dst) { cvt(w16 + r * K, dst, K); });
}

void op_rmsnorm(Tensor& out, const Tensor& x, const Tensor& w, float eps) {
  expect_f32(x, "rmsnorm", "x");
  expect_f32(w, "rmsnorm", "weight");
  const int64_t n = x.dim(0), d = x.dim(1);
  expect(w.numel() == d && out.shape() == x.shape(), "rmsnorm", "shape mismatch");
  const CpuKernels& k = cpu_kernels();
  const float *X = x.host<float>(), *Wt = w.host<float>();
  float* O = out.host<float>();
  parallel_for_if(n > 1, n, ops_threads(), [&](int64_t i) { k.rmsnorm(X + i * d, Wt, O + i * d, d, eps); },
                  n <= kDecodeMaxRows);
}

void op_swiglu(Tensor& out, const Tensor& gate, const Tensor& up) {
  expect(gate.shape() == up.shape() && out.shape() == gate.shape(), "swiglu", "shape mismatch");
  const CpuKernels& k = cpu_kernels();
  const int64_t n = gate.dim(0), f = gate.dim(1);
  const float *G = gate.host<float>(), *U = up.host<float>();
  float* O = out.host<float>();
  parallel_for_if(n > 1, n, ops_threads(), [&](int64_t i) { k.swiglu(G + i * f, U + i * f, O + i * f, f); },
                  n <= kDecodeMaxRows);
}

void op_rope(Tensor& x, const Tensor& cos, const Tensor& sin, int64_t hd) {
  const int64_t n = x.dim(0), w = x.dim(1);
  expect(w % hd == 0 && cos.dim(0) == n && cos.dim(1) == hd / 2 && sin.shape() == cos.shape(), "rope",
         "shape mismatch");
  const CpuKernels& k = cpu_kernels();
  float* X = x.host<float>();
  const float *C = cos.host<float>(), *S = sin.host<float>();
  for (int64_t i = 0; i < n; i++) k.rope(X + i * w, C + i * (hd / 2), S + i * (hd / 2), (int)(w / hd), (int)hd);
}

void op_embedding(Tensor& out, const Tensor& table, const std::vector<int32_t>& tokens) {
  const int64_t V = table.dim(0), d = table.dim(1);
  expect(out.dim(0) == (int64_t)tokens.size() && out.dim(1) == d, "embedding", "shape mismatch");
  const CpuKernels& k = cpu_kernels();
  float* O = out.host<float>();
  for (size_t i = 0; i < tokens.size(); i++) {
    int64_t t = tokens[i];
    if (t < 0 || t >= V) fail("token id {} is outside the vocabulary (0..{})", t, V - 1);
    float* o = O + i * d;
    if (table.quant() || dtype_is_kquant(table.dtype())) {  // a quantized table (a GGUF's token_embd): one row dequantized
      dequantize_tensor_rows(table, t, t + 1, o);
      continue;
    }
    switch (table.dtype()) {
      case DType::F32: std::memcpy(o, table.host<float>() + t * d, d * 4); break;
      case DType::BF16: k.cvt_bf16_f32(table.host<uint16_t>() + t * d, o, d); break;
      case DType::F16: k.cvt_f16_f32(table.host<uint16_t>() + t * d, o, d); break;
      default: fail("embedding: dtype {} not supported", dtype_name(table.dtype()));
    }
  }
}

void op_add(Tensor& x, const Tensor& y) {
  expect(x.shape() == y.shape(), "add", "shape mismatch");
  float* X = x.host<float>();
  const float* Y = y.host<float>();
  const int64_t n = x.numel();
  for (int64_t i = 0; i < n; i++) X[i] += Y[i];
}

void op_gather_rows(Tensor& dst, const Tensor& src, const std::vector<int32_t>& idx) {
  const int64_t d = src.dim(1);
  expect(dst.dim(0) == (int64_t)idx.size() && dst.dim(1) == d, "gather_rows", "shape mismatch");
  for (size_t i = 0; i < idx.size(); i++)
    std::memcpy(dst.host<float>() + i * d, src.host<float>() + idx[i] * d, d * 4);
}

namespace {
// One cached row (head_dim values) to f32.
inline void kv_row(const Tensor& c, const Tensor& sc, int64_t row, int64_t hd, const CpuKernels& k, float* out) {
  switch (c.dtype()) {
    case DType::F32: std::memcpy(out, c.host<float>() + row * hd, hd * 4); break;
    case DType::BF16: k.cvt_bf16_f32(c.host<uint16_t>() + row * hd, out, hd); break;
    case DType::I8: {
      const int8_t* p = c.host<int8_t>() + row * hd;
      const float s = sc.host<float>()[row];
      for (int64_t i = 0; i < hd; i++) out[i] = s * (float)p[i];
      break;
    }
    case DType::Q4: {  // byte j: element j in the low nibble, j + hd/2 in the high (two plain loops)
      const uint8_t* p = c.host<uint8_t>() + row * hd / 2;
      const float s = sc.host<float>()[row];
      const int64_t h = hd / 2;
      for (int64_t j = 0; j < h; j++) out[j] = s * (float)((int)(p[j] & 15) - 8);
      for (int64_t j = 0; j < h; j++) out[h + j] = s * (float)((int)(p[j] >> 4) - 8);
      break;
    }
    default: {
      const uint8_t* p = c.host<uint8_t>() + row * hd;
      const float s = sc.host<float>()[row];
      for (int64_t i = 0; i < hd; i++) out[i] = s * e4m3_to_f32(p[i]);
      break;
    }
  }
}
// Stores one row; int8/fp8 rows are divided by amax/127 or amax/448, amax the row's own max |x|
// or, when given (> 0), a calibrated range (values beyond it saturate).
inline void kv_put(Tensor& c, Tensor& sc, int64_t row, int64_t hd, const float* x, float fixed_amax, float eps) {
  switch (c.dtype()) {
    case DType::F32: std::memcpy(c.host<float>() + row * hd, x, hd * 4); break;
    case DType::BF16:
      for (int64_t i = 0; i < hd; i++) c.host<uint16_t>()[row * hd + i] = f32_to_bf16(x[i]);
      break;
    default: {
      const bool i8 = c.dtype() == DType::I8, i4 = c.dtype() == DType::Q4;
      float amax = fixed_amax;
      if (!(amax > 0.f)) {
        amax = 0.f;
        for (int64_t i = 0; i < hd; i++) amax = std::max(amax, std::fabs(x[i]));
      }
      const float qmax = i8 ? 127.f : i4 ? 7.f : 448.f;
      float s = amax / qmax, inv = s > 0.f ? 1.f / s : 0.f;
      if (eps > 0.f && (i8 || i4)) inv = qmax / (amax + eps), s = 1.f / (inv + eps);  // LLM-QAT's
      for (int64_t i = 0; i < hd; i++) {
        float r = x[i] * inv;
        if (r != r) r = 0.f;
        if (i8) {
          c.host<int8_t>()[row * hd + i] = (int8_t)std::clamp(std::nearbyint(r), -127.f, 127.f);
        } else if (i4) {
          const uint8_t code = (uint8_t)(std::clamp(std::nearbyint(r), -7.f, 7.f) + 8.f);
          uint8_t& b = c.host<uint8_t>()[row * hd / 2 + i % (hd / 2)];
          b = i >= hd / 2 ? (uint8_t)((b & 15) | (code << 4)) : (uint8_t)((b & 0xf0) | code);
        } else {
          c.host<uint8_t>()[row * hd + i] = f32_to_e4m3(std::clamp(r, -448.f, 448.f));
        }
      }
      sc.host<float>()[row] = s;
      break;
    }
  }
}
}  // namespace

namespace {
// Row index of (sequence s, KV head h, position t) in a cache of H heads and T rows per slot
// (or per block when paged).
struct KvRows {
  int64_t H, T;
  const KvPages* pages;
  int64_t operator()(int64_t s, int64_t h, int64_t t) const {
    if (!pages) return (s * H + h) * T + t;
    return ((int64_t)(*pages->tables)[(size_t)s][(size_t)(t / T)] * H + h) * T + t % T;
  }
};
void check_pages(const KvPages* pages, int64_t S, int64_t T, const std::vector<int32_t>& seq,
                 const std::vector<int32_t>& pos, const char* op) {
  if (!pages) return;
  expect(pages->block_size == T && pages->tables, op, "paged cache: block size differs from the cache's");
  for (size_t r = 0; r < seq.size(); r++) {
    if (seq[r] < 0 || seq[r] >= (int64_t)pages->tables->size()) fail("{}: sequence {} has no block table", op, seq[r]);
    const auto& tb = (*pages->tables)[(size_t)seq[r]];
    if (pos[r] < 0 || pos[r] / T >= (int64_t)tb.size())
      fail("{}: position {} beyond sequence {}'s {} blocks", op, pos[r], seq[r], tb.size());
    for (int64_t b = 0; b <= pos[r] / T; b++)
      if (tb[(size_t)b] < 0 || tb[(size_t)b] >= S) fail("{}: block {} outside the cache's {} blocks", op, tb[(size_t)b], S);
  }
}
}  // namespace

void op_kv_store(Tensor& kc, Tensor& vc, const Tensor& k, const Tensor& v, const std::vector<int32_t>& seq,
                 const std::vector<int32_t>& pos, Tensor& ksc, Tensor& vsc, const float* k_amax, const float* v_amax,
                 float eps, const KvPages* pages) {
  const int64_t S = kc.dim(0), H = kc.dim(1), T = kc.dim(2), hd = kc.dim(3);
  const int64_t n = k.dim(0);
  expect(k.dim(1) == H * hd && v.shape() == k.shape(), "kv_store", "shape mismatch");
  const bool scaled = kc.dtype() == DType::I8 || kc.dtype() == DType::U8 || kc.dtype() == DType::Q4;
  expect(!scaled || (ksc.defined() && vsc.defined() && ksc.numel() == S * H * T), "kv_store", "int8/int4/fp8 caches need scales");
  expect(kc.dtype() != DType::Q4 || hd % 2 == 0, "kv_store", "an int4 cache needs an even head_dim");
  check_pages(pages, S, T, seq, pos, "kv_store");
  const KvRows at{H, T, pages};
  for (int64_t r = 0; r < n; r++) {
    if (!pages && (seq[r] < 0 || seq[r] >= S)) fail("sequence {} outside the KV cache's {} sequences", seq[r], S);
    if (!pages && (pos[r] < 0 || pos[r] >= T)) fail("position {} outside the KV cache's context of {}", pos[r], T);
    for (int64_t h = 0; h < H; h++) {
      const int64_t row = at(seq[r], h, pos[r]);
      kv_put(kc, ksc, row, hd, k.host<float>() + r * H * hd + h * hd, k_amax ? k_amax[h] : 0.f, eps);
      kv_put(vc, vsc, row, hd, v.host<float>() + r * H * hd + h * hd, v_amax ? v_amax[h] : 0.f, eps);
    }
  }
}

void op_attention(Tensor& out, const Tensor& q, const Tensor& kc, const Tensor& vc, const std::vector<int32_t>& seq,
                  const std::vector<int32_t>& pos, int64_t n_heads, const Tensor& ksc, const Tensor& vsc,
                  const KvPages* pages) {
  const int64_t H = kc.dim(1), T = kc.dim(2), hd = kc.dim(3), n = q.dim(0);
  check_pages(pages, kc.dim(0), T, seq, pos, "attention");
  const KvRows at{H, T, pages};
  expect(q.dim(1) == n_heads * hd && out.shape() == q.shape() && n_heads % H == 0, "attention", "shape mismatch");
  const int group = (int)(n_heads / H);
  const float scale = 1.f / std::sqrt((float)hd);
  const CpuKernels& k = cpu_kernels();
  const float* Q = q.host<float>();
  float* O = out.host<float>();
  const bool f32 = kc.dtype() == DType::F32 && !pages;  // read in place (a paged one is gathered)
  // One item per (row, KV head): the group's query heads share each pass over the cached
  // keys and values (f32 caches read in place, others converted once per item). The items
  // go round-robin to the threads, and each prefetches its next item's rows: in decode they
  // come from memory (all the weights streamed through the caches since the last step).
  const int nt = ops_threads();
  auto prefetch_item = [&](int64_t rk) {
    if (!f32 || rk >= n * H) return;
    const int64_t r = rk / H, kvh = rk % H, base = (seq[r] * H + kvh) * T;
    const char *Kb = (const char*)(kc.host<float>() + base * hd), *Vb = (const char*)(vc.host<float>() + base * hd);
    for (int64_t off = 0; off < (pos[r] + 1) * hd * 4; off += 64) __builtin_prefetch(Kb + off, 0, 3), __builtin_prefetch(Vb + off, 0, 3);
  };
  auto item = [&](int64_t rk) {
    thread_local std::vector<float> s, kbuf, vbuf;  // grown, never shrunk: no per-call zeroing
    const int64_t r = rk / H, kvh = rk % H, len = pos[r] + 1;
    if ((int64_t)s.size() < group * len) s.resize((size_t)(group * len));
    auto rows = [&](const Tensor& c, const Tensor& sc, std::vector<float>& buf) -> const float* {
      if (f32) return c.host<float>() + at(seq[r], kvh, 0) * hd;
      if ((int64_t)buf.size() < len * hd) buf.resize((size_t)(len * hd));
      for (int64_t t = 0; t < len; t++) kv_row(c, sc, at(seq[r], kvh, t), hd, k, buf.data() + t * hd);
      return buf.data();
    };
    if (rk < nt) prefetch_item(rk);
    prefetch_item(rk + nt);
    const float* qg = Q + r * n_heads * hd + kvh * group * hd;
    const float* Kr = rows(kc, ksc, kbuf);
    k.attn_scores(qg, group, Kr, len, hd, scale, s.data(), len);
    for (int h = 0; h < group; h++) k.softmax(s.data() + h * len, len);
    float* og = O + r * n_heads * hd + kvh * group * hd;
    std::memset(og, 0, group * hd * sizeof(float));
    k.attn_accum(s.data(), group, len, rows(vc, vsc, vbuf), len, hd, og);
  };
  if (n * H == 1) return item(0);  // no OpenMP team of one (core/parallel.h)
  if (n <= kDecodeMaxRows)
    return spin_run(nt, [&](int t, int T) {
      for (int64_t rk = t; rk < n * H; rk += T) item(rk);
    });
#pragma omp parallel for num_threads(nt) schedule(static, 1)
  for (int64_t rk = 0; rk < n * H; rk++) item(rk);
}

}  // namespace llmq
