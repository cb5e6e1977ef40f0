// Round-to-nearest quantization, packing into the kernels' layout, activation quantization.
#include "quant/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dtype.h"
#include "core/error.h"

namespace llmq {

QuantScheme quant_scheme_parse(const std::string& name, int64_t group, bool sym) {
  QuantScheme s;
  s.name = name;
  if (name == "w8a16") s.bits = 8, s.group = 0, s.sym = true;
  else if (name == "w4a16") s.bits = 4, s.group = 128, s.sym = sym;
  else if (name == "w8a8") s.bits = 8, s.group = 0, s.sym = true, s.act_per_token = true;
  else fail("unknown quantization scheme '{}' (choose w8a16, w4a16 or w8a8)", name);
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
  if (bits == 4 && K % 64 != 0) fail("quantized tensor ({}, {}): 4-bit rows must be a multiple of 64 long", M, K);
  if (bits != 4 && bits != 8) fail("quantized tensor: {} bits (4 or 8 expected)", bits);
  auto info = std::make_shared<QuantInfo>();
  info->bits = bits;
  info->code_bits = code_bits ? code_bits : bits;
  info->group = group;
  info->sym = sym;
  info->act_per_token = act_per_token;
  const int64_t ng = K / group;
  info->scale.assign(scale, scale + M * ng);
  info->zs.resize(M * ng);
  for (int64_t i = 0; i < M * ng; i++) info->zs[i] = scale[i] * zero[i];
  Tensor t = Tensor::empty(bits == 8 ? DType::U8 : DType::Q4, {M, K});
  uint8_t* dst = t.host<uint8_t>();
  if (bits == 8) {
    std::memcpy(dst, codes, (size_t)(M * K));
  } else {
    for (int64_t m = 0; m < M; m++) {
      const uint8_t* c = codes + m * K;
      uint8_t* row = dst + m * (K / 2);
      for (int64_t ch = 0; ch < K / 64; ch++)
        for (int j = 0; j < 32; j++)
          row[ch * 32 + j] = (uint8_t)((c[ch * 64 + j] & 15) | ((c[ch * 64 + 32 + j] & 15) << 4));
    }
  }
  t.set_quant(info);
  return t;
}

QMatView quant_view(const Tensor& W) {
  const QuantInfo* q = W.quant();
  LLMQ_CHECK(q != nullptr);
  return {W.host<uint8_t>(), q->scale.data(), q->zs.data(), q->bits, W.dim(1), q->group};
}

void tensor_row_codes(const Tensor& W, int64_t r, uint8_t* codes) {
  const QuantInfo* q = W.quant();
  LLMQ_CHECK(q != nullptr);
  const int64_t K = W.dim(1);
  if (q->bits == 8) {
    std::memcpy(codes, W.host<uint8_t>() + r * K, (size_t)K);
    return;
  }
  const uint8_t* row = W.host<uint8_t>() + r * (K / 2);
  for (int64_t ch = 0; ch < K / 64; ch++)
    for (int j = 0; j < 32; j++) {
      codes[ch * 64 + j] = row[ch * 32 + j] & 15;
      codes[ch * 64 + 32 + j] = row[ch * 32 + j] >> 4;
    }
}

void dequantize_tensor_rows(const Tensor& W, int64_t r0, int64_t r1, float* out) {
  const QuantInfo* q = W.quant();
  LLMQ_CHECK(q != nullptr);
  const int64_t K = W.dim(1), G = q->group, ng = K / G;
  std::vector<uint8_t> codes(K);
  for (int64_t r = r0; r < r1; r++) {
    tensor_row_codes(W, r, codes.data());
    float* o = out + (r - r0) * K;
    const float* s = q->scale.data() + r * ng;
    const float* zs = q->zs.data() + r * ng;
    for (int64_t g = 0; g < ng; g++)
      for (int64_t k = g * G; k < (g + 1) * G; k++) o[k] = s[g] * (float)codes[k] - zs[g];
  }
}

QActView QActs::view(int64_t row, int64_t K, int64_t group) const {
  return {q.data() + row * K, bscale.data() + row * (K / 32), bsv.data() + row * (K / 64) * 16,
          gsum.data() + row * (K / group)};
}

void quantize_acts(const float* x, int64_t n, int64_t K, int64_t group, bool per_token, QActs& out) {
  LLMQ_CHECK(K % 64 == 0 || K % 32 == 0);
  const int64_t nb = K / 32, nc = (K + 63) / 64, ng = K / group;
  out.q.resize(n * K);
  out.bscale.resize(n * nb);
  out.bsv.assign(n * nc * 16, 0.f);
  out.gsum.resize(n * ng);
  for (int64_t i = 0; i < n; i++) {
    const float* xi = x + i * K;
    float row_amax = 0.f;
    if (per_token)
      for (int64_t k = 0; k < K; k++) row_amax = std::max(row_amax, std::fabs(xi[k]));
    std::vector<int32_t> bsum(nb);
    for (int64_t b = 0; b < nb; b++) {
      float amax = row_amax;
      if (!per_token)
        for (int64_t k = b * 32; k < b * 32 + 32; k++) amax = std::max(amax, std::fabs(xi[k]));
      const float d = amax / 127.f;
      const float inv = d > 0.f ? 1.f / d : 0.f;
      int32_t sum = 0;
      for (int64_t k = b * 32; k < b * 32 + 32; k++) {
        float r = xi[k] * inv;
        if (r != r) r = 0.f;  // NaN: the block scale is NaN too, so the result stays NaN
        const int v = (int)std::clamp(std::nearbyint(r), -127.f, 127.f);
        out.q[i * K + k] = (int8_t)v;
        sum += v;
      }
      bsum[b] = sum;
      out.bscale[i * nb + b] = d;
      for (int l = 0; l < 8; l++) out.bsv[(i * nc + b / 2) * 16 + (b % 2) * 8 + l] = d;
    }
    for (int64_t g = 0; g < ng; g++) {
      float s = 0.f;
      for (int64_t b = g * group / 32; b < (g + 1) * group / 32; b++) s += out.bscale[i * nb + b] * (float)bsum[b];
      out.gsum[i * ng + g] = s;
    }
  }
}

}  // namespace llmq
