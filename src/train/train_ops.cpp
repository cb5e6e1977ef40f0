// Training ops: plain loops the compiler vectorises, OpenMP over independent rows or
// (sequence, head) pairs, BLAS for the matmuls. Instantiated for float and double.
#include "train/train_ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/rng.h"
#include "kernels/cpu/kernels.h"

namespace llmq::train {

Precision precision_parse(const std::string& s) {
  if (s == "f32") return Precision::F32;
  if (s == "bf16") return Precision::BF16;
  fail("unknown precision '{}' (choose f32 or bf16)", s);
}

namespace {
// C (m, n) = alpha * op(A) op(B) + beta * C, row-major, through the BLAS of T.
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B, int64_t ldb,
          float beta, float* C, int64_t ldc, float alpha = 1.f) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha,
              A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const double* A, int64_t lda, const double* B, int64_t ldb,
          double beta, double* C, int64_t ldc, double alpha = 1.0) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)m, (int)n, (int)k, alpha,
              A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

// The bf16 product C (m, n) = alpha * op(A) op(B) + beta * C with beta 0 or 1, in the same
// row-major BLAS terms as gemm() above. op(A) is converted to bf16 rows, op(B) to the
// kernel's panels of 16 columns; both conversions read each float once (O(mk + kn) against
// the product's O(mnk)). Threads take disjoint row ranges of C.
thread_local std::vector<uint16_t> tl_a, tl_b;

// The operands rounded to bf16 values, then the plain BLAS product: the bf16 path where the
// CPU has no bf16 product (f32 sums, the same products), and for T = double the reference
// (products and sums in double).
template <class T>
void gemm_rounded(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B, int64_t ldb,
                  T beta, T* C, int64_t ldc, T alpha) {
  auto r = [](T v) { return (T)bf16_to_f32(f32_to_bf16((float)v)); };
  std::vector<T> a((size_t)(m * k)), b((size_t)(k * n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; i++)
    for (int64_t c = 0; c < k; c++) a[i * k + c] = r(ta ? A[c * lda + i] : A[i * lda + c]);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < k; c++)
    for (int64_t j = 0; j < n; j++) b[c * n + j] = r(tb ? B[j * ldb + c] : B[c * ldb + j]);
  gemm(false, false, m, n, k, a.data(), k, b.data(), n, beta, C, ldc, alpha);
}

// Panels [p0, p1) of the kernel's B(j, c) = op(B)(c, j): B[j*ldb + c] when tb, else
// B[c*ldb + j]. Callers give each thread one contiguous range: the transposed packer reads
// rows of all its panels at once, panel by panel it runs at a third of the speed.
void pack_b_panels(const CpuKernels& K, bool tb, const float* B, int64_t ldb, int64_t n, int64_t k, uint16_t* dst,
                   int64_t p0, int64_t p1) {
  if (p1 <= p0) return;
  if (tb) K.pack_bf16_panels(B, ldb, n, k, dst, p0, p1);
  else K.pack_bf16_panels_t(B, ldb, n, k, dst, p0, p1);
}
// This thread's share [p0, p1) of `panels` inside a parallel region.
std::pair<int64_t, int64_t> thread_share(int64_t panels) {
  const int nt = omp_get_num_threads(), t = omp_get_thread_num();
  return {panels * t / nt, panels * (t + 1) / nt};
}

// A scratch vector of at least n elements that only ever grows (resize up and down between
// calls of different sizes would zero-fill the regrown part every time).
uint16_t* scratch(std::vector<uint16_t>& v, int64_t n) {
  if ((int64_t)v.size() < n) v.resize((size_t)n);
  return v.data();
}

void gemm_bf16(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* A, int64_t lda, const float* B,
               int64_t ldb, float beta, float* C, int64_t ldc, float alpha, const uint16_t* b_packed = nullptr,
               const uint16_t* a_packed = nullptr, int64_t b_kp2 = 0) {
  const CpuKernels& K = cpu_kernels();
  if (!K.gemm_bf16_rows) return gemm_rounded(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc, alpha);
  const int64_t Kp2 = (k + 1) / 2, Kp = 2 * Kp2, panels = (n + 15) / 16;
  // op(A) as bf16 rows when A is stored row-major, else (stored transposed) as panels; op(B)
  // as panels of its columns (kernels.h, pack_bf16_*). Either may come packed already
  // (a_packed: op(A) as rows, only with !ta).
  LLMQ_CHECK(!(a_packed && ta));
  const int64_t apanels = (m + 15) / 16;
  uint16_t* ap = a_packed ? nullptr : scratch(tl_a, ta ? apanels * 16 * Kp : m * Kp);
  uint16_t* bp = b_packed ? nullptr : scratch(tl_b, panels * 16 * Kp);
#pragma omp parallel
  {
    if (!a_packed && !ta) {
#pragma omp for schedule(static) nowait
      for (int64_t i0 = 0; i0 < m; i0 += 16)
        K.pack_bf16_rows(A + i0 * lda, lda, std::min<int64_t>(16, m - i0), k, ap + i0 * Kp);
    } else if (!a_packed) {  // op(A)(i, c) = A[c*lda + i]
      const auto [p0, p1] = thread_share(apanels);
      if (p1 > p0) K.pack_bf16_panels_t(A, lda, m, k, ap, p0, p1);
    }
    if (!b_packed) {
      const auto [p0, p1] = thread_share(panels);
      pack_b_panels(K, tb, B, ldb, n, k, bp, p0, p1);
    }
#pragma omp barrier
    // Rows of C split over the threads in multiples of 8 (the kernel's tile height).
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t blocks = (m + 7) / 8, b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
    if (b1 > b0) {
      GemmBf16Args g{a_packed ? a_packed : ap, Kp, b_packed ? b_packed : bp, Kp2, C, ldc, n, alpha, beta != 0.f, ta,
                     b_packed ? b_kp2 : 0};
      K.gemm_bf16_rows(g, b0 * 8, std::min(m, b1 * 8));
    }
  }
}

