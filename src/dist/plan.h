// `llmq plan`: memory per rank and bytes communicated per optimizer step for a training job
// laid out over ranks = dp x tp (data parallel replicas, each tensor parallel over tp ranks),
// with fully sharded (FSDP/ZeRO-3) state over dp, for llmq's trainer: f32 weights, gradients
// and AdamW moments; activations as LlamaTrain saves them (src/train/llama_train.cpp).
// QLoRA-style jobs (--quant with --lora-rank) keep a frozen quantized base and train f32
// low-rank adapters on every linear of the blocks.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace llmq::dist {

struct PlanOptions {
  int64_t ranks = 1, tp = 1;
  bool fsdp = false;
  int64_t seq_len = 2048, batch = 1;  // batch: sequences per rank per micro-step
  std::string quant;                  // "" (f32 weights) | int8 | int4 | rtn4 | rtn8 | hqq2..hqq8 | nf4
  int64_t lora_rank = 0;
  bool dora = false;                  // DoRA adapters (a magnitude per output, more activations)
  bool recompute = false;
  int64_t kv_bytes = 2;               // generation KV cache element bytes (bf16)
};

struct Plan {
  int64_t dp = 1, params = 0, trainable = 0, block_params = 0;
  double weight_bytes = 0, grad_bytes = 0, optim_bytes = 0, gathered_bytes = 0, activation_bytes = 0,
         kv_cache_bytes = 0;
  double total_bytes() const { return weight_bytes + grad_bytes + optim_bytes + gathered_bytes + activation_bytes; }
  // Bytes each rank sends per optimizer step (one micro-step): data-parallel gradient
  // all-reduce or FSDP all-gathers (forward, backward) and reduce-scatter, and the tensor
  // parallel all-reduces of activations (2 per block forward, 2 backward).
  double dp_comm_bytes = 0, tp_comm_bytes = 0;
};

// Activation and backward-scratch bytes of LlamaTrain<float> for B sequences of T tokens
// (what LlamaTrain::activation_bytes reports after planning), the per-head and per-column
// tensors divided over tp ranks.
double train_activation_bytes(const ModelConfig& c, int64_t B, int64_t T, bool recompute, int64_t tp = 1);

Plan make_plan(const ModelConfig& c, const PlanOptions& o);

// Pipeline stages (train/pipeline.h). The blocks each of P stages runs: P + 1 boundaries
// (stage s runs [b[s], b[s+1])). `split` gives the counts ("10,11,11"); else the blocks are
// cut to balance each stage's matmul FLOPs per token, the output head (V x C) counted with the
// last stage; every stage gets at least one block.
std::vector<int64_t> pipeline_split(const ModelConfig& c, int stages, const std::string& split);
// LlamaTrain's activations on a stage running blocks [l0, l1) with `slots` micro-batches of B
// sequences held (what LlamaTrain::activation_bytes reports after set_stage and set_slots).
double stage_activation_bytes(const ModelConfig& c, int64_t B, int64_t T, bool recompute, int64_t l0, int64_t l1, int slots);
struct StagePlan {
  int64_t l0 = 0, l1 = 0;       // blocks
  double params = 0;            // parameters held (a tied embedding on both ends)
  double state_bytes = 0;       // f32 weights, gradients and AdamW moments
  double act_gpipe = 0, act_1f1b = 0;  // activations (M, or min(P - s, M) micro-batches held) + message buffers
  double link_fwd = 0, link_bwd = 0;   // bytes per step to the next stage (activations) and back from it (gradients)
};
// The stages of a --pp P job with M micro-batches of batch/M sequences per replica and step.
// Messages are coded as fwd (activations; tah: its largest size, every tile rotated) and bwd
// (gradients) say (StageHead with codec and bits; rows, width and seq are filled in here).
struct StageHead;
std::vector<StagePlan> pipeline_plan(const ModelConfig& c, int P, int64_t M, const std::string& split, int64_t batch,
                                     int64_t T, bool recompute, const StageHead* fwd = nullptr, const StageHead* bwd = nullptr);

// The owner of each unit of a sharded frozen base (train/base_shard.h): largest unit first,
// each to the rank holding the fewest bytes so far (the lowest rank on ties).
std::vector<int> assign_owners(const std::vector<double>& unit_bytes, int ranks);
// The bytes of each unit of a frozen base as llmq finetune holds it: the embeddings, norms
// and lm_head in f32, the block linears at linear_bits per weight (over tp ranks).
std::vector<double> base_unit_bytes(const ModelConfig& c, double linear_bits, int64_t tp = 1);

}  // namespace llmq::dist
