// Calibration data for the calibrated quantization methods (GPTQ, AWQ, SmoothQuant, FP8
// static scales): `samples` windows of `seq_len` tokens drawn at seeded random offsets, as
// the GPTQ and AWQ reference scripts draw theirs, from
//   - a prepared data directory (manifest.json; the train split, so held-out text stays
//     unseen), windows never crossing a shard boundary;
//   - a JSONL file (one object per line with a "text" string) or a plain text file,
//     tokenized with the model's tokenizer, each document starting with BOS.
// The same source, sizes and seed give the same windows on every machine.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace llmq {

struct CalibOptions {
  std::string source;       // FILE (text or .jsonl) or DATA_DIR
  int64_t samples = 128;    // windows
  int64_t seq_len = 2048;   // tokens per window
  uint64_t seed = 0;
  std::string tokenizer;    // for text sources; "" = the model directory's
  std::string text_field = "text";  // JSONL: the field holding each document
};

struct CalibData {
  std::vector<std::vector<int32_t>> seqs;  // samples x seq_len
  int64_t source_tokens = 0;               // tokens the windows were drawn from
  std::string kind;                        // "shards", "jsonl", "text"
  int64_t tokens() const { return seqs.empty() ? 0 : (int64_t)(seqs.size() * seqs[0].size()); }
};

// The documents of a JSONL calibration file's text: the "text" string of every non-blank
// line; other lines fail naming path:line.
std::vector<std::string> calib_jsonl_texts(const std::string& text, const std::string& path,
                                           const std::string& field = "text");

// Fails with the file and the fix when the source is missing, malformed, holds fewer tokens
// than one window, or has ids outside [0, vocab).
CalibData calib_load(const CalibOptions& o, const std::string& model_dir, int64_t vocab);

}  // namespace llmq