template <class T>
void gemm_p(Precision prec, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
            int64_t ldb, T beta, T* C, int64_t ldc, T alpha = T(1), const uint16_t* b_packed = nullptr,
            const uint16_t* a_packed = nullptr, int64_t b_kp2 = 0) {
  if (prec != Precision::BF16) return gemm(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc, alpha);
  if constexpr (std::is_same_v<T, float>)
    gemm_bf16(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc, alpha, b_packed, a_packed, b_kp2);
  else gemm_rounded(ta, tb, m, n, k, A, lda, B, ldb, beta, C, ldc, alpha);
}

// The shared input of several linears, converted once: as the A operand (rows) of their
// forward products, or as the B operand (panels) of their weight-gradient products. nullptr
// where nothing is shared (f32, one linear, or no bf16 product kernel).
thread_local std::vector<uint16_t> tl_x;
template <class T>
const uint16_t* pack_shared_input(const T* x, int64_t N, int64_t in, Precision prec, size_t users, bool for_dW) {
  if constexpr (!std::is_same_v<T, float>) {
    return nullptr;
  } else {
    const CpuKernels& K = cpu_kernels();
    if (users < 2 || prec != Precision::BF16 || !K.gemm_bf16_rows) return nullptr;
    if (!for_dW) {  // op(A) = x (N, in) as rows
      const int64_t Kp = (in + 1) / 2 * 2;
      uint16_t* d = scratch(tl_x, N * Kp);
#pragma omp parallel for schedule(static)
      for (int64_t i0 = 0; i0 < N; i0 += 16) K.pack_bf16_rows(x + i0 * in, in, std::min<int64_t>(16, N - i0), in, d + i0 * Kp);
      return d;
    }
    // op(B) = x (k = N rows, n = in columns), as gemm_bf16 packs it with tb false
    const int64_t panels = (in + 15) / 16;
    uint16_t* d = scratch(tl_x, gemm_bf16_packed_size(in, N));
#pragma omp parallel
    {
      const auto [p0, p1] = thread_share(panels);
      pack_b_panels(K, false, x, in, in, N, d, p0, p1);
    }
    return d;
  }
}
}  // namespace

template <class T>
void add_into(T* y, const T* x, int64_t n) {
#pragma omp parallel for simd schedule(static) if (n >= 65536)
  for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

double sum_squares(const float* x, int64_t n) {
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> part((size_t)chunks);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; c++) {
    const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
    double s[4] = {0, 0, 0, 0};
    int64_t i = b;
    for (; i + 4 <= e; i += 4)
      for (int j = 0; j < 4; j++) s[j] += (double)x[i + j] * x[i + j];
    for (; i < e; i++) s[0] += (double)x[i] * x[i];
    part[(size_t)c] = (s[0] + s[1]) + (s[2] + s[3]);
  }
  double t = 0;
  for (double p : part) t += p;
  return t;
}

void scale_in_place(float* x, int64_t n, float s) {
#pragma omp parallel for simd schedule(static) if (n >= 65536)
  for (int64_t i = 0; i < n; i++) x[i] *= s;
}

template <class T>
void embedding_forward(T* out, const int32_t* tok, const T* table, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) std::copy(table + (int64_t)tok[n] * C, table + (int64_t)tok[n] * C + C, out + n * C);
}

template <class T>
void embedding_backward(T* dtable, const T* dout, const int32_t* tok, int64_t N, int64_t C) {
  if (!dtable) return;  // frozen
  // Rows may repeat a token: split the columns over threads instead of the rows.
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t c0 = C * t / nt, c1 = C * (t + 1) / nt;
    for (int64_t n = 0; n < N; n++) {
      T* d = dtable + (int64_t)tok[n] * C;
      const T* g = dout + n * C;
      for (int64_t c = c0; c < c1; c++) d[c] += g[c];
    }
  }
}

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t C, double eps) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const T* xr = x + n * C;
    T ss = 0;
    for (int64_t c = 0; c < C; c++) ss += xr[c] * xr[c];
    T r = T(1) / std::sqrt(ss / T(C) + T(eps));
    rstd[n] = r;
    for (int64_t c = 0; c < C; c++) out[n * C + c] = xr[c] * r * w[c];
  }
}

template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const T *xr = x + n * C, *g = dout + n * C;
    const T r = rstd[n];
    T dot = 0;
    for (int64_t c = 0; c < C; c++) dot += g[c] * w[c] * xr[c];
    const T k = dot * r * r * r / T(C);
    for (int64_t c = 0; c < C; c++) dx[n * C + c] = g[c] * w[c] * r - xr[c] * k;
  }
  // dw: a column sum over rows, split by columns so threads never share an element.
  if (!dw) return;  // a frozen norm
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t c0 = C * t / nt, c1 = C * (t + 1) / nt;
    for (int64_t n = 0; n < N; n++)
      for (int64_t c = c0; c < c1; c++) dw[c] += dout[n * C + c] * x[n * C + c] * rstd[n];
  }
}

