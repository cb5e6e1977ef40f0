// SentencePiece tokenizers (Llama 2's tokenizer.model, or one trained here) through Debian's
// libsentencepiece, and training new ones for small models.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace llmq {

// `data` is the serialized ModelProto read from `path`.
std::unique_ptr<Tokenizer> spm_load(const std::string& path, const std::string& data);

struct SpmTrainOptions {
  std::vector<std::string> inputs;  // plain-text files, one sentence per line
  int vocab_size = 8000;
  std::string type = "bpe";  // bpe | unigram
  int threads = 0;           // 0: all cores
  int64_t max_sentences = 2000000;  // sampled from the input when there are more
  uint64_t seed = 0;
};
// Trains a model and writes DIR/tokenizer.model and DIR/tokenizer_config.json atomically.
void spm_train(const SpmTrainOptions& o, const std::string& out_dir);

}  // namespace llmq
