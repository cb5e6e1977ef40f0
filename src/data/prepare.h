// `llmq data prepare`: text or JSONL in, token shards out (data/shards.h), streaming with
// bounded memory: documents are read in batches, encoded in parallel, written in order.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace llmq {

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string out_dir;
  std::string format = "auto";  // auto (by extension: .jsonl/.json -> jsonl) | text | jsonl | chat
  // chat: JSONL lines {"messages": [{"role", "content"}, ...]} rendered with this template ("":
  // the built-in Llama 3 format) and BOS text; only assistant turns (their content and the
  // template's end-of-turn) are targets, the rest is stored with kLossMaskBit (data/shards.h).
  std::string chat_template, bos_text;
  std::string docs = "lines";   // text: "lines" (one document per line), "blank" (blank-line
                                // separated paragraphs), "file" (one document per file)
  std::string text_field = "text";  // JSONL field holding a document
  double val_fraction = 0.01;       // documents sent to the validation split (by seeded hash)
  uint64_t seed = 0;
  bool bos = true, eos = true;  // wrap each document in BOS ... EOS (when the tokenizer has them)
  int64_t shard_tokens = int64_t(1) << 26;  // tokens per shard file (64 Mi = 256 MB)
  int64_t batch_bytes = int64_t(8) << 20;   // text encoded per parallel batch
  bool progress = true;
};

struct PrepareStats {
  int64_t bytes = 0, documents = 0, empty_documents = 0, train_tokens = 0, val_tokens = 0, train_docs = 0,
          val_docs = 0;
  int64_t target_tokens = 0;  // chat: tokens trained on (assistant turns), both splits
  double seconds = 0;
};

PrepareStats data_prepare(const Tokenizer& tok, const PrepareOptions& o);

}  // namespace llmq