template <class T>
void matmul_forward(T* out, const T* x, const T* W, int64_t N, int64_t K, int64_t M, Precision prec,
                    const uint16_t* W_packed) {
  gemm_p(prec, false, true, N, M, K, x, K, W, K, T(0), out, M, T(1), W_packed);
}

template <class T>
void matmul_backward(T* dx, T* dW, const T* dout, const T* x, const T* W, int64_t N, int64_t K, int64_t M,
                     Precision prec, const uint16_t* W_packed_t) {
  if (dx) gemm_p(prec, false, false, N, K, M, dout, M, W, K, T(0), dx, K, T(1), W_packed_t);
  if (dW) gemm_p(prec, true, false, M, K, N, dout, M, x, K, T(1), dW, K);
}

bool pack_weight_bf16(const float* W, int64_t M, int64_t K, bool transposed, std::vector<uint16_t>& out) {
  const CpuKernels& k = cpu_kernels();
  if (!k.gemm_bf16_rows) return false;
  // The B operand of matmul_forward (rows m of W, pairs along k) or of matmul_backward's dx
  // product (rows k, pairs along m: W read transposed), as gemm_bf16 would pack it.
  const int64_t n = transposed ? K : M, kk = transposed ? M : K, panels = (n + 15) / 16;
  out.resize((size_t)gemm_bf16_packed_size(n, kk));
#pragma omp parallel
  {
    const auto [p0, p1] = thread_share(panels);
    pack_b_panels(k, !transposed, W, K, n, kk, out.data(), p0, p1);
  }
  return true;
}

namespace {
template <class T>
double row_sq(const T* w, int64_t in);
template <class T>
T row_norm(double sq);
}  // namespace

template <class T>
void dora_weight_norms(const T* W, const T* A, const T* B, int64_t r, double s, int64_t in, int64_t out, T* norm) {
  std::vector<T> P((size_t)(out * r)), G((size_t)(r * r));
  gemm(false, true, out, r, in, W, in, A, in, T(0), P.data(), r);
  gemm(false, true, r, r, in, A, in, A, in, T(0), G.data(), r);
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < out; j++) {
    const T* b = B + j * r;
    double bp = 0, bgb = 0;
    for (int64_t k = 0; k < r; k++) {
      bp += (double)b[k] * (double)P[j * r + k];
      double gk = 0;
      for (int64_t l = 0; l < r; l++) gk += (double)G[k * r + l] * (double)b[l];
      bgb += (double)b[k] * gk;
    }
    norm[j] = row_norm<T>(row_sq(W + j * in, in) + 2 * s * bp + s * s * bgb);
  }
}

namespace {
// ||W_j||^2 in double, in one fixed order (the initial DoRA magnitude and every forward's
// norm must agree to the bit).
template <class T>
double row_sq(const T* w, int64_t in) {
  double s = 0;
  for (int64_t i = 0; i < in; i++) s += (double)w[i] * (double)w[i];
  return s;
}
template <class T>
T row_norm(double sq) {
  return T(std::sqrt(std::max(0.0, sq)));
}

// An adapter's input: x, or with dropout x * keep / (1 - p), keep = hash(seed, i) >= p (the
// same mask again in backward and in a recomputed forward).
template <class T>
const T* adapter_input(const T* x, int64_t N, int64_t in, const Adapter<T>& a, std::vector<T>& buf) {
  if (a.dropout <= 0) return x;
  buf.resize((size_t)(N * in));
  const T k = T(1.0 / (1.0 - a.dropout));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N * in; i++) buf[i] = rng_uniform(a.mask_seed, (uint64_t)i) >= a.dropout ? x[i] * k : T(0);
  return buf.data();
}

// DoRA: norm_j = ||W_j + s (B A)_j|| = sqrt(||W_j||^2 + 2 s B_j.(W A^T)_j + s^2 B_j (A A^T) B_j^T)
// and c_j = mag_j / norm_j (0 for a zero row), without forming B A.
template <class T>
void dora_scales(const T* W, const Adapter<T>& a, int64_t in, int64_t out) {
  AdapterSaved<T>& sv = *a.saved;
  sv.norm.resize((size_t)out), sv.c.resize((size_t)out);
  dora_weight_norms(W, a.A, a.B, a.r, a.scale, in, out, sv.norm.data());
  for (int64_t j = 0; j < out; j++) sv.c[j] = sv.norm[j] > T(0) ? a.mag[j] / sv.norm[j] : T(0);
}

