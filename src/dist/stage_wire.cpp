// Pipeline stage messages: head, checksum, payload codecs.
#include "dist/stage_wire.h"

#include <cstring>

#include "core/error.h"

namespace llmq::dist {

const char* stage_codec_name(StageCodec c) {
  switch (c) {
    case StageCodec::None: return "none";
  }
  return "?";
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

size_t stage_payload_bytes(StageCodec c, int64_t rows, int64_t width) {
  switch (c) {
    case StageCodec::None: return (size_t)(rows * width) * 4;
  }
  fail("unknown stage codec {}", (int)c);
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
  h.payload_bytes = stage_payload_bytes(h.codec, h.rows, h.width);
  out.resize(kStageHeadBytes + h.payload_bytes);
  char* pay = out.data() + kStageHeadBytes;
  switch (h.codec) {
    case StageCodec::None: std::memcpy(pay, x, h.payload_bytes); break;
  }
  h.checksum = checksum64(pay, h.payload_bytes);
  char* o = out.data();
  std::memset(o, 0, kStageHeadBytes);
  put<uint32_t>(o, 0, kStageMagic);
  put<uint16_t>(o, 4, kStageVersion);
  put<uint8_t>(o, 6, (uint8_t)h.direction);
  put<uint8_t>(o, 7, (uint8_t)h.codec);
  put<int32_t>(o, 8, h.from_stage);
  put<int32_t>(o, 12, h.micro);
  put<int64_t>(o, 16, h.step);
  put<int64_t>(o, 24, h.rows);
  put<int64_t>(o, 32, h.width);
  put<uint64_t>(o, 40, h.payload_bytes);
  put<uint64_t>(o, 48, h.checksum);
  put<uint64_t>(o, 56, checksum64(o, 56));  // the head's own
}

void stage_decode(const std::vector<char>& msg, const StageHead& want, float* x) {
  if (msg.size() < kStageHeadBytes) fail("a message of {} bytes, shorter than the {}-byte head", msg.size(), kStageHeadBytes);
  const char* m = msg.data();
  if (get<uint32_t>(m, 0) != kStageMagic) fail("not a pipeline stage message (magic {:#010x})", get<uint32_t>(m, 0));
  if (get<uint64_t>(m, 56) != checksum64(m, 56)) fail("the message head's checksum does not match (a corrupt head)");
  if (get<uint16_t>(m, 4) != kStageVersion) fail("message version {} (this llmq reads {})", get<uint16_t>(m, 4), kStageVersion);
  StageHead h;
  h.direction = (StageDirection)get<uint8_t>(m, 6);
  h.codec = (StageCodec)get<uint8_t>(m, 7);
  h.from_stage = get<int32_t>(m, 8), h.micro = get<int32_t>(m, 12);
  h.step = get<int64_t>(m, 16), h.rows = get<int64_t>(m, 24), h.width = get<int64_t>(m, 32);
  h.payload_bytes = get<uint64_t>(m, 40), h.checksum = get<uint64_t>(m, 48);
  if (h.direction != want.direction)
    fail("{} where {} were expected", stage_direction_name(h.direction), stage_direction_name(want.direction));
  if (h.from_stage != want.from_stage) fail("from stage {}, expected stage {}", h.from_stage, want.from_stage);
  if (h.step != want.step || h.micro != want.micro)
    fail("for step {} micro-batch {}, expected step {} micro-batch {}", h.step, h.micro, want.step, want.micro);
  if (h.codec != want.codec) fail("coded {}, expected {}", stage_codec_name(h.codec), stage_codec_name(want.codec));
  if (h.rows != want.rows || h.width != want.width)
    fail("of shape ({}, {}), expected ({}, {})", h.rows, h.width, want.rows, want.width);
  const size_t need = stage_payload_bytes(want.codec, want.rows, want.width);
  if (h.payload_bytes != need || msg.size() != kStageHeadBytes + need)
    fail("of {} payload bytes ({} received), expected {}", h.payload_bytes, msg.size() - kStageHeadBytes, need);
  const char* pay = m + kStageHeadBytes;
  if (checksum64(pay, need) != h.checksum) fail("whose payload checksum does not match (corrupted in transit)");
  switch (want.codec) {
    case StageCodec::None: std::memcpy(x, pay, need); break;
  }
}

}  // namespace llmq::dist
