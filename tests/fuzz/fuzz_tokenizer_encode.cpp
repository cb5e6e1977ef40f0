// libFuzzer target: Llama 3 encode/decode and streaming decode on arbitrary bytes with the
// real tokenizer (models/llama3-tokenizer, from scripts/fetch_data). Invariants: decode
// inverts encode exactly, every id is in the vocabulary, the stream decoder's output
// concatenates to the same bytes.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::unique_ptr<llmq::Tokenizer> t = llmq::tokenizer_load(LLMQ_SOURCE_DIR "/models/llama3-tokenizer");
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data) + 1, size - 1);
  const bool special = data[0] & 1;
  auto ids = t->encode(text, special);
  for (int32_t id : ids)
    if (id < 0 || id >= t->vocab_size()) std::abort();
  if (t->decode(ids) != text) std::abort();
  llmq::StreamDecoder d(*t);
  std::string s;
  for (int32_t id : ids) s += d.push(id);
  s += d.flush();
  if (s != text) std::abort();
  return 0;
}
