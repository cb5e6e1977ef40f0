// The Llama model: weights, KV cache and the forward pass. Single-device, single-process:
// parallelism (later) is applied from outside by splitting weights or assigning layers.
#pragma once
#include <array>
#include <functional>
#include <memory>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "model/config.h"
#include "ops/ops.h"

namespace llmq {

// q/k weight rows are kept in the Hugging Face order: within each head, rotary pairs are
// (j, j + head_dim/2) ("rotate half"). Meta's checkpoints pair (2j, 2j+1); the two are the
// same model after HF's row permutation, which the reference test checks.
// An unmerged LoRA/DoRA adapter on one linear (train/adapter.h, attach_adapter): the product
// becomes y = W x + s B (A x), and for DoRA then y *= c per output (c = magnitude /
// ||W + s B A||, computed once at load from the weights as run).
struct LoraLinear {
  Tensor A, B;  // (r, in), (out, r) f32
  float scale = 1;
  std::vector<float> c;  // DoRA; empty: LoRA
};

struct LlamaLayer {
  Tensor attn_norm;  // (dim,) f32
  Tensor wq;         // (n_heads*head_dim, dim)
  Tensor wk;         // (n_kv_heads*head_dim, dim)
  Tensor wv;         // (n_kv_heads*head_dim, dim)
  Tensor wo;         // (dim, n_heads*head_dim)
  Tensor ffn_norm;   // (dim,) f32
  Tensor w_gate;     // (ffn_dim, dim)
  Tensor w_up;       // (ffn_dim, dim)
  Tensor w_down;     // (dim, ffn_dim)
  // Calibrated static KV-cache ranges, one per KV head (max |k| after rope, max |v|), from a
  // checkpoint's self_attn.k_scale / v_scale; empty: int8/fp8 caches scale each row by its own max.
  std::vector<float> k_amax, v_amax;
  // Adapters on q, k, v, o, gate, up, down (in that order); null: none.
  std::array<std::shared_ptr<const LoraLinear>, 7> lora;
  // The seven block linears in the order above (q, k, v, o, gate, up, down).
  std::array<const Tensor*, 7> linears() const { return {&wq, &wk, &wv, &wo, &w_gate, &w_up, &w_down}; }
  // Served adapters (llmq serve --adapter), chosen per row by Batch::adapter: served[k - 1]
  // for adapter k.
  std::vector<std::array<std::shared_ptr<const LoraLinear>, 7>> served;
};

struct LlamaWeights {
  Tensor embed;    // (vocab, dim)
  std::vector<LlamaLayer> layers;
  Tensor norm;     // (dim,) f32
  Tensor lm_head;  // (vocab, dim); shares storage with embed when tied
};

struct Model {
  ModelConfig config;
  LlamaWeights weights;
  std::string source;       // directory or preset it came from
  std::vector<double> rope_freqs;  // (head_dim/2) with rope scaling applied
  // Tensor-parallel shards (dist/tensor_parallel.h): completes the partial sums of the
  // attention and MLP outputs over the ranks. Empty for a whole model.
  std::function<void(Tensor&)> partial_sum;
};

// KV-cache element type: f32, bf16, or int8 / fp8 (E4M3) with a scale per (sequence, head,
// position): the row of head_dim values divided by amax/127 (int8) or amax/448 (fp8), where
// amax is the row's own max |x| or, for a model with calibrated KV scales, its head's
// calibrated range (values beyond it saturate).
// int4: a scale per (sequence, head, position) as int8, codes in [-7, 7] (two a byte).
enum class KvType { F32, BF16, I8, FP8, I4 };
KvType kv_type_parse(const std::string& name);  // "f32", "bf16", "int8", "fp8", "int4"; fails otherwise
const char* kv_type_name(KvType t);
// "auto": the checkpoint's calibrated KV-cache type (quantization_config.kv_cache_scheme) if it
// has one, else f32; any other name as kv_type_parse.
KvType kv_type_for(const ModelConfig& c, const std::string& name);

// Keys and values of every layer for n_seq independent sequences.
struct KVCache {
  int64_t n_seq = 0, max_seq = 0;
  KvType type = KvType::F32;
  std::vector<Tensor> k, v;            // per layer: (n_seq, n_kv_heads, max_seq, head_dim)
  std::vector<Tensor> k_scale, v_scale;  // per layer: (n_seq, n_kv_heads, max_seq) f32 for
                                         // int8/int4/fp8, undefined for f32/bf16
  float eps = 0;  // int8/int4 of a QAT model (algorithm "qat"): LLM-QAT's quantizer (ops.h op_kv_store)
  int64_t block_size = 0;  // paged (serving): > 0, and k/v are (n_blocks, n_kv_heads, block_size, head_dim)
  static KVCache create(const ModelConfig& c, int64_t n_seq, int64_t max_seq, KvType type = KvType::F32);
  // n_blocks blocks of block_size positions; a Batch's pages say which block holds what.
  static KVCache create_paged(const ModelConfig& c, int64_t n_blocks, int64_t block_size, KvType type = KvType::F32);
  size_t bytes() const;
};

// One forward call's rows: row i is token tokens[i] of sequence seq[i] at position pos[i].
// A sequence's rows must come in position order and its earlier positions must already be
// in the cache (or earlier in this batch). Logits are computed for rows in `logit_rows`.
struct Batch {
  std::vector<int32_t> tokens, seq, pos, logit_rows;
  KvPages pages;  // for a paged cache: the block table of each sequence id
  std::vector<int32_t> adapter;  // per row: 0 the base, k the layers' served[k - 1]; empty: none
  void add(int32_t token, int32_t s, int32_t p, bool logits) {
    if (logits) logit_rows.push_back((int32_t)tokens.size());
    tokens.push_back(token);
    seq.push_back(s);
    pos.push_back(p);
  }
  size_t size() const { return tokens.size(); }
};

// Wall time of llama_forward by kind of op, summed over calls (llmq bench --profile).
struct ForwardProfile {
  enum Kind { Norm, QKV, Rope, KvStore, Attention, Wo, Add, GateUp, Swiglu, Down, Head, Other, kKinds };
  static const char* name(int kind);
  double secs[kKinds] = {};
  int64_t calls = 0;
};

// Activation buffers reused across calls (grown when a batch has more rows).
struct Scratch {
  int64_t rows = 0, logit_rows = 0;
  Tensor x, xb, q, k, v, att, gate, up, cos, sin, last, logits_buf;
  Tensor logits;  // view of logits_buf returned by llama_forward
  ForwardProfile* profile = nullptr;  // when set, llama_forward adds its op timings
};

// Returns logits (logit_rows.size(), vocab) f32, valid until the next call with `scratch`.
const Tensor& llama_forward(const Model& m, KVCache& cache, const Batch& b, Scratch& scratch);

}  // namespace llmq
