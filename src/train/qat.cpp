// LLM-QAT's fake quantizers, straight-through gradients and distillation loss (qat.h).
#include "train/qat.h"

#include <algorithm>
#include <cmath>
#include <regex>

#include "core/error.h"

namespace llmq::train {

const char* const kQatSchemes = "w4a8kv4|w4a8kv8|w4a16kv16|w8a8kv8|w3a16kv16|w2a16kv16";

FakeQuant qat_scheme_parse(const std::string& name) {
  static const std::regex re("w([0-9]+)a([0-9]+)kv([0-9]+)");
  std::smatch m;
  const std::string all = kQatSchemes;
  bool known = false;
  for (size_t b = 0; b <= all.size();) {
    size_t e = all.find('|', b);
    if (e == std::string::npos) e = all.size();
    known = known || all.compare(b, e - b, name) == 0;
    b = e + 1;
  }
  if (!known || !std::regex_match(name, m, re))
    fail("qat: scheme '{}' is not one the integer kernels run; give one of {} (weights w, activations a and KV cache "
         "kv bits; 16 = kept in float)", name, all);
  auto bits = [&](int i) {
    const int b = std::stoi(m[i].str());
    return b >= 16 ? 32 : b;
  };
  return FakeQuant{bits(1), bits(2), bits(3)};
}

std::string qat_scheme_name(const FakeQuant& f) {
  auto b = [](int x) { return x >= 16 ? 16 : x; };
  return fmt::format("w{}a{}kv{}", b(f.w_bits), b(f.a_bits), b(f.kv_bits));
}

template <class T>
void fq_sym_rows(const T* x, int64_t rows, int64_t K, int bits, T* out) {
  LLMQ_CHECK(bits >= 2 && bits <= 16);
  const T qmax = T((1 << (bits - 1)) - 1), eps = T(1e-6);
#pragma omp parallel for schedule(static) if (rows * K >= 16384)
  for (int64_t r = 0; r < rows; r++) {
    const T* xr = x + r * K;
    T amax = 0;
    for (int64_t k = 0; k < K; k++) amax = std::max(amax, std::fabs(xr[k]));
    const T s = qmax / (amax + eps), d = s + eps;
    T* o = out + r * K;
    for (int64_t k = 0; k < K; k++) o[k] = std::nearbyint(xr[k] * s) / d;
  }
}

template <class T>
void fq_weight_rows(const T* w, int64_t rows, int64_t K, int bits, T* out) {
  if (bits >= 3) return fq_sym_rows(w, rows, K, bits, out);
  LLMQ_CHECK(bits == 2);
  const T clip = T(1) - T(1e-2), levels = T(2);  // num_bits = 2^(w_bits - 1)
#pragma omp parallel for schedule(static) if (rows * K >= 16384)
  for (int64_t r = 0; r < rows; r++) {
    const T* wr = w + r * K;
    T sum = 0;
    for (int64_t k = 0; k < K; k++) sum += std::fabs(wr[k]);
    const T a = T(2) * (sum / T(K));
    T* o = out + r * K;
    if (a == T(0)) {  // an all-zero row (LLM-QAT divides by 0 there: NaN)
      std::fill(o, o + K, T(0));
      continue;
    }
    for (int64_t k = 0; k < K; k++)
      o[k] = a * (std::nearbyint(std::clamp(wr[k] / a, -clip, clip) * levels - T(0.5)) + T(0.5)) / levels;
  }
}

int qat_weight_codes(const float* w, int64_t rows, int64_t K, int bits, uint8_t* codes, float* scale, float* zero) {
  LLMQ_CHECK(bits >= 2 && bits <= 8);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    const float* wr = w + r * K;
    uint8_t* c = codes + r * K;
    if (bits >= 3) {  // the float arithmetic of fq_sym_rows<float>
      const float qmax = (float)((1 << (bits - 1)) - 1), eps = 1e-6f;
      float amax = 0;
      for (int64_t k = 0; k < K; k++) amax = std::max(amax, std::fabs(wr[k]));
      const float s = qmax / (amax + eps);
      for (int64_t k = 0; k < K; k++) c[k] = (uint8_t)(std::nearbyint(wr[k] * s) + (float)(1 << (bits - 1)));
      scale[r] = 1.f / (s + eps), zero[r] = (float)(1 << (bits - 1));
    } else {  // fq_weight_rows<float>'s 2-bit branch
      float sum = 0;
      for (int64_t k = 0; k < K; k++) sum += std::fabs(wr[k]);
      const float a = 2.f * (sum / (float)K), clip = 1.f - 1e-2f;
      scale[r] = a / 4.f, zero[r] = 4.f;
      if (a == 0.f) {  // an all-zero row: every weight 0 (fq_weight_rows gives 0 too)
        std::fill(c, c + K, (uint8_t)4);
        continue;
      }
      for (int64_t k = 0; k < K; k++) {
        const float l = std::nearbyint(std::clamp(wr[k] / a, -clip, clip) * 2.f - 0.5f);  // -2..1
        c[k] = (uint8_t)(2.f * l + 1.f + 4.f);
      }
    }
  }
  return bits >= 3 ? bits : 3;
}

template <class T>
void fq_ste_clip(T* grad, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= 65536)
  for (int64_t i = 0; i < n; i++)
    if (x[i] >= T(2) || x[i] <= T(-2)) grad[i] = T(0);
}

template <class T>
double kd_forward(const T* s, const T* lse_s, const T* t, const T* lse_t, int64_t rows, int64_t V) {
  double kl = 0;
#pragma omp parallel for schedule(static) reduction(+ : kl)
  for (int64_t r = 0; r < rows; r++) {
    const T *sr = s + r * V, *tr = t + r * V;
    const double ls = (double)lse_s[r], lt = (double)lse_t[r];
    double acc = 0;
    for (int64_t v = 0; v < V; v++) {
      const double lpt = (double)tr[v] - lt;
      acc += std::exp(lpt) * (lpt - ((double)sr[v] - ls));
    }
    kl += acc;
  }
  return kl;
}

template <class T>
void kd_backward(T* s, const T* lse_s, const T* t, const T* lse_t, const int32_t* targets, int64_t rows, int64_t V,
                 double w_kd, double n_kd, double w_ce, double n_ce, double scale) {
  const double a = n_kd > 0 ? w_kd / n_kd * scale : 0, c = n_ce > 0 ? w_ce / n_ce * scale : 0;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; r++) {
    T* sr = s + r * V;
    const T* tr = t + r * V;
    const bool ce = targets && targets[r] >= 0 && c != 0;
    const double ps_w = a + (ce ? c : 0);
    const double ls = (double)lse_s[r], lt = (double)lse_t[r];
    for (int64_t v = 0; v < V; v++)
      sr[v] = T(std::exp((double)sr[v] - ls) * ps_w - std::exp((double)tr[v] - lt) * a);
    if (ce) sr[targets[r]] -= T(c);
  }
}

#define LLMQ_QAT(T)                                                                                               \
  template void fq_sym_rows<T>(const T*, int64_t, int64_t, int, T*);                                              \
  template void fq_weight_rows<T>(const T*, int64_t, int64_t, int, T*);                                           \
  template void fq_ste_clip<T>(T*, const T*, int64_t);                                                            \
  template double kd_forward<T>(const T*, const T*, const T*, const T*, int64_t, int64_t);                        \
  template void kd_backward<T>(T*, const T*, const T*, const T*, const int32_t*, int64_t, int64_t, double, double, \
                               double, double, double);
LLMQ_QAT(float)
LLMQ_QAT(double)

}  // namespace llmq::train
