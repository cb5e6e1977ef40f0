// libFuzzer target: the tokenizer file parsers (tiktoken, tokenizer.json, SentencePiece
// models; the first byte picks one) on arbitrary bytes. A file that loads must give a
// tokenizer whose encode/decode round-trips.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "tokenizer/bpe.h"
#include "tokenizer/spm.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    std::unique_ptr<llmq::Tokenizer> t;
    switch (data[0] % 3) {
      case 0: t = llmq::BpeTokenizer::from_tiktoken("fuzz.model", text); break;
      case 1: t = llmq::BpeTokenizer::from_hf_json("fuzz.json", text); break;
      default: t = llmq::spm_load("fuzz.model", text); break;
    }
    // Byte-level BPE round-trips any bytes; SentencePiece models need not (no byte fallback,
    // normalization), so for them only encoding and decoding without error is required.
    const std::string probe = "Hello, world! 123 \xff\xfe <|eot_id|>";
    const std::string back = t->decode(t->encode(probe, false));
    if (data[0] % 3 != 2 && back != probe) std::abort();
  } catch (const llmq::Error&) {
  }
  return 0;
}
