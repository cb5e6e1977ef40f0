// The Llama model for training: parameters and gradients in one flat buffer each (in
// Hugging Face tensor order, q/k rows in rotate-half order as inference keeps them), the
// forward pass over B sequences of T tokens that saves what backward needs (activation
// memory planned once per (B, T)), and the backward pass. T = float for training, double
// for gradient checks.
#pragma once
#include <cstdint>
#include <array>
#include <functional>
#include <string>
#include <vector>

#include "core/zero_pages.h"
#include "io/hf_dir.h"
#include "model/config.h"
#include "train/adapter.h"
#include "train/qat.h"
#include "train/train_ops.h"

namespace llmq::train {

// The flat parameter buffer of a model: its Hugging Face tensors, in order.
struct FlatLayout {
  std::vector<HfTensorSpec> specs;
  std::vector<int64_t> offsets;  // element offset of each spec
  int64_t n = 0;
  explicit FlatLayout(const ModelConfig& c);
};

// The parameter unit (LlamaTrain::unit_range) a Hugging Face tensor belongs to: 0 the
// embeddings, 1 + l the tensors of block l, n_layers + 1 the rest (final norm, lm_head).
int unit_of_tensor(const std::string& name, int n_layers);

template <class F>
struct LlamaTrain {
  struct Layer {
    F *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down;
  };
  struct Ptrs {
    F* embed;  // (V, C)
    std::vector<Layer> layers;
    F* norm;     // (C,)
    F* lm_head;  // (V, C); == embed when tied
  };

  ModelConfig config;
  std::vector<HfTensorSpec> specs;  // names and shapes, in buffer order
  std::vector<int64_t> offsets;     // element offset of each spec in params/grads
  // Allocated as untouched zero pages: memory becomes resident only where written (fully
  // sharded training writes one unit at a time).
  ZeroPageVector<F> params, grads;
  Ptrs p, g;  // views into params and grads

  explicit LlamaTrain(const ModelConfig& c);
  LlamaTrain(const LlamaTrain&) = delete;  // sl_ points into its own slots_
  LlamaTrain& operator=(const LlamaTrain&) = delete;
  // Adapter fine-tuning (train/adapter.h): the model's own tensors are a frozen base, in
  // `base` (f32, the Hugging Face layout; fill() fills it) or, for a quantized base, its
  // linears in `qbase` (dequantized one block at a time for the products, never held in f32
  // whole; their ranges of `base` stay untouched zero pages). params/grads hold only what is
  // trained (adapter_specs: LoRA A/B, DoRA magnitudes, norms with train_norms); nothing of
  // the base has a gradient or optimizer state.
  LlamaTrain(const ModelConfig& c, const AdapterConfig& ad);
  bool has_adapters() const { return adapters_; }
  const AdapterConfig& adapter_config() const { return ad_; }
  std::vector<HfTensorSpec> base_specs;  // adapters: the frozen model's tensors, in `base` order
  std::vector<int64_t> base_offsets;
  ZeroPageVector<F> base;
  std::vector<std::array<Tensor, kBlockLinears>> qbase;  // per block (q, k, v, o, gate, up, down); empty: f32 base
  // A fresh adapter, deterministic in seed: A kaiming-uniform (PEFT's bound 1/sqrt(in)), B zero,
  // DoRA magnitude the row norms of the base as the model runs it (dequantized), trained
  // norms copied from the base. Call after the base is filled.
  void init_adapters(uint64_t seed);
  // Adapter dropout is on only while training (evaluation runs without it, as PyTorch's
  // eval mode); the mask of a micro-batch is a hash of dropout_key, set per micro-batch.
  void set_training(bool on) { training_ = on; }
  // The last forward's final normed hidden states (B*Tn, dim): the logits are this times
  // lm_head^T, so two models with equal final_hidden() give bitwise equal logits.
  const std::vector<F>& final_hidden() const { return sl_->lnf; }
  uint64_t dropout_key = 0;
  // Fills the parameters from a TensorFill (init_fill, or a loaded checkpoint's values).
  void fill(const TensorFill& fill);
  // Mean cross-entropy over targets >= 0 of tokens (B, Tn); targets (B, Tn), -1 = ignore.
  // Keeps activations for backward().
  double forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t Tn);
  // grads += d(mean loss)/d(params) of the last forward. `loss_scale` multiplies the
  // gradient (1/K for K accumulation micro-steps).
  void backward(double loss_scale = 1.0);
  void zero_grad();
  int64_t n_params() const { return (int64_t)params.size(); }
  // Per-block recomputation: forward keeps only each block's input; backward runs the
  // block's forward again into one shared set of buffers before reversing it. Saves the
  // per-layer activations for ~1/3 more
  // compute; gradients are bitwise identical. Set before the first forward.
  void set_recompute(bool on);
  bool recompute() const { return recompute_; }
  // The precision of every linear's products (forward and both backward products); weights,
  // activations, gradients and the optimizer stay f32 (train_ops.h, Precision).
  void set_precision(Precision prec) { precision_ = prec; }
  Precision precision() const { return precision_; }
  // Quantization-aware training (train/qat.h): every block linear's weight and input, and K
  // and V, through LLM-QAT's fake quantizers in forward, their straight-through gradients in
  // backward. All off (the default): the plain model, bit for bit.
  void set_fake_quant(const FakeQuant& f) { fq_ = f, B_ = T_ = 0; }
  const FakeQuant& fake_quant() const { return fq_; }
  // Distillation (LLM-QAT): the next forward's loss is kd_weight * KL(teacher || student) per
  // token + (1 - kd_weight) * the cross-entropy to the targets, the teacher's logits being
  // teacher_hidden (B*Tn, dim; its final_hidden() for the same tokens) times teacher_head
  // (V, dim), computed chunk by chunk beside the student's and never held whole. Both
  // pointers must stay valid through the backward. nullptr: plain cross-entropy.
  void set_distill(const F* teacher_hidden, const F* teacher_head, double kd_weight) {
    t_hidden_ = teacher_hidden, t_head_ = teacher_head, kd_weight_ = kd_weight;
  }
  // The last forward's two terms (per token; -1 when the term had no rows).
  double last_kl() const { return last_kl_; }
  double last_ce() const { return last_ce_; }
  // Forward to the final norm only (final_hidden()), no output head and no loss: a teacher's
  // forward. No backward follows it.
  void forward_hidden(const int32_t* tokens, int64_t B, int64_t Tn);
  // Bytes of saved activations and backward scratch for the planned (B, T).
  int64_t activation_bytes() const;
  // The output projection and cross-entropy run fused over chunks of rows: forward computes
  // each chunk's logits, its loss, and drops them; backward recomputes them chunk by chunk
  // and turns them into the chunk's dlogits, dx and dW. Only (rows, V) logits exist at a time,
  // never (B*T, V) (1 GB at T 2048 for a 128k vocabulary), for one more (rows, C) x (C, V)
  // product per chunk. 0 (default): as many rows as keep a chunk under 32 MB (at least 16).
  void set_head_chunk_rows(int64_t rows) { head_rows_ = rows, B_ = T_ = 0; }
  int64_t head_chunk_rows() const;

