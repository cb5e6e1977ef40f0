// The CPU kernel table: one struct of function pointers per instruction set. Kernels are
// single-threaded and work on raw host arrays; threading and shapes live in the ops layer.
#pragma once
#include <cstdint>
#include <vector>

namespace llmq {

// Most activation vectors a GEMV call handles in one pass over the weights.
constexpr int kGemvMaxBatch = 4;

// Rows per panel of the quantized weight layout (one 512-bit register of int32 lanes).
constexpr int64_t kQPanel = 16;

// Integer-quantized weights in the kernels' layout (built by src/quant), interleaved so one
// vector instruction multiplies 16 rows at once. Codes q are in [0, 2^bits). Rows are stored
// in panels of 16 (panel p = rows 16p..16p+15; the last panel is padded with zero rows):
//   bits 8: 16*K bytes per panel; byte (k/4)*64 + r*4 + k%4 is the code of row 16p+r,
//           column k: for each 4 columns, the 16 rows' 4 codes side by side;
//   bits 4: 8*K bytes per panel; byte (k/8)*64 + r*4 + j holds row 16p+r's code of column
//           8*(k/8)+j in its low nibble and of column 8*(k/8)+4+j in its high nibble.
// Weight = scale*q - zs, with one scale and one zs = scale*zero_point per `group`
// consecutive weights of a row, stored per panel and group in one of two layouts:
//   sz16 (when every scale and zero point is an f16 value, as in every checkpoint format):
//        szs = 32 halves (64 bytes) per (panel p, group g) at sz16 + (p*(K/group) + g)*32:
//        the 16 rows' f16 scales, then their f16 zero points; zs = scale*zero is formed in
//        f32 (exact). When every zero point is the same value (symmetric schemes: 2^(bits-1)),
//        szs = 16: the 16 scales only, at sz16 + (p*(K/group) + g)*16, and zs = scale*zero
//        with zero = the view's `zero` (3% fewer bytes streamed by a 4-bit decode);
//   f32 (otherwise; sz16 == nullptr): scale[(p*(K/group) + g)*16 + r], zs likewise.
// Requires K % group == 0 and group % 32 == 0.
struct QMatView {
  const uint8_t* q;
  const uint16_t* sz16;  // (panels, K/group, szs) f16, or nullptr
  const float* scale;    // (panels, K/group, 16) when sz16 is nullptr
  const float* zs;       // (panels, K/group, 16) when sz16 is nullptr
  int bits;              // 4 or 8
  int64_t K, group;
  int szs = 32;          // halves per (panel, group) in sz16: 32 (scales, zero points) or 16 (scales)
  float zero = 0.f;      // every row's zero point when szs == 16
  // Scale and zs of row 16p + r, group g.
  float scale_at(int64_t p, int64_t g, int r) const;
  float zs_at(int64_t p, int64_t g, int r) const;
  // The view of rows [r0, ...) (r0 a multiple of 16).
  QMatView from_row(int64_t r0) const;
};

// Activations quantized for a QMatView product: int8 in blocks of 32 with a scale per block
// (value = bscale*q); for per-token quantization every block of a row has the row's scale.
// gsum is the sum of the dequantized values over each weight group, for the zero-point term.
// Row i of the view starts at q + i*K, bscale + i*K/32, gsum + i*K/group.
struct QActView {
  const int8_t* q;       // (n, K)
  const float* bscale;   // (n, K/32)
  const float* gsum;     // (n, K/group)
};

// Y[i*ldy + m] = sum_g scale[m,g] * sum_{b in g} bscale[i,b] * (sum_{k in b} q[m,k]*x[i,k])
//              - sum_g zs[m,g] * gsum[i,g]      for i < n, m in [m0, m1).
// m0 must be a multiple of kQPanel; m1 a multiple of it or the matrix's last row + 1.
using MatmulQFn = void (*)(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                           int64_t m1);

// GGUF k-quant weights (ggml's Q2_K..Q6_K super-blocks of 256, quant/ggml_blocks.h) as the
// file stores them: row m's K/256 blocks at w + m*row_bytes. type is the ggml type id (10..14).
struct KQMatView {
  const uint8_t* w;
  int64_t row_bytes, K;
  int type;
};
// Activations for a k-quant product (ggml's Q8_K): per row, K/256 blocks of 256 int8 values
// with one f32 scale each (value = d*q, q in [-127, 127]) and the sums of every 16 values.
// q45 holds the same codes in the Q4_K/Q5_K kernels' order (below), for those types.
// Row i of the view starts at q + i*K (q45 + i*K), d + i*K/256, bsum + i*K/16.
struct KQActView {
  const int8_t* q;
  const float* d;
  const int16_t* bsum;
  const int8_t* q45 = nullptr;
};
// Every k-quant super-block is read as unsigned codes u[256] (in ggml's element order), an
// integer scale s[j] and offset multiplier o[j] per 16 weights j, and two f16-derived floats
// d, dm, with weight[e] = d*s[e/16]*u[e] - dm*o[e/16]:
//   Q2_K: s = scale nibble, o = min nibble, dm = dmin;   Q3_K: s = 6-bit scale - 32, o = s, dm = 4d;
//   Q4_K, Q5_K: s, o = the 32-weight sub-block's 6-bit scale and min, dm = dmin;
//   Q6_K: s = int8 scale, o = s, dm = 32d.
// The kernels take the elements in a fixed order of 4 "registers" of 64: element
// e = P(r, b) at byte b of register r, P(r, b) = 64r + b, except for Q4_K/Q5_K, whose codes
// unpack without shuffles in the order P(r, b) = 64(2(r/2) + b/32) + 32(r%2) + b%32 (the low
// then high nibbles of 64 code bytes; q45 holds the activations in that order). The product
// of row m and token i is then, per super-block (activation scale x),
//   I1[l] = sum_{r<4, k<4} s[e/16] * u[e] * q[e], e = P(r, 4l+k)  (l < 16, exact int32)
//   I2[l] = o[2l]*bsum[2l] + o[2l+1]*bsum[2l+1]                     (l < 8, exact int32)
//   F[l] = fma(float(I1[l]), x*d, F[l]);  G[l] = fma(float(I2[l]), x*dm, G[l])
// over the super-blocks in order from F = G = 0, and Y[i*ldy + m] = R16(F) - R8(G), where R
// halves a lane vector repeatedly (v[l] += v[l + w] for w = 8, 4, 2, 1). Every table computes
// exactly this (the lanes are the 512-bit kernel's; the 256-bit one keeps them in two
// registers), so the results are equal bit for bit across ISAs and independent of n.
using MatmulKQFn = void (*)(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                            int64_t m1);

// Training's bf16 product (mixed-precision training, train/train_ops.cpp): for rows i in
// [m0, m1) and columns j < n,
//   C[i*ldc + j] = alpha * sum_{k < 2*Kp2} A[i*lda + k] * B(j, k)   (+ C[i*ldc + j] if accumulate)
// with A bf16 row-major (each row 2*Kp2 elements, an odd K's last column padded with 0) and
// B(j, k) = Bp[gemm_bf16_packed_index(j, k, 2*Kp2)] (packed as gemm_bf16_pack_x packs tokens:
// panels of 16 rows j, pairs of k interleaved). Products of bf16 are exact in f32; the sums
// are f32.
// A may also come in the panel layout (a_panels: A(i, k) at
// gemm_bf16_packed_index(i, k, 2*Kp2), lda unused), which is how a transposed operand packs
// fastest.
struct GemmBf16Args {
  const uint16_t* A;  // (m, lda) bf16
  int64_t lda;
  const uint16_t* Bp;  // (ceil(n/16)*16, 2*Kp2) packed
  int64_t Kp2;         // pairs of k
  float* C;            // (m, ldc) f32
  int64_t ldc, n;
  float alpha = 1.f;
  bool accumulate = false;
  bool a_panels = false;
  // Pairs per packed panel of Bp when B was packed over more of k than this product uses (0:
  // Kp2). The product takes each panel's first Kp2 pairs: causal attention packs a head's
  // keys once and each row tile multiplies by the prefix it attends to.
  int64_t b_kp2 = 0;
};
// One AdamW step's constants (train/adamw.h): decay = 1 - lr*wd (1 for no-decay tensors),
// step_size = lr / (1 - b1^t), sqrt_bc2 = sqrt(1 - b2^t).
struct AdamWStep {
  float decay, b1, b2, step_size, sqrt_bc2, eps;
};

using GemmBf16RowsFn = void (*)(const GemmBf16Args& a, int64_t m0, int64_t m1);

struct CpuKernels {
  const char* isa;  // "ref", "avx2", "avx2vnni", "avx512"

