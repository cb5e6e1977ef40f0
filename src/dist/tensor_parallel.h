// Tensor-parallel inference (Megatron layout): rank r of tp keeps heads
// [r H/tp, (r+1) H/tp) of q (and the matching KV heads of k, v), rows [r F/tp, (r+1) F/tp)
// of gate/up, and the same input columns of o and down; after o and after down each rank
// holds a partial sum of the block's output, which one all-reduce completes. Norms,
// embeddings and the lm_head are replicated, so every rank computes the same logits.
#pragma once
#include "dist/comm.h"
#include "model/llama.h"

namespace llmq::dist {

// Cuts m down to rank `rank`'s shard of a tp-way split (the config then describes the
// shard: n_heads, n_kv_heads and ffn_dim divided by tp) and installs comm's all-reduce as
// the model's partial-sum hook. Fails naming the reason when the model cannot be split:
// heads, KV heads or FFN width not divisible by tp; quantized row blocks not whole 16-row
// panels or column blocks not whole groups; act-order, HQQ axis 0, per-token activation
// scales (w8a8, fp8 per token) or calibrated KV scales, whose numbers span the shards.
void shard_model_tp(Model& m, int rank, int tp, Communicator& comm);

}  // namespace llmq::dist
