// libFuzzer target: the bodies llmq serve parses from its clients (serve/api.h): completions,
// chat completions, /tokenize and /detokenize. The first byte picks the parser; any input
// must give a request within the limits or an ApiError with a 4xx status.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "serve/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string body(reinterpret_cast<const char*>(data) + 1, size - 1);
  llmq::serve::ApiLimits lim;
  lim.max_tokens = 4096;
  try {
    switch (data[0] % 4) {
      case 0:
      case 1: {
        const auto r = llmq::serve::parse_request(body, data[0] % 4 == 1, lim);
        if (r.n < 1 || r.n > lim.max_n || r.logprobs < -1 || r.logprobs > 20) std::abort();
        if (r.max_tokens && (*r.max_tokens < 1 || *r.max_tokens > lim.max_tokens)) std::abort();
        if (!(r.temperature >= 0) || !(r.top_p > 0 && r.top_p <= 1) || r.top_k < 0) std::abort();
        if (r.chat ? r.messages.empty() : r.prompt_texts.empty() == r.prompt_ids.empty()) std::abort();
        if ((int)(r.prompt_texts.size() + r.prompt_ids.size()) > lim.max_prompts) std::abort();
        for (const auto& p : r.prompt_ids)
          for (int32_t t : p)
            if (t < 0) std::abort();
        break;
      }
      case 2: llmq::serve::parse_tokenize(body); break;
      default:
        for (int32_t t : llmq::serve::parse_detokenize(body))
          if (t < 0) std::abort();
    }
  } catch (const llmq::serve::ApiError& e) {
    if (e.status < 400 || e.status >= 500) std::abort();
  }
  return 0;
}