// y holds W x; adds the adapter's term (Adapter above) and saves what backward needs.
template <class T>
void adapter_forward(T* y, const T* x, const Linear<T>& L, int64_t N) {
  const Adapter<T>& a = *L.ad;
  AdapterSaved<T>& sv = *a.saved;
  const int64_t in = L.in, out = L.out, r = a.r;
  const T s = T(a.scale);
  thread_local std::vector<T> xbuf, lora, based;
  const T* xd = adapter_input(x, N, in, a, xbuf);
  sv.u.resize((size_t)(N * r));
  gemm(false, true, N, r, in, xd, in, a.A, in, T(0), sv.u.data(), r);  // u = xd A^T
  if (!a.mag) {  // y += s u B^T
    gemm(false, true, N, out, r, sv.u.data(), r, a.B, r, T(1), y, out, s);
    return;
  }
  lora.resize((size_t)(N * out));
  gemm(false, true, N, out, r, sv.u.data(), r, a.B, r, T(0), lora.data(), out, s);
  dora_scales(L.W, a, in, out);
  const T* bd = y;  // W xd
  if (a.dropout > 0) {
    based.resize((size_t)(N * out));
    gemm(false, true, N, out, in, xd, in, L.W, in, T(0), based.data(), out);
    bd = based.data();
  }
  sv.y0.resize((size_t)(N * out));
  // Plain pointers into the thread_local buffers: inside the parallel region the names would
  // be each thread's own (empty) copies.
  const T *c = sv.c.data(), *lp = lora.data();
  T* y0 = sv.y0.data();
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++)
    for (int64_t j = 0; j < out; j++) {
      const int64_t i = n * out + j;
      const T b = bd[i], l = lp[i];
      y0[i] = b + l;
      y[i] = y[i] + (c[j] - T(1)) * b + c[j] * l;
    }
}

// The gradient the base product's dx takes (dy, or DoRA without dropout dy * c, in buf), and
// DoRA's magnitude gradient dmag_j += sum_n dy_nj y0_nj / norm_j.
template <class T>
const T* adapter_base_dy(const T* dy, const Linear<T>& L, int64_t N, std::vector<T>& buf) {
  const Adapter<T>& a = *L.ad;
  if (!a.mag) return dy;
  const AdapterSaved<T>& sv = *a.saved;
  const int64_t out = L.out;
  if (a.dmag) {
#pragma omp parallel
    {
      const int nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t j0 = out * t / nt, j1 = out * (t + 1) / nt;
      for (int64_t n = 0; n < N; n++)
        for (int64_t j = j0; j < j1; j++)
          if (sv.norm[j] > T(0)) a.dmag[j] += dy[n * out + j] * sv.y0[n * out + j] / sv.norm[j];
    }
  }
  buf.resize((size_t)(N * out));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++)
    for (int64_t j = 0; j < out; j++) buf[n * out + j] = dy[n * out + j] * sv.c[j];
  return a.dropout > 0 ? dy : buf.data();
}

// The adapter's gradients: dB += s g^T u, dA += s (g B)^T xd, and its share of dx (added),
// with g = dy (LoRA) or dy * c (DoRA, in g_dora from adapter_base_dy).
template <class T>
void adapter_backward(T* dx, const T* dy, const T* x, const Linear<T>& L, int64_t N, const std::vector<T>& g_dora) {
  const Adapter<T>& a = *L.ad;
  const AdapterSaved<T>& sv = *a.saved;
  const int64_t in = L.in, out = L.out, r = a.r;
  const T s = T(a.scale);
  const T* g = a.mag ? g_dora.data() : dy;
  thread_local std::vector<T> t, xbuf, e;
  t.resize((size_t)(N * r));
  gemm(false, false, N, r, out, g, out, a.B, r, T(0), t.data(), r);  // t = g B
  if (a.dB) gemm(true, false, out, r, N, g, out, sv.u.data(), r, T(1), a.dB, r, s);
  if (a.dA) {
    const T* xd = adapter_input(x, N, in, a, xbuf);
    gemm(true, false, r, in, N, t.data(), r, xd, in, T(1), a.dA, in, s);
  }
  if (!dx) return;
  if (a.dropout <= 0) {  // dx += s t A
    gemm(false, false, N, in, r, t.data(), r, a.A, in, T(1), dx, in, s);
    return;
  }
  // dx += keep / (1 - p) * (s t A [+ DoRA: (dy (c - 1)) W])
  e.resize((size_t)(N * in));
  gemm(false, false, N, in, r, t.data(), r, a.A, in, T(0), e.data(), in, s);
  if (a.mag) {
    std::vector<T> d((size_t)(N * out));
    for (int64_t n = 0; n < N; n++)
      for (int64_t j = 0; j < out; j++) d[n * out + j] = dy[n * out + j] * (sv.c[j] - T(1));
    gemm(false, false, N, in, out, d.data(), out, L.W, in, T(1), e.data(), in);
  }
  const T k = T(1.0 / (1.0 - a.dropout));
  const T* ep = e.data();  // not the thread_local name inside the parallel region
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < N * in; i++)
    if (rng_uniform(a.mask_seed, (uint64_t)i) >= a.dropout) dx[i] += ep[i] * k;
}
}  // namespace

template <class T>
void dora_row_norms(const T* W, int64_t out, int64_t in, T* norm) {
#pragma omp parallel for schedule(static)
  for (int64_t j = 0; j < out; j++) norm[j] = row_norm<T>(row_sq(W + j * in, in));
}

