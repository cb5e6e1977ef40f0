// A text written to a temporary directory and prepared into token shards with the fetched
// Llama 3 tokenizer (no validation split): the data of the small training-run tests.
#pragma once
#include <string>

#include "core/file_util.h"
#include "data/prepare.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace llmq::test {

struct TextShards {
  TempDir tmp{"trainrun"};
  std::string data;  // the shards' directory
  explicit TextShards(const std::string& text) {
    write_file_atomic(tmp / "in.txt", text);
    auto tok = tokenizer_load(std::string(LLMQ_SOURCE_DIR) + "/models/llama3-tokenizer");
    PrepareOptions po;
    po.inputs = {tmp / "in.txt"};
    po.out_dir = data = tmp / "data";
    po.val_fraction = 0;
    po.progress = false;
    data_prepare(*tok, po);
  }
};

}  // namespace llmq::test