  // Y[i*ldy + m] = sum_k W[m*K + k] * X[i*K + k]   for i < n (1..kGemvMaxBatch), m in [m0, m1).
  // W is row-major (M, K) in f32, bf16 or f16; X and Y are f32.
  void (*gemv_f32)(const float* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1);
  void (*gemv_bf16)(const uint16_t* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1);
  void (*gemv_f16)(const uint16_t* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1);
  // The same with W in FP8 E4M3 bytes (e4m3fn; the NaN code 0x7f is never stored), each
  // converted exactly to f32: the fp8 scheme's decode, before its scales.
  void (*gemv_e4m3)(const uint8_t* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1);

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
  // Attention of the nq query heads sharing one KV head (a GQA group), q (nq, hd) and rows
  // K, V (n, hd) contiguous:
  //   attn_scores: s[h*lds + t] = scale * sum_d q[h*hd + d] * K[t*hd + d]
  //   attn_accum:  out[h*hd + d] += sum_t p[h*lds + t] * V[t*hd + d]
  // (h < nq, t < n). Each K and V row is read once for the whole group.
  void (*attn_scores)(const float* q, int nq, const float* K, int64_t n, int64_t hd, float scale, float* s,
                      int64_t lds);
  void (*attn_accum)(const float* p, int nq, int64_t lds, const float* V, int64_t n, int64_t hd, float* out);
  // Activations to int8 in blocks of 32 (the quantized matmul's input), nb blocks of x:
  // d[b] = amax/127 with amax = fixed_amax when fixed_amax >= 0 (per-token or per-tensor
  // scales), else the block's max |x| (NaNs skipped); q = clamp(round-half-even(x/d), -127,
  // 127), 0 for a NaN quotient (and for every x when d = 0); sum[b] = the block's sum of q.
  // Every table gives the same bytes as the scalar one (tested bit for bit).
  void (*quant_blocks_i8)(const float* x, int64_t nb, float fixed_amax, int8_t* q, float* d, int32_t* sum);

