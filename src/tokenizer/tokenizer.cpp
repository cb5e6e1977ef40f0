// Tokenizer discovery and loading, BOS/EOS from tokenizer_config.json, streaming decode.
#include "tokenizer/tokenizer.h"
#include "tokenizer/gguf_tokenizer.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "tokenizer/bpe.h"
#include "tokenizer/spm.h"

namespace llmq {

namespace fs = std::filesystem;

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string s;
  for (int32_t id : ids)
    if (!(skip_special && is_special(id))) s += token_bytes(id);
  return s;
}

uint64_t fnv1a64(std::string_view s, uint64_t h) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

size_t utf8_complete_prefix(std::string_view s) {
  // Look back at most 3 bytes for the lead byte of a sequence that is still open.
  size_t n = s.size();
  for (size_t back = 1; back <= 4 && back <= n; back++) {
    auto c = (unsigned char)s[n - back];
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    return (size_t)len > back ? n - back : n;  // an open sequence is held back
  }
  return n;  // only continuation bytes at the end (invalid): nothing will complete them
}

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && t_.is_special(id)) return "";
  pending_ += t_.token_bytes(id);
  size_t k = utf8_complete_prefix(pending_);
  std::string out = pending_.substr(0, k);
  pending_.erase(0, k);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

std::string tokenizer_find(const std::string& dir) {
  if (dir.ends_with(".gguf") && fs::is_regular_file(dir)) return gguf_has_tokenizer(dir) ? dir : "";
  for (const char* name : {"tokenizer.json", "tokenizer.model"})
    if (fs::is_regular_file(fs::path(dir) / name)) return (fs::path(dir) / name).string();
  return "";
}

namespace {
// A tiktoken file is text whose first line is "<base64> <digits>"; SentencePiece is protobuf.
bool looks_like_tiktoken(const std::string& data) {
  size_t eol = data.find('\n');
  std::string_view l(data.data(), eol == std::string::npos ? data.size() : eol);
  size_t sp = l.find(' ');
  if (sp == std::string_view::npos || sp == 0 || sp + 1 == l.size()) return false;
  for (size_t i = 0; i < sp; i++) {
    char c = l[i];
    if (!(isalnum((unsigned char)c) || c == '+' || c == '/' || c == '=')) return false;
  }
  for (size_t i = sp + 1; i < l.size(); i++)
    if (!isdigit((unsigned char)l[i]) && !(l[i] == '\r' && i + 1 == l.size())) return false;
  return true;
}

// tokenizer_config.json's token fields are a string or {"content": string}.
std::string token_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

nlohmann::json read_json_if_present(const fs::path& p) {
  if (!fs::is_regular_file(p)) return nullptr;
  try {
    return nlohmann::json::parse(read_text_file(p.string()));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed JSON ({})", p.string(), e.what());
  }
}

// Special tokens of a tiktoken model from tokenizer_config.json's added_tokens_decoder.
std::vector<SpecialToken> specials_from_config(const nlohmann::json& cfg) {
  std::vector<SpecialToken> v;
  if (!cfg.is_object() || !cfg.contains("added_tokens_decoder") || !cfg["added_tokens_decoder"].is_object()) return v;
  for (const auto& [k, e] : cfg["added_tokens_decoder"].items()) {
    int64_t id = -1;
    try {
      id = std::stoll(k);
    } catch (...) {
    }
    std::string text = token_text(e);
    if (id < 0 || id >= (1 << 24) || text.empty()) fail("tokenizer_config.json: bad added_tokens_decoder entry \"{}\"", k);
    v.push_back({text, (int32_t)id, e.is_object() ? e.value("special", true) : true});
  }
  return v;
}

std::unique_ptr<Tokenizer> tokenizer_load_checked(const std::string& path);
}  // namespace

std::unique_ptr<Tokenizer> tokenizer_load(const std::string& path) {
  try {
    return tokenizer_load_checked(path);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: a field of the tokenizer or its tokenizer_config.json has the wrong JSON type ({})", path, e.what());
  }
}

namespace {
std::unique_ptr<Tokenizer> tokenizer_load_checked(const std::string& path) {
  std::string file = path;
  if (fs::is_directory(path)) {
    file = tokenizer_find(path);
    if (file.empty()) fail("{}: no tokenizer.json or tokenizer.model in this directory (pass --tokenizer FILE)", path);
  } else if (!fs::exists(path)) {
    fail("{}: no such tokenizer file or directory", path);
  }
  if (file.ends_with(".gguf")) return gguf_tokenizer_load(file);  // the tokenizer a GGUF carries
  const fs::path dir = fs::path(file).parent_path();
  const nlohmann::json cfg = read_json_if_present(dir / "tokenizer_config.json");
  const std::string data = read_text_file(file);
  if (data.empty()) fail("{}: empty tokenizer file", file);
  std::unique_ptr<Tokenizer> t;
  if (fs::path(file).extension() == ".json")
    t = BpeTokenizer::from_hf_json(file, data);
  else if (looks_like_tiktoken(data))
    t = BpeTokenizer::from_tiktoken(file, data, specials_from_config(cfg));
  else
    t = spm_load(file, data);
  tokenizer_apply_config(*t, cfg);
  return t;
}
}  // namespace

void tokenizer_apply_config(Tokenizer& tk, const nlohmann::json& cfg) {
  Tokenizer* t = &tk;
  if (cfg.is_object()) {
    if (cfg.contains("bos_token")) {
      std::string b = token_text(cfg["bos_token"]);
      if (!b.empty() && t->token_id(b) >= 0) t->bos_id = t->token_id(b);
    }
    if (cfg.contains("eos_token")) {
      std::string e = token_text(cfg["eos_token"]);
      int32_t id = e.empty() ? -1 : t->token_id(e);
      if (id >= 0 && std::find(t->eos_ids.begin(), t->eos_ids.end(), id) == t->eos_ids.end()) t->eos_ids.insert(t->eos_ids.begin(), id);
    }
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) t->add_bos = cfg["add_bos_token"].get<bool>();
  }
  if (t->bos_id < 0) t->add_bos = false;
}

}  // namespace llmq
