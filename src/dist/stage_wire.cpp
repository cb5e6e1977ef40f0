// Pipeline stage messages: head, checksum, payload codecs.
#include "dist/stage_wire.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "core/dtype.h"
#include "core/error.h"

namespace llmq::dist {

const char* stage_codec_name(StageCodec c) {
  switch (c) {
    case StageCodec::None: return "none";
    case StageCodec::Fixpoint: return "fixpoint";
    case StageCodec::Tah: return "tah";
    case StageCodec::Delta: return "delta";
    case StageCodec::DeltaLowbits: return "delta-lowbits";
  }
  return "unknown";
}

const char* stage_direction_name(StageDirection d) {
  switch (d) {
    case StageDirection::Forward: return "activations";
    case StageDirection::Backward: return "gradients";
    case StageDirection::Eval: return "evaluation activations";
  }
  return "?";
}

uint64_t checksum64(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  constexpr uint64_t k1 = 0x9e3779b97f4a7c15ull, k2 = 0xbf58476d1ce4e5b9ull;
  uint64_t h[4] = {k1, k2, k1 ^ k2, (uint64_t)n};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int l = 0; l < 4; l++) {
      uint64_t w;
      std::memcpy(&w, p + i + 8 * l, 8);
      h[l] = (h[l] ^ w) * k2;
      h[l] ^= h[l] >> 29;
    }
  uint64_t r = (uint64_t)n * k1;
  for (int l = 0; l < 4; l++) r = (r ^ h[l]) * k1, r ^= r >> 31;
  for (; i < n; i++) r = (r ^ p[i]) * k2, r ^= r >> 27;
  return r;
}

namespace {
// Most significant bit first, into bytes; the last byte zero-padded.
struct BitWriter {
  std::vector<uint8_t>& out;
  uint64_t acc = 0;
  int n = 0;  // bits in acc
  explicit BitWriter(std::vector<uint8_t>& o) : out(o) {}
  void put(uint32_t v, int bits) {
    acc = (acc << bits) | (v & ((1u << bits) - 1u));
    n += bits;
    while (n >= 8) out.push_back((uint8_t)(acc >> (n - 8))), n -= 8;
    acc &= (1ull << n) - 1;
  }
  void finish() {
    if (n > 0) out.push_back((uint8_t)(acc << (8 - n))), n = 0, acc = 0;
  }
};
struct BitReader {
  const uint8_t* p;
  size_t n, at = 0;  // bytes, next byte
  uint64_t acc = 0;
  int have = 0;
  BitReader(const uint8_t* d, size_t len) : p(d), n(len) {}
  uint32_t get(int bits) {
    while (have < bits) {
      if (at >= n) fail("the payload ends inside its codes (truncated)");
      acc = (acc << 8) | p[at++];
      have += 8;
    }
    const uint32_t v = (uint32_t)(acc >> (have - bits)) & ((1u << bits) - 1u);
    have -= bits;
    acc &= (1ull << have) - 1;
    return v;
  }
  // The rest must be the last byte's zero padding.
  void finish(const char* what) {
    if (at != n) fail("{} bytes after the {}", n - at, what);
    if (acc != 0) fail("non-zero padding after the {}", what);
  }
};

void check_bits(int b, const char* what) {
  if (b < 1 || b > 8) fail("{} {} is not within 1-8", what, b);
}

float half_value(uint16_t h, const char* what) {
  const float v = f16_to_f32(h);
  if (!std::isfinite(v)) fail("a {} that is not finite ({:#06x})", what, h);
  return v;
}

// y = x H / sqrt(n) with H the n x n Sylvester-Hadamard matrix (symmetric, its own inverse
// up to n): the fast Walsh-Hadamard butterflies.
void hadamard(float* x, int n) {
  for (int h = 1; h < n; h *= 2)
    for (int i = 0; i < n; i += 2 * h)
      for (int j = i; j < i + h; j++) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b, x[j + h] = a - b;
      }
  const float s = 1.0f / std::sqrt((float)n);
  for (int i = 0; i < n; i++) x[i] *= s;
}

int log2_exact(int n) {
  int k = 0;
  while ((1 << k) < n) k++;
  return k;
}
}  // namespace

int64_t tah_lo_rows(int64_t seq, double hi_ratio) { return (int64_t)((double)seq * (1.0 - hi_ratio)); }

