// libFuzzer target: config.json / params.json parsing and validation on arbitrary text, and
// the same text as a PEFT adapter_config.json.
// A config that parses must be internally consistent (validate() passed), so the derived
// sizes the loader computes cannot overflow.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "model/config.h"
#include "train/adapter.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    llmq::ModelConfig c = llmq::config_parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    if (c.n_params() <= 0 || c.n_heads % c.n_kv_heads != 0) std::abort();
    auto f = llmq::rope_frequencies(c);
    if ((int64_t)f.size() != c.head_dim / 2) std::abort();
  } catch (const llmq::Error&) {
  }
  try {
    const auto a = llmq::train::adapter_config_parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    if (a.rank < 1 || a.alpha == 0 || !(a.dropout >= 0 && a.dropout < 1)) std::abort();  // check() passed
  } catch (const llmq::Error&) {
  }
  return 0;
}
