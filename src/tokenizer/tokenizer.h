// Text <-> token ids: the interface every tokenizer implements (Llama 3 byte-level BPE,
// SentencePiece), discovery in a model directory, and a UTF-8-safe streaming decoder.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace llmq {

// A vocabulary as GGUF (llama.cpp) describes it: tokenizer.ggml.model "gpt2" (byte-level
// BPE: tokens in GPT-2's byte-to-unicode spelling, merges "a b" by rank) or "llama"
// (SentencePiece: pieces with scores). Token types: 1 normal, 2 unknown, 3 control,
// 4 user-defined, 5 unused, 6 byte.
struct VocabExport {
  std::string model, pre;
  std::vector<std::string> tokens, merges;
  std::vector<float> scores;
  std::vector<int32_t> types;
  int32_t unk_id = -1;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Ids of `text` (no BOS/EOS added). With allow_special, the text of special tokens
  // (e.g. "<|eot_id|>") becomes their id; without, it is encoded as ordinary text.
  virtual std::vector<int32_t> encode(std::string_view text, bool allow_special) const = 0;
  // The bytes a token stands for (special tokens: their text). Fails for ids out of range.
  virtual std::string token_bytes(int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual bool is_special(int32_t id) const = 0;
  // Concatenated bytes of the ids; `skip_special` drops special tokens.
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  // Id of a token given by its exact text (special tokens included), or -1.
  virtual int32_t token_id(std::string_view text) const = 0;
  // The vocabulary for GGUF export.
  virtual VocabExport export_vocab() const = 0;

  const std::string& kind() const { return kind_; }  // "llama3-bpe", "sentencepiece"
  const std::string& source() const { return source_; }
  // A stable 64-bit hash (hex) of the vocabulary and merge rules: equal fingerprints mean
  // equal ids for every text. Data shards record it so training can refuse a mismatch.
  const std::string& fingerprint() const { return fingerprint_; }
  int32_t bos_id = -1;
  std::vector<int32_t> eos_ids;
  bool add_bos = true;  // whether prompts and documents start with BOS by default

 protected:
  std::string kind_, source_, fingerprint_;
};

// Loads a tokenizer from a file (tokenizer.json, a tiktoken-format or SentencePiece
// tokenizer.model) or from a directory holding one (tokenizer.json preferred). BOS/EOS come
// from tokenizer_config.json and config.json beside it when present.
std::unique_ptr<Tokenizer> tokenizer_load(const std::string& path);
// The tokenizer file in a model directory, or "" if it has none; a .gguf file that carries a
// tokenizer is its own tokenizer file (tokenizer/gguf_tokenizer.h).
std::string tokenizer_find(const std::string& dir);
// Applies tokenizer_config.json's bos_token, eos_token and add_bos_token.
void tokenizer_apply_config(Tokenizer& t, const nlohmann::json& cfg);

// Incremental decode for streamed output: feed ids, get back only complete UTF-8 sequences;
// bytes of a character split across tokens are held until the rest arrives.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& t, bool skip_special = false) : t_(t), skip_special_(skip_special) {}
  std::string push(int32_t id);
  std::string flush();  // whatever is held (possibly invalid UTF-8 at the very end)

 private:
  const Tokenizer& t_;
  bool skip_special_;
  std::string pending_;
};

// Length of the longest prefix of s that does not end inside a UTF-8 sequence which could
// still be completed by more bytes (invalid bytes count as complete: they never will be).
size_t utf8_complete_prefix(std::string_view s);
// GPT-2's byte-level spelling of raw bytes (printable bytes stand for themselves, the rest
// map to U+0100 onwards), as tokenizer.json and GGUF "gpt2" vocabularies write tokens.
std::string bytes_to_gpt2_unicode(std::string_view bytes);
// 64-bit FNV-1a, for fingerprints.
uint64_t fnv1a64(std::string_view s, uint64_t h = 0xcbf29ce484222325ull);

}  // namespace llmq
