// Round-to-nearest quantization, packing into the kernels' layout, activation quantization.
#include "quant/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "quant/ggml_blocks.h"

namespace llmq {

QuantScheme quant_scheme_parse(const std::string& name, int64_t group, bool sym, const std::string& weight_scale,
                               const std::string& act_scale) {
  QuantScheme s;
  s.name = name;
  if (name == "w8a16") s.bits = 8, s.group = 0, s.sym = true;
  else if (name == "w4a16") s.bits = 4, s.group = 128, s.sym = sym;
  else if (name == "w3a16") s.bits = 3, s.group = 128, s.sym = sym;  // codes run in the 4-bit layout
  else if (name == "w2a16") s.bits = 2, s.group = 128, s.sym = sym;
  else if (name == "w8a8") s.bits = 8, s.group = 0, s.sym = true, s.act_per_token = true;
  else if (name == "w4a8") s.bits = 4, s.group = 0, s.sym = true, s.act_per_token = true;
  else if (name == "fp8") s.bits = 8, s.group = 0, s.sym = true, s.fp8 = true, s.act_per_token = true;
  else fail("unknown quantization scheme '{}' (choose w8a16, w4a16, w3a16, w2a16, w8a8, w4a8 or fp8)", name);
  if (name == "w8a8" && weight_scale.empty() && (act_scale == "token" || act_scale == "tensor")) {
    s.act_per_tensor = act_scale == "tensor";
    s.act_per_token = !s.act_per_tensor;
  } else if (!s.fp8 && (!weight_scale.empty() || !act_scale.empty())) {
    fail("{}: --weight-scale and --act-scale are for the fp8 scheme (w8a8 takes --act-scale token|tensor)", name);
  }
  if (s.fp8) {
    if (weight_scale != "" && weight_scale != "channel" && weight_scale != "tensor")
      fail("fp8: --weight-scale '{}' (choose channel or tensor)", weight_scale);
    if (act_scale != "" && act_scale != "token" && act_scale != "tensor" && act_scale != "static")
      fail("fp8: --act-scale '{}' (choose token, tensor or static)", act_scale);
    if (group > 0) fail("fp8: no groups (one scale per channel or per tensor); leave out --group");
    s.weight_per_tensor = weight_scale == "tensor";
    s.act_per_token = act_scale != "tensor" && act_scale != "static";
    s.act_static = act_scale == "static";
    return s;
  }
  if (group >= 0) s.group = group;
  if (s.group != 0 && (s.group < 32 || s.group % 32 != 0))
    fail("{}: group size {} must be a multiple of 32 (32, 64, 128, ...) or 0 for one per output channel", name,
         s.group);
  return s;
}

void quantize_rows_rtn(const float* w, int64_t rows, int64_t K, int bits, int64_t group, bool sym, uint8_t* codes,
                       float* scale, float* zero) {
  LLMQ_CHECK(group > 0 && K % group == 0 && bits >= 1 && bits <= 8);
  const int64_t ng = K / group;
  const int qmax = (1 << bits) - 1;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t g = 0; g < ng; g++) {
      const float* x = w + r * K + g * group;
      float lo = 0.f, hi = 0.f;  // the range always includes 0 (GPTQ's convention)
      for (int64_t k = 0; k < group; k++) lo = std::min(lo, x[k]), hi = std::max(hi, x[k]);
      float s, z;
      if (sym) {
        const float amax = std::max(-lo, hi);
        const int half = (1 << (bits - 1)) - 1;
        s = half > 0 ? amax / (float)half : amax;
        z = (float)(1 << (bits - 1));
      } else {
        s = (hi - lo) / (float)qmax;
        z = 0;  // set below, once the scale is final
      }
      if (!(s > 0.f)) s = 1.f;
      if (!std::isfinite(s)) fail("quantize: a weight group has a non-finite range (NaN or Inf weights)");
      // The scale as stored (f16), rounded up so the range never shrinks (no clipping; tiny
      // scales fall into f16's subnormals, where rounding to nearest could halve them).
      uint16_t h = f32_to_f16(s);
      if (f16_to_f32(h) < s) h++;
      s = f16_to_f32(h);
      if (!std::isfinite(s)) fail("quantize: a weight group's scale {} exceeds f16's range", s);
      if (!sym) z = std::clamp(std::nearbyint(-lo / s), 0.f, (float)qmax);
      if (!sym && z < 1.f && bits >= 2) {
        // GPTQ v1 checkpoints store zero - 1, so a zero point of 0 would wrap: shift the grid
        // to zero 1 and widen the step so the top of the range still fits.
        z = 1.f;
        uint16_t h2 = f32_to_f16(hi / (float)(qmax - 1));
        if (f16_to_f32(h2) < hi / (float)(qmax - 1)) h2++;
        s = std::max(s, f16_to_f32(h2));
      }
      uint8_t* q = codes + r * K + g * group;
      for (int64_t k = 0; k < group; k++)
        q[k] = (uint8_t)std::clamp(std::nearbyint(x[k] / s) + z, 0.f, (float)qmax);
      scale[r * ng + g] = s;
      zero[r * ng + g] = z;
    }
}

