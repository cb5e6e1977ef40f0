// Data-free training text (`llmq data generate`), LLM-QAT's recipe (its generate_data.py): a
// sample starts from one token taken across the vocabulary, continues greedily to a prefix of
// 3 to 5 tokens, and is then sampled to the full length (top-k 50, temperature 1: the
// defaults its sampling ran with). As its loops, every first token is used with every prefix
// length: sample s has prefix length lo + s % G (G = hi - lo + 1) and first token number
// s / G of a golden-ratio sequence over the text tokens, which spreads any number of samples
// evenly over the vocabulary, so the layout does not depend on --samples (its run took
// consecutive ids per GPU). Deviation, said: sequences start with BOS when the tokenizer adds
// one (llmq's data prepare starts every document so, and its models expect it; LLM-QAT's
// LLaMA run started from the bare token).
//
// Batched: the samples of a batch share each forward. Sample s samples with seed + s, so the
// output does not depend on the batch size, and a resumed or extended run (append: the
// complete lines already in the file are kept and skipped) writes the same lines as one
// uninterrupted run.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace llmq {

struct DataGenOptions {
  int64_t samples = 1000, seq_len = 256, batch = 16;
  int greedy_lo = 3, greedy_hi = 5;  // total prefix length (first token included), LLM-QAT's 3..5
  float temperature = 1.0f;
  int top_k = 50;
  uint64_t seed = 1;
};

// "3-5" or "4" -> (lo, hi); fails for other text or lengths outside 1..64.
std::pair<int, int> parse_greedy_prefix(const std::string& s);

// The token ids of samples [s0, s1) (BOS, when added, first), each of up to seq_len tokens
// (shorter when EOS is generated).
std::vector<std::vector<int32_t>> generate_samples(const Model& m, const Tokenizer& tok, const DataGenOptions& o,
                                                   int64_t s0, int64_t s1);

struct DataGenResult {
  int64_t kept = 0, written = 0, tokens = 0;
  double seconds = 0;
};
// Appends samples to a JSONL file ({"text": ...} per line) until it holds o.samples lines;
// a partial last line (a killed run) is cut first. Each batch's lines are written and
// fsynced whole, so the file is valid JSONL at any interruption; a failed write (a full
// disk) cuts the file back to its last complete line and fails naming it.
DataGenResult generate_data_file(const Model& m, const Tokenizer& tok, const DataGenOptions& o, const std::string& path,
                                 const std::function<void(int64_t, int64_t)>& progress = nullptr);

}  // namespace llmq
