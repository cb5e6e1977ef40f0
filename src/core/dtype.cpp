// Names of element types and software f16 conversions (the F16C path lives in the kernels).
#include "core/dtype.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace llmq {

namespace {
struct DTypeInfo {
  DType t;
  int bits;
  const char* name;
  const char* st;  // safetensors name, "" when safetensors has none
};
constexpr DTypeInfo kInfo[] = {
    {DType::F32, 32, "f32", "F32"}, {DType::F16, 16, "f16", "F16"}, {DType::BF16, 16, "bf16", "BF16"},
    {DType::F64, 64, "f64", "F64"}, {DType::I8, 8, "i8", "I8"},     {DType::U8, 8, "u8", "U8"},
    {DType::I32, 32, "i32", "I32"}, {DType::I64, 64, "i64", "I64"}, {DType::Q4, 4, "q4", ""},
    {DType::F8E4M3, 8, "f8e4m3", "F8_E4M3"},
    {DType::Q2K, 0, "q2_k", ""}, {DType::Q3K, 0, "q3_k", ""}, {DType::Q4K, 0, "q4_k", ""},
    {DType::Q5K, 0, "q5_k", ""}, {DType::Q6K, 0, "q6_k", ""},
};
const DTypeInfo& info(DType t) { return kInfo[(int)t]; }
}  // namespace

int dtype_bits(DType t) { return info(t).bits; }
int dtype_block_bytes(DType t) {
  switch (t) {
    case DType::Q2K: return 84;
    case DType::Q3K: return 110;
    case DType::Q4K: return 144;
    case DType::Q5K: return 176;
    case DType::Q6K: return 210;
    default: return 0;
  }
}
std::string_view dtype_name(DType t) { return info(t).name; }
std::string_view dtype_safetensors_name(DType t) { return info(t).st; }

bool dtype_try_parse_safetensors(std::string_view s, DType* out) {
  for (const auto& i : kInfo)
    if (*i.st && s == i.st) { *out = i.t; return true; }
  return false;
}

DType dtype_parse(std::string_view s) {
  for (const auto& i : kInfo)
    if (!dtype_is_kquant(i.t) && (s == i.name || (*i.st && s == i.st))) return i.t;
  if (s == "float32") return DType::F32;
  if (s == "bfloat16") return DType::BF16;
  if (s == "float16") return DType::F16;
  fail("unknown dtype '{}' (expected f32, bf16 or f16)", s);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  int exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    float v = std::ldexp((float)man, -24);  // subnormal (or zero)
    return sign ? -v : v;
  }
  return f32_from_bits(sign | ((uint32_t)(exp - 15 + 127) << 23) | (man << 13));
}

uint16_t f32_to_f16(float f) {
  uint32_t u = f32_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00;  // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00; // rounds to >= 65520: inf
  if (a < 0x38800000u) {                      // below the smallest normal 2^-14: subnormal
    // value / 2^-24 rounded to nearest even is the subnormal mantissa.
    float v = f32_from_bits(a) * 16777216.0f;  // exact: scaling by a power of two
    float r = std::nearbyint(v);               // default rounding mode is nearest-even
    return sign | (uint16_t)r;
  }
  uint32_t e = (a >> 23) - 127 + 15;
  uint32_t m = a & 0x7fffff;
  uint32_t h = (e << 10) | (m >> 13);
  uint32_t rest = m & 0x1fff;
  if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;  // may carry into the exponent: correct
  return sign | (uint16_t)h;
}

namespace {
struct E4m3Table {
  float v[256];
  E4m3Table() {
    for (int i = 0; i < 256; i++) {
      const int e = (i >> 3) & 15, m = i & 7;
      float a = e == 0 ? std::ldexp((float)m, -9) : std::ldexp(1.f + (float)m / 8.f, e - 7);
      if ((i & 0x7f) == 0x7f) a = std::nanf("");
      v[i] = (i & 0x80) ? -a : a;
    }
  }
};
const E4m3Table& e4m3_table() {
  static const E4m3Table t;
  return t;
}
}  // namespace

float e4m3_to_f32(uint8_t v) { return e4m3_table().v[v]; }

uint8_t f32_to_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float r = std::fabs(e4m3_round(f));  // an exact E4M3 value, 0 .. 448
  if (r < 0.015625f) return (uint8_t)(sign | (int)(r * 512.f));  // subnormal (or 0): m * 2^-9
  uint32_t u;
  std::memcpy(&u, &r, 4);
  return (uint8_t)(sign | (((u >> 23) - 120) << 3) | ((u >> 20) & 7));  // exponent bias 127 -> 7
}

float e4m3_round(float f) {
  if (f != f) return f;
  const float a = std::fabs(f);
  float r;
  if (a >= 448.f) {
    r = 448.f;
  } else if (a < 0.015625f) {  // below 2^-6: the subnormal grid, steps of 2^-9
    r = std::nearbyint(a * 512.f) / 512.f;  // exact scalings; default rounding is to nearest even
  } else {  // 3 mantissa bits kept, rounded to nearest even (a carry moves into the exponent)
    uint32_t u;
    std::memcpy(&u, &a, 4);
    u += 0x7ffffu + ((u >> 20) & 1u);
    u &= ~0xfffffu;
    std::memcpy(&r, &u, 4);
    r = std::min(r, 448.f);  // [448, 464) rounds to 448 above; nothing here reaches 464
  }
  return std::copysign(r, f);
}

}  // namespace llmq

namespace llmq {
namespace {
// flag(u) has the top bit of U set exactly when u is NaN/Inf: the exponent field masked out
// and one added to its lowest bit carries into the top bit only when the field is all ones.
// An OR over a chunk is then adds, ands and ors that vectorize.
template <class U, U kExp, U kOne>
int64_t scan_nonfinite(const U* p, int64_t n) {
  constexpr U kTop = (U)((U)1 << (sizeof(U) * 8 - 1));
  auto flag = [](U u) { return (U)((U)(u & kExp) + kOne); };
  constexpr int64_t kChunk = 1 << 16;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  int64_t first = -1;
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; c++) {
    const int64_t b = c * kChunk, e = std::min(n, b + kChunk);
    U any = 0;
    for (int64_t i = b; i < e; i++) any |= flag(p[i]);
    if (!(any & kTop)) continue;
    for (int64_t i = b; i < e; i++)
      if (flag(p[i]) & kTop) {
#pragma omp critical(llmq_first_nonfinite)
        if (first < 0 || i < first) first = i;
        break;
      }
  }
  return first;
}
}  // namespace

int64_t first_nonfinite(const void* data, DType dt, int64_t n) {
  switch (dt) {
    case DType::F32: return scan_nonfinite<uint32_t, 0x7f800000u, 0x00800000u>(static_cast<const uint32_t*>(data), n);
    case DType::BF16: return scan_nonfinite<uint16_t, 0x7f80u, 0x0080u>(static_cast<const uint16_t*>(data), n);
    case DType::F16: return scan_nonfinite<uint16_t, 0x7c00u, 0x0400u>(static_cast<const uint16_t*>(data), n);
    case DType::F64:
      return scan_nonfinite<uint64_t, 0x7ff0000000000000ull, 0x0010000000000000ull>(static_cast<const uint64_t*>(data), n);
    case DType::F8E4M3: return scan_nonfinite<uint8_t, 0x7fu, 0x01u>(static_cast<const uint8_t*>(data), n);  // NaN: 0x7f/0xff
    default: return -1;
  }
}
}  // namespace llmq
