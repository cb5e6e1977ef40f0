// libFuzzer target: the headers of training checkpoints, which can come from another machine
// (train/checkpoint.h): sharded_state.json and train_state.bin's JSON. The first byte picks
// the parser; any input must give a consistent result or an llmq::Error.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "train/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const int64_t n = 1000;  // parameters of the model the checkpoint is opened for
  try {
    if (data[0] % 2 == 0) {
      const llmq::train::ShardedMeta m = llmq::train::parse_sharded_meta(text, "fuzz", n);
      // The units must tile [0, n) and each rank's file must hold its chunk of every unit.
      int64_t at = 0, per_rank = 0;
      for (const auto& u : m.units) {
        if (u.begin != at || u.end <= u.begin || u.chunk * m.head.world_size < u.end - u.begin) std::abort();
        at = u.end, per_rank += u.chunk;
      }
      if (at != n || per_rank != m.per_rank || m.head.world_size < 1) std::abort();
    } else {
      const llmq::train::CheckpointHead h = llmq::train::parse_state_header(text, "fuzz", n);
      if (h.step < 0 || h.cursor < 0 || h.adam_step < 0 || !h.options.is_object()) std::abort();
    }
  } catch (const llmq::Error&) {
  }
  return 0;
}
