// GPTQ: see gptq.h. Rows are independent inside a block (each row's error only moves along
// its own columns), so a block is one parallel loop over rows; the lazy update of the
// columns after the block is one sgemm.
#include "quant/gptq.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "quant/quant.h"

extern "C" {
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info);
void spotri_(const char* uplo, const int* n, float* a, const int* lda, int* info);
}

namespace llmq {

GptqHessian::GptqHessian(int64_t K) : K_(K), sum_((size_t)(K * K), 0.f) {}

void GptqHessian::add(const float* X, int64_t rows) {
  if (rows <= 0) return;
  // sum += X^T X (upper triangle), X rows x K row-major
  cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)K_, (int)rows, 1.f, X, (int)K_, 1.f, sum_.data(), (int)K_);
  n_ += rows;
}

std::vector<float> GptqHessian::matrix() const {
  std::vector<float> H((size_t)(K_ * K_));
  const float s = n_ > 0 ? 2.f / (float)n_ : 0.f;
  for (int64_t i = 0; i < K_; i++)
    for (int64_t j = i; j < K_; j++) H[i * K_ + j] = H[j * K_ + i] = s * sum_[i * K_ + j];
  return H;
}

namespace {

// One row's grid for a group of values: scale and zero, weight ~ scale * (code - zero).
struct Grid {
  float scale = 1.f, zero = 0.f;
};

// quant.py's find_params for one row, in f32.
Grid reference_grid(const float* x, int64_t n, int bits, bool sym) {
  const float maxq = (float)((1 << bits) - 1);
  float xmin = 0.f, xmax = 0.f;
  for (int64_t i = 0; i < n; i++) xmin = std::min(xmin, x[i]), xmax = std::max(xmax, x[i]);
  if (sym) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0.f && xmax == 0.f) xmin = -1.f, xmax = 1.f;
  Grid g;
  g.scale = (xmax - xmin) / maxq;
  g.zero = sym ? (maxq + 1.f) / 2.f : std::nearbyint(-xmin / g.scale);
  return g;
}

Grid find_grid(const float* x, int64_t n, const GptqOptions& o) {
  if (o.reference_grid) return reference_grid(x, n, o.bits, o.sym);
  std::vector<uint8_t> codes((size_t)n);
  Grid g;
  quantize_rows_rtn(x, 1, n, o.bits, n, o.sym, codes.data(), &g.scale, &g.zero);
  return g;
}

inline int quantize_one(float x, const Grid& g, int maxq) {
  return (int)std::clamp(std::nearbyint(x / g.scale) + g.zero, 0.f, (float)maxq);
}

// Upper Cholesky factor U of H^-1 (H^-1 = U^T U), row-major, from the symmetric H. LAPACK is
// column-major: the row-major array is the transpose, equal for symmetric H; the lower factor
// L of H^-1 computed in column-major order reads back row-major as L^T = U.
bool inverse_cholesky_upper(std::vector<float>& A, int64_t K) {
  const int n = (int)K;
  int info = 0;
  const char lo = 'L';
  spotrf_(&lo, &n, A.data(), &n, &info);
  if (info != 0) return false;
  spotri_(&lo, &n, A.data(), &n, &info);
  if (info != 0) return false;
  spotrf_(&lo, &n, A.data(), &n, &info);
  return info == 0;
}

}  // namespace