void stage_check_params(const StageHead& h) {
  if (h.rows < 0 || h.width < 0) fail("a negative shape ({}, {})", h.rows, h.width);
  switch (h.codec) {
    case StageCodec::None: return;
    case StageCodec::Fixpoint:
    case StageCodec::Delta:
    case StageCodec::DeltaLowbits: check_bits(h.bits, "fixpoint bits"); return;
    case StageCodec::Tah:
      check_bits(h.bits, "tah high-precision bits");
      check_bits(h.lo_bits, "tah low-precision bits");
      if (h.tile < 2 || h.tile > 4096 || (h.tile & (h.tile - 1)))
        fail("tah tile {} is not a power of two within 2-4096", h.tile);
      if (h.width % h.tile) fail("tah tile {} does not divide the width {}", h.tile, h.width);
      if (h.seq < 1 || h.rows % h.seq) fail("tah sequences of {} rows do not divide the {} rows", h.seq, h.rows);
      if (h.lo_rows < 0 || h.lo_rows > h.seq) fail("tah low-precision rows {} not within 0-{}", h.lo_rows, h.seq);
      return;
  }
  fail("unknown codec {}", (int)h.codec);
}

size_t stage_payload_max(const StageHead& h) {
  const uint64_t n = (uint64_t)h.rows * (uint64_t)h.width;
  switch (h.codec) {
    case StageCodec::None: return n * 4;
    case StageCodec::Fixpoint:
    case StageCodec::Delta:
    case StageCodec::DeltaLowbits: return 2 * (uint64_t)h.width + (n * h.bits + 7) / 8;
    case StageCodec::Tah: {
      const uint64_t B = h.seq ? (uint64_t)(h.rows / h.seq) : 0, lo = B * (uint64_t)h.lo_rows * h.width,
                     tiles = h.tile ? n / h.tile : 0;
      const uint64_t bits = lo * h.lo_bits + (n - lo) * h.bits + 33 * tiles + (uint64_t)h.rows + tiles * (uint64_t)log2_exact(h.tile);
      return (bits + 7) / 8;
    }
  }
  return 0;
}

void fixpoint_encode(const float* x, int64_t rows, int64_t width, int bits, std::vector<uint8_t>& out) {
  check_bits(bits, "fixpoint bits");
  const int f = bits - 1;
  const float lim_lo = -std::ldexp(1.0f, f), lim_hi = std::ldexp(1.0f, f) - 1;
  std::vector<float> s((size_t)width, 0.f), d((size_t)width);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < width; c++) s[c] = std::max(s[c], std::fabs(x[r * width + c]));
  out.clear();
  out.reserve(2 * width + (rows * width * bits + 7) / 8);
  for (int64_t c = 0; c < width; c++) {
    const uint16_t h = f32_to_f16(std::isfinite(s[c]) ? s[c] : 65504.f);
    out.push_back((uint8_t)(h & 0xff)), out.push_back((uint8_t)(h >> 8));
    d[c] = f16_to_f32(f32_to_f16(f16_to_f32(h) + 1e-6f));  // AQ-SGD divides by fp16(s + 1e-6)
  }
  BitWriter w(out);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < width; c++) {
      float q = std::nearbyint(std::ldexp(x[r * width + c] / d[c], f));  // half to even
      q = q < lim_lo ? lim_lo : q > lim_hi ? lim_hi : q;
      if (!(q == q)) q = 0;  // NaN
      w.put((uint32_t)((int)q + (1 << f)), bits);
    }
  w.finish();
}

void fixpoint_decode(const uint8_t* in, size_t n, int64_t rows, int64_t width, int bits, float* x) {
  check_bits(bits, "fixpoint bits");
  const int f = bits - 1;
  if (n < (size_t)(2 * width)) fail("the payload ends inside its scales");
  std::vector<float> s((size_t)width);
  for (int64_t c = 0; c < width; c++) s[c] = half_value((uint16_t)(in[2 * c] | in[2 * c + 1] << 8), "fixpoint scale");
  BitReader rd(in + 2 * width, n - 2 * width);
  const float inv = std::ldexp(1.0f, -f);
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < width; c++) x[r * width + c] = (float)((int)rd.get(bits) - (1 << f)) * inv * s[c];
  rd.finish("fixpoint codes");
}

namespace {
// The TAH codec's parameters, checked as a message head's are.
void check_tah(int64_t rows, int64_t width, int64_t seq, int64_t lo_rows, int hi_bits, int lo_bits, int tile) {
  StageHead h;
  h.codec = StageCodec::Tah, h.rows = (int32_t)rows, h.width = (int32_t)width, h.seq = (int32_t)seq, h.lo_rows = (int32_t)lo_rows;
  h.bits = (uint8_t)hi_bits, h.lo_bits = (uint8_t)lo_bits, h.tile = (uint16_t)tile;
  stage_check_params(h);
}
}  // namespace

