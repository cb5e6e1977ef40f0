// libFuzzer target: pipeline stage messages (dist/stage_wire.h), which arrive over the network
// from another process. The receiver's expectation is taken from the message's own head
// (bounded), so mutations reach the payload decoders (fixpoint, tah): a message that decodes
// gives finite values (f32 ones encode back to the same bytes), anything else is an llmq::Error.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "dist/stage_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace llmq::dist;
  const std::vector<char> msg(reinterpret_cast<const char*>(data), reinterpret_cast<const char*>(data) + size);
  StageHead want;
  if (size >= kStageHeadBytes) {
    auto get = [&](size_t off, auto v) {
      std::memcpy(&v, data + off, sizeof v);
      return v;
    };
    want.direction = (StageDirection)(get(6, uint8_t{}) % 3);
    want.codec = (StageCodec)(get(7, uint8_t{}) % 5);
    want.from_stage = get(8, int32_t{}), want.micro = get(12, int32_t{});
    want.step = get(16, int64_t{});
    want.rows = get(24, int32_t{}) & 0xff, want.width = get(28, int32_t{}) & 0xff;  // at most 64k values
    want.seq = get(32, int32_t{}) & 0xff, want.lo_rows = get(36, int32_t{}) & 0xff;
    want.bits = get(40, uint8_t{}), want.lo_bits = get(41, uint8_t{}), want.tile = get(42, uint16_t{}) & 0x1ff;
  }
  // Most inputs get their checksums fixed (else no mutation of a payload would ever reach a
  // decoder); those with the head's reserved byte 44 odd keep theirs, to test the checks.
  std::vector<char> fixed = msg;
  if (size >= kStageHeadBytes && !(data[44] & 1)) {
    const uint64_t pay = checksum64(fixed.data() + kStageHeadBytes, size - kStageHeadBytes);
    std::memcpy(fixed.data() + 56, &pay, 8);
    const uint64_t head = checksum64(fixed.data(), 64);
    std::memcpy(fixed.data() + 64, &head, 8);
  }
  try {
    std::vector<float> x((size_t)(want.rows * want.width));
    stage_decode(fixed, want, x.data());
    // The codes decode to finite values (a non-finite fp16 scale or zero point is refused).
    for (float v : x)
      if (!std::isfinite(v) && want.codec != StageCodec::None) std::abort();
    if (want.codec == StageCodec::None) {  // f32 values: encoding them again gives the same bytes
      std::vector<char> again;
      stage_encode(want, x.data(), again);
      if (again != fixed) std::abort();
    }
  } catch (const llmq::Error&) {
  }
  return 0;
}
