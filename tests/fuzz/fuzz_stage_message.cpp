// libFuzzer target: pipeline stage messages (dist/stage_wire.h), which arrive over the network
// from another process. The receiver's expectation is taken from the message's own head
// (bounded), so mutations reach the payload decoders; a message that decodes must encode back
// to the same bytes, anything else must be an llmq::Error.
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
    want.codec = (StageCodec)get(7, uint8_t{});
    want.from_stage = get(8, int32_t{}), want.micro = get(12, int32_t{});
    want.step = get(16, int64_t{});
    want.rows = get(24, int64_t{}) & 0xff, want.width = get(32, int64_t{}) & 0xff;  // at most 64k values
  }
  try {
    std::vector<float> x((size_t)(want.rows * want.width));
    stage_decode(msg, want, x.data());
    std::vector<char> again;
    stage_encode(want, x.data(), again);
    if (again != msg) std::abort();
  } catch (const llmq::Error&) {
  }
  return 0;
}