namespace {
// QAT (Linear::fq): the linears' fake-quantized weights and their shared fake-quantized input,
// rebuilt at each use (forward, and again in backward) from the f32 values: a pass over the
// weights, a small fraction of the products' work. `lin` holds copies of the linears pointing
// at the quantized weights, with fq cleared.
template <class T>
struct FakeQuantized {
  std::vector<std::vector<T>> w;
  std::vector<T> x;
  std::vector<Linear<T>> lin;
  const T* xq = nullptr;
  FakeQuantized(const Linear<T>* const* L, size_t n, const T* x_in, int64_t N) : w(n), lin(n) {
    const FakeQuant& f = *L[0]->fq;
    xq = x_in;
    if (f.acts()) {
      x.resize((size_t)(N * L[0]->in));
      fq_sym_rows(x_in, N, L[0]->in, f.a_bits, x.data());
      xq = x.data();
    }
    for (size_t i = 0; i < n; i++) {
      LLMQ_CHECK(!L[i]->ad && L[i]->fq && L[i]->fq->w_bits == f.w_bits && L[i]->fq->a_bits == f.a_bits);
      lin[i] = *L[i];
      lin[i].fq = nullptr;
      if (f.weights()) {
        w[i].resize((size_t)(L[i]->out * L[i]->in));
        fq_weight_rows(L[i]->W, L[i]->out, L[i]->in, f.w_bits, w[i].data());
        lin[i].W = w[i].data();
      }
    }
  }
};
bool fake_quantized(const FakeQuant* f) { return f && (f->weights() || f->acts()); }
}  // namespace

template <class T>
void linears_forward(std::initializer_list<LinearOut<T>> outs, const T* x, int64_t N) {
  LLMQ_CHECK(outs.size() > 0);
  const Linear<T>& L0 = *outs.begin()->L;
  for (const auto& o : outs) LLMQ_CHECK(o.L->in == L0.in && o.L->prec == L0.prec);
  if (fake_quantized(L0.fq)) {
    // out = fq(x) fq(W)^T: the plain product of the quantized operands.
    std::vector<const Linear<T>*> L;
    for (const auto& o : outs) L.push_back(o.L);
    FakeQuantized<T> q(L.data(), L.size(), x, N);
    std::vector<T*> y;
    for (const auto& o : outs) y.push_back(o.y);
    const auto& lq = q.lin;
    switch (L.size()) {
      case 1: linears_forward<T>({{y[0], &lq[0]}}, q.xq, N); break;
      case 2: linears_forward<T>({{y[0], &lq[0]}, {y[1], &lq[1]}}, q.xq, N); break;
      case 3: linears_forward<T>({{y[0], &lq[0]}, {y[1], &lq[1]}, {y[2], &lq[2]}}, q.xq, N); break;
      default: LLMQ_CHECK(false && "at most three linears share an input");
    }
    return;
  }
  const uint16_t* xp = pack_shared_input(x, N, L0.in, L0.prec, outs.size(), false);
  for (const auto& o : outs)
    gemm_p(o.L->prec, false, true, N, o.L->out, o.L->in, x, o.L->in, o.L->W, o.L->in, T(0), o.y, o.L->out, T(1),
           o.L->packed, xp);
  for (const auto& o : outs)
    if (o.L->ad) adapter_forward(o.y, x, *o.L, N);
}

template <class T>
void linears_backward(T* dx, std::initializer_list<LinearGrad<T>> grads, const T* x, int64_t N) {
  LLMQ_CHECK(grads.size() > 0);
  const Linear<T>& L0 = *grads.begin()->L;
  if (fake_quantized(L0.fq)) {
    // Autograd of out = fq(x) fq(W)^T: dx_q = dy fq(W), dW_q += dy^T fq(x), then the
    // quantizers' straight-through gradients: dx = dx_q and dW = dW_q except where the input
    // or the weight is beyond LLM-QAT's clip of +-2 (there 0: those entries of dW keep the
    // value they had, as += 0 would).
    const FakeQuant& f = *L0.fq;
    std::vector<const Linear<T>*> L;
    for (const auto& g : grads) L.push_back(g.L);
    FakeQuantized<T> q(L.data(), L.size(), x, N);
    std::vector<std::vector<std::pair<int64_t, T>>> keep(L.size());
    for (size_t i = 0; i < L.size(); i++)
      if (L[i]->dW && f.weights() && fq_weight_clips(f.w_bits))
        for (int64_t j = 0; j < L[i]->out * L[i]->in; j++)
          if (L[i]->W[j] >= T(2) || L[i]->W[j] <= T(-2)) keep[i].emplace_back(j, L[i]->dW[j]);
    std::vector<const T*> dy;
    for (const auto& g : grads) dy.push_back(g.dy);
    const auto& lq = q.lin;
    switch (L.size()) {  // the plain path's one call (its order of sums into dx)
      case 1: linears_backward<T>(dx, {{dy[0], &lq[0]}}, q.xq, N); break;
      case 2: linears_backward<T>(dx, {{dy[0], &lq[0]}, {dy[1], &lq[1]}}, q.xq, N); break;
      case 3: linears_backward<T>(dx, {{dy[0], &lq[0]}, {dy[1], &lq[1]}, {dy[2], &lq[2]}}, q.xq, N); break;
      default: LLMQ_CHECK(false && "at most three linears share an input");
    }
    for (size_t i = 0; i < L.size(); i++)
      for (const auto& [j, v] : keep[i]) L[i]->dW[j] = v;
    if (dx && f.acts()) fq_ste_clip(dx, x, N * L0.in);
    return;
  }
  size_t trained = 0;
  for (const auto& g : grads) {
    LLMQ_CHECK(g.L->in == L0.in && g.L->prec == L0.prec);
    trained += g.L->dW != nullptr;
  }
  const uint16_t* xb = pack_shared_input(x, N, L0.in, L0.prec, trained, true);
  // Adapters (frozen base): DoRA's base product takes dy * c; each adapter's own terms after.
  thread_local std::vector<std::vector<T>> g_dora;
  if (g_dora.size() < grads.size()) g_dora.resize(grads.size());
  bool first = true;
  size_t i = 0;
  for (const auto& g : grads) {
    const Linear<T>& L = *g.L;
    LLMQ_CHECK(!L.ad || !L.dW);
    const T* dy = L.ad ? adapter_base_dy(g.dy, L, N, g_dora[i]) : g.dy;
    if (dx) gemm_p(L.prec, false, false, N, L.in, L.out, dy, L.out, L.W, L.in, first ? T(0) : T(1), dx, L.in, T(1), L.packed_t);
    if (L.dW) gemm_p(L.prec, true, false, L.out, L.in, N, g.dy, L.out, x, L.in, T(1), L.dW, L.in, T(1), xb);
    first = false;
    i++;
  }
  i = 0;
  for (const auto& g : grads) {
    if (g.L->ad) adapter_backward(dx, g.dy, x, *g.L, N, g_dora[i]);
    i++;
  }
}