  // Pipeline stages (train/pipeline.h): this process runs blocks [l0, l1) only. The first
  // stage (l0 = 0) holds the embeddings, the last (l1 = n_layers) the final norm and the head
  // (and, with tied embeddings, the embedding matrix as its lm_head). The other units'
  // parameters and gradients are never written (they stay untouched zero pages). Default: all.
  void set_stage(int64_t l0, int64_t l1);
  int64_t stage_begin() const { return l0_; }
  int64_t stage_end() const { return l1_; }
  bool first_stage() const { return l0_ == 0; }
  bool last_stage() const { return l1_ < 0 || l1_ == config.n_layers; }
  bool has_unit(int u) const;  // whether this stage holds (and trains) unit u's parameters
  // Micro-batches in flight between their forward and backward (a pipeline schedule): slot s
  // keeps one forward's activations until that forward's backward. Default: one slot.
  void set_slots(int n);
  void use_slot(int s);
  int slots() const { return (int)slots_.size(); }
  // A stage's forward over B sequences of Tn tokens: from the token ids (first stage) or from
  // x (B*Tn, dim), the previous stage's output; returns the loss as forward() does on the last
  // stage (targets read there only) and 0 elsewhere, where stage_output() holds the result.
  double forward_stage(const int32_t* tokens, const F* x, const int32_t* targets, int64_t B, int64_t Tn);
  const F* stage_output() const;  // (B*Tn, dim): what block l1 would take (not on the last stage)
  // A stage's backward of the current slot's forward: dy (B*Tn, dim) is the gradient of
  // stage_output() (nullptr on the last stage, whose loss starts it). On a stage that is not
  // the first, stage_input_grad() is then the gradient of its input x.
  void backward_stage(const F* dy, double loss_scale = 1.0);
  const F* stage_input_grad() const { return dx_.data(); }

  // Parameter units, for fully sharded training: 0 the embeddings, 1..n_layers the blocks,
  // n_layers+1 the final norm and (untied) lm_head; each a contiguous range of params/grads.
  int n_units() const { return config.n_layers + 2; }
  std::pair<int64_t, int64_t> unit_range(int u) const;  // [begin, end) elements
  // Adapters: the unit's range of the frozen `base` ([0, 0) when it has none there).
  std::pair<int64_t, int64_t> base_unit_range(int u) const;
  // Called around each unit's use: gather(u) before its parameters are read (forward and
  // backward), done_forward(u) after its forward, done_backward(u) once its gradients of this
  // backward are complete. With tied embeddings unit 0 is used at both ends of the pass and
  // its gradients are complete only after the embedding backward. Empty: no calls.
  struct UnitHooks {
    std::function<void(int)> gather, done_forward, done_backward;
  };
  UnitHooks hooks;

