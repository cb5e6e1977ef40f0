// libFuzzer target: safetensors header parsing and validation on arbitrary bytes. Any
// input must either parse (and then every entry lies inside the data) or raise llmq::Error.
#include <cstdint>
#include <cstdlib>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = llmq::safetensors_parse_header(data, size, "fuzz");
    for (const auto& e : h.tensors)
      if (e.end > size - h.data_start || e.begin > e.end) std::abort();  // validation missed something
  } catch (const llmq::Error&) {
  }
  return 0;
}
