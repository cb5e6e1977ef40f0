// Element types and the scalar conversions between f32 and the 16-bit float formats.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace llmq {

enum class DType : uint8_t {
  F32, F16, BF16, F64, I8, U8, I32, I64, Q4 /* packed: 2 per byte */, F8E4M3,
  // GGUF k-quant blocks as the file stores them (quant/ggml_blocks.h): 256 weights per block
  // of dtype_block_bytes() bytes; a tensor's rows hold whole blocks. No per-element bits.
  Q2K, Q3K, Q4K, Q5K, Q6K
};
inline bool dtype_is_kquant(DType t) { return t >= DType::Q2K && t <= DType::Q6K; }
// Bytes per block of 256 weights of a k-quant dtype (84 .. 210).
int dtype_block_bytes(DType t);

// Size in bits of one element (Q4 is sub-byte; 0 for the k-quant blocks).
int dtype_bits(DType t);
std::string_view dtype_name(DType t);  // "f32", "bf16", ...
// Parses our names and the safetensors names ("F32", "BF16", ...); throws on unknown.
DType dtype_parse(std::string_view s);
bool dtype_try_parse_safetensors(std::string_view s, DType* out);
std::string_view dtype_safetensors_name(DType t);
inline size_t dtype_bytes(DType t, int64_t n) {
  if (dtype_is_kquant(t)) return (size_t)((n + 255) / 256) * (size_t)dtype_block_bytes(t);
  return (size_t)((n * dtype_bits(t) + 7) / 8);
}

inline float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// bfloat16 is the top half of an IEEE f32.
inline float bf16_to_f32(uint16_t h) { return f32_from_bits((uint32_t)h << 16); }
// Round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1);
  return (uint16_t)(u >> 16);
}

// IEEE binary16 (1 sign, 5 exponent, 10 mantissa bits), subnormals included.
float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even, overflow to inf

// FP8 E4M3 ("e4m3fn": 1 sign, 4 exponent (bias 7), 3 mantissa bits, no infinities, max
// 448, 0x7f/0xff NaN). Conversion rounds to nearest even and saturates at +-448.
float e4m3_to_f32(uint8_t v);
uint8_t f32_to_e4m3(float f);
// f32 -> the nearest E4M3 value (ties to even, saturating at +-448; NaN stays NaN), as f32:
// e4m3_to_f32(f32_to_e4m3(f)) computed with bit operations, for activations.
float e4m3_round(float f);

}  // namespace llmq

namespace llmq {
// Index of the first NaN or Inf among n elements of a float type (f32, bf16, f16, f64;
// F8E4M3's NaN codes 0x7f/0xff), or -1 when all are finite; other dtypes hold no such
// values (-1). Bit tests only, parallel over chunks: one pass at memory speed, which is what
// checking every tensor once at load costs (DESIGN.md invariant 11).
int64_t first_nonfinite(const void* data, DType dt, int64_t n);
}  // namespace llmq
