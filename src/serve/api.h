// The OpenAI-compatible request bodies (/v1/completions, /v1/chat/completions, /tokenize,
// /detokenize) parsed and checked into plain structs, with the fields vLLM accepts. Pure
// functions of the body text (no model, no network): the fuzz target drives them directly.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/chat.h"

namespace llmq::serve {

// An error to return as {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int st, std::string msg, std::string p = "", std::string ty = "", std::string c = "");
};

struct ApiLimits {
  int64_t max_tokens = 1 << 20;  // also capped by the context
  int max_n = 16;
  int max_prompts = 64;
};

struct ApiRequest {
  bool chat = false;
  std::string model;
  // Completions: one or more prompts, as text or token ids (one of the two lists is used).
  std::vector<std::string> prompt_texts;
  std::vector<std::vector<int32_t>> prompt_ids;
  // Chat: the conversation.
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = true;
  std::optional<int64_t> max_tokens;
  float temperature = 1.f, top_p = 1.f, min_p = 0.f;
  int top_k = 0;  // 0 (or -1 in the request): off
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  int n = 1;
  float presence_penalty = 0, frequency_penalty = 0, repetition_penalty = 1;
  int logprobs = -1;  // alternatives per token; -1: no logprobs
  bool echo = false, stream = false, include_usage = false, ignore_eos = false;
};

// Throws ApiError (status 400, param naming the field) for malformed JSON, wrong types and
// values out of range.
ApiRequest parse_request(std::string_view body, bool chat, const ApiLimits& lim = {});

// /tokenize: {"prompt": text} or {"messages": [...]} (+ add_special_tokens, add_generation_prompt).
struct TokenizeRequest {
  std::string prompt;
  std::vector<ChatMessage> messages;
  bool chat = false, add_special = true, add_generation_prompt = true;
};
TokenizeRequest parse_tokenize(std::string_view body);
// /detokenize: {"tokens": [ids]}
std::vector<int32_t> parse_detokenize(std::string_view body);

// Bytes compared without an early exit (API keys).
bool constant_time_equal(std::string_view a, std::string_view b);

}  // namespace llmq::serve