template <class T>
void linear_forward(T* y, const T* x, const Linear<T>& L, int64_t N) {
  linears_forward<T>({{y, &L}}, x, N);
}

template <class T>
void linear_backward(T* dx, const T* dy, const T* x, const Linear<T>& L, int64_t N) {
  linears_backward<T>(dx, {{dy, &L}}, x, N);
}

template <class T>
void rope_forward(T* x, const int32_t* pos, const T* cos, const T* sin, int64_t N, int64_t heads, int64_t hd) {
  const int64_t half = hd / 2;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const T *c = cos + (int64_t)pos[n] * half, *s = sin + (int64_t)pos[n] * half;
    for (int64_t h = 0; h < heads; h++) {
      T* a = x + (n * heads + h) * hd;
      for (int64_t j = 0; j < half; j++) {
        T p = a[j], q = a[j + half];
        a[j] = p * c[j] - q * s[j];
        a[j + half] = q * c[j] + p * s[j];
      }
    }
  }
}

template <class T>
void rope_backward(T* dx, const int32_t* pos, const T* cos, const T* sin, int64_t N, int64_t heads, int64_t hd) {
  const int64_t half = hd / 2;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    const T *c = cos + (int64_t)pos[n] * half, *s = sin + (int64_t)pos[n] * half;
    for (int64_t h = 0; h < heads; h++) {
      T* a = dx + (n * heads + h) * hd;
      for (int64_t j = 0; j < half; j++) {  // the transpose of the rotation
        T p = a[j], q = a[j + half];
        a[j] = p * c[j] + q * s[j];
        a[j + half] = q * c[j] - p * s[j];
      }
    }
  }
}

// Attention per (sequence, head) as BLAS calls on strided views: the head's rows of q are
// H*hd apart, of k/v KV*hd apart. The full T x T score matrix is computed and the upper
// triangle masked: twice the FLOPs of a causal loop, but sgemm runs them several times
// faster than scalar loops did (small preset, B 8, T 256: attention went from 34% of the
// step's time to a small share, training 1,293 -> 1,909 tok/s). The (b, h) loop is serial
// so BLAS can use every thread; the softmax rows are split over threads.
// Causal attention in row tiles (flash-attention's recomputation, on the CPU): rows t in
// [r0, r1) attend to keys [0, r1) only, so each product covers the lower triangle and the
// diagonal tiles (about half of T x T plus a tile width) instead of computing the masked
// half. A tile's whole key range is in one (tile, r1) block of scores, so its softmax is exact
// without online rescaling; only each row's log-sum-exp is kept, and backward recomputes the
// probabilities from it: no (T, T) matrix is stored per head and layer.
constexpr int64_t kAttTile = 64;

// bf16 with the product kernel: one head's K or V packed once as the B operand of every row
// tile's product (a tile's keys are a prefix of the head's: the first panels when keys are
// the columns, the first pairs of each panel, b_kp2 apart, when they are k). Elsewhere p
// stays nullptr and each product converts its operands itself.
struct HeadB {
  std::vector<uint16_t> buf;
  const uint16_t* p = nullptr;
  int64_t kp2 = 0;
  template <class T>
  void pack(Precision prec, bool tb, const T* B, int64_t ldb, int64_t n, int64_t k) {
    if constexpr (std::is_same_v<T, float>) {
      const CpuKernels& K = cpu_kernels();
      if (prec != Precision::BF16 || !K.gemm_bf16_rows) return;
      kp2 = (k + 1) / 2;
      p = scratch(buf, gemm_bf16_packed_size(n, k));
      pack_b_panels(K, tb, B, ldb, n, k, buf.data(), 0, (n + 15) / 16);
    }
  }
};

