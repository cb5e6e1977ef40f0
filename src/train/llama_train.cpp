// Llama training forward/backward: the inference model's math (llama.cpp in src/model) with
// every intermediate kept, and its exact reverse.
#include "train/llama_train.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/error.h"
#include "core/rng.h"
#include "quant/quant.h"
#include "train/train_ops.h"

namespace llmq::train {

FlatLayout::FlatLayout(const ModelConfig& c) : specs(hf_tensor_specs(c)) {
  for (const auto& s : specs) offsets.push_back(n), n += shape_numel(s.shape);
}

template <class F>
LlamaTrain<F>::LlamaTrain(const ModelConfig& c) : config(c) {
  FlatLayout L(c);
  specs = std::move(L.specs), offsets = std::move(L.offsets);
  const int64_t n = L.n;
  params.resize(n);  // zeros, not yet resident (core/zero_pages.h)
  grads.resize(n);
  p = views(params.data(), specs, offsets);
  g = views(grads.data(), specs, offsets);
}

namespace {
// "base_model.model.model.layers.12.self_attn.q_proj.lora_A.weight" -> 12, the rest after "12."
bool parse_layer(const std::string& name, int& l, std::string& rest) {
  const size_t at = name.find("model.layers.");
  if (at == std::string::npos) return false;
  size_t i = at + 13, j = i;
  while (j < name.size() && std::isdigit((unsigned char)name[j])) j++;
  if (j == i || j >= name.size() || name[j] != '.') return false;
  l = std::stoi(name.substr(i, j - i));
  rest = name.substr(j + 1);
  return true;
}
}  // namespace

template <class F>
LlamaTrain<F>::LlamaTrain(const ModelConfig& c, const AdapterConfig& ad) : config(c), adapters_(true), ad_(ad) {
  ad.check();
  FlatLayout L(c);
  base_specs = std::move(L.specs), base_offsets = std::move(L.offsets);
  base.resize(L.n);  // untouched zero pages until filled (a quantized base's linears never are)
  p = views(base.data(), base_specs, base_offsets);
  g = Ptrs{};
  g.embed = g.norm = g.lm_head = nullptr;
  g.layers.assign(c.n_layers, Layer{});
  specs = adapter_specs(c, ad);
  int64_t n = 0;
  for (const auto& sp : specs) offsets.push_back(n), n += shape_numel(sp.shape);
  params.resize(n);
  grads.resize(n);
  ap_.assign(c.n_layers, {});
  ag_.assign(c.n_layers, {});
  const AdapterLayout lay = adapter_layout(c, ad);
  LLMQ_CHECK(lay.n == n);
  auto at = [](F* buf, int64_t off) { return off < 0 ? nullptr : buf + off; };
  F *P = params.data(), *G = grads.data();
  for (int l = 0; l < c.n_layers; l++) {
    if (ad.train_norms) {
      p.layers[l].attn_norm = at(P, lay.attn_norm[l]), g.layers[l].attn_norm = at(G, lay.attn_norm[l]);
      p.layers[l].ffn_norm = at(P, lay.ffn_norm[l]), g.layers[l].ffn_norm = at(G, lay.ffn_norm[l]);
    }
    for (int t = 0; t < kBlockLinears; t++) {
      const AdapterLayout::Linear& o = lay.lin[l][t];
      ap_[l][t] = {at(P, o.A), at(P, o.B), at(P, o.mag)};
      ag_[l][t] = {at(G, o.A), at(G, o.B), at(G, o.mag)};
    }
  }
  if (ad.train_norms) p.norm = at(P, lay.norm), g.norm = at(G, lay.norm);
}

template <class F>
typename LlamaTrain<F>::Ptrs LlamaTrain<F>::views(F* base_at, const std::vector<HfTensorSpec>& sp,
                                                  const std::vector<int64_t>& off) {
  Ptrs v;
  v.layers.resize(config.n_layers);
  v.lm_head = nullptr;
  for (size_t i = 0; i < sp.size(); i++) {
    const std::string& name = sp[i].name;
    F* at = base_at + off[i];
    if (name == "model.embed_tokens.weight") v.embed = at;
    else if (name == "model.norm.weight") v.norm = at;
    else if (name == "lm_head.weight") v.lm_head = at;
    else {
      int l = -1;
      char rest[128] = {};
      if (std::sscanf(name.c_str(), "model.layers.%d.%127s", &l, rest) != 2 || l < 0 || l >= config.n_layers)
        fail("training: unexpected tensor {}", name);
      Layer& L = v.layers[l];
      const std::string r = rest;
      if (r == "input_layernorm.weight") L.attn_norm = at;
      else if (r == "self_attn.q_proj.weight") L.wq = at;
      else if (r == "self_attn.k_proj.weight") L.wk = at;
      else if (r == "self_attn.v_proj.weight") L.wv = at;
      else if (r == "self_attn.o_proj.weight") L.wo = at;
      else if (r == "post_attention_layernorm.weight") L.ffn_norm = at;
      else if (r == "mlp.gate_proj.weight") L.w_gate = at;
      else if (r == "mlp.up_proj.weight") L.w_up = at;
      else if (r == "mlp.down_proj.weight") L.w_down = at;
      else fail("training: unexpected tensor {}", name);
    }
  }
  if (!v.lm_head) v.lm_head = v.embed;  // tied embeddings
  return v;
}

template <class F>
void LlamaTrain<F>::fill(const TensorFill& f) {
  std::vector<float> buf;
  const auto& sp = adapters_ ? base_specs : specs;
  const auto& off = adapters_ ? base_offsets : offsets;
  F* dst = adapters_ ? base.data() : params.data();
  for (size_t i = 0; i < sp.size(); i++) {
    if (!has_unit(unit_of_tensor(sp[i].name, config.n_layers))) continue;  // another pipeline stage's
    const int64_t n = shape_numel(sp[i].shape);
    buf.resize(n);
    f(sp[i], DType::F32, reinterpret_cast<uint8_t*>(buf.data()), 0, (uint64_t)n * 4);
    std::copy(buf.begin(), buf.end(), dst + off[i]);
  }
}

template <class F>
void LlamaTrain<F>::init_adapters(uint64_t seed) {
  LLMQ_CHECK(adapters_);
  const Ptrs b = views(base.data(), base_specs, base_offsets);  // the base's own norms
  // A sharded base (train/base_shard.h) gathers each unit it reads (a collective: every rank
  // initialises).
  auto use = [this](int u, bool on) {
    const auto& f = on ? hooks.gather : hooks.done_forward;
    if (f) f(u);
  };
  for (int64_t l = 0; l < config.n_layers; l++) {
    use((int)l + 1, true);
    if (ad_.train_norms) {
      std::copy(b.layers[l].attn_norm, b.layers[l].attn_norm + config.dim, p.layers[l].attn_norm);
      std::copy(b.layers[l].ffn_norm, b.layers[l].ffn_norm + config.dim, p.layers[l].ffn_norm);
    }
    const auto w = block_weights(l);
    for (int t = 0; t < kBlockLinears; t++) {
      const AdPtrs& a = ap_[l][t];
      if (!a.A) continue;
      const auto [in, out] = linear_shape(config, t);
      // PEFT: nn.init.kaiming_uniform_(A, a=sqrt(5)): bound = sqrt(6 / ((1 + 5) fan_in)) = 1/sqrt(in).
      const double bound = 1.0 / std::sqrt((double)in);
      const uint64_t stream = splitmix64(seed * 0x9e3779b97f4a7c15ull + (uint64_t)(l * kBlockLinears + t) + 1);
      for (int64_t i = 0; i < ad_.rank * in; i++) a.A[i] = F((2 * rng_uniform(stream, (uint64_t)i) - 1) * bound);
      std::fill(a.B, a.B + out * ad_.rank, F(0));
      if (a.mag) dora_row_norms(w[t], out, in, a.mag);
    }
    use((int)l + 1, false);
  }
  if (ad_.train_norms) {
    use(config.n_layers + 1, true);
    std::copy(b.norm, b.norm + config.dim, p.norm);
    use(config.n_layers + 1, false);
  }
}

template <class F>
std::array<const F*, kBlockLinears> LlamaTrain<F>::block_weights(int64_t l) {
  const Layer& L = p.layers[l];
  std::array<const F*, kBlockLinears> w = {L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down};
  if (qbase.empty()) return w;
  std::array<int64_t, kBlockLinears + 1> at{};
  for (int t = 0; t < kBlockLinears; t++) {
    const auto [in, out] = linear_shape(config, t);
    at[t + 1] = at[t] + in * out;
  }
  if (wl_layer_ != l) {
    wl_.resize((size_t)at[kBlockLinears]);
    for (int t = 0; t < kBlockLinears; t++) {
      const Tensor& W = qbase[l][t];
      if (!W.defined()) continue;  // a linear the base keeps in float
      // Plain variables, not a structured binding: clang 14 cannot use those in an OpenMP region.
      const std::pair<int64_t, int64_t> sh = linear_shape(config, t);
      const int64_t in = sh.first, out = sh.second;
      F* dst = wl_.data() + at[t];
      // Rows over the threads (each row's dequantization is independent).
#pragma omp parallel
      {
        const int nt = omp_get_num_threads(), th = omp_get_thread_num();
        const int64_t r0 = out * th / nt, r1 = out * (th + 1) / nt;
        if constexpr (std::is_same_v<F, float>) {
          if (r1 > r0) dequantize_tensor_rows(W, r0, r1, dst + r0 * in);
        } else {
          std::vector<float> tmp((size_t)((r1 - r0) * in));
          if (r1 > r0) dequantize_tensor_rows(W, r0, r1, tmp.data());
          std::copy(tmp.begin(), tmp.end(), dst + r0 * in);
        }
      }
    }
    wl_layer_ = l;
  }
  for (int t = 0; t < kBlockLinears; t++)
    if (qbase[l][t].defined()) w[t] = wl_.data() + at[t];
  return w;
}

int unit_of_tensor(const std::string& name, int n_layers) {
  // Specs are in HF order: embed, the blocks' tensors block by block, norm, lm_head.
  if (name == "model.embed_tokens.weight") return 0;
  int l = -1;
  std::string rest;
  if (parse_layer(name, l, rest)) return 1 + l;
  return n_layers + 1;
}

namespace {
std::pair<int64_t, int64_t> range_of_unit(const std::vector<HfTensorSpec>& specs, const std::vector<int64_t>& offsets,
                                          int n_layers, int u) {
  int64_t b = -1, e = -1;
  for (size_t i = 0; i < specs.size(); i++)
    if (unit_of_tensor(specs[i].name, n_layers) == u) {
      if (b < 0) b = offsets[i];
      e = offsets[i] + shape_numel(specs[i].shape);
    }
  if (b < 0) return {0, 0};  // adapters: a unit with nothing trained
  return {b, e};
}
}  // namespace

template <class F>
std::pair<int64_t, int64_t> LlamaTrain<F>::unit_range(int u) const {
  return range_of_unit(specs, offsets, config.n_layers, u);
}

template <class F>
std::pair<int64_t, int64_t> LlamaTrain<F>::base_unit_range(int u) const {
  return range_of_unit(base_specs, base_offsets, config.n_layers, u);
}

template <class F>
void LlamaTrain<F>::zero_grad() {
  if (l1_ < 0) return std::fill(grads.begin(), grads.end(), F(0));
  for (int u = 0; u < n_units(); u++)
    if (has_unit(u)) {
      const auto [b, e] = unit_range(u);
      std::fill(grads.begin() + b, grads.begin() + e, F(0));
    }
}

template <class F>
void LlamaTrain<F>::set_stage(int64_t l0, int64_t l1) {
  LLMQ_CHECK(0 <= l0 && l0 < l1 && l1 <= config.n_layers && !adapters_);
  l0_ = l0, l1_ = l1, B_ = T_ = 0;
}

template <class F>
bool LlamaTrain<F>::has_unit(int u) const {
  if (l1_ < 0) return true;
  const int L = config.n_layers;
  if (u == 0) return first_stage() || (last_stage() && p.lm_head == p.embed);
  if (u == L + 1) return last_stage();
  return u - 1 >= l0_ && u - 1 < l1_;
}

template <class F>
void LlamaTrain<F>::set_slots(int n) {
  LLMQ_CHECK(n >= 1);
  slots_.assign((size_t)n, Slot{});
  sl_ = &slots_[0];
  B_ = T_ = 0;
}

template <class F>
void LlamaTrain<F>::use_slot(int s) {
  LLMQ_CHECK(s >= 0 && s < (int)slots_.size());
  sl_ = &slots_[(size_t)s];
}

template <class F>
const F* LlamaTrain<F>::stage_output() const {
  LLMQ_CHECK(!last_stage() && B_ > 0);
  return sl_->acts[l1_].x_in.data();
}

template <class F>
void LlamaTrain<F>::plan(int64_t B, int64_t Tn) {
  if (B == B_ && Tn == T_) return;
  const ModelConfig& c = config;
  if (Tn > c.max_seq_len) fail("sequence length {} exceeds the model's context of {} tokens", Tn, c.max_seq_len);
  B_ = B, T_ = Tn;
  const int64_t N = B * Tn, C = c.dim, QD = c.q_dim(), KD = c.kv_dim(), FF = c.ffn_dim;
  auto size_block = [&](Acts& a) {
    a.ln1.resize(N * C), a.rstd1.resize(N), a.q.resize(N * QD), a.k.resize(N * KD), a.v.resize(N * KD),
        a.lse.resize(B * c.n_heads * Tn), a.atty.resize(N * QD), a.x_mid.resize(N * C), a.ln2.resize(N * C),
        a.rstd2.resize(N), a.gate.resize(N * FF), a.up.resize(N * FF), a.hsw.resize(N * FF);
    if (fq_.kv()) a.k_raw.resize(N * KD), a.v_raw.resize(N * KD);
  };
  // A stage sizes its own blocks, and the next stage's input (its output) when it is not last.
  const int64_t l0 = l0_, l1 = l1_ < 0 ? c.n_layers : l1_;
  work_ = Acts{};
  for (auto& S : slots_) {
    S.acts.assign(c.n_layers, Acts{});
    for (int64_t l = l0; l < l1; l++) {
      S.acts[l].x_in.resize(N * C);
      if (!recompute_) size_block(S.acts[l]);
    }
    if (l1 < c.n_layers) S.acts[l1].x_in.resize(N * C);
    S.pending = false;
    if (l1 == c.n_layers) S.x_out.resize(N * C), S.lnf.resize(N * C), S.rstdf.resize(N), S.head_lse.resize(N);
  }
  if (recompute_) size_block(work_);
  std::vector<F>().swap(t_logits_), std::vector<F>().swap(t_lse_);  // sized by a distilling forward
  if (l1 == c.n_layers) logits_.assign((size_t)(std::min(head_chunk_rows(), N) * c.vocab_size), F(0));
  else std::vector<F>().swap(logits_);
  dx_.resize(N * C), dln_.resize(N * C), dtmp_.resize(N * C), dq_.resize(N * QD), dk_.resize(N * KD),
      dv_.resize(N * KD), datty_.resize(N * QD), dgate_.resize(N * FF), dup_.resize(N * FF), dhsw_.resize(N * FF);
  pos_.resize(N);
  for (int64_t i = 0; i < N; i++) pos_[i] = (int32_t)(i % Tn);
  const auto freqs = rope_frequencies(c);
  const int64_t half = c.head_dim / 2;
  cos_.resize(Tn * half), sin_.resize(Tn * half);
  for (int64_t t = 0; t < Tn; t++)
    for (int64_t j = 0; j < half; j++) {
      cos_[t * half + j] = F(std::cos((double)t * freqs[j]));
      sin_[t * half + j] = F(std::sin((double)t * freqs[j]));
    }
}

template <class F>
void LlamaTrain<F>::linears(int64_t l, Acts& a, BlockLinears& b) {
  const Layer& G = g.layers[l];
  const auto w = block_weights(l);
  F* dW[kBlockLinears] = {G.wq, G.wk, G.wv, G.wo, G.w_gate, G.w_up, G.w_down};
  Linear<F>* lin[kBlockLinears] = {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down};
  for (int t = 0; t < kBlockLinears; t++) {
    const auto [in, out] = linear_shape(config, t);
    *lin[t] = Linear<F>{w[t], dW[t], in, out, precision_};
    if (fq_.weights() || fq_.acts()) lin[t]->fq = &fq_;
    if (!adapters_ || !ap_[l][t].A) continue;
    const AdPtrs &A = ap_[l][t], &GA = ag_[l][t];
    const uint64_t mask_seed = splitmix64(splitmix64(dropout_key + 1) + (uint64_t)(l * kBlockLinears + t));
    b.ad[t] = Adapter<F>{A.A, A.B, GA.A, GA.B, ad_.rank, ad_.scale(), A.mag, GA.mag, training_ ? ad_.dropout : 0.0,
                         mask_seed, &a.ad[t]};
    lin[t]->ad = &b.ad[t];
  }
}

template <class F>
Linear<F> LlamaTrain<F>::head_linear() const {
  Linear<F> L{p.lm_head, g.lm_head, config.dim, config.vocab_size, precision_};
  if (!head_pack_.empty()) L.packed = head_pack_.data();
  if (!head_pack_t_.empty()) L.packed_t = head_pack_t_.data();
  return L;
}

template <class F>
void LlamaTrain<F>::pack_head(bool on, bool backward) {
  std::vector<uint16_t>().swap(head_pack_);
  std::vector<uint16_t>().swap(head_pack_t_);
  if constexpr (std::is_same_v<F, float>) {
    // bf16: the output head's weight meets every chunk of rows; packed once per pass (the
    // forward product's layout, and in backward also dx's) instead of once per chunk: at a
    // 128k vocabulary that is 0.5 GB of f32 read per chunk. 2 bytes a weight per layout,
    // dropped after the pass; nothing when one chunk holds every row.
    if (on && precision_ == Precision::BF16 && std::min(head_chunk_rows(), B_ * T_) < B_ * T_) {
      pack_weight_bf16(p.lm_head, config.vocab_size, config.dim, false, head_pack_);
      if (backward) pack_weight_bf16(p.lm_head, config.vocab_size, config.dim, true, head_pack_t_);
    }
  }
}

template <class F>
void LlamaTrain<F>::block_forward(int64_t l, const F* x_in, Acts& a, F* next) {
  const ModelConfig& c = config;
  const int64_t N = B_ * T_, C = c.dim, H = c.n_heads, KV = c.n_kv_heads, hd = c.head_dim, FF = c.ffn_dim;
  const double eps = c.norm_eps;
  const Layer& L = p.layers[l];
  BlockLinears lin;
  linears(l, a, lin);
  rmsnorm_forward(a.ln1.data(), a.rstd1.data(), x_in, L.attn_norm, N, C, eps);
  linears_forward<F>({{a.q.data(), &lin.q}, {a.k.data(), &lin.k}, {a.v.data(), &lin.v}}, a.ln1.data(), N);
  rope_forward(a.q.data(), pos_.data(), cos_.data(), sin_.data(), N, H, hd);
  rope_forward(a.k.data(), pos_.data(), cos_.data(), sin_.data(), N, KV, hd);
  if (fq_.kv()) {  // K and V as the cache holds them: per token and KV head
    a.k_raw = a.k, a.v_raw = a.v;
    fq_sym_rows(a.k.data(), N * KV, hd, fq_.kv_bits, a.k.data());
    fq_sym_rows(a.v.data(), N * KV, hd, fq_.kv_bits, a.v.data());
  }
  attention_forward(a.atty.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(), B_, T_, H, KV, hd, precision_);
  linear_forward(a.x_mid.data(), a.atty.data(), lin.o, N);
  add_into(a.x_mid.data(), x_in, N * C);
  rmsnorm_forward(a.ln2.data(), a.rstd2.data(), a.x_mid.data(), L.ffn_norm, N, C, eps);
  linears_forward<F>({{a.gate.data(), &lin.gate}, {a.up.data(), &lin.up}}, a.ln2.data(), N);
  swiglu_forward(a.hsw.data(), a.gate.data(), a.up.data(), N * FF);
  linear_forward(next, a.hsw.data(), lin.down, N);
  add_into(next, a.x_mid.data(), N * C);
}

template <class F>
int64_t LlamaTrain<F>::head_chunk_rows() const {
  if (head_rows_ > 0) return head_rows_;
  return std::max<int64_t>(16, ((int64_t)32 << 20) / ((int64_t)sizeof(F) * config.vocab_size));
}

template <class F>
void LlamaTrain<F>::set_recompute(bool on) {
  if (on != recompute_) recompute_ = on, B_ = T_ = 0;  // re-plan at the next forward
}

template <class F>
int64_t LlamaTrain<F>::activation_bytes() const {
  int64_t n = 0;
  auto add = [&](const std::vector<F>& v) { n += (int64_t)v.size(); };
  auto add_acts = [&](const Acts& a) {
    for (auto* v : {&a.x_in, &a.ln1, &a.rstd1, &a.q, &a.k, &a.v, &a.lse, &a.atty, &a.x_mid, &a.ln2, &a.rstd2, &a.gate,
                    &a.up, &a.hsw, &a.k_raw, &a.v_raw})
      add(*v);
  };
  for (const auto& S : slots_) {
    for (const auto& a : S.acts) add_acts(a);
    for (auto* v : {&S.x_out, &S.lnf, &S.rstdf, &S.head_lse}) add(*v);
  }
  add_acts(work_);
  for (auto* v : {&logits_, &t_logits_, &t_lse_, &dx_, &dln_, &dq_, &dk_, &dv_, &datty_, &dgate_, &dup_, &dhsw_, &dtmp_})
    add(*v);
  return n * (int64_t)sizeof(F);
}

template <class F>
void LlamaTrain<F>::run_blocks_forward(const int32_t* tokens, const F* x, int64_t N) {
  const ModelConfig& c = config;
  const int64_t C = c.dim, V = c.vocab_size;
  const int64_t l0 = l0_, l1 = l1_ < 0 ? c.n_layers : l1_;
  const bool tied = p.lm_head == p.embed;
  Slot& S = *sl_;
  if (l0 == 0) {
    for (int64_t i = 0; i < N; i++)
      if (tokens[i] < 0 || tokens[i] >= V) fail("training: token id {} is outside the vocabulary ({})", tokens[i], V);
    S.tokens.assign(tokens, tokens + N);
    call_hook(hooks.gather, 0);
    embedding_forward(S.acts[0].x_in.data(), tokens, p.embed, N, C);
    if (!tied) call_hook(hooks.done_forward, 0);
  } else {
    std::copy(x, x + N * C, S.acts[l0].x_in.data());
  }
  for (int64_t l = l0; l < l1; l++) {
    F* next = l + 1 < c.n_layers ? S.acts[l + 1].x_in.data() : S.x_out.data();
    call_hook(hooks.gather, (int)l + 1);
    block_forward(l, S.acts[l].x_in.data(), recompute_ ? work_ : S.acts[l], next);
    call_hook(hooks.done_forward, (int)l + 1);
  }
  if (l1 < c.n_layers) return;
  call_hook(hooks.gather, c.n_layers + 1);
  rmsnorm_forward(S.lnf.data(), S.rstdf.data(), S.x_out.data(), p.norm, N, C, c.norm_eps);
}

template <class F>
void LlamaTrain<F>::forward_hidden(const int32_t* tokens, int64_t B, int64_t Tn) {
  LLMQ_CHECK(l1_ < 0);
  plan(B, Tn);
  run_blocks_forward(tokens, nullptr, B * Tn);
  call_hook(hooks.done_forward, config.n_layers + 1);
  if (p.lm_head == p.embed) call_hook(hooks.done_forward, 0);
  sl_->hidden_only = true, sl_->n_valid = 0, sl_->no_targets = false, sl_->pending = false;
}

template <class F>
void LlamaTrain<F>::head_chunk(int64_t r0, int64_t rows) {
  const int64_t C = config.dim;
  linear_forward(logits_.data(), sl_->lnf.data() + r0 * C, head_linear(), rows);
  if (distill_) {
    const Linear<F> T{t_head_, nullptr, C, config.vocab_size, precision_};
    linear_forward(t_logits_.data(), t_hidden_ + r0 * C, T, rows);
  }
}

template <class F>
double LlamaTrain<F>::forward(const int32_t* tokens, const int32_t* targets, int64_t B, int64_t Tn) {
  LLMQ_CHECK(l1_ < 0);
  return forward_stage(tokens, nullptr, targets, B, Tn);
}

template <class F>
double LlamaTrain<F>::forward_stage(const int32_t* tokens, const F* x, const int32_t* targets, int64_t B, int64_t Tn) {
  plan(B, Tn);
  LLMQ_CHECK(first_stage() ? tokens != nullptr : x != nullptr);
  if (!last_stage()) {  // a stage before the last: its output goes on; nothing of the head
    run_blocks_forward(tokens, x, B * Tn);
    sl_->hidden_only = false, sl_->no_targets = false, sl_->n_valid = 0, sl_->pending = true;
    return 0.0;
  }
  const ModelConfig& c = config;
  const int64_t N = B * Tn, V = c.vocab_size;
  for (int64_t i = 0; i < N; i++)
    if (targets[i] < -1 || targets[i] >= V) fail("training: target id {} is outside the vocabulary ({})", targets[i], V);
  sl_->targets.assign(targets, targets + N);
  sl_->hidden_only = false;
  distill_ = t_hidden_ && t_head_;
  const double w_kd = distill_ ? kd_weight_ : 0, w_ce = 1 - w_kd;
  run_blocks_forward(tokens, x, N);
  sl_->pending = true;
  const bool tied = p.lm_head == p.embed;
  const int head = c.n_layers + 1;
  // Output projection and cross-entropy (and the teacher's logits and the KL), fused over
  // chunks of rows (set_head_chunk_rows).
  const int64_t R = std::min(head_chunk_rows(), N);
  if (distill_) {
    t_logits_.resize((size_t)(R * V)), t_lse_.resize((size_t)N);
    no_targets_rows_.assign((size_t)R, -1);
  }
  double sum = 0, kl = 0;
  sl_->n_valid = 0;
  pack_head(true, false);
  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t rows = std::min(R, N - r0);
    int64_t nv = 0, none = 0;
    head_chunk(r0, rows);
    sum += cross_entropy_forward(logits_.data(), targets + r0, rows, V, sl_->head_lse.data() + r0, &nv);
    sl_->n_valid += nv;
    if (distill_) {
      cross_entropy_forward(t_logits_.data(), no_targets_rows_.data(), rows, V, t_lse_.data() + r0, &none);
      kl += kd_forward(logits_.data(), sl_->head_lse.data() + r0, t_logits_.data(), t_lse_.data() + r0, rows, V);
    }
  }
  pack_head(false);
  call_hook(hooks.done_forward, head);
  if (tied) call_hook(hooks.done_forward, 0);
  last_ce_ = sl_->n_valid > 0 ? sum / (double)sl_->n_valid : -1;
  last_kl_ = distill_ ? kl / (double)N : -1;
  // A batch with no targets (chat data: windows inside prompts) has loss 0 and no gradient,
  // unless it is distilled (the teacher's distribution is a target at every row).
  sl_->no_targets = sl_->n_valid == 0 && w_kd == 0;
  if (sl_->no_targets) return 0.0;
  return w_kd * (distill_ ? last_kl_ : 0) + (sl_->n_valid > 0 ? w_ce * last_ce_ : 0);
}

