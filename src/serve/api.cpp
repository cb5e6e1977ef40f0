#include "serve/api.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

namespace llmq::serve {

using json = nlohmann::json;

ApiError::ApiError(int st, std::string msg, std::string p, std::string ty, std::string c)
    : std::runtime_error(std::move(msg)), status(st), type(std::move(ty)), param(std::move(p)), code(std::move(c)) {
  if (type.empty())
    type = st == 401 ? "authentication_error" : st == 404 ? "not_found_error" : st == 429 ? "rate_limit_error"
         : st >= 500 ? "server_error" : "invalid_request_error";
}

namespace {
[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, msg, param); }

json parse_object(std::string_view body) {
  json j = json::parse(body.begin(), body.end(), nullptr, false);
  if (j.is_discarded()) throw ApiError(400, "the request body is not valid JSON");
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object");
  return j;
}

// Optional fields: absent or null leaves the default.
bool has(const json& j, const char* k) { return j.contains(k) && !j[k].is_null(); }

double number(const json& j, const char* k, double lo, double hi) {
  const json& v = j[k];
  if (!v.is_number()) bad(k, fmt::format("'{}' must be a number", k));
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi)) bad(k, fmt::format("'{}' must be between {} and {}, got {}", k, lo, hi, x));
  return x;
}
int64_t integer(const json& j, const char* k, int64_t lo, int64_t hi) {
  const json& v = j[k];
  if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
                                   std::fabs(v.get<double>()) < 9e15))
    bad(k, fmt::format("'{}' must be an integer", k));
  const int64_t x = v.is_number_unsigned() ? (v.get<uint64_t>() > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v.get<uint64_t>())
                    : v.is_number_integer() ? v.get<int64_t>() : (int64_t)v.get<double>();
  if (x < lo || x > hi) bad(k, fmt::format("'{}' must be between {} and {}, got {}", k, lo, hi, x));
  return x;
}
bool boolean(const json& j, const char* k) {
  if (!j[k].is_boolean()) bad(k, fmt::format("'{}' must be true or false", k));
  return j[k].get<bool>();
}
std::string string(const json& j, const char* k) {
  if (!j[k].is_string()) bad(k, fmt::format("'{}' must be a string", k));
  return j[k].get<std::string>();
}
std::vector<int32_t> token_ids(const json& a, const char* k) {
  std::vector<int32_t> ids;
  for (const auto& t : a) {
    if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() > INT32_MAX)
      bad(k, fmt::format("'{}' token ids must be non-negative integers", k));
    ids.push_back((int32_t)t.get<int64_t>());
  }
  return ids;
}

std::vector<ChatMessage> messages_of(const json& j) {
  if (!j.contains("messages") || !j["messages"].is_array() || j["messages"].empty())
    bad("messages", "'messages' must be a non-empty array of {\"role\", \"content\"}");
  std::vector<ChatMessage> out;
  for (const auto& m : j["messages"]) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
      bad("messages", "each message needs a string 'role'");
    ChatMessage cm{m["role"].get<std::string>(), ""};
    if (cm.role != "system" && cm.role != "user" && cm.role != "assistant" && cm.role != "tool" && cm.role != "ipython" &&
        cm.role != "developer")
      bad("messages", fmt::format("unknown message role '{}'", cm.role));
    const json c = m.contains("content") ? m["content"] : json();
    if (c.is_string()) cm.content = c.get<std::string>();
    else if (c.is_array()) {  // content parts: only text
      for (const auto& p : c) {
        if (!p.is_object() || p.value("type", "") != "text" || !p.contains("text") || !p["text"].is_string())
          bad("messages", "only text content parts ({\"type\": \"text\", \"text\": ...}) are supported");
        cm.content += p["text"].get<std::string>();
      }
    } else if (!c.is_null()) {
      bad("messages", "'content' must be a string or an array of text parts");
    }
    out.push_back(std::move(cm));
  }
  return out;
}
}  // namespace

