// Byte-level BPE as Llama 3 uses it (the tiktoken scheme): split text with the pre-tokenizer
// regex, then merge each piece's bytes by rank. Loads a Hugging Face tokenizer.json (BPE
// model, ByteLevel pre-tokenizer) or Meta's tiktoken-format tokenizer.model.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace llmq {

// The Llama 3 pre-tokenizer pattern (tokenizer.json's Split regex; Meta's tokenizer.py).
extern const char* const kLlama3Pattern;

struct SpecialToken {
  std::string text;
  int32_t id;
  bool special;  // false: an added token that is always parsed, even without allow_special
};

class BpeTokenizer final : public Tokenizer {
 public:
  // Both parsers validate everything they read and fail with the file's name and the fault.
  static std::unique_ptr<BpeTokenizer> from_hf_json(const std::string& path, const std::string& text);
  // tiktoken: one "base64-token rank" pair per line; ranks are the ids. Special tokens are
  // `specials` when given (from a tokenizer_config.json beside it), else Llama 3.1's 256.
  static std::unique_ptr<BpeTokenizer> from_tiktoken(const std::string& path, const std::string& text,
                                                     std::vector<SpecialToken> specials = {});
  ~BpeTokenizer() override;

  std::vector<int32_t> encode(std::string_view text, bool allow_special) const override;
  std::string token_bytes(int32_t id) const override;
  int32_t vocab_size() const override { return (int32_t)bytes_.size(); }
  bool is_special(int32_t id) const override;
  int32_t token_id(std::string_view text) const override;
  VocabExport export_vocab() const override;

  // One pre-tokenized piece to ids by rank-ordered merges; `heap` picks the O(n log n)
  // algorithm (used for long pieces) instead of the quadratic one (the reference).
  void encode_piece(std::string_view piece, std::vector<int32_t>& out, bool heap) const;

 private:
  BpeTokenizer() = default;
  static std::unique_ptr<BpeTokenizer> from_hf_json_checked(const std::string& path, const std::string& text);
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  struct Merge {
    int32_t rank, merged;
  };
  void finish(const std::string& path, const std::string& pattern);
  void encode_ordinary(std::string_view text, std::vector<int32_t>& out) const;
  void merge_quadratic(std::vector<int32_t>& ids) const;
  void merge_heap(std::vector<int32_t>& ids) const;
  const Merge* find_merge(int32_t a, int32_t b) const;

  std::vector<std::string> bytes_;  // id -> bytes (special tokens: their text; holes: "")
  std::vector<uint8_t> kind_of_;    // id -> 0 hole, 1 ordinary, 2 special, 3 added non-special
  std::unordered_map<std::string, int32_t, Hash, std::equal_to<>> ids_;  // ordinary tokens
  std::unordered_map<uint64_t, Merge> merges_;  // (left << 32 | right) -> rank, merged id
  std::vector<SpecialToken> specials_;          // longest first
  int32_t byte_ids_[256];
  bool first_byte_[2][256] = {};  // [allow_special][b]: some added token starts with byte b
  bool ignore_merges_ = true;  // a piece that is itself a token is emitted whole
  void* code_ = nullptr;       // pcre2_code_8*
};

}  // namespace llmq