void dequantize_rows(const uint8_t* codes, const float* scale, const float* zero, int64_t rows, int64_t K,
                     int64_t group, float* out) {
  const int64_t ng = K / group;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k = 0; k < K; k++) {
      const int64_t g = r * ng + k / group;
      out[r * K + k] = scale[g] * ((float)codes[r * K + k] - zero[g]);
    }
}

Tensor make_quant_tensor(int64_t M, int64_t K, int bits, int64_t group, bool sym, bool act_per_token,
                         const uint8_t* codes, const float* scale, const float* zero, int code_bits) {
  if (group <= 0) group = K;
  if (K % group != 0 || group % 32 != 0)
    fail("quantized tensor ({}, {}): group {} must divide the row and be a multiple of 32", M, K, group);
  if (bits != 4 && bits != 8) fail("quantized tensor: {} bits (4 or 8 expected)", bits);
  auto info = std::make_shared<QuantInfo>();
  info->bits = bits;
  info->code_bits = code_bits ? code_bits : bits;
  info->group = group;
  info->sym = sym;
  info->act_per_token = act_per_token;
  const int64_t ng = K / group, P = kQPanel, panels = (M + P - 1) / P;
  // f16 scales and zero points when that loses nothing (every checkpoint format stores f16
  // scales, and zero points are small integers or f16): 4 bytes per group and row instead
  // of 8, which decode reads with every weight.
  bool f16_exact = true;
  for (int64_t i = 0; i < M * ng && f16_exact; i++)
    f16_exact = f16_to_f32(f32_to_f16(scale[i])) == scale[i] && f16_to_f32(f32_to_f16(zero[i])) == zero[i];
  // One zero point for every group (symmetric schemes): the scales alone are stored.
  bool zero_same = true;
  for (int64_t i = 1; i < M * ng && zero_same; i++) zero_same = zero[i] == zero[0];
  if (f16_exact) {
    if (zero_same && M * ng > 0) info->zero_all = zero[0];
    const int64_t per = info->sz16_per_group();
    info->sz16.assign(panels * ng * per, 0);
    for (int64_t m = 0; m < M; m++)
      for (int64_t g = 0; g < ng; g++) {
        const int64_t i = ((m / P) * ng + g) * per + m % P;
        info->sz16[i] = f32_to_f16(scale[m * ng + g]);
        if (per == 2 * P) info->sz16[i + P] = f32_to_f16(zero[m * ng + g]);
      }
  } else {
    info->scale.assign(panels * ng * P, 0.f);
    info->zs.assign(panels * ng * P, 0.f);
    for (int64_t m = 0; m < M; m++)
      for (int64_t g = 0; g < ng; g++) {
        const int64_t i = ((m / P) * ng + g) * P + m % P;
        info->scale[i] = scale[m * ng + g];
        info->zs[i] = scale[m * ng + g] * zero[m * ng + g];
      }
  }
  // Storage for whole panels (padding rows: code 0), viewed as (M, K).
  Tensor t = Tensor::zeros(bits == 8 ? DType::U8 : DType::Q4, {panels * P, K}).rows(0, M);
  uint8_t* dst = t.host<uint8_t>();
  for (int64_t m = 0; m < M; m++) {
    const uint8_t* c = codes + m * K;
    const int64_t p = m / P, r = m % P;
    if (bits == 8) {
      uint8_t* pan = dst + p * P * K;
      for (int64_t k = 0; k < K; k++) pan[(k / 4) * 64 + r * 4 + k % 4] = c[k];
    } else {
      uint8_t* pan = dst + p * (P / 2) * K;
      for (int64_t k = 0; k < K; k += 8)
        for (int j = 0; j < 4; j++) pan[(k / 8) * 64 + r * 4 + j] = (uint8_t)((c[k + j] & 15) | ((c[k + 4 + j] & 15) << 4));
    }
  }
  t.set_quant(info);
  return t;
}

