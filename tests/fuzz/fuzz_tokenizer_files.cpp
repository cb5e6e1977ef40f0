// libFuzzer target: the tokenizer file parsers (tokenizer.json and tiktoken) on arbitrary
// bytes. A file that loads must give a tokenizer whose encode/decode round-trips.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "tokenizer/bpe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    std::unique_ptr<llmq::BpeTokenizer> t = data[0] & 1 ? llmq::BpeTokenizer::from_hf_json("fuzz.json", text)
                                                        : llmq::BpeTokenizer::from_tiktoken("fuzz.model", text);
    const std::string probe = "Hello, world! 123 \xff\xfe <|eot_id|>";
    if (t->decode(t->encode(probe, false)) != probe) std::abort();
  } catch (const llmq::Error&) {
  }
  return 0;
}
