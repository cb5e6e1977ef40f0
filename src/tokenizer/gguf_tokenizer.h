// The tokenizer a GGUF file carries (llama.cpp's tokenizer.ggml.* metadata), as the files a
// Hugging Face model directory would hold, so a .gguf alone can be run with text, chat
// and perplexity over text, and quantize/export from it write a tokenizer.
//  - tokenizer.ggml.model "gpt2" (byte-level BPE: tokens in GPT-2's byte spelling, merges by
//    rank), pre "llama-bpe"/"llama3" (Llama 3's regex, whole-word lookup first, as
//    tokenizer.json's ignore_merges) or "default"/"gpt2" (GPT-2's regex) -> tokenizer.json
//  - "llama" (SentencePiece: pieces, scores, types; byte fallback when byte pieces exist;
//    tokenizer.ggml.add_space_prefix, default true) -> a SentencePiece tokenizer.model
// Token types: 1 normal and 6 byte are the vocabulary, 3 control are special added tokens,
// 4 user-defined non-special added tokens, 5 unused (the padding rows llmq's export adds)
// are holes. BOS/EOS/EOT and add_bos_token, and tokenizer.chat_template, go to
// tokenizer_config.json.
#pragma once
#include <memory>
#include <string>

#include "tokenizer/tokenizer.h"

namespace llmq {

struct TokenizerFiles {
  std::string main_name;  // "tokenizer.json" or "tokenizer.model"
  std::string main;       // its contents
  std::string config;     // tokenizer_config.json
};

// Whether the file holds tokenizer metadata (tokenizer.ggml.model and tokens).
bool gguf_has_tokenizer(const std::string& path);
// The files (fails naming the file and key for what it cannot represent).
TokenizerFiles gguf_tokenizer_files(const std::string& path);
struct GgufFile;
TokenizerFiles gguf_tokenizer_files(const GgufFile& f);  // from a parsed file (the fuzz target)
// The tokenizer itself (ids identical to the tokenizer the file was made from).
std::unique_ptr<Tokenizer> gguf_tokenizer_load(const std::string& path);
std::unique_ptr<Tokenizer> gguf_tokenizer_load(const GgufFile& f);
// tokenizer.chat_template, or "".
std::string gguf_chat_template(const std::string& path);

}  // namespace llmq
