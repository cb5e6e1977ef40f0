// GGUF tokenizer metadata -> tokenizer.json / SentencePiece tokenizer.model (gguf_tokenizer.h).
#include "tokenizer/gguf_tokenizer.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf.h"
#include "tokenizer/bpe.h"
#include "tokenizer/spm.h"

namespace llmq {

namespace {
using json = nlohmann::json;

// GPT-2's pre-tokenizer regex (llama.cpp's "default"/"gpt2" pre type).
const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

template <class T>
const T* kv(const GgufFile& f, const std::string& key) {
  auto it = f.kv.find(key);
  return it == f.kv.end() ? nullptr : std::get_if<T>(&it->second);
}
int64_t kv_id(const GgufFile& f, const std::string& key) {
  if (auto v = kv<uint32_t>(f, key)) return *v;
  if (auto v = kv<int32_t>(f, key)) return *v;
  if (auto v = kv<uint64_t>(f, key)) return (int64_t)*v;
  return -1;
}

// Protobuf wire format, for a SentencePiece ModelProto.
void put_varint(std::string& s, uint64_t v) {
  while (v >= 0x80) s.push_back((char)(v | 0x80)), v >>= 7;
  s.push_back((char)v);
}
void put_key(std::string& s, int field, int wire) { put_varint(s, (uint64_t)field << 3 | (uint64_t)wire); }
void put_bytes(std::string& s, int field, const std::string& b) {
  put_key(s, field, 2);
  put_varint(s, b.size());
  s += b;
}
void put_bool(std::string& s, int field, bool v) {
  put_key(s, field, 0);
  put_varint(s, v ? 1 : 0);
}
void put_int(std::string& s, int field, int64_t v) {
  put_key(s, field, 0);
  put_varint(s, (uint64_t)v);  // negative int32: ten-byte two's complement, as protobuf writes it
}
void put_float(std::string& s, int field, float v) {
  put_key(s, field, 5);
  char b[4];
  std::memcpy(b, &v, 4);
  s.append(b, 4);
}

struct Vocab {
  std::string model, pre;
  const std::vector<std::string>* tokens = nullptr;
  std::vector<int32_t> types;
  const std::vector<float>* scores = nullptr;
  const std::vector<std::string>* merges = nullptr;
};

Vocab read_vocab(const GgufFile& f) {
  Vocab v;
  const std::string* model = kv<std::string>(f, "tokenizer.ggml.model");
  v.tokens = kv<std::vector<std::string>>(f, "tokenizer.ggml.tokens");
  if (!model || !v.tokens)
    fail("{}: no tokenizer in this GGUF (tokenizer.ggml.model and tokenizer.ggml.tokens are missing); pass --tokenizer", f.path);
  v.model = *model;
  if (auto p = kv<std::string>(f, "tokenizer.ggml.pre")) v.pre = *p;
  const size_t n = v.tokens->size();
  if (n == 0 || n > (1u << 24)) fail("{}: tokenizer.ggml.tokens holds {} tokens", f.path, n);
  if (auto t = kv<std::vector<int32_t>>(f, "tokenizer.ggml.token_type")) {
    if (t->size() != n) fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", f.path, t->size(), n);
    v.types = *t;
  } else {
    v.types.assign(n, 1);
  }
  v.scores = kv<std::vector<float>>(f, "tokenizer.ggml.scores");
  if (v.scores && v.scores->size() != n) fail("{}: tokenizer.ggml.scores has {} entries for {} tokens", f.path, v.scores->size(), n);
  v.merges = kv<std::vector<std::string>>(f, "tokenizer.ggml.merges");
  return v;
}

std::string bpe_json(const GgufFile& f, const Vocab& v) {
  std::string pattern;
  bool ignore_merges = false;
  if (v.pre == "llama-bpe" || v.pre == "llama3" || v.pre == "smaug-bpe") pattern = kLlama3Pattern, ignore_merges = true;
  else if (v.pre.empty() || v.pre == "default" || v.pre == "gpt2") pattern = kGpt2Pattern;
  else
    fail("{}: tokenizer.ggml.pre \"{}\" is not supported (llmq reads llama-bpe/llama3 and default/gpt2 byte-level BPE)",
         f.path, v.pre);
  if (!v.merges) fail("{}: a gpt2 (byte-level BPE) tokenizer needs tokenizer.ggml.merges", f.path);
  json vocab = json::object(), added = json::array();
  for (size_t i = 0; i < v.tokens->size(); i++) {
    const std::string& tok = (*v.tokens)[i];
    switch (v.types[i]) {
      case 1: case 2: case 6: vocab[tok] = i; break;
      case 3: added.push_back({{"id", i}, {"content", tok}, {"special", true}}); break;
      case 4: added.push_back({{"id", i}, {"content", tok}, {"special", false}}); break;
      case 5: break;  // unused: a hole (llmq's export pads the vocabulary to the model's rows)
      default: fail("{}: token {} has type {} (1..6 expected)", f.path, i, v.types[i]);
    }
  }
  json pre = {{"type", "Sequence"},
              {"pretokenizers", json::array({{{"type", "Split"}, {"pattern", {{"Regex", pattern}}}, {"behavior", "Isolated"}, {"invert", false}},
                                             {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
  json j = {{"version", "1.0"},
            {"added_tokens", added},
            {"pre_tokenizer", pre},
            {"decoder", {{"type", "ByteLevel"}}},
            {"model", {{"type", "BPE"}, {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", *v.merges}}}};
  return j.dump();
}

std::string spm_proto(const GgufFile& f, const Vocab& v) {
  if (!v.scores) fail("{}: a llama (SentencePiece) tokenizer needs tokenizer.ggml.scores", f.path);
  std::string p;
  bool bytes = false;
  for (size_t i = 0; i < v.tokens->size(); i++) {
    const int32_t type = v.types[i];
    if (type < 1 || type > 6) fail("{}: token {} has type {} (1..6 expected)", f.path, i, type);
    bytes = bytes || type == 6;
    std::string piece;
    put_bytes(piece, 1, (*v.tokens)[i]);
    put_float(piece, 2, (*v.scores)[i]);
    if (type != 1) put_int(piece, 3, type);  // NORMAL is the default
    put_bytes(p, 1, piece);
  }
  // TrainerSpec: the BPE model (scores are merge priorities), byte fallback when byte pieces
  // exist; ids of unk/bos/eos as the metadata gives them.
  std::string trainer;
  put_int(trainer, 3, 2);  // model_type BPE
  put_int(trainer, 4, (int64_t)v.tokens->size());
  put_bool(trainer, 35, bytes);  // byte_fallback
  const int64_t unk = kv_id(f, "tokenizer.ggml.unknown_token_id"), bos = kv_id(f, "tokenizer.ggml.bos_token_id"),
                eos = kv_id(f, "tokenizer.ggml.eos_token_id");
  put_int(trainer, 40, unk);
  put_int(trainer, 41, bos);
  put_int(trainer, 42, eos);
  put_int(trainer, 43, -1);  // pad_id
  put_bytes(p, 2, trainer);
  // NormalizerSpec: no normalization (llama.cpp applies none), "▁" for spaces, a space
  // prefix unless the file says otherwise, whitespace kept as is.
  const bool* sp = kv<bool>(f, "tokenizer.ggml.add_space_prefix");
  std::string norm;
  put_bytes(norm, 1, "identity");
  put_bool(norm, 3, sp ? *sp : true);   // add_dummy_prefix
  put_bool(norm, 4, false);             // remove_extra_whitespaces
  put_bool(norm, 5, true);              // escape_whitespaces
  put_bytes(p, 3, norm);
  return p;
}

json config_json(const GgufFile& f, const Vocab& v) {
  auto text = [&](int64_t id) -> json {
    return id >= 0 && id < (int64_t)v.tokens->size() ? json((*v.tokens)[(size_t)id]) : json(nullptr);
  };
  json c = {{"tokenizer_class", v.model == "llama" ? "LlamaTokenizer" : "PreTrainedTokenizerFast"}};
  const int64_t bos = kv_id(f, "tokenizer.ggml.bos_token_id"), eos = kv_id(f, "tokenizer.ggml.eos_token_id");
  if (bos >= 0) c["bos_token"] = text(bos);
  if (eos >= 0) c["eos_token"] = text(eos);
  const bool* add_bos = kv<bool>(f, "tokenizer.ggml.add_bos_token");
  c["add_bos_token"] = add_bos ? *add_bos : v.model == "llama";  // llama.cpp's defaults per model type
  c["add_eos_token"] = false;
  if (auto t = kv<std::string>(f, "tokenizer.chat_template")) c["chat_template"] = *t;
  // Special tokens must be named in added_tokens_decoder for a SentencePiece model too.
  json dec = json::object();
  for (size_t i = 0; i < v.tokens->size(); i++)
    if (v.types[i] == 3 || v.types[i] == 4)
      dec[std::to_string(i)] = {{"content", (*v.tokens)[i]}, {"special", v.types[i] == 3}};
  if (v.model != "llama") c["added_tokens_decoder"] = dec;
  return c;
}
}  // namespace

bool gguf_has_tokenizer(const std::string& path) {
  const GgufFile f = gguf_parse(path);
  return kv<std::string>(f, "tokenizer.ggml.model") && kv<std::vector<std::string>>(f, "tokenizer.ggml.tokens");
}

TokenizerFiles gguf_tokenizer_files(const std::string& path) { return gguf_tokenizer_files(gguf_parse(path)); }

TokenizerFiles gguf_tokenizer_files(const GgufFile& f) {
  const std::string& path = f.path;
  const Vocab v = read_vocab(f);
  TokenizerFiles out;
  if (v.model == "gpt2") out.main_name = "tokenizer.json", out.main = bpe_json(f, v);
  else if (v.model == "llama") out.main_name = "tokenizer.model", out.main = spm_proto(f, v);
  else fail("{}: tokenizer.ggml.model \"{}\" is not supported (gpt2 or llama)", path, v.model);
  out.config = config_json(f, v).dump(2) + "\n";
  return out;
}

std::unique_ptr<Tokenizer> gguf_tokenizer_load(const std::string& path) { return gguf_tokenizer_load(gguf_parse(path)); }

std::unique_ptr<Tokenizer> gguf_tokenizer_load(const GgufFile& f) {
  const std::string& path = f.path;
  const TokenizerFiles files = gguf_tokenizer_files(f);
  std::unique_ptr<Tokenizer> t = files.main_name == "tokenizer.json" ? std::unique_ptr<Tokenizer>(BpeTokenizer::from_hf_json(path, files.main))
                                                                     : spm_load(path, files.main);
  tokenizer_apply_config(*t, json::parse(files.config));
  // EOT (Llama 3's <|eot_id|>) ends a turn as EOS does.
  const int64_t eot = kv_id(f, "tokenizer.ggml.eot_token_id");
  if (eot >= 0 && eot < t->vocab_size() && std::find(t->eos_ids.begin(), t->eos_ids.end(), (int32_t)eot) == t->eos_ids.end())
    t->eos_ids.push_back((int32_t)eot);
  return t;
}

std::string gguf_chat_template(const std::string& path) {
  const GgufFile f = gguf_parse(path);
  const std::string* t = kv<std::string>(f, "tokenizer.chat_template");
  return t ? *t : "";
}

}  // namespace llmq