template <class T>
void attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t Tn, int64_t H, int64_t KV,
                       int64_t hd, Precision prec) {
  const T scale = T(1) / std::sqrt(T(hd));
  const int64_t group = H / KV;
  // Heads in parallel, each thread with its own (tile, T) scores (BLAS runs single-threaded
  // inside the parallel region): 64-row tiles are too small to split further.
#pragma omp parallel
  {
    std::vector<T> S((size_t)(std::min(Tn, kAttTile) * Tn));
    HeadB kb, vb;
#pragma omp for schedule(dynamic)
    for (int64_t bh = 0; bh < B * H; bh++) {
      const int64_t b = bh / H, h = bh % H, g = h / group;
      const T* qh = q + b * Tn * H * hd + h * hd;
      const T* kg = k + b * Tn * KV * hd + g * hd;
      const T* vg = v + b * Tn * KV * hd + g * hd;
      T* oh = out + b * Tn * H * hd + h * hd;
      T* lh = lse + (b * H + h) * Tn;
      kb.pack(prec, true, kg, KV * hd, Tn, hd);   // keys as columns (q k^T)
      vb.pack(prec, false, vg, KV * hd, hd, Tn);  // keys as k (P v)
      for (int64_t r0 = 0; r0 < Tn; r0 += kAttTile) {
        const int64_t r1 = std::min(Tn, r0 + kAttTile), n = r1 - r0;
        gemm_p(prec, false, true, n, r1, hd, qh + r0 * H * hd, H * hd, kg, KV * hd, T(0), S.data(), r1, scale, kb.p,
               nullptr, kb.kp2);  // (n, r1) = q k^T
        for (int64_t i = 0; i < n; i++) {
          const int64_t t = r0 + i;
          T* a = S.data() + i * r1;
          if constexpr (std::is_same_v<T, float>) {  // the kernels' vector exp: P = exp(s - lse)
            const CpuKernels& kk = cpu_kernels();
            lh[t] = (float)kk.logsumexp(a, t + 1);
            kk.softmax_scaled(a, t + 1, lh[t], 1.f);
          } else {
            T mx = a[0];
            for (int64_t s = 1; s <= t; s++) mx = std::max(mx, a[s]);
            T sum = 0;
            for (int64_t s = 0; s <= t; s++) sum += (a[s] = std::exp(a[s] - mx));
            const T inv = T(1) / sum;
            for (int64_t s = 0; s <= t; s++) a[s] *= inv;
            lh[t] = mx + std::log(sum);
          }
          for (int64_t s = t + 1; s < r1; s++) a[s] = 0;
        }
        gemm_p(prec, false, false, n, hd, r1, S.data(), r1, vg, KV * hd, T(0), oh + r0 * H * hd, H * hd, T(1), vb.p,
               nullptr, vb.kp2);  // out = P v
      }
    }
  }
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q, const T* k,
                        const T* v, int64_t B, int64_t Tn, int64_t H, int64_t KV, int64_t hd, Precision prec) {
  const T scale = T(1) / std::sqrt(T(hd));
  const int64_t group = H / KV;
  const int64_t tile = std::min(Tn, kAttTile);
  std::fill(dk, dk + B * Tn * KV * hd, T(0));
  std::fill(dv, dv + B * Tn * KV * hd, T(0));
  // KV groups in parallel: the heads of a group add into the same dK/dV, so a group is one
  // thread's (in head order, as the sequential loop adds them).
#pragma omp parallel
  {
    std::vector<T> P((size_t)(tile * Tn)), dS((size_t)(tile * Tn));
    HeadB kb, vb, kt;
#pragma omp for schedule(dynamic)
    for (int64_t bg = 0; bg < B * KV; bg++) {
      const int64_t b = bg / KV, g = bg % KV;
      const T* kg = k + b * Tn * KV * hd + g * hd;
      const T* vg = v + b * Tn * KV * hd + g * hd;
      kb.pack(prec, true, kg, KV * hd, Tn, hd);   // keys as columns: q k^T
      vb.pack(prec, true, vg, KV * hd, Tn, hd);   // dO v^T
      kt.pack(prec, false, kg, KV * hd, hd, Tn);  // keys as k: dS k
      T* dkg = dk + b * Tn * KV * hd + g * hd;
      T* dvg = dv + b * Tn * KV * hd + g * hd;
      for (int64_t h = g * group; h < (g + 1) * group; h++) {
        const T* doh = dout + b * Tn * H * hd + h * hd;
        const T* oh = out + b * Tn * H * hd + h * hd;
        const T* qh = q + b * Tn * H * hd + h * hd;
        const T* lh = lse + (b * H + h) * Tn;
        T* dqh = dq + b * Tn * H * hd + h * hd;
        for (int64_t r0 = 0; r0 < Tn; r0 += kAttTile) {
          const int64_t r1 = std::min(Tn, r0 + kAttTile), n = r1 - r0;
          gemm_p(prec, false, true, n, r1, hd, qh + r0 * H * hd, H * hd, kg, KV * hd, T(0), P.data(), r1, scale, kb.p,
                 nullptr, kb.kp2);  // scores again
          gemm_p(prec, false, true, n, r1, hd, doh + r0 * H * hd, H * hd, vg, KV * hd, T(0), dS.data(), r1, T(1), vb.p,
                 nullptr, vb.kp2);  // dP = dO v^T
          for (int64_t i = 0; i < n; i++) {
            const int64_t t = r0 + i;
            T* p = P.data() + i * r1;
            T* d = dS.data() + i * r1;
            if constexpr (std::is_same_v<T, float>)  // P from the row's log-sum-exp
              cpu_kernels().softmax_scaled(p, t + 1, lh[t], 1.f);
            else
              for (int64_t s = 0; s <= t; s++) p[s] = std::exp(p[s] - lh[t]);
            for (int64_t s = t + 1; s < r1; s++) p[s] = 0;
            // softmax backward: dS = P * (dP - rowsum(P * dP)), rowsum(P * dP) = rowsum(dO * O)
            T dot = 0;
            for (int64_t j = 0; j < hd; j++) dot += doh[t * H * hd + j] * oh[t * H * hd + j];
            for (int64_t s = 0; s <= t; s++) d[s] = p[s] * (d[s] - dot);
            for (int64_t s = t + 1; s < r1; s++) d[s] = 0;
          }
          gemm_p(prec, true, false, r1, hd, n, P.data(), r1, doh + r0 * H * hd, H * hd, T(1), dvg, KV * hd);          // dV += P^T dO
          gemm_p(prec, false, false, n, hd, r1, dS.data(), r1, kg, KV * hd, T(0), dqh + r0 * H * hd, H * hd, scale, kt.p,
                 nullptr, kt.kp2);  // dQ = dS k
          gemm_p(prec, true, false, r1, hd, n, dS.data(), r1, qh + r0 * H * hd, H * hd, T(1), dkg, KV * hd, scale);   // dK += dS^T q
        }
      }
    }
  }
}

