// Messages between pipeline stages: a fixed 64-byte head (what the message is, its length
// and a checksum of its payload) and a payload of (rows, width) values in one of the stage
// codecs. docs/formats.md ("Pipeline stage messages") gives the layout byte by byte. The
// receiver knows what it expects (direction, step, micro-batch, sender, shape) and refuses
// anything else with a message that says what differed, never a hang or garbage.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace llmq::dist {

// How a payload is coded. None: the f32 values as they are (little-endian).
enum class StageCodec : uint8_t { None = 0 };
const char* stage_codec_name(StageCodec c);

enum class StageDirection : uint8_t { Forward = 0, Backward = 1, Eval = 2 };
const char* stage_direction_name(StageDirection d);

struct StageHead {
  StageDirection direction = StageDirection::Forward;
  StageCodec codec = StageCodec::None;
  int32_t from_stage = 0, micro = 0;
  int64_t step = 0, rows = 0, width = 0;
  uint64_t payload_bytes = 0, checksum = 0;
};
constexpr size_t kStageHeadBytes = 64;
constexpr uint32_t kStageMagic = 0x5050514c;  // "LQPP" little-endian
constexpr uint16_t kStageVersion = 1;

// A 64-bit checksum of n bytes (four independent multiply-xor lanes over 8-byte words, then
// the tail; ~10 GB/s): catches any flipped bit or torn payload, not an adversary.
uint64_t checksum64(const void* data, size_t n);

// Bytes of the payload of (rows, width) values in codec c.
size_t stage_payload_bytes(StageCodec c, int64_t rows, int64_t width);

// Encodes x (rows, width) with head h's direction, stage, micro-batch, step and codec into
// out (head + payload); fills the length and checksum.
void stage_encode(StageHead h, const float* x, std::vector<char>& out);
// Checks msg against what the receiver expects (every field of `want` but the length and
// checksum) and decodes its payload into x (rows, width). Throws llmq::Error naming the field
// that differs.
void stage_decode(const std::vector<char>& msg, const StageHead& want, float* x);

}  // namespace llmq::dist
