// The training loop (one process, or data parallel over an mpirun job's ranks, dist/comm.h): token windows from prepared shards, gradient
// accumulation, global-norm clipping, warm-up then cosine or linear decay, AdamW, validation,
// JSONL metrics and atomic checkpoints (a Hugging Face model directory plus the optimizer
// state) that resume bit for bit.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "train/adamw.h"
#include "train/adapter.h"

namespace llmq::train {

struct TrainOptions {
  std::string model;   // initial weights: a model directory, or
  std::string preset;  // a preset shape / a config file, randomly initialised
  std::string config;
  std::string data, out;
  int64_t steps = 1000, batch = 8, seq_len = 256, grad_accum = 1;
  double lr = 1e-3, min_lr_ratio = 0.1;  // the decay ends at lr * min_lr_ratio
  int64_t warmup = 100;
  bool overwrite = false;  // start over in a run directory that holds an earlier run
  std::string decay = "cosine";  // cosine | linear
  AdamWConfig adamw;
  bool decay_embeddings = true;  // weight decay on the embedding / output matrices
  double clip = 1.0;             // max global gradient norm (0: off)
  uint64_t seed = 0;             // initialisation (random init only)
  int64_t eval_every = 100, eval_batches = 8, save_every = 500, keep = 2, log_every = 10;
  int64_t sample_tokens = 32;  // a sample generation of this length at each checkpoint (0: off)
  int64_t stop_after = 0;  // stop (with a checkpoint) after this step; the schedule still
                           // assumes `steps` (to split a run in parts, as a kill would)
  bool resume = false, progress = true;
  // Products of every linear: "f32" or "bf16" (bf16 operands, f32 sums; weights, gradients and
  // AdamW stay f32). Empty: f32 for a new run, the checkpoint's for a resume.
  std::string precision;
  bool recompute = false;      // per-block activation recomputation (less memory, ~1/3 more compute)
  bool deterministic = false;  // pin the thread count in the checkpoint; a resume uses it
  bool overlap_comm = true;    // data parallel: all-reduce each unit's gradients while backward goes on
  bool fsdp_overlap = false;   // FSDP: prefetch the next unit's gather, overlap reduce-scatters (off: slower on 2 cores)
  bool fsdp = false;           // shard parameters, gradients and AdamW moments over the ranks (train/fsdp.h)
  // Checkpoint format (train/checkpoint.h): "sharded" (each rank writes its own file; the
  // default with fsdp) or "full" (a model directory + optimizer state, written by rank 0).
  std::string checkpoint_format = "auto";
  // Fine-tuning (`llmq finetune`): adapters on the frozen base `model` (train/adapter.h);
  // checkpoints are PEFT adapter directories. quantize_base: "" or rtn4/hqq4/... to quantize
  // a float base as it is loaded.
  bool finetune = false;
  AdapterConfig adapter;
  std::string quantize_base;
  // Quantization-aware training (`llmq qat`, train/qat.h): the student starts as `model` (the
  // teacher) and trains with LLM-QAT's fake quantizers of this scheme ("": off); the loss is
  // kd_weight * KL(teacher || student) + (1 - kd_weight) * cross-entropy to the data's tokens,
  // the teacher (kept in f32, run forward per micro-batch) needed only for kd_weight > 0.
  std::string qat;
  double kd_weight = 1;
  // Pipeline parallelism (train/pipeline.h): the job's ranks form a mesh of pp stages (outer)
  // by data-parallel replicas (inner); each stage runs a range of blocks.
  int pp = 1;
  std::string pp_schedule = "1f1b";  // gpipe | 1f1b
  int micro_batches = 0;             // per step and replica (0: as many as stages)
  std::string pp_split;              // blocks per stage, "10,11,11" ("": balanced)
  std::string profile_trace;         // a Chrome trace of every rank's work ("": none)
  // Stage-boundary compression (train/pipeline.h, dist/stage_wire.h).
  std::string pp_compress_fwd = "none", pp_compress_bwd = "none";
  int fwd_bits = 4, bwd_bits = 6, tile = 64, hi_bits = 4, lo_bits = 3;
  double hi_ratio = 0.8;
  double pp_warmup_epochs = 0;       // epochs of the training data sent uncompressed first
  int delta_cache_bits = 4;          // delta-lowbits: bits of the cached activations
  bool pp_compress_eval = true;
};

struct TrainResult {
  int64_t steps = 0;        // the step the run reached (its last checkpoint's)
  int64_t start_step = 0;   // the step this invocation started from (a resume's checkpoint)
  double last_loss = 0, last_val_loss = -1, tokens_per_s = 0;  // only when steps > start_step
  std::string val_note;     // why there is no validation loss (last_val_loss < 0)
  int rank = 0, world = 1;
  uint64_t bytes_sent = 0;  // payload this rank sent to the others (gradient all-reduces, ...)
  uint64_t rss_end_bytes = 0;  // this rank's resident memory at the end (after the last step)
  std::string precision;    // of the linears' products ("f32", "bf16"), as resolved (a resume's)
  int stop_signal = 0;      // SIGINT/SIGTERM stopped the run (with a checkpoint at `steps`)
  int64_t trained_params = 0;  // values the optimizer updates (all parameters, or the adapters')
  uint64_t base_bytes = 0;     // fine-tuning: the frozen base's linears as held
  double last_kl = -1, last_ce = -1;  // qat: the last step's two loss terms (-1: not computed)
  // Pipeline stages (rank 0's result): per world rank, its stage, peak resident memory and the
  // stage messages it sent (activations forward, gradients back, validation activations).
  struct RankStats {
    int stage = 0;
    uint64_t peak_rss = 0, fwd_bytes = 0, bwd_bytes = 0, eval_bytes = 0;
  };
  std::vector<RankStats> ranks;
};

// Learning rate at optimizer step `step` (0-based): linear warm-up to lr over `warmup`
// steps, then cosine (or linear) decay to lr*min_lr_ratio at the last step.
double lr_at(const TrainOptions& o, int64_t step);

TrainResult train_run(const TrainOptions& o);

// A window of T+1 stored token ids -> T inputs and T targets (the next token); an id stored
// with the loss-mask bit (data/shards.h: chat data's prompt tokens) is an input with the bit
// cleared and, as a target, -1 (ignored by the loss).
void split_window(const uint32_t* w, int64_t T, int32_t* tokens, int32_t* targets);

}  // namespace llmq::train
