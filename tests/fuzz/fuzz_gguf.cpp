// libFuzzer target: GGUF parsing, model building and the tokenizer a GGUF carries, on
// arbitrary bytes. Any input must either parse (every tensor inside the file), build a model
// and its tokenizer (when it has tokenizer metadata), or raise llmq::Error.
#include <cstdint>
#include <cstdlib>

#include "io/gguf.h"
#include "tokenizer/gguf_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    llmq::GgufFile f = llmq::gguf_parse_bytes(data, size, "fuzz.gguf");
    for (const auto& t : f.tensors)
      if (t.offset + t.bytes > size - f.data_start) std::abort();  // validation missed something
    // Model building reads the tensors: only try files small enough to be quick.
    try {
      if (f.kv.count("tokenizer.ggml.model")) llmq::gguf_tokenizer_load(f);
    } catch (const llmq::Error&) {
    }
    if (size < (1 << 20)) llmq::gguf_model_from(f);
  } catch (const llmq::Error&) {
  }
  return 0;
}
