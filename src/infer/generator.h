// Generation: prefill each prompt, then decode all live sequences together, one row each.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "infer/sampler.h"
#include "model/llama.h"

namespace llmq {

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<int32_t> eos_ids;                    // stop when one is sampled (not emitted)
  std::vector<std::vector<int32_t>> stop_sequences;  // stop after emitting one of these
  int64_t context = 0;                             // KV cache length; 0: prompt + max_new
  KvType kv_type = KvType::F32;                    // KV-cache element type
  std::vector<uint64_t> seeds;                     // per sequence, when given (else sampling.seed + i)
  int top_logprobs = 0;                            // record the k most likely tokens at each step
};

enum class StopReason { Length, Eos, StopSequence, Context };
const char* stop_reason_name(StopReason r);

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated tokens only
  // With top_logprobs k: per chosen token (and a final eos), the k most likely (id, log
  // probability under the model's raw logits), most likely first.
  std::vector<std::vector<std::pair<int32_t, float>>> top;
  StopReason reason = StopReason::Length;
  double prefill_seconds = 0, decode_seconds = 0;
};

// on_token(sequence index, token) streams tokens as they are chosen; returning true stops
// that sequence there (StopReason::StopSequence: how text stop strings are implemented).
// Sequence i samples with seed sampling.seed + i, so a batch gives the same output as
// separate runs.
using TokenCallback = std::function<bool(size_t, int32_t)>;
std::vector<GenerateResult> generate(const Model& m, const std::vector<std::vector<int32_t>>& prompts,
                                     const GenerateOptions& opt, const TokenCallback& on_token = nullptr);

}  // namespace llmq