GptqResult gptq_quantize(const float* W0, int64_t M, int64_t K, const GptqHessian& Hs, const GptqOptions& o) {
  if (Hs.K() != K) fail("gptq: the Hessian is {}x{} but the weight has {} input columns", Hs.K(), Hs.K(), K);
  if (Hs.samples() == 0) fail("gptq: no calibration inputs were seen (the Hessian is empty)");
  if (o.bits < 2 || o.bits > 8) fail("gptq: {} bits (2..8)", o.bits);
  const int64_t G = o.group > 0 ? o.group : K;
  if (K % G != 0) fail("gptq: group size {} does not divide the {} input columns", G, K);
  const int64_t ng = K / G, B = std::max<int64_t>(1, o.block);
  const int maxq = (1 << o.bits) - 1;
  GptqResult r;
  std::vector<float> W(W0, W0 + M * K);
  for (float v : W)
    if (!std::isfinite(v)) fail("gptq: the weight has non-finite values (NaN or Inf)");
  std::vector<float> H = Hs.matrix();
  for (int64_t i = 0; i < K * K; i++)
    if (!std::isfinite(H[i])) fail("gptq: the Hessian has non-finite entries (NaN or Inf in the calibration inputs)");

  // One group for the whole row: found on the weights as given (before dead columns are zeroed).
  std::vector<Grid> grid((size_t)(M * ng));
  if (o.group <= 0)
    for (int64_t m = 0; m < M; m++) grid[m] = find_grid(W.data() + m * K, K, o);
  // Dead inputs (never active in the calibration data): weight 0, H diagonal 1.
  for (int64_t c = 0; c < K; c++)
    if (H[c * K + c] == 0.f) {
      H[c * K + c] = 1.f;
      for (int64_t m = 0; m < M; m++) W[m * K + c] = 0.f;
    }
  if (o.static_groups && o.group > 0)
    for (int64_t m = 0; m < M; m++)
      for (int64_t g = 0; g < ng; g++) grid[m * ng + g] = find_grid(W.data() + m * K + g * G, G, o);
  // Act-order: columns by decreasing diag H.
  std::vector<int64_t> perm((size_t)K);
  std::iota(perm.begin(), perm.end(), 0);
  if (o.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) { return H[a * K + a] > H[b * K + b]; });
    std::vector<float> Wp((size_t)(M * K)), Hp((size_t)(K * K));
    for (int64_t m = 0; m < M; m++)
      for (int64_t i = 0; i < K; i++) Wp[m * K + i] = W[m * K + perm[i]];
    for (int64_t i = 0; i < K; i++)
      for (int64_t j = 0; j < K; j++) Hp[i * K + j] = H[perm[i] * K + perm[j]];
    W.swap(Wp);
    H.swap(Hp);
  }
  // Damping, raised tenfold (with a message) while H + damp*mean(diag)*I is not positive definite.
  double mean_diag = 0;
  for (int64_t i = 0; i < K; i++) mean_diag += H[i * K + i];
  mean_diag /= (double)K;
  std::vector<float> Hinv;
  double damp = o.damp;
  for (;; damp = damp > 0 ? damp * 10 : 1e-3) {
    Hinv = H;
    for (int64_t i = 0; i < K; i++) Hinv[i * K + i] += (float)(damp * mean_diag);
    if (inverse_cholesky_upper(Hinv, K)) break;
    if (damp >= 1.0 || !std::isfinite(damp))
      fail("gptq: the Hessian is not positive definite even with damping {} x mean(diag H); the calibration "
           "inputs are degenerate (too few tokens or constant activations?)", damp);
  }
  r.damp_used = damp;
  if (damp != o.damp)
    r.message = fmt::format("gptq: Cholesky failed with damping {}; used {}", o.damp, damp);

  std::vector<uint8_t> qcodes((size_t)(M * K));  // quantization order
  std::vector<float> err((size_t)(M * B));
  double loss = 0;
  for (int64_t i1 = 0; i1 < K; i1 += B) {
    const int64_t i2 = std::min(K, i1 + B), cnt = i2 - i1;
#pragma omp parallel for schedule(static) reduction(+ : loss)
    for (int64_t m = 0; m < M; m++) {
      float w1[512];
      std::vector<float> big;
      float* w = w1;
      if (cnt > 512) big.resize((size_t)cnt), w = big.data();
      const float* Wm = W.data() + m * K;
      std::copy(Wm + i1, Wm + i2, w);
      for (int64_t i = 0; i < cnt; i++) {
        const int64_t c = i1 + i;  // position in quantization order
        if (o.group > 0 && !o.static_groups && c % G == 0)  // from W as of the block start, as gptq.py does
          grid[m * ng + c / G] = find_grid(Wm + c, G, o);
        const Grid& g = o.group <= 0 ? grid[m] : o.static_groups ? grid[m * ng + perm[c] / G] : grid[m * ng + c / G];
        const int code = quantize_one(w[i], g, maxq);
        const float q = g.scale * ((float)code - g.zero);
        const float d = Hinv[c * K + c];
        const float e = (w[i] - q) / d;
        loss += (double)(w[i] - q) * (w[i] - q) / ((double)d * d) / 2;
        const float* hrow = Hinv.data() + c * K + i1;
        for (int64_t j = i + 1; j < cnt; j++) w[j] -= e * hrow[j];
        err[m * B + i] = e;
        qcodes[m * K + c] = (uint8_t)code;
      }
    }
    if (i2 < K)  // W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)(K - i2), (int)cnt, -1.f, err.data(), (int)B,
                  Hinv.data() + i1 * K + i2, (int)K, 1.f, W.data() + i2, (int)K);
  }
  r.loss = loss;
  // Back to the original column order; the grid of each column's group; g_idx.
  r.codes.resize((size_t)(M * K));
  r.g_idx.resize((size_t)K);
  for (int64_t i = 0; i < K; i++) {
    r.g_idx[perm[i]] = (int32_t)(o.group <= 0 ? 0 : o.static_groups ? perm[i] / G : i / G);
    for (int64_t m = 0; m < M; m++) r.codes[m * K + perm[i]] = qcodes[m * K + i];
  }
  r.scale.resize((size_t)(M * ng));
  r.zero.resize((size_t)(M * ng));
  for (int64_t m = 0; m < M; m++)
    for (int64_t g = 0; g < ng; g++) r.scale[m * ng + g] = grid[m * ng + g].scale, r.zero[m * ng + g] = grid[m * ng + g].zero;
  return r;
}

}  // namespace llmq
