// Scalar reference kernels: the oracle every SIMD kernel is tested against. Compiled with
// -fno-tree-vectorize -ffp-contract=off, so each sum is a plain left-to-right f32 loop.
#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "kernels/cpu/kernels.h"

namespace llmq {
namespace {

template <class W, class Cvt>
void gemv(const W* w, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1, Cvt cvt) {
  for (int64_t m = m0; m < m1; m++)
    for (int i = 0; i < n; i++) {
      float s = 0.f;
      for (int64_t k = 0; k < K; k++) s += cvt(w[m * K + k]) * X[i * K + k];
      Y[i * ldy + m] = s;
    }
}

void gemv_f32(const float* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1) {
  gemv(W, X, Y, K, n, ldy, m0, m1, [](float v) { return v; });
}
void gemv_bf16(const uint16_t* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1) {
  gemv(W, X, Y, K, n, ldy, m0, m1, bf16_to_f32);
}
void gemv_f16(const uint16_t* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1) {
  gemv(W, X, Y, K, n, ldy, m0, m1, f16_to_f32);
}
void gemv_e4m3(const uint8_t* W, const float* X, float* Y, int64_t K, int n, int64_t ldy, int64_t m0, int64_t m1) {
  gemv(W, X, Y, K, n, ldy, m0, m1, e4m3_to_f32);
}
void cvt_bf16_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = bf16_to_f32(x[i]);
}
void cvt_f16_f32(const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] = f16_to_f32(x[i]);
}
float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}
void axpy(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}
void attn_scores(const float* q, int nq, const float* K, int64_t n, int64_t hd, float scale, float* s, int64_t lds) {
  for (int h = 0; h < nq; h++)
    for (int64_t t = 0; t < n; t++) s[h * lds + t] = scale * dot(q + h * hd, K + t * hd, hd);
}
void attn_accum(const float* p, int nq, int64_t lds, const float* V, int64_t n, int64_t hd, float* out) {
  for (int h = 0; h < nq; h++)
    for (int64_t t = 0; t < n; t++) axpy(p[h * lds + t], V + t * hd, out + h * hd, hd);
}
void rmsnorm(const float* x, const float* w, float* out, int64_t n, float eps) {
  float ss = 0.f;
  for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
  float r = 1.f / std::sqrt(ss / (float)n + eps);
  for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * (w ? w[i] : 1.f);
}
void softmax(float* x, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; i++) mx = std::fmax(mx, x[i]);
  float s = 0.f;
  for (int64_t i = 0; i < n; i++) {
    x[i] = std::exp(x[i] - mx);
    s += x[i];
  }
  for (int64_t i = 0; i < n; i++) x[i] /= s;
}
void swiglu(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; i++) out[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
}
void rope(float* x, const float* c, const float* s, int n_heads, int hd) {
  int half = hd / 2;
  for (int h = 0; h < n_heads; h++) {
    float* v = x + (int64_t)h * hd;
    for (int j = 0; j < half; j++) {
      float a = v[j], b = v[j + half];
      v[j] = a * c[j] - b * s[j];
      v[j + half] = b * c[j] + a * s[j];
    }
  }
}

void quant_blocks_i8(const float* x, int64_t nb, float fixed_amax, int8_t* q, float* d, int32_t* sum) {
  for (int64_t b = 0; b < nb; b++) {
    const float* xb = x + b * 32;
    float amax = fixed_amax >= 0.f ? fixed_amax : 0.f;
    if (fixed_amax < 0.f)
      for (int k = 0; k < 32; k++) amax = std::max(amax, std::fabs(xb[k]));  // NaN compares false: skipped
    const float db = amax / 127.f, inv = db > 0.f ? 1.f / db : 0.f;
    int32_t s = 0;
    for (int k = 0; k < 32; k++) {
      float r = xb[k] * inv;
      if (r != r) r = 0.f;
      const int v = (int)std::clamp(std::nearbyint(r), -127.f, 127.f);
      q[b * 32 + k] = (int8_t)v;
      s += v;
    }
    d[b] = db;
    sum[b] = s;
  }
}