Tensor make_hqq_axis0_tensor(int64_t M, int64_t K, int bits, int64_t group, const uint8_t* codes, const float* scale,
                             const float* zero) {
  if (group <= 0 || group % kQPanel != 0 || M % group != 0)
    fail("HQQ axis 0 tensor ({}, {}): group {} must divide the {} output channels and be a multiple of {}", M, K, group,
         M, kQPanel);
  if (bits < 1 || bits > 8) fail("HQQ axis 0 tensor: {} bits (1..8 expected)", bits);
  const int64_t P = M / group;
  std::vector<uint8_t> stored((size_t)(M * K));
  for (int64_t r = 0; r < M; r++)
    std::memcpy(stored.data() + ((r % P) * group + r / P) * K, codes + r * K, (size_t)K);
  const std::vector<float> one((size_t)M, 1.f), none((size_t)M, 0.f);
  Tensor t = make_quant_tensor(M, K, bits <= 4 ? 4 : 8, K, false, false, stored.data(), one.data(), none.data(), bits);
  auto info = std::make_shared<QuantInfo>(*t.quant());
  info->axis0_classes = P;
  info->axis0_scale.assign(scale, scale + P * K);
  info->axis0_sz.resize((size_t)(P * K));
  for (int64_t j = 0; j < P * K; j++) info->axis0_sz[j] = scale[j] * zero[j];
  t.set_quant(info);
  return t;
}

float fp8_scale(float amax) { return amax > 0.f ? amax / 448.f : 1.f; }

void quantize_rows_fp8(const float* w, int64_t rows, int64_t K, const float* scale, uint8_t* codes) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t k = 0; k < K; k++) codes[r * K + k] = f32_to_e4m3(w[r * K + k] / scale[r]);
}

Tensor make_fp8_tensor(int64_t M, int64_t K, const uint8_t* codes, const float* scale, bool weight_per_tensor,
                       bool act_per_token) {
  auto info = std::make_shared<QuantInfo>();
  info->bits = info->code_bits = 8;
  info->group = K;
  info->fp8 = true;
  info->weight_per_tensor = weight_per_tensor;
  info->act_per_token = act_per_token;
  info->scale.assign(scale, scale + M);
  Tensor t = Tensor::empty(DType::F8E4M3, {M, K});
  std::memcpy(t.host_data(), codes, (size_t)(M * K));
  t.set_quant(info);
  return t;
}

void quantize_acts_fp8(const float* x, int64_t n, int64_t K, bool per_token, std::vector<float>& xe,
                       std::vector<float>& sx, float static_scale) {
  xe.resize((size_t)(n * K));
  sx.resize((size_t)n);
  float all = 0.f;
  for (int64_t i = 0; i < n && static_scale <= 0; i++) {
    float amax = 0.f;
    for (int64_t k = 0; k < K; k++) amax = std::max(amax, std::fabs(x[i * K + k]));  // a NaN stays in xe
    sx[i] = amax;
    all = std::max(all, amax);
  }
  for (int64_t i = 0; i < n; i++) sx[i] = static_scale > 0 ? static_scale : fp8_scale(per_token ? sx[i] : all);
  parallel_for_if(n >= 8, n, 0, [&](int64_t i) {
    const float inv = 1.f / sx[i];
    for (int64_t k = 0; k < K; k++) xe[i * K + k] = e4m3_round(x[i * K + k] * inv);
  }, n <= kDecodeMaxRows);
}

double weight_bytes(const Tensor& W) {
  double b = (double)W.nbytes();
  if (const QuantInfo* q = W.quant())
    b += 2.0 * q->sz16.size() + 4.0 * (q->scale.size() + q->zs.size() + q->axis0_scale.size() + q->axis0_sz.size());
  return b;
}

