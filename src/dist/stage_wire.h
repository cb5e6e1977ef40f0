// Messages between pipeline stages: a fixed 72-byte head (what the message is, how it is
// coded, its length and a checksum of its payload) and a payload of (rows, width) values in
// one of the stage codecs. docs/formats.md ("Pipeline stage messages") gives the layout byte
// by byte. The receiver knows what it expects (direction, step, micro-batch, sender, shape,
// codec and its parameters) and refuses anything else with a message that says what differed,
// never a hang or garbage.
//
// Codecs (plain functions over a tensor, usable without a pipeline):
//  - none: the f32 values.
//  - fixpoint (AQ-SGD's): one scale per channel (column), the largest |x| of the column
//    rounded to fp16; codes q = round_half_even(x / fp16(s + 1e-6) * 2^(b-1)) clipped to
//    [-2^(b-1), 2^(b-1) - 1], stored as q + 2^(b-1) in b bits; x^ = q / 2^(b-1) * s.
//  - tah (TAH-Quant's): per sequence, the rows (tokens) of lowest entropy (of |x| normalised
//    over the row) get lo_bits and the others hi_bits; each row is cut into tiles of `tile`
//    values; a tile whose largest |x| is at least twice the second gets its largest moved to
//    position 0 and a Hadamard rotation (orthonormal); every tile is quantised asymmetrically
//    (zero = min, scale = (max - min) / (2^b - 1), both sent as fp16).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace llmq::dist {

// Delta and DeltaLowbits (AQ-SGD's) carry a fixpoint code of the difference between the
// activation and what both ends cached for that sample (the caches live in train/pipeline).
enum class StageCodec : uint8_t { None = 0, Fixpoint = 1, Tah = 2, Delta = 3, DeltaLowbits = 4 };
const char* stage_codec_name(StageCodec c);

enum class StageDirection : uint8_t { Forward = 0, Backward = 1, Eval = 2 };
const char* stage_direction_name(StageDirection d);

struct StageHead {
  StageDirection direction = StageDirection::Forward;
  StageCodec codec = StageCodec::None;
  int32_t from_stage = 0, micro = 0;
  int64_t step = 0;
  int32_t rows = 0, width = 0;
  // Codec parameters: fixpoint bits; tah: rows per sequence, low-precision rows per sequence,
  // hi bits (bits), lo bits and tile size.
  int32_t seq = 0, lo_rows = 0;
  uint8_t bits = 0, lo_bits = 0;
  uint16_t tile = 0;
  uint64_t payload_bytes = 0, checksum = 0;
};
constexpr size_t kStageHeadBytes = 72;
constexpr uint32_t kStageMagic = 0x5050514c;  // "LQPP" little-endian
constexpr uint16_t kStageVersion = 1;

// A 64-bit checksum of n bytes (four independent multiply-xor lanes over 8-byte words, then
// the tail; several GB/s): catches flipped bits and torn payloads, not an adversary.
uint64_t checksum64(const void* data, size_t n);

// Checks the head's codec parameters (bits 1-8, a power-of-two tile dividing the width, ...);
// throws llmq::Error naming the bad one.
void stage_check_params(const StageHead& h);
// The most payload bytes (rows, width) values take in h's codec (tah: every tile rotated).
size_t stage_payload_max(const StageHead& h);

// Encodes x (rows, width) with head h's fields into out (head + payload); fills the length
// and checksum.
void stage_encode(StageHead h, const float* x, std::vector<char>& out);
// Checks msg against what the receiver expects (every field of `want` but the length and
// checksum) and decodes its payload into x (rows, width). Throws llmq::Error naming the field
// that differs or the part of the payload that is inconsistent.
void stage_decode(const std::vector<char>& msg, const StageHead& want, float* x);

// The codecs alone (the payload bytes), for tests and benchmarks.
void fixpoint_encode(const float* x, int64_t rows, int64_t width, int bits, std::vector<uint8_t>& out);
void fixpoint_decode(const uint8_t* in, size_t n, int64_t rows, int64_t width, int bits, float* x);
void tah_encode(const float* x, int64_t rows, int64_t width, int64_t seq, int64_t lo_rows, int hi_bits, int lo_bits,
                int tile, std::vector<uint8_t>& out);
void tah_decode(const uint8_t* in, size_t n, int64_t rows, int64_t width, int64_t seq, int64_t lo_rows, int hi_bits,
                int lo_bits, int tile, float* x);
// TAH's low-precision rows per sequence of `seq` rows: int(seq * (1 - hi_ratio)) as the
// reference computes it in double precision.
int64_t tah_lo_rows(int64_t seq, double hi_ratio);

}  // namespace llmq::dist