double logsumexp(const float* x, int64_t n) {
  float mx = -INFINITY;
  for (int64_t i = 0; i < n; i++) mx = std::fmax(mx, x[i]);
  double s = 0;
  for (int64_t i = 0; i < n; i++) s += (double)std::exp(x[i] - mx);
  return (double)mx + std::log(s);
}
void swiglu_backward(const float* dout, const float* g, const float* u, float* dg, float* du, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    const float sig = 1.f / (1.f + std::exp(-g[i]));
    du[i] = dout[i] * (g[i] * sig);
    dg[i] = dout[i] * u[i] * (sig * (1.f + g[i] * (1.f - sig)));
  }
}
void adamw(float* p, float* m, float* v, const float* g, int64_t n, const AdamWStep& s) {
  for (int64_t i = 0; i < n; i++) {
    m[i] = s.b1 * m[i] + (1.f - s.b1) * g[i];
    v[i] = s.b2 * v[i] + (1.f - s.b2) * g[i] * g[i];
    p[i] = p[i] * s.decay - s.step_size * m[i] / (std::sqrt(v[i]) / s.sqrt_bc2 + s.eps);
  }
}
void softmax_scaled(float* x, int64_t n, float lse, float scale) {
  for (int64_t i = 0; i < n; i++) x[i] = std::exp(x[i] - lse) * scale;
}

const CpuKernels kRef = {"ref", gemv_f32, gemv_bf16, gemv_f16, gemv_e4m3, cvt_bf16_f32, cvt_f16_f32, dot, axpy,
                         rmsnorm, softmax, swiglu, rope, attn_scores, attn_accum, quant_blocks_i8, logsumexp,
                         softmax_scaled, swiglu_backward, adamw, matmul_q_ref, matmul_kq_ref};
}  // namespace

float QMatView::scale_at(int64_t p, int64_t g, int r) const {
  const int64_t i = p * (K / group) + g;
  return sz16 ? f16_to_f32(sz16[i * szs + r]) : scale[i * kQPanel + r];
}
float QMatView::zs_at(int64_t p, int64_t g, int r) const {
  const int64_t i = p * (K / group) + g;
  if (!sz16) return zs[i * kQPanel + r];
  return f16_to_f32(sz16[i * szs + r]) * (szs == 16 ? zero : f16_to_f32(sz16[i * szs + 16 + r]));
}
QMatView QMatView::from_row(int64_t r0) const {
  const int64_t p = r0 / kQPanel, ng = K / group;
  QMatView v = *this;
  v.q = q + p * kQPanel * K * bits / 8;
  if (sz16) v.sz16 = sz16 + p * ng * szs;
  else v.scale = scale + p * ng * kQPanel, v.zs = zs + p * ng * kQPanel;
  return v;
}

// Code of weight k in row m of a quantized matrix (see QMatView's layout).
static inline int q_code(const QMatView& W, int64_t m, int64_t k) {
  const int64_t p = m / kQPanel, r = m % kQPanel;
  if (W.bits == 8) return W.q[p * kQPanel * W.K + (k / 4) * 64 + r * 4 + k % 4];
  const uint8_t b = W.q[p * (kQPanel / 2) * W.K + (k / 8) * 64 + r * 4 + k % 4];
  return k % 8 < 4 ? (b & 15) : (b >> 4);
}