 private:
  void plan(int64_t B, int64_t Tn);
  Ptrs views(F* at, const std::vector<HfTensorSpec>& specs, const std::vector<int64_t>& offsets);
  // The block's linears over the current parameters and gradients (gradient pointers are
  // those of `g`, so FSDP's hooks see them where they always were).
  // Saved activations, per layer l, N = B*Tn rows:
  struct Acts {
    std::vector<F> x_in, ln1, rstd1, q, k, v, lse, atty, x_mid, ln2, rstd2, gate, up, hsw;  // lse (B, H, T)
    std::vector<F> k_raw, v_raw;  // QAT with a KV quantizer: K (after RoPE) and V before it (N, KV*hd)
    std::array<AdapterSaved<F>, kBlockLinears> ad;  // each adapter's own
  };
  struct BlockLinears {
    Linear<F> q, k, v, o, gate, up, down;
    std::array<Adapter<F>, kBlockLinears> ad;  // pointed to by the linears (so not copyable)
    BlockLinears() = default;
    BlockLinears(const BlockLinears&) = delete;
  };
  void linears(int64_t l, Acts& a, BlockLinears& b);
  // The block's base weights (q, k, v, o, gate, up, down) as f32: the parameters' own, or a
  // quantized base's dequantized into one block's scratch.
  std::array<const F*, kBlockLinears> block_weights(int64_t l);
  struct AdPtrs {
    F *A = nullptr, *B = nullptr, *mag = nullptr;
  };
  std::vector<std::array<AdPtrs, kBlockLinears>> ap_, ag_;  // adapters' parameters, gradients
  bool adapters_ = false, training_ = true;
  AdapterConfig ad_;
  std::vector<F> wl_;     // quantized base: one block's dequantized weights
  int64_t wl_layer_ = -1;
  Linear<F> head_linear() const;
  // Packs (on) or drops the bf16 copies of lm_head for the chunks of one pass (see .cpp).
  void pack_head(bool on, bool backward = false);
  std::vector<uint16_t> head_pack_, head_pack_t_;
  bool recompute_ = false;
  Precision precision_ = Precision::F32;
  int64_t B_ = 0, T_ = 0;
  int64_t l0_ = 0, l1_ = -1;  // the stage's blocks (l1_ < 0: all)
  std::vector<int32_t> pos_;
  std::vector<F> cos_, sin_;  // (Tn, hd/2)
  // What one forward keeps for its backward (one slot per micro-batch in flight).
  struct Slot {
    std::vector<Acts> acts;  // per layer (the stage's, and the next stage's input); with recompute only x_in
    std::vector<F> x_out, lnf, rstdf;  // final residual (N, C), final norm (N, C), rstd (N)
    std::vector<F> head_lse;           // (N) each row's log-sum-exp of its logits, for backward
    std::vector<int32_t> tokens, targets;
    int64_t n_valid = 0;
    bool no_targets = false, hidden_only = false, pending = false;  // pending: a forward awaits its backward
  };
  std::vector<Slot> slots_ = std::vector<Slot>(1);
  Slot* sl_ = &slots_[0];
  Acts work_;                // with recompute: the one block being recomputed
  // One block's forward from its input x_in, saving into `a` (all but x_in), output to next.
  void block_forward(int64_t l, const F* x_in, Acts& a, F* next);
  std::vector<F> logits_;                // one chunk of rows: (head_chunk_rows, V)
  FakeQuant fq_;
  const F *t_hidden_ = nullptr, *t_head_ = nullptr;  // distillation's teacher (set_distill)
  double kd_weight_ = 1, last_kl_ = -1, last_ce_ = -1;
  bool distill_ = false;  // of the last forward
  std::vector<F> t_logits_, t_lse_;     // the teacher's chunk of logits (rows, V), every row's lse (N)
  std::vector<int32_t> no_targets_rows_;  // -1 per row of a chunk (the teacher's lse)
  // The output head over rows [r0, r0 + rows): the student's logits into logits_, and with
  // distillation the teacher's into t_logits_.
  void head_chunk(int64_t r0, int64_t rows);
  void run_blocks_forward(const int32_t* tokens, const F* x, int64_t N);
  void call_hook(const std::function<void(int)>& f, int u) const {
    if (f && has_unit(u)) f(u);
  }
  int64_t head_rows_ = 0;
  // Backward scratch.
  std::vector<F> dx_, dln_, dq_, dk_, dv_, datty_, dgate_, dup_, dhsw_, dtmp_;
};

extern template struct LlamaTrain<float>;
extern template struct LlamaTrain<double>;

}  // namespace llmq::train