  // The training loss over a row of logits: log(sum_i exp(x[i])) (max-subtracted, the sum
  // in double over f32 blocks), and x[i] = exp(x[i] - lse) * scale in place (softmax from a
  // saved log-sum-exp, scaled: the cross-entropy gradient before its -scale at the target).
  double (*logsumexp)(const float* x, int64_t n) = nullptr;
  void (*softmax_scaled)(float* x, int64_t n, float lse, float scale) = nullptr;
  // swiglu's backward: du = dout * silu(g), dg = dout * u * silu'(g),
  // silu'(g) = sig(g) * (1 + g * (1 - sig(g))).
  void (*swiglu_backward)(const float* dout, const float* g, const float* u, float* dg, float* du, int64_t n) = nullptr;
  // AdamW on n parameters: p *= decay; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
  // p -= step_size * m / (sqrt(v) / sqrt_bc2 + eps)   (the optimizer's whole pass, one read
  // and write of each array; the scalar form has a libm sqrt call per element).
  void (*adamw)(float* p, float* m, float* v, const float* g, int64_t n, const AdamWStep& s) = nullptr;

  // Quantized matrix product, decode and prefill (int8 dot products; see MatmulQFn).
  // Filled in by dispatch.cpp from the variants below according to the CPU's dot-product
  // instructions.
  MatmulQFn matmul_q = nullptr;

  // k-quant matrix product, decode and prefill (KQMatView, KQActView, MatmulKQFn).
  MatmulKQFn matmul_kq = nullptr;