QMatView quant_view(const Tensor& W) {
  const QuantInfo* q = W.quant();
  LLMQ_CHECK(q != nullptr && !q->fp8);
  return {W.host<uint8_t>(), q->sz16.empty() ? nullptr : q->sz16.data(), q->scale.data(), q->zs.data(), q->bits,
          W.dim(1), q->group, (int)q->sz16_per_group(), q->zero_all >= 0.f ? q->zero_all : 0.f};
}

void tensor_row_codes(const Tensor& W, int64_t r, uint8_t* codes) {
  const QuantInfo* q = W.quant();
  LLMQ_CHECK(q != nullptr);
  const int64_t K = W.dim(1), P = kQPanel, p = r / P, i = r % P;
  const uint8_t* src = W.host<uint8_t>();
  if (q->fp8) {
    std::memcpy(codes, src + r * K, (size_t)K);
    return;
  }
  if (q->bits == 8) {
    const uint8_t* pan = src + p * P * K;
    for (int64_t k = 0; k < K; k++) codes[k] = pan[(k / 4) * 64 + i * 4 + k % 4];
    return;
  }
  const uint8_t* pan = src + p * (P / 2) * K;
  for (int64_t k = 0; k < K; k += 8)
    for (int j = 0; j < 4; j++) {
      const uint8_t b = pan[(k / 8) * 64 + i * 4 + j];
      codes[k + j] = b & 15;
      codes[k + 4 + j] = b >> 4;
    }
}

void dequantize_tensor_rows(const Tensor& W, int64_t r0, int64_t r1, float* out) {
  if (dtype_is_kquant(W.dtype())) {
    const int64_t K = W.dim(1);
    const size_t rb = dtype_bytes(W.dtype(), K);
    for (int64_t r = r0; r < r1; r++)
      dequantize_row_kquant(kquant_ggml(W.dtype()), W.host<uint8_t>() + r * rb, out + (r - r0) * K, K);
    return;
  }
  const QuantInfo* q = W.quant();
  LLMQ_CHECK(q != nullptr);
  const int64_t K = W.dim(1), G = q->group, ng = K / G, P = kQPanel;
  std::vector<uint8_t> codes(K);
  std::vector<float> tmp(q->perm.empty() ? 0 : K);
  for (int64_t r = r0; r < r1; r++) {
    if (q->axis0_classes) {
      const int64_t C = q->axis0_classes, cls = r % C;
      tensor_row_codes(W, cls * (W.dim(0) / C) + r / C, codes.data());
      const float *s = q->axis0_scale.data() + cls * K, *sz = q->axis0_sz.data() + cls * K;
      for (int64_t k = 0; k < K; k++) out[(r - r0) * K + k] = s[k] * (float)codes[k] - sz[k];
      continue;
    }
    tensor_row_codes(W, r, codes.data());
    float* o = q->perm.empty() ? out + (r - r0) * K : tmp.data();  // storage column order
    if (q->fp8) {
      for (int64_t k = 0; k < K; k++) o[k] = q->scale[r] * e4m3_to_f32(codes[k]);
    } else {
      const QMatView v = quant_view(W);
      for (int64_t g = 0; g < ng; g++) {
        const float s = v.scale_at(r / P, g, (int)(r % P)), zs = v.zs_at(r / P, g, (int)(r % P));
        for (int64_t k = g * G; k < (g + 1) * G; k++) o[k] = s * (float)codes[k] - zs;
      }
    }
    if (!q->perm.empty())  // back to input-column order
      for (int64_t j = 0; j < K; j++) out[(r - r0) * K + q->perm[j]] = tmp[j];
  }
}

KQMatView kquant_view(const Tensor& W) {
  LLMQ_CHECK(dtype_is_kquant(W.dtype()) && W.ndim() == 2);
  return {W.host<uint8_t>(), (int64_t)dtype_bytes(W.dtype(), W.dim(1)), W.dim(1), (int)kquant_ggml(W.dtype())};
}

