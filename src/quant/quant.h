// Weight quantization schemes, round-to-nearest, the kernels' packed layout and activation
// quantization for the integer GEMV (see kernels/cpu/kernels.h for the layouts).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/cpu/kernels.h"

namespace llmq {

// A scheme as TensorRT-LLM users name it.
//   w8a16: int8 codes, one scale per output channel (or per group), activations stay float
//          (the decode kernel multiplies int8 activation blocks of 32, as llama.cpp does);
//   w4a16: int4 codes per group of 32/64/128 input channels, symmetric or asymmetric;
//   w8a8:  int8 weights per channel and int8 activations per token (dynamic), in prefill too;
//   w4a8:  int4 weights per channel (or group) and int8 activations per token (QAT models);
//   fp8:   E4M3 weights with a per-channel (default) or per-tensor scale, E4M3 activations
//          scaled per token (default) or per tensor, dynamically (llm-compressor's FP8_DYNAMIC
//          by default; per tensor both ways is TensorRT-LLM's fp8 with dynamic scales).
struct QuantScheme {
  std::string name;
  int bits = 8;
  int64_t group = 0;  // 0: one group per row (per output channel)
  bool sym = true;
  bool act_per_token = false;
  bool fp8 = false;
  bool weight_per_tensor = false;  // fp8
  bool act_static = false;         // fp8: calibrated per-tensor activation scales (needs --calib)
  bool act_per_tensor = false;     // w8a8 --act-scale tensor: one dynamic scale per call
};
// Fails naming the valid schemes. group < 0 means the scheme's default (w4: 128, w8: row).
// weight_scale ("channel" | "tensor") and act_scale ("token" | "tensor" | "static") are for fp8 only
// ("" = default).
QuantScheme quant_scheme_parse(const std::string& name, int64_t group, bool sym, const std::string& weight_scale = "",
                               const std::string& act_scale = "");

// Round-to-nearest of `rows` rows of K f32 weights into codes in [0, 2^bits), per group of
// `group` weights (K % group == 0): weight ~ scale * (code - zero).
//   symmetric:  scale = amax / (2^(bits-1) - 1), zero = 2^(bits-1) (codes 1..2^bits-1 used)
//   asymmetric: scale = (max(w,0) - min(w,0)) / (2^bits - 1), zero = round(-min/scale),
//               but at least 1 (GPTQ v1 files store zero - 1; the step widens to fit)
// as GPTQ's quantizer defines them. The scale is rounded up to an f16 value before the codes are
// chosen (checkpoints store f16 scales), so codes and stored scales agree and nothing clips. An all-zero group gets
// scale 1. The error is at most scale/2 per weight (no weight is clipped).
void quantize_rows_rtn(const float* w, int64_t rows, int64_t K, int bits, int64_t group, bool sym, uint8_t* codes,
                       float* scale, float* zero);
// out = scale * (code - zero), per group.
void dequantize_rows(const uint8_t* codes, const float* scale, const float* zero, int64_t rows, int64_t K,
                     int64_t group, float* out);

// The runtime tensor (dtype U8 or Q4 with QuantInfo) from one-per-byte codes.
Tensor make_quant_tensor(int64_t M, int64_t K, int bits, int64_t group, bool sym, bool act_per_token,
                         const uint8_t* codes, const float* scale, const float* zero, int code_bits = 0);
// HQQ axis 0 (hqq.h): codes (M x K), scale and zero (M/group x K) as hqq_quantize returns
// them; group a multiple of 16 dividing M. The product folds the scales into the
// activations: y[r] = sum_c code[r,c] * (s[r',c] x[c]) - sum_c s[r',c] z[r',c] x[c], r' = r mod P.
Tensor make_hqq_axis0_tensor(int64_t M, int64_t K, int bits, int64_t group, const uint8_t* codes, const float* scale,
                             const float* zero);
// Rows [r0, r1) of a runtime quantized tensor as f32 (K per row, input-column order).
void dequantize_tensor_rows(const Tensor& W, int64_t r0, int64_t r1, float* out);
// Codes of storage row r (K, one per byte) of a runtime quantized tensor, in storage column
// order (QuantInfo::perm maps it to input columns; for HQQ axis 0, storage rows are by class).
void tensor_row_codes(const Tensor& W, int64_t r, uint8_t* codes);
QMatView quant_view(const Tensor& W);
// Bytes a product reads from a weight tensor: its codes or values plus a quantized tensor's
// scales and zero points (what a decode streams per token).
double weight_bytes(const Tensor& W);

// FP8 E4M3 with a scale per row: byte = nearest E4M3 of w / scale (ties to even), so
// |w - scale*e4m3(byte)| <= 2^-4 |w| where |w/scale| >= 2^-6 (3 mantissa bits), else
// <= 2^-10 scale (half the subnormal step). fp8_scale(amax) = amax / 448 (1 when amax is 0),
// so nothing saturates.
float fp8_scale(float amax);
void quantize_rows_fp8(const float* w, int64_t rows, int64_t K, const float* scale, uint8_t* codes);
// The runtime tensor (dtype F8E4M3 with QuantInfo.fp8) from E4M3 bytes and row scales.
Tensor make_fp8_tensor(int64_t M, int64_t K, const uint8_t* codes, const float* scale, bool weight_per_tensor,
                       bool act_per_token);
// Activations for an fp8 product: xe = e4m3_round(x / sx), exact E4M3 values held in f32,
// with sx = amax / 448 per row (per_token) or over all n rows, dynamic; or sx = static_scale
// (> 0: calibrated, input_scale), values beyond 448 sx saturating as E4M3 casts do.
void quantize_acts_fp8(const float* x, int64_t n, int64_t K, bool per_token, std::vector<float>& xe,
                       std::vector<float>& sx, float static_scale = 0);

// Activations (n, K) quantized to int8 blocks of 32 (per_token: one scale per row) with
// the per-group sums a QMatView of group `group` needs. value = bscale * q, with
// bscale = amax/127 and q = round-to-nearest-even(x / bscale).
struct QActs {
  std::vector<int8_t> q;
  std::vector<float> bscale, gsum;
  QActView view(int64_t row, int64_t K, int64_t group) const;
};
// per_tensor: one scale for all n rows (amax over the call), as SmoothQuant's per-tensor
// dynamic W8A8 quantizes.
// eps > 0 (per token only): LLM-QAT's quantizer, s = 127 / (amax + eps), q = round-half-even(x s)
// clamped to +-127, bscale = 1 / (s + eps): the values QAT trained with (train/qat.h fq_sym_rows).
void quantize_acts(const float* x, int64_t n, int64_t K, int64_t group, bool per_token, QActs& out,
                   bool per_tensor = false, float eps = 0);

// Activations (n, K) for a k-quant product (kernels.h, KQActView): per 256 values one scale
// d = amax/127 and int8 codes as quant_blocks_i8 rounds them (NaNs to 0), and the sums of
// every 16 codes. K % 256 == 0.
struct KQActs {
  std::vector<int8_t> q, q45;
  std::vector<float> d;
  std::vector<int16_t> bsum;
  KQActView view() const { return {q.data(), d.data(), bsum.data(), q45.empty() ? nullptr : q45.data()}; }
};
// q45: also the codes in the Q4_K/Q5_K kernels' order (KQActView::q45).
void quantize_acts_kq(const float* x, int64_t n, int64_t K, KQActs& out, bool q45 = true);
// A k-quant tensor (dtype Q2K..Q6K, rows of GGUF blocks) as the kernels' view.
KQMatView kquant_view(const Tensor& W);

}  // namespace llmq