  // Y[i*ldy + m] = sum_k W[m*K + k] * X[i, k] for i < n, m in [m0, m1), W bf16 row-major
  // and X bf16 packed by gemm_bf16_pack_x, products summed in f32: the prefill of bf16
  // weights on CPUs with AVX512_BF16. nullptr elsewhere (the ops layer then converts W to
  // f32 for sgemm).
  void (*gemm_bf16)(const uint16_t* W, const uint16_t* X, float* Y, int64_t K, int64_t n, int64_t ldy, int64_t m0,
                    int64_t m1) = nullptr;
  // Training's bf16 product (GemmBf16Args) with vdpbf16ps on AVX512_BF16; nullptr elsewhere
  // (train_ops then rounds both operands to bf16 and runs sgemm: the same products, f32 sums).
  GemmBf16RowsFn gemm_bf16_rows = nullptr;
  // Its operands from f32 (each value rounded to nearest even; S's rows ld floats apart):
  //   pack_bf16_rows: dst (rows, Kp) row-major, Kp = k rounded up to even, the pad column 0;
  //   pack_bf16_panels: panels [p0, p1) of X(j, c) = S[j*ld + c] (j < n, c < k) in the
  //     layout of gemm_bf16_packed_index(j, c, Kp), rows past n and the pad column 0;
  //   pack_bf16_panels_t: the same of X(j, c) = S[c*ld + j] (S stored transposed).
  // Set together with gemm_bf16_rows.
  void (*pack_bf16_rows)(const float* S, int64_t ld, int64_t rows, int64_t k, uint16_t* dst) = nullptr;
  void (*pack_bf16_panels)(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0,
                           int64_t p1) = nullptr;
  void (*pack_bf16_panels_t)(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0,
                             int64_t p1) = nullptr;
};

// Quantized matrix product variants: scalar, AVX2 (vpmaddubsw), AVX-VNNI (256-bit
// vpdpbusd), AVX-512 VNNI (512-bit vpdpbusd).
void matmul_q_ref(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1);
void matmul_q_avx2(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1);
void matmul_q_avxvnni(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1);
void matmul_q_avx512vnni(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                         int64_t m1);

// k-quant matrix product variants: scalar, AVX2 (vpmaddubsw, vpmaddwd), AVX-512 BW and
// AVX-512 VNNI (vpdpwssd).
void matmul_kq_ref(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1);
void matmul_kq_avx2(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1);
void matmul_kq_avx512(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                      int64_t m1);
void matmul_kq_avx512vnni(const KQMatView& W, const KQActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0,
                          int64_t m1);

// Activations packed for gemm_bf16: rounded to bf16 (round to nearest even), tokens in
// panels of 16, K padded to an even Kp; element (t, k) at
//   ((t/16) * (Kp/2) + k/2) * 32 + (t%16) * 2 + k%2,
// the padding (tokens n.. of the last panel, column K when K is odd) zero. A 32-bit lane
// then holds one token's pair (x[k], x[k+1]), the operand order of vdpbf16ps.
inline int64_t gemm_bf16_packed_size(int64_t n, int64_t K) { return (n + 15) / 16 * 16 * ((K + 1) / 2 * 2); }
// Index of element (t, k) in that layout.
inline int64_t gemm_bf16_packed_index(int64_t t, int64_t k, int64_t K) {
  return ((t / 16) * ((K + 1) / 2) + k / 2) * 32 + (t % 16) * 2 + k % 2;
}
// Packs token panels [p0, p1) of X (n, K) f32 into Xp (gemm_bf16_packed_size(n, K) elements).
void gemm_bf16_pack_x(const float* X, int64_t n, int64_t K, uint16_t* Xp, int64_t p0, int64_t p1);
// bf16 matrix product: scalar (exact products, f32 sums) and AVX512_BF16 (vdpbf16ps).
void gemm_bf16_ref(const uint16_t* W, const uint16_t* X, float* Y, int64_t K, int64_t n, int64_t ldy, int64_t m0,
                   int64_t m1);
void gemm_bf16_avx512bf16(const uint16_t* W, const uint16_t* X, float* Y, int64_t K, int64_t n, int64_t ldy,
                          int64_t m0, int64_t m1);

// Training's bf16 product: scalar (exact products, f32 sums in k order) and AVX512_BF16.
void gemm_bf16_rows_ref(const GemmBf16Args& a, int64_t m0, int64_t m1);
void gemm_bf16_rows_avx512bf16(const GemmBf16Args& a, int64_t m0, int64_t m1);
void pack_bf16_rows_ref(const float* S, int64_t ld, int64_t rows, int64_t k, uint16_t* dst);
void pack_bf16_panels_ref(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0, int64_t p1);
void pack_bf16_panels_t_ref(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0, int64_t p1);
void pack_bf16_rows_avx512bf16(const float* S, int64_t ld, int64_t rows, int64_t k, uint16_t* dst);
void pack_bf16_panels_avx512bf16(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0,
                                 int64_t p1);
void pack_bf16_panels_t_avx512bf16(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0,
                                   int64_t p1);

const CpuKernels& cpu_kernels_ref();
const CpuKernels* cpu_kernels_avx2();    // compiled for AVX2+FMA+F16C
const CpuKernels* cpu_kernels_avx512();  // compiled for AVX-512 F/BW/VL/DQ

// The table chosen for this CPU (dispatch.cpp, the only place that reads CPU features).
// LLMQ_ISA=ref|avx2|avx512 in the environment overrides the choice, for tests and benchmarks.
const CpuKernels& cpu_kernels();
// Every table this CPU can run, reference first (for tests and benchmarks).
std::vector<const CpuKernels*> cpu_kernels_supported();

}  // namespace llmq