void quantize_acts_kq(const float* x, int64_t n, int64_t K, KQActs& out, bool q45) {
  LLMQ_CHECK(K % kQK_K == 0);
  const int64_t nb = K / kQK_K;
  out.q.resize((size_t)(n * K));
  out.q45.resize(q45 ? (size_t)(n * K) : 0);
  out.d.resize((size_t)(n * nb));
  out.bsum.resize((size_t)(n * K / 16));
  const CpuKernels& k = cpu_kernels();
  parallel_for_if(n >= 8, n, 0, [&](int64_t i) {
    float d8[8];
    int32_t s8[8];
    for (int64_t b = 0; b < nb; b++) {
      const float* v = x + i * K + b * kQK_K;
      float amax = 0.f;
      for (int j = 0; j < kQK_K; j++) amax = std::max(amax, std::fabs(v[j]));  // NaN compares false: skipped
      int8_t* q = out.q.data() + i * K + b * kQK_K;
      k.quant_blocks_i8(v, kQK_K / 32, amax, q, d8, s8);
      out.d[i * nb + b] = d8[0];
      int16_t* bs = out.bsum.data() + i * (K / 16) + b * 16;
      for (int j = 0; j < 16; j++) {
        int s = 0;
        for (int e = 0; e < 16; e++) s += q[16 * j + e];
        bs[j] = (int16_t)s;
      }
      if (q45) {  // byte b of register r is element 64(2(r/2) + b/32) + 32(r%2) + b%32
        int8_t* p = out.q45.data() + i * K + b * kQK_K;
        for (int r = 0; r < 4; r++)
          for (int h = 0; h < 2; h++)
            std::memcpy(p + 64 * r + 32 * h, q + 64 * (2 * (r / 2) + h) + 32 * (r % 2), 32);
      }
    }
  }, n <= kDecodeMaxRows);
}

QActView QActs::view(int64_t row, int64_t K, int64_t group) const {
  return {q.data() + row * K, bscale.data() + row * (K / 32), gsum.data() + row * (K / group)};
}

void quantize_acts(const float* x, int64_t n, int64_t K, int64_t group, bool per_token, QActs& out,
                   bool per_tensor, float eps) {
  LLMQ_CHECK(eps == 0 || (per_token && !per_tensor));
  LLMQ_CHECK(K % 32 == 0 && group % 32 == 0 && K % group == 0);
  float all = 0.f;
  if (per_tensor) {
    per_token = true;
    for (int64_t i = 0; i < n * K; i++) all = std::max(all, std::fabs(x[i]));
  }
  const int64_t nb = K / 32, ng = K / group, bpg = group / 32;
  out.q.resize(n * K);
  out.bscale.resize(n * nb);
  out.gsum.resize(n * ng);
  // Rows are independent; a prompt's worth of rows is split over the threads.
  const CpuKernels& kern = cpu_kernels();
  parallel_for_if(n >= 8, n, 0, [&](int64_t i) {
    const float* xi = x + i * K;
    float row_amax = -1.f;  // per block
    if (per_tensor) row_amax = all;
    else if (per_token) {
      row_amax = 0.f;
      for (int64_t k = 0; k < K; k++) row_amax = std::max(row_amax, std::fabs(xi[k]));
    }
    thread_local std::vector<int32_t> tl_sum;
    int32_t* bsum = (tl_sum.resize((size_t)nb), tl_sum.data());
    float* bscale = out.bscale.data() + i * nb;
    if (eps > 0) {  // LLM-QAT's SymQuantizer (scalar: one pass over the row, beside a product over K x M)
      const float s = 127.f / (row_amax + eps), d = 1.f / (s + eps);
      int8_t* q = out.q.data() + i * K;
      for (int64_t b = 0; b < nb; b++) {
        int32_t sum = 0;
        for (int64_t k = b * 32; k < b * 32 + 32; k++) {
          float r = xi[k] * s;
          if (r != r) r = 0.f;
          sum += q[k] = (int8_t)std::clamp(std::nearbyint(r), -127.f, 127.f);
        }
        bscale[b] = d, bsum[b] = sum;
      }
    } else {
      kern.quant_blocks_i8(xi, nb, row_amax, out.q.data() + i * K, bscale, bsum);
    }
    for (int64_t g = 0; g < ng; g++) {
      float gs = 0.f;
      for (int64_t b = g * bpg; b < (g + 1) * bpg; b++) gs += bscale[b] * (float)bsum[b];
      out.gsum[i * ng + g] = gs;
    }
  }, n <= kDecodeMaxRows);
}

}  // namespace llmq