template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {  // the kernels' vector exp, in blocks over threads
    const CpuKernels& k = cpu_kernels();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += 4096) k.swiglu(gate + i, up + i, out + i, std::min<int64_t>(4096, n - i));
  } else {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) out[i] = gate[i] / (T(1) + std::exp(-gate[i])) * up[i];
  }
}

template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    const CpuKernels& k = cpu_kernels();
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i += 4096)
      k.swiglu_backward(dout + i, gate + i, up + i, dgate + i, dup + i, std::min<int64_t>(4096, n - i));
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i++) {
    const T g = gate[i], sig = T(1) / (T(1) + std::exp(-g)), silu = g * sig;
    dup[i] = dout[i] * silu;
    dgate[i] = dout[i] * up[i] * sig * (T(1) + g * (T(1) - sig));  // d silu/dg
  }
}

namespace {
// log(sum_v exp(x[v])): the kernel table's vectorised exp for float, plain loops for double.
double row_logsumexp(const float* x, int64_t V) { return cpu_kernels().logsumexp(x, V); }
double row_logsumexp(const double* x, int64_t V) {
  double mx = x[0];
  for (int64_t v = 1; v < V; v++) mx = std::max(mx, x[v]);
  double sum = 0;
  for (int64_t v = 0; v < V; v++) sum += std::exp(x[v] - mx);
  return mx + std::log(sum);
}
void row_softmax_scaled(float* x, int64_t V, float lse, double scale) {
  cpu_kernels().softmax_scaled(x, V, lse, (float)scale);
}
void row_softmax_scaled(double* x, int64_t V, double lse, double scale) {
  for (int64_t v = 0; v < V; v++) x[v] = std::exp(x[v] - lse) * scale;
}
}  // namespace

template <class T>
double cross_entropy_forward(const T* logits, const int32_t* targets, int64_t N, int64_t V, T* lse, int64_t* n_valid) {
  double loss = 0;
  int64_t valid = 0;
#pragma omp parallel for schedule(static) reduction(+ : loss, valid)
  for (int64_t n = 0; n < N; n++) {
    const double l = row_logsumexp(logits + n * V, V);
    lse[n] = T(l);
    if (targets[n] >= 0) loss += l - (double)logits[n * V + targets[n]], valid++;
  }
  *n_valid = valid;
  return loss;
}

template <class T>
void cross_entropy_backward(T* logits, const T* lse, const int32_t* targets, int64_t N, int64_t V, double scale) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; n++) {
    T* p = logits + n * V;
    if (targets[n] < 0) {
      std::fill(p, p + V, T(0));
      continue;
    }
    row_softmax_scaled(p, V, lse[n], scale);
    p[targets[n]] -= T(scale);
  }
}

#define LLMQ_TRAIN_OPS(T)                                                                                         \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t);                             \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t);                            \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int64_t, int64_t, double);                         \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, int64_t);            \
  template void matmul_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, Precision, const uint16_t*); \
  template void matmul_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, Precision,    \
                                   const uint16_t*);                                                              \
  template void dora_row_norms<T>(const T*, int64_t, int64_t, T*);                                               \
  template void dora_weight_norms<T>(const T*, const T*, const T*, int64_t, double, int64_t, int64_t, T*);          \
                                              \
  template void linear_forward<T>(T*, const T*, const Linear<T>&, int64_t);                                       \
  template void linear_backward<T>(T*, const T*, const T*, const Linear<T>&, int64_t);                            \
  template void add_into<T>(T*, const T*, int64_t);                                                               \
  template void linears_forward<T>(std::initializer_list<LinearOut<T>>, const T*, int64_t);                       \
  template void linears_backward<T>(T*, std::initializer_list<LinearGrad<T>>, const T*, int64_t);                 \
  template void rope_forward<T>(T*, const int32_t*, const T*, const T*, int64_t, int64_t, int64_t);               \
  template void rope_backward<T>(T*, const int32_t*, const T*, const T*, int64_t, int64_t, int64_t);              \
  template void attention_forward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t,    \
                                     int64_t, Precision);                                                         \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, const T*,     \
                                      int64_t, int64_t, int64_t, int64_t, int64_t, Precision);                    \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t);                                               \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);                                \
  template double cross_entropy_forward<T>(const T*, const int32_t*, int64_t, int64_t, T*, int64_t*);             \
  template void cross_entropy_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t, double);
LLMQ_TRAIN_OPS(float)
LLMQ_TRAIN_OPS(double)

}  // namespace llmq::train