void tah_encode(const float* x, int64_t rows, int64_t width, int64_t seq, int64_t lo_rows, int hi_bits, int lo_bits,
                int tile, std::vector<uint8_t>& out) {
  check_tah(rows, width, seq, lo_rows, hi_bits, lo_bits, tile);
  const int64_t B = rows / seq, tpr = width / tile, n_tiles = rows * tpr;
  // Per sequence: the rows in the order they are coded (lowest-entropy lo_rows first, each
  // group by position) and which are low precision.
  std::vector<int64_t> perm((size_t)rows);
  std::vector<uint8_t> low((size_t)rows, 0);
  std::vector<double> H((size_t)seq);
  std::vector<int64_t> ord((size_t)seq);
  for (int64_t b = 0; b < B; b++) {
    for (int64_t t = 0; t < seq; t++) {
      const float* r = x + (b * seq + t) * width;
      double sum = 0;
      for (int64_t c = 0; c < width; c++) sum += std::fabs((double)r[c]);
      double e = 0;
      for (int64_t c = 0; c < width; c++) {
        const double p = std::fabs((double)r[c]) / (sum + 1e-30);
        e -= p * std::log(p + 1e-30);
      }
      H[t] = e;
    }
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int64_t a, int64_t c) { return H[a] < H[c]; });  // ties by position
    for (int64_t k = 0; k < lo_rows; k++) low[b * seq + ord[k]] = 1;
    int64_t k = 0;
    for (int pass = 1; pass >= 0; pass--)
      for (int64_t t = 0; t < seq; t++)
        if (low[b * seq + t] == pass) perm[b * seq + k++] = b * seq + t;
  }
  // Tiles in coded order: codes, fp16 zero and scale, the rotation flag and pivot.
  std::vector<uint8_t> codes((size_t)(rows * width));
  std::vector<uint16_t> zeros((size_t)n_tiles), scales((size_t)n_tiles);
  std::vector<uint8_t> flag((size_t)n_tiles, 0);
  std::vector<int> pivot;
  std::vector<float> t((size_t)tile);
  for (int64_t k = 0; k < rows; k++) {
    const float* r = x + perm[k] * width;
    const int bits = low[perm[k]] ? lo_bits : hi_bits;
    for (int64_t j = 0; j < tpr; j++) {
      const int64_t ti = k * tpr + j;
      std::copy(r + j * tile, r + (j + 1) * tile, t.begin());
      float top1 = -1, top2 = -1;
      int at = 0;
      for (int i = 0; i < tile; i++) {
        const float a = std::fabs(t[i]);
        if (a > top1) top2 = top1, top1 = a, at = i;
        else if (a > top2) top2 = a;
      }
      if (top1 >= 2 * top2) {  // one value dominates: move it first and spread it over the tile
        flag[ti] = 1;
        pivot.push_back(at);
        std::swap(t[0], t[at]);
        hadamard(t.data(), tile);
      }
      float mn = t[0], mx = t[0];
      for (int i = 1; i < tile; i++) mn = std::min(mn, t[i]), mx = std::max(mx, t[i]);
      const float qmax = (float)((1 << bits) - 1);
      const float scale = std::max((mx - mn) / qmax, 1e-30f);
      for (int i = 0; i < tile; i++) {
        float q = std::nearbyint((t[i] - mn) / scale);
        q = q < 0 ? 0 : q > qmax ? qmax : q;
        if (!(q == q)) q = 0;
        codes[k * width + j * tile + i] = (uint8_t)q;
      }
      zeros[ti] = f32_to_f16(mn), scales[ti] = f32_to_f16(scale);
    }
  }
  out.clear();
  BitWriter w(out);
  for (int pass = 0; pass < 2; pass++)  // the low-precision rows' codes of every sequence, then the high ones'
    for (int64_t b = 0; b < B; b++)
      for (int64_t k = pass ? lo_rows : 0; k < (pass ? seq : lo_rows); k++)
        for (int64_t c = 0; c < width; c++) w.put(codes[(b * seq + k) * width + c], pass ? hi_bits : lo_bits);
  for (uint16_t z : zeros) w.put(z, 16);
  for (uint16_t s : scales) w.put(s, 16);
  for (int64_t i = 0; i < rows; i++) w.put(low[i], 1);
  for (uint8_t f : flag) w.put(f, 1);
  const int pb = log2_exact(tile);
  for (int p : pivot) w.put((uint32_t)p, pb);
  w.finish();
}