void matmul_q_ref(const QMatView& W, const QActView& X, float* Y, int64_t n, int64_t ldy, int64_t m0, int64_t m1) {
  const int64_t K = W.K, G = W.group, ng = K / G, nb = K / 32;
  for (int64_t m = m0; m < m1; m++) {
    const int64_t p = m / kQPanel;
    const int r = (int)(m % kQPanel);
    for (int64_t i = 0; i < n; i++) {
      const int8_t* xq = X.q + i * K;
      const float* bs = X.bscale + i * nb;
      float acc = 0.f, corr = 0.f;
      for (int64_t g = 0; g < ng; g++) {
        float accg = 0.f;
        for (int64_t b = g * G / 32; b < (g + 1) * G / 32; b++) {
          int32_t d = 0;
          for (int64_t k = b * 32; k < b * 32 + 32; k++) d += q_code(W, m, k) * (int32_t)xq[k];
          accg += (float)d * bs[b];
        }
        acc += W.scale_at(p, g, r) * accg;
        corr += W.zs_at(p, g, r) * X.gsum[i * ng + g];
      }
      Y[i * ldy + m] = acc - corr;
    }
  }
}

void gemm_bf16_pack_x(const float* X, int64_t n, int64_t K, uint16_t* Xp, int64_t p0, int64_t p1) {
  for (int64_t t = p0 * 16; t < p1 * 16; t++)
    for (int64_t k = 0; k < (K + 1) / 2 * 2; k++)
      Xp[gemm_bf16_packed_index(t, k, K)] = t < n && k < K ? f32_to_bf16(X[t * K + k]) : 0;
}

void gemm_bf16_ref(const uint16_t* W, const uint16_t* Xp, float* Y, int64_t K, int64_t n, int64_t ldy, int64_t m0,
                   int64_t m1) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t m = m0; m < m1; m++) {
      float s = 0.f;
      for (int64_t k = 0; k < K; k++) s += bf16_to_f32(W[m * K + k]) * bf16_to_f32(Xp[gemm_bf16_packed_index(i, k, K)]);
      Y[i * ldy + m] = s;
    }
}

void gemm_bf16_rows_ref(const GemmBf16Args& a, int64_t m0, int64_t m1) {
  const int64_t K = 2 * a.Kp2, KB = 2 * (a.b_kp2 ? a.b_kp2 : a.Kp2);
  for (int64_t i = m0; i < m1; i++)
    for (int64_t j = 0; j < a.n; j++) {
      float s = 0.f;
      for (int64_t k = 0; k < K; k++)
        s += bf16_to_f32(a.A[a.a_panels ? gemm_bf16_packed_index(i, k, K) : i * a.lda + k]) *
             bf16_to_f32(a.Bp[gemm_bf16_packed_index(j, k, KB)]);
      float& c = a.C[i * a.ldc + j];
      c = a.accumulate ? c + a.alpha * s : a.alpha * s;
    }
}

void pack_bf16_rows_ref(const float* S, int64_t ld, int64_t rows, int64_t k, uint16_t* dst) {
  const int64_t Kp = (k + 1) / 2 * 2;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t c = 0; c < Kp; c++) dst[i * Kp + c] = c < k ? f32_to_bf16(S[i * ld + c]) : 0;
}
void pack_bf16_panels_ref(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0, int64_t p1) {
  const int64_t Kp = (k + 1) / 2 * 2;
  for (int64_t j = p0 * 16; j < p1 * 16; j++)
    for (int64_t c = 0; c < Kp; c++) dst[gemm_bf16_packed_index(j, c, Kp)] = j < n && c < k ? f32_to_bf16(S[j * ld + c]) : 0;
}
void pack_bf16_panels_t_ref(const float* S, int64_t ld, int64_t n, int64_t k, uint16_t* dst, int64_t p0, int64_t p1) {
  const int64_t Kp = (k + 1) / 2 * 2;
  for (int64_t j = p0 * 16; j < p1 * 16; j++)
    for (int64_t c = 0; c < Kp; c++) dst[gemm_bf16_packed_index(j, c, Kp)] = j < n && c < k ? f32_to_bf16(S[c * ld + j]) : 0;
}

const CpuKernels& cpu_kernels_ref() { return kRef; }

}  // namespace llmq