template <class F>
void LlamaTrain<F>::backward(double loss_scale) {
  LLMQ_CHECK(l1_ < 0);
  backward_stage(nullptr, loss_scale);
}

template <class F>
void LlamaTrain<F>::backward_stage(const F* dy, double loss_scale) {
  LLMQ_CHECK(B_ > 0 && sl_->pending && !sl_->hidden_only && (!last_stage() || sl_->n_valid > 0 || sl_->no_targets || distill_));
  LLMQ_CHECK(last_stage() == (dy == nullptr));
  sl_->pending = false;
  if (sl_->no_targets) {
    // Nothing to learn from; the units' hooks still run, in the order of a real backward
    // (FSDP and a sharded base make collective calls in them that other ranks, whose windows
    // have targets, make too; DDP overlap starts its reductions there).
    const int head = config.n_layers + 1;
    call_hook(hooks.gather, head);
    if (p.lm_head == p.embed) call_hook(hooks.gather, 0);
    call_hook(hooks.done_backward, head);
    for (int u = config.n_layers; u >= 1; u--) call_hook(hooks.gather, u), call_hook(hooks.done_backward, u);
    call_hook(hooks.done_backward, 0);
    sl_->no_targets = false;
    return;
  }
  const ModelConfig& c = config;
  const int64_t B = B_, Tn = T_, N = B * Tn, C = c.dim, H = c.n_heads, KV = c.n_kv_heads, hd = c.head_dim,
                FF = c.ffn_dim, V = c.vocab_size;
  auto add = [](std::vector<F>& y, const std::vector<F>& x) { add_into(y.data(), x.data(), (int64_t)y.size()); };
  const bool tied = p.lm_head == p.embed;
  const int head = c.n_layers + 1;
  const int64_t l0 = l0_, l1 = l1_ < 0 ? c.n_layers : l1_;
  if (l1 < c.n_layers) {
    std::copy(dy, dy + N * C, dx_.data());  // the next stage's gradient of this stage's output
  } else {
    call_hook(hooks.gather, head);
    if (tied) call_hook(hooks.gather, 0);
    // Each chunk's logits again (the same products as forward, so the same probabilities),
    // turned into dlogits in place, then its rows of dln and its share of dW.
    const int64_t R = std::min(head_chunk_rows(), N);
    pack_head(true, true);
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t rows = std::min(R, N - r0);
      head_chunk(r0, rows);
      if (distill_)
        kd_backward(logits_.data(), sl_->head_lse.data() + r0, t_logits_.data(), t_lse_.data() + r0, sl_->targets.data() + r0,
                    rows, V, kd_weight_, (double)N, 1 - kd_weight_, (double)sl_->n_valid, loss_scale);
      else
        cross_entropy_backward(logits_.data(), sl_->head_lse.data() + r0, sl_->targets.data() + r0, rows, V,
                               loss_scale / (double)sl_->n_valid);
      linear_backward(dln_.data() + r0 * C, logits_.data(), sl_->lnf.data() + r0 * C, head_linear(), rows);
    }
    pack_head(false);
    rmsnorm_backward(dx_.data(), g.norm, dln_.data(), sl_->x_out.data(), p.norm, sl_->rstdf.data(), N, C);
    call_hook(hooks.done_backward, head);
  }
  for (int64_t l = l1 - 1; l >= l0; l--) {
    call_hook(hooks.gather, (int)l + 1);
    const F* x_in = sl_->acts[l].x_in.data();
    if (recompute_) block_forward(l, x_in, work_, dtmp_.data());  // dtmp_ is free here
    Acts& a = recompute_ ? work_ : sl_->acts[l];
    const Layer& L = p.layers[l];
    const Layer& G = g.layers[l];
    BlockLinears lin;
    linears(l, a, lin);
    // x_next = x_mid + w_down(swiglu(w_gate ln2, w_up ln2)): dx flows to x_mid unchanged.
    linear_backward(dhsw_.data(), dx_.data(), a.hsw.data(), lin.down, N);
    swiglu_backward(dgate_.data(), dup_.data(), dhsw_.data(), a.gate.data(), a.up.data(), N * FF);
    linears_backward<F>(dln_.data(), {{dgate_.data(), &lin.gate}, {dup_.data(), &lin.up}}, a.ln2.data(), N);
    rmsnorm_backward(dtmp_.data(), G.ffn_norm, dln_.data(), a.x_mid.data(), L.ffn_norm, a.rstd2.data(), N, C);
    add(dx_, dtmp_);
    // x_mid = x_in + wo(attention(rope(wq ln1), rope(wk ln1), wv ln1))
    linear_backward(datty_.data(), dx_.data(), a.atty.data(), lin.o, N);
    attention_backward(dq_.data(), dk_.data(), dv_.data(), datty_.data(), a.atty.data(), a.lse.data(), a.q.data(),
                       a.k.data(), a.v.data(), B, Tn, H, KV, hd, precision_);
    if (fq_.kv()) {
      fq_ste_clip(dk_.data(), a.k_raw.data(), N * KV * hd);
      fq_ste_clip(dv_.data(), a.v_raw.data(), N * KV * hd);
    }
    rope_backward(dq_.data(), pos_.data(), cos_.data(), sin_.data(), N, H, hd);
    rope_backward(dk_.data(), pos_.data(), cos_.data(), sin_.data(), N, KV, hd);
    linears_backward<F>(dln_.data(), {{dq_.data(), &lin.q}, {dk_.data(), &lin.k}, {dv_.data(), &lin.v}}, a.ln1.data(), N);
    rmsnorm_backward(dtmp_.data(), G.attn_norm, dln_.data(), x_in, L.attn_norm, a.rstd1.data(), N, C);
    add(dx_, dtmp_);
    call_hook(hooks.done_backward, (int)l + 1);
  }
  if (l0 == 0) {
    embedding_backward(g.embed, dx_.data(), sl_->tokens.data(), N, C);
    call_hook(hooks.done_backward, 0);
  }
  sl_->n_valid = 0;  // one backward per forward
  distill_ = false;
}

template struct LlamaTrain<float>;
template struct LlamaTrain<double>;

}  // namespace llmq::train