void tah_decode(const uint8_t* in, size_t n, int64_t rows, int64_t width, int64_t seq, int64_t lo_rows, int hi_bits,
                int lo_bits, int tile, float* x) {
  check_tah(rows, width, seq, lo_rows, hi_bits, lo_bits, tile);
  const int64_t B = rows / seq, tpr = width / tile, n_tiles = rows * tpr;
  BitReader rd(in, n);
  std::vector<uint8_t> codes((size_t)(rows * width));
  for (int pass = 0; pass < 2; pass++)
    for (int64_t b = 0; b < B; b++)
      for (int64_t k = pass ? lo_rows : 0; k < (pass ? seq : lo_rows); k++)
        for (int64_t c = 0; c < width; c++) codes[(b * seq + k) * width + c] = (uint8_t)rd.get(pass ? hi_bits : lo_bits);
  std::vector<float> zeros((size_t)n_tiles), scales((size_t)n_tiles);
  for (auto& z : zeros) z = half_value((uint16_t)rd.get(16), "tah zero point");
  for (auto& s : scales) s = half_value((uint16_t)rd.get(16), "tah scale");
  std::vector<uint8_t> low((size_t)rows);
  for (int64_t b = 0; b < B; b++) {
    int64_t ones = 0;
    for (int64_t t = 0; t < seq; t++) ones += low[b * seq + t] = (uint8_t)rd.get(1);
    if (ones != lo_rows) fail("tah: sequence {} marks {} low-precision rows, expected {}", b, ones, lo_rows);
  }
  std::vector<uint8_t> flag((size_t)n_tiles);
  for (auto& f : flag) f = (uint8_t)rd.get(1);
  const int pb = log2_exact(tile);
  std::vector<float> t((size_t)tile);
  std::vector<int64_t> perm((size_t)rows);
  for (int64_t b = 0; b < B; b++) {
    int64_t k = 0;
    for (int pass = 1; pass >= 0; pass--)
      for (int64_t q = 0; q < seq; q++)
        if (low[b * seq + q] == pass) perm[b * seq + k++] = b * seq + q;
  }
  for (int64_t k = 0; k < rows; k++)
    for (int64_t j = 0; j < tpr; j++) {
      const int64_t ti = k * tpr + j;
      for (int i = 0; i < tile; i++) t[i] = (float)codes[k * width + j * tile + i] * scales[ti] + zeros[ti];
      if (flag[ti]) {
        hadamard(t.data(), tile);
        std::swap(t[0], t[rd.get(pb)]);
      }
      std::copy(t.begin(), t.end(), x + perm[k] * width + j * tile);
    }
  rd.finish("tah pivots");
}

namespace {
// The head's fields at fixed offsets, little-endian (the machines llmq runs on are).
template <class T>
void put(char* at, size_t off, T v) {
  std::memcpy(at + off, &v, sizeof v);
}
template <class T>
T get(const char* at, size_t off) {
  T v;
  std::memcpy(&v, at + off, sizeof v);
  return v;
}
}  // namespace

void stage_encode(StageHead h, const float* x, std::vector<char>& out) {
  stage_check_params(h);
  std::vector<uint8_t> pay;
  switch (h.codec) {
    case StageCodec::None:
      pay.resize((size_t)h.rows * h.width * 4);
      std::memcpy(pay.data(), x, pay.size());
      break;
    case StageCodec::Fixpoint:
    case StageCodec::Delta:
    case StageCodec::DeltaLowbits: fixpoint_encode(x, h.rows, h.width, h.bits, pay); break;
    case StageCodec::Tah: tah_encode(x, h.rows, h.width, h.seq, h.lo_rows, h.bits, h.lo_bits, h.tile, pay); break;
  }
  h.payload_bytes = pay.size();
  h.checksum = checksum64(pay.data(), pay.size());
  out.assign(kStageHeadBytes + pay.size(), 0);
  char* o = out.data();
  put<uint32_t>(o, 0, kStageMagic);
  put<uint16_t>(o, 4, kStageVersion);
  put<uint8_t>(o, 6, (uint8_t)h.direction);
  put<uint8_t>(o, 7, (uint8_t)h.codec);
  put<int32_t>(o, 8, h.from_stage);
  put<int32_t>(o, 12, h.micro);
  put<int64_t>(o, 16, h.step);
  put<int32_t>(o, 24, h.rows);
  put<int32_t>(o, 28, h.width);
  put<int32_t>(o, 32, h.seq);
  put<int32_t>(o, 36, h.lo_rows);
  put<uint8_t>(o, 40, h.bits);
  put<uint8_t>(o, 41, h.lo_bits);
  put<uint16_t>(o, 42, h.tile);
  // 44-47: zero
  put<uint64_t>(o, 48, h.payload_bytes);
  put<uint64_t>(o, 56, h.checksum);
  put<uint64_t>(o, 64, checksum64(o, 64));  // the head's own
  if (!pay.empty()) std::memcpy(o + kStageHeadBytes, pay.data(), pay.size());
}

