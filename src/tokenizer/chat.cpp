// Chat prompts: the built-in Llama 3 instruct format, or tokenizer_config.json's template.
#include "tokenizer/chat.h"
#include "tokenizer/gguf_tokenizer.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "tokenizer/jinja.h"

namespace llmq {

namespace fs = std::filesystem;

std::vector<ChatMessage> chat_messages_load(const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed JSON ({})", path, e.what());
  }
  if (!j.is_array()) fail("{}: expected a JSON array of {{\"role\", \"content\"}} messages", path);
  std::vector<ChatMessage> v;
  for (size_t i = 0; i < j.size(); i++) {
    const auto& m = j[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") || !m["content"].is_string())
      fail("{}: message {} needs string \"role\" and \"content\" fields", path, i);
    v.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  if (v.empty()) fail("{}: no messages", path);
  return v;
}

std::string chat_template_find(const std::string& tokenizer_path) {
  if (tokenizer_path.ends_with(".gguf") && fs::is_regular_file(tokenizer_path)) return gguf_chat_template(tokenizer_path);
  fs::path dir = fs::is_directory(tokenizer_path) ? fs::path(tokenizer_path) : fs::path(tokenizer_path).parent_path();
  fs::path cfg = dir / "tokenizer_config.json";
  if (!fs::is_regular_file(cfg)) return "";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(cfg.string()));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed JSON ({})", cfg.string(), e.what());
  }
  if (!j.is_object() || !j.contains("chat_template")) return "";
  const auto& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  // A list of named templates: take "default".
  if (t.is_array())
    for (const auto& e : t)
      if (e.is_object() && e.contains("name") && e["name"] == "default" && e.contains("template") && e["template"].is_string())
        return e["template"].get<std::string>();
  return "";
}

std::string chat_render(const std::vector<ChatMessage>& messages, const std::string& chat_template,
                        const std::string& bos_token, bool add_generation_prompt) {
  if (chat_template.empty()) {
    std::string s = bos_token;
    for (const auto& m : messages)
      s += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + m.content + "<|eot_id|>";
    if (add_generation_prompt) s += "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return s;
  }
  nlohmann::json msgs = nlohmann::json::array();
  for (const auto& m : messages) msgs.push_back({{"role", m.role}, {"content", m.content}});
  nlohmann::json ctx = {{"messages", msgs}, {"bos_token", bos_token}, {"add_generation_prompt", add_generation_prompt}};
  return jinja_render(chat_template, ctx, "chat_template");
}

}  // namespace llmq
