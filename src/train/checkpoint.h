// Training checkpoints, in two formats, both in DIR/checkpoint-NNNNNN/ and both loadable at
// any world size (a single process included):
//  - full: a Hugging Face model directory (f32, exact) plus train_state.bin: magic
//    "LLMQTRN1", u64 JSON length, JSON {step, cursor, adam_step, n_params, options}, then the
//    AdamW moments m and v as f32 (n_params each). Written by rank 0.
//  - sharded (fully sharded training): config.json, generation_config.json, the tokenizer
//    files, sharded_state.json {format "llmq-sharded-1", world_size, n_params, step, cursor,
//    adam_step, options, units: [[begin, end, chunk], ...]}, and one file per rank,
//    shard-RRRRR-of-WWWWW.bin: magic "LLMQSHD1", u64 n, then the rank's parameters, m and v
//    (n f32 each). A rank's n elements are its chunk of every unit in unit order: of unit
//    [begin, end), rank r holds [begin + r*chunk, begin + (r+1)*chunk), zero-padded past end.
//    Every rank writes its own file; nothing is gathered. `llmq export --format hf` turns
//    it into a plain model directory.
// A checkpoint is written into .tmp-checkpoint-NNNNNN, renamed into place when complete,
// and DIR/latest then names it, so a crash at any point leaves the previous one intact.
#pragma once
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "io/hf_dir.h"
#include "model/config.h"
#include "train/llama_train.h"

namespace llmq::train {

// Reads elements [b, e) of a flat buffer (the parameters or an AdamW moment) into dst.
using FlatReader = std::function<void(int64_t b, int64_t e, float* dst)>;

// The parameters of a fresh model (init_fill with this seed), element by element the same
// whichever ranges are asked for.
FlatReader init_reader(const ModelConfig& c, uint64_t seed);
// The parameters of a model directory (f32, bf16 or f16 tensors); names and shapes are
// checked when it is opened.
FlatReader model_dir_reader(const std::string& dir, const ModelConfig& c);

struct CheckpointHead {
  int64_t step = 0, cursor = 0, adam_step = 0;
  nlohmann::json options;  // what must match for an exact resume
  int world_size = 0;      // sharded: the world size that wrote it; full: 0
};

struct CheckpointSource {
  CheckpointHead head;
  FlatReader params, m, v;
};
// Opens a checkpoint directory of either format for `c` (fails naming the file on a
// mismatch, truncation or corruption).
CheckpointSource open_checkpoint(const std::string& dir, const ModelConfig& c);
// train_state.bin alone (the header and AdamW moments of n trained values), for checkpoints
// whose parameters live elsewhere (an adapter's adapter_model.safetensors); and its writer.
CheckpointSource open_train_state(const std::string& dir, int64_t n);
void write_train_state(const std::string& tmp, const CheckpointHead& head, int64_t n, const float* m, const float* v);
// Writes a tokenizer file (and its tokenizer_config.json beside it) into a checkpoint.
void copy_tokenizer(const std::string& src, const std::string& tmp);
// The checkpoint to resume from: the newest complete checkpoint-N in DIR (normally the one
// DIR/latest names; newer when a run stopped between publishing it and updating latest).
// Fails with the fix when there is none.
std::string latest_checkpoint(const std::string& out);
// Whether DIR holds a checkpoint or a `latest` (an earlier run).
bool has_checkpoint(const std::string& out);

struct ShardUnit {
  int64_t begin, end, chunk;
};

// Write side. checkpoint_begin makes an empty temporary directory (rank 0, before the
// others write into it); checkpoint_publish renames it into place, points latest at it
// and keeps the newest `keep` (rank 0, after every rank's files are committed).
std::string checkpoint_tmp_dir(const std::string& out, int64_t step);
std::string checkpoint_begin(const std::string& out, int64_t step);
void checkpoint_publish(const std::string& out, int64_t step, int64_t keep);
// Full format into `tmp`: parameters (flat, n) and moments (n each, or empty for zeros).
void write_full_checkpoint(const std::string& tmp, const ModelConfig& c, const float* params, const float* m,
                           const float* v, const CheckpointHead& head, const std::string& tokenizer_src);
// Sharded format: one rank's file, and (rank 0) the metadata and tokenizer.
void write_shard(const std::string& tmp, int rank, int world, const float* params, const float* m, const float* v,
                 int64_t n);
void write_shard_meta(const std::string& tmp, const ModelConfig& c, const std::vector<ShardUnit>& units, int world,
                      const CheckpointHead& head, const std::string& tokenizer_src);

// The checked headers (exposed for the fuzz target): train_state.bin's JSON, and
// sharded_state.json with its unit layout, for a model of n parameters.
CheckpointHead parse_state_header(const std::string& text, const std::string& path, int64_t n);
struct ShardedMeta {
  CheckpointHead head;
  std::vector<ShardUnit> units;
  int64_t per_rank = 0;  // elements in each rank's file
};
ShardedMeta parse_sharded_meta(const std::string& text, const std::string& path, int64_t n);

// A training checkpoint (either format) as a plain model directory in `dtype`.
void export_checkpoint_hf(const std::string& dir, const std::string& out, DType dtype);

}  // namespace llmq::train