void stage_decode(const std::vector<char>& msg, const StageHead& want, float* x) {
  if (msg.size() < kStageHeadBytes) fail("a message of {} bytes, shorter than the {}-byte head", msg.size(), kStageHeadBytes);
  const char* m = msg.data();
  if (get<uint32_t>(m, 0) != kStageMagic) fail("not a pipeline stage message (magic {:#010x})", get<uint32_t>(m, 0));
  if (get<uint64_t>(m, 64) != checksum64(m, 64)) fail("the message head's checksum does not match (a corrupt head)");
  if (get<uint16_t>(m, 4) != kStageVersion) fail("message version {} (this llmq reads {})", get<uint16_t>(m, 4), kStageVersion);
  if (get<uint32_t>(m, 44) != 0) fail("reserved head bytes 44-47 are not zero");
  StageHead h;
  h.direction = (StageDirection)get<uint8_t>(m, 6);
  h.codec = (StageCodec)get<uint8_t>(m, 7);
  h.from_stage = get<int32_t>(m, 8), h.micro = get<int32_t>(m, 12);
  h.step = get<int64_t>(m, 16), h.rows = get<int32_t>(m, 24), h.width = get<int32_t>(m, 28);
  h.seq = get<int32_t>(m, 32), h.lo_rows = get<int32_t>(m, 36);
  h.bits = get<uint8_t>(m, 40), h.lo_bits = get<uint8_t>(m, 41), h.tile = get<uint16_t>(m, 42);
  h.payload_bytes = get<uint64_t>(m, 48), h.checksum = get<uint64_t>(m, 56);
  if (h.direction != want.direction)
    fail("{} where {} were expected", stage_direction_name(h.direction), stage_direction_name(want.direction));
  if (h.from_stage != want.from_stage) fail("from stage {}, expected stage {}", h.from_stage, want.from_stage);
  if (h.step != want.step || h.micro != want.micro)
    fail("for step {} micro-batch {}, expected step {} micro-batch {}", h.step, h.micro, want.step, want.micro);
  if (h.codec != want.codec) fail("coded {}, expected {}", stage_codec_name(h.codec), stage_codec_name(want.codec));
  if (h.rows != want.rows || h.width != want.width)
    fail("of shape ({}, {}), expected ({}, {})", h.rows, h.width, want.rows, want.width);
  if (h.bits != want.bits || h.lo_bits != want.lo_bits || h.tile != want.tile || h.seq != want.seq || h.lo_rows != want.lo_rows)
    fail("coded with bits {}/{}, tile {}, sequences of {} with {} low rows; expected {}/{}, {}, {}, {}", h.bits, h.lo_bits,
         h.tile, h.seq, h.lo_rows, want.bits, want.lo_bits, want.tile, want.seq, want.lo_rows);
  stage_check_params(want);
  const size_t most = stage_payload_max(want);
  const size_t got = msg.size() - kStageHeadBytes;
  if (h.payload_bytes != got || got > most || (want.codec != StageCodec::Tah && got != most))
    fail("of {} payload bytes ({} received), expected {}{}", h.payload_bytes, got, want.codec == StageCodec::Tah ? "at most " : "", most);
  const auto* pay = reinterpret_cast<const uint8_t*>(m + kStageHeadBytes);
  if (checksum64(pay, got) != h.checksum) fail("whose payload checksum does not match (corrupted in transit)");
  switch (want.codec) {
    case StageCodec::None: std::memcpy(x, pay, got); break;
    case StageCodec::Fixpoint:
    case StageCodec::Delta:
    case StageCodec::DeltaLowbits: fixpoint_decode(pay, got, want.rows, want.width, want.bits, x); break;
    case StageCodec::Tah:
      tah_decode(pay, got, want.rows, want.width, want.seq, want.lo_rows, want.bits, want.lo_bits, want.tile, x);
      break;
  }
}

}  // namespace llmq::dist