ApiRequest parse_request(std::string_view body, bool chat, const ApiLimits& lim) {
  const json j = parse_object(body);
  ApiRequest r;
  r.chat = chat;
  if (has(j, "model")) r.model = string(j, "model");
  if (chat) {
    r.messages = messages_of(j);
    if (has(j, "add_generation_prompt")) r.add_generation_prompt = boolean(j, "add_generation_prompt");
  } else {
    if (!has(j, "prompt")) bad("prompt", "'prompt' is required");
    const json& p = j["prompt"];
    if (p.is_string()) r.prompt_texts.push_back(p.get<std::string>());
    else if (p.is_array() && !p.empty() && p[0].is_number()) r.prompt_ids.push_back(token_ids(p, "prompt"));
    else if (p.is_array() && !p.empty()) {
      for (const auto& e : p) {
        if (e.is_string()) r.prompt_texts.push_back(e.get<std::string>());
        else if (e.is_array() && !e.empty()) r.prompt_ids.push_back(token_ids(e, "prompt"));
        else bad("prompt", "'prompt' must be a string, an array of strings, token ids, or arrays of token ids");
      }
      if (!r.prompt_texts.empty() && !r.prompt_ids.empty()) bad("prompt", "'prompt' mixes text and token ids");
    } else {
      bad("prompt", "'prompt' must be a non-empty string, an array of strings, token ids, or arrays of token ids");
    }
    if ((int)(r.prompt_texts.size() + r.prompt_ids.size()) > lim.max_prompts)
      bad("prompt", fmt::format("at most {} prompts per request", lim.max_prompts));
    if (has(j, "echo")) r.echo = boolean(j, "echo");
  }
  const char* mt = chat && has(j, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (has(j, mt)) r.max_tokens = integer(j, mt, 1, lim.max_tokens);
  if (has(j, "temperature")) r.temperature = (float)number(j, "temperature", 0, 100);
  if (has(j, "top_p")) r.top_p = (float)number(j, "top_p", 1e-9, 1);
  if (has(j, "min_p")) r.min_p = (float)number(j, "min_p", 0, 1);
  if (has(j, "top_k")) {
    r.top_k = (int)integer(j, "top_k", -1, INT32_MAX);
    if (r.top_k < 0) r.top_k = 0;
  }
  if (has(j, "seed")) r.seed = (uint64_t)integer(j, "seed", std::numeric_limits<int64_t>::min(), INT64_MAX);
  if (has(j, "stop")) {
    const json& s = j["stop"];
    if (s.is_string()) r.stop.push_back(s.get<std::string>());
    else if (s.is_array()) {
      for (const auto& e : s) {
        if (!e.is_string()) bad("stop", "'stop' must be a string or an array of strings");
        r.stop.push_back(e.get<std::string>());
      }
    } else {
      bad("stop", "'stop' must be a string or an array of strings");
    }
    for (const auto& e : r.stop)
      if (e.empty()) bad("stop", "'stop' strings must not be empty");
  }
  if (has(j, "stop_token_ids")) {
    if (!j["stop_token_ids"].is_array()) bad("stop_token_ids", "'stop_token_ids' must be an array of token ids");
    r.stop_token_ids = token_ids(j["stop_token_ids"], "stop_token_ids");
  }
  if (has(j, "n")) r.n = (int)integer(j, "n", 1, lim.max_n);
  if (has(j, "presence_penalty")) r.presence_penalty = (float)number(j, "presence_penalty", -2, 2);
  if (has(j, "frequency_penalty")) r.frequency_penalty = (float)number(j, "frequency_penalty", -2, 2);
  if (has(j, "repetition_penalty")) r.repetition_penalty = (float)number(j, "repetition_penalty", 1e-6, 100);
  if (chat) {
    const bool lp = has(j, "logprobs") && boolean(j, "logprobs");
    if (has(j, "top_logprobs")) {
      const int k = (int)integer(j, "top_logprobs", 0, 20);
      if (!lp) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
      r.logprobs = k;
    } else if (lp) {
      r.logprobs = 0;
    }
  } else if (has(j, "logprobs")) {
    r.logprobs = (int)integer(j, "logprobs", 0, 20);
  }
  if (has(j, "stream")) r.stream = boolean(j, "stream");
  if (has(j, "stream_options")) {
    const json& so = j["stream_options"];
    if (!so.is_object()) bad("stream_options", "'stream_options' must be an object");
    if (!r.stream) bad("stream_options", "'stream_options' is only allowed with 'stream': true");
    if (has(so, "include_usage")) {
      if (!so["include_usage"].is_boolean()) bad("stream_options", "'include_usage' must be true or false");
      r.include_usage = so["include_usage"].get<bool>();
    }
  }
  if (has(j, "ignore_eos")) r.ignore_eos = boolean(j, "ignore_eos");
  return r;
}

TokenizeRequest parse_tokenize(std::string_view body) {
  const json j = parse_object(body);
  TokenizeRequest t;
  if (j.contains("messages")) {
    t.chat = true;
    t.messages = messages_of(j);
    if (has(j, "add_generation_prompt")) t.add_generation_prompt = boolean(j, "add_generation_prompt");
  } else {
    if (!has(j, "prompt")) bad("prompt", "'prompt' (text) or 'messages' is required");
    t.prompt = string(j, "prompt");
  }
  if (has(j, "add_special_tokens")) t.add_special = boolean(j, "add_special_tokens");
  return t;
}

std::vector<int32_t> parse_detokenize(std::string_view body) {
  const json j = parse_object(body);
  if (!has(j, "tokens") || !j["tokens"].is_array()) bad("tokens", "'tokens' must be an array of token ids");
  return token_ids(j["tokens"], "tokens");
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // The lengths are not secret (the key's length is); the bytes are compared in full.
  unsigned diff = (unsigned)(a.size() != b.size());
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; i++) {
    const unsigned char x = i < a.size() ? (unsigned char)a[i] : 0, y = i < b.size() ? (unsigned char)b[i] : 0;
    diff |= (unsigned)(x ^ y);
  }
  return diff == 0;
}

}  // namespace llmq::serve
