// Chat prompts: the Llama 3 instruct format, built in or rendered from a tokenizer_config.json
// chat_template with a Jinja subset (jinja.h).
#pragma once
#include <string>
#include <vector>

namespace llmq {

struct ChatMessage {
  std::string role, content;  // role: system | user | assistant | ipython
};

// Messages from a JSON file: [{"role": ..., "content": ...}, ...]; errors name the file.
std::vector<ChatMessage> chat_messages_load(const std::string& path);

// The chat_template of tokenizer_config.json in `dir` (or beside a tokenizer file), or "".
std::string chat_template_find(const std::string& tokenizer_path);

// Prompt text for the messages, special tokens written as their text (encode it with
// allow_special). An empty template means the built-in Llama 3 format:
//   <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>...
//   <|start_header_id|>assistant<|end_header_id|>\n\n       (when add_generation_prompt)
std::string chat_render(const std::vector<ChatMessage>& messages, const std::string& chat_template,
                        const std::string& bos_token, bool add_generation_prompt = true);

}  // namespace llmq
