// Token shards on disk: what `llmq data prepare` writes and training reads.
//   DIR/manifest.json          format, tokenizer (fingerprint, kind, vocab, bos/eos), per
//                              split: token and document counts and its shards
//   DIR/{split}_{k:06}.bin     token ids, uint32 little-endian
//   DIR/{split}_{k:06}.idx     document starts within the shard, uint64 little-endian
// The manifest is written last, so a directory without one is an unfinished run.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/file_util.h"

namespace llmq {

constexpr const char* kShardFormat = "llmq-tokens-v1";
// Chat data (`data prepare --format chat`, manifest "loss_mask": true): a token that is not
// to be predicted (system and user turns, headers) is stored with this bit set; its id is
// the value without it. Training reads such a token as input and never as a target.
constexpr uint32_t kLossMaskBit = 0x80000000u;

struct ShardInfo {
  std::string file;  // .bin, relative to the directory
  std::string index;  // .idx, relative to the directory
  int64_t tokens = 0, documents = 0;
};

struct SplitInfo {
  int64_t tokens = 0, documents = 0;
  std::vector<ShardInfo> shards;
};

struct ShardManifest {
  std::string tokenizer_fingerprint, tokenizer_kind, tokenizer_source;
  int64_t vocab_size = 0;
  int32_t bos_id = -1, eos_id = -1;
  bool loss_mask = false;  // ids may carry kLossMaskBit
  SplitInfo train, val;
  std::string to_json() const;
  // Validates every field; errors name `path`.
  static ShardManifest parse(const std::string& text, const std::string& path);

 private:
  static ShardManifest parse_checked(const std::string& text, const std::string& path);
};

// A split's shards, mapped and checked against the manifest (sizes, ids < vocab_size on open
// is too slow for large data: ids are checked as they are read).
struct TokenSplit {
  struct Shard {
    std::shared_ptr<MappedFile> bin, idx;
    int64_t tokens = 0, documents = 0;
    const uint32_t* ids() const { return reinterpret_cast<const uint32_t*>(bin->data); }
    const uint64_t* doc_starts() const { return reinterpret_cast<const uint64_t*>(idx->data); }
  };
  std::vector<Shard> shards;
  int64_t tokens = 0, documents = 0;
};

struct TokenDataset {
  std::string dir;
  ShardManifest manifest;
  TokenSplit train, val;
  // Checks that the data was made with a tokenizer of this fingerprint.
  void require_tokenizer(const std::string& fingerprint, const std::string& tokenizer_path) const;
};

TokenDataset token_dataset_open(const std::string& dir);

}  // namespace llmq
