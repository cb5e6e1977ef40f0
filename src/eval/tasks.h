// Zero-shot task evaluation (`llmq eval tasks`), as lm-evaluation-harness scores it:
//  - multiple choice {"context", "choices": [...], "answer": index}: each choice's
//    log-likelihood given the context (summed over its tokens); acc = the most likely choice
//    is the answer, acc_norm = the most likely per character of the choice (the harness's
//    length normalisation);
//  - generation {"prompt", "answer": "text"}: greedy decoding of as many tokens as the answer
//    has after the prompt; exact match = the decoded output equals the answer (both trimmed):
//    the harness's "is greedy" check, as LAMBADA is scored.
// Context and continuation are tokenized as the harness does: the whole string and the
// context alone, the continuation being the whole's tokens past the context's (whitespace at
// the end of the context moved to the continuation first).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace llmq {

struct TaskItem {
  std::string task;  // "task" field, else the file's name
  std::string context;
  std::vector<std::string> choices;  // multiple choice
  int64_t answer = -1;               // multiple choice: the right choice
  std::string target;                // generation: the expected text
  bool generate() const { return choices.empty(); }
};

// Reads a JSONL task file; fails naming the file and line for a malformed line, a missing
// field, fewer than two choices, or an answer index out of range.
std::vector<TaskItem> load_tasks(const std::string& path);
// The same from the file's text (`name` names it in messages; items' task defaults to it).
std::vector<TaskItem> parse_tasks(const std::string& text, const std::string& name);

struct TaskScore {
  std::string task;
  int64_t n = 0;
  bool generate = false;
  double acc = 0, acc_norm = 0;  // multiple choice
  double exact_match = 0;        // generation
};
// Scores every item (per task, in the order tasks first appear). progress(done, total).
// kv: the KV-cache type the model runs with (llama.h).
std::vector<TaskScore> eval_tasks(const Model& m, const Tokenizer& tok, const std::vector<TaskItem>& items,
                                  const std::function<void(int64_t, int64_t)>& progress = nullptr,
                                  KvType kv = KvType::F32);

// The continuation's tokens after the context's, as the harness splits them (see above);
// with BOS first when the tokenizer adds one. Returns (context tokens, continuation tokens).
std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const Tokenizer& tok, const std::string& context,
                                                                   const std::string& continuation);

// Task files from real text (`llmq data tasks`, scripts/make_tasks). Documents are each
// text's paragraphs (blank-line separated; lines when it has no blank lines), sentences end
// at . ! ? followed by a space or the end.
//  - "cloze": a passage (the first sentences of a document, up to ~passage_words words) and
//    four candidate next sentences: the document's own and three from other documents, in a
//    random order;
//  - "final-word": a passage ending in a sentence whose last word (letters only, 3 or more)
//    is to be predicted, LAMBADA-style; generation lines {"prompt", "answer": " word"}.
// Deterministic in seed. Fails when the text has too few usable documents for n items.
struct MakeTasksOptions {
  std::string kind = "cloze";
  int64_t n = 200, passage_words = 60;
  uint64_t seed = 1;
};
std::vector<std::string> make_tasks(const std::vector<std::string>& texts, const MakeTasksOptions& o);

}  // namespace llmq
