// Llama forward pass (Meta's model.py structure): embedding, then per layer
// x += wo·attn(rope(wq·n(x)), rope(wk·n(x)), wv·n(x)); x += w_down·(silu(w_gate·n(x)) * w_up·n(x)),
// then the final norm and the output projection, for the rows whose logits are wanted.
#include "model/llama.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "ops/ops.h"

namespace llmq {

KvType kv_type_parse(const std::string& name) {
  if (name == "f32") return KvType::F32;
  if (name == "bf16") return KvType::BF16;
  if (name == "int8") return KvType::I8;
  if (name == "fp8") return KvType::FP8;
  if (name == "int4") return KvType::I4;
  fail("--kv-cache {}: unknown KV-cache type (choose f32, bf16, int8, int4, fp8 or auto)", name);
}

KvType kv_type_for(const ModelConfig& c, const std::string& name) {
  if (name != "auto") return kv_type_parse(name);
  if (c.quant.kv_cache.empty()) return KvType::F32;
  return kv_type_parse(c.quant.kv_cache);
}

const char* kv_type_name(KvType t) {
  switch (t) {
    case KvType::F32: return "f32";
    case KvType::BF16: return "bf16";
    case KvType::I8: return "int8";
    case KvType::FP8: return "fp8";
    case KvType::I4: return "int4";
  }
  return "?";
}

KVCache KVCache::create_paged(const ModelConfig& c, int64_t n_blocks, int64_t block_size, KvType type) {
  if (block_size <= 0 || n_blocks <= 0) fail("paged KV cache: {} blocks of {} positions", n_blocks, block_size);
  if (type == KvType::I4 && c.head_dim % 2) fail("an int4 KV cache needs an even head_dim, not {}", c.head_dim);
  ModelConfig cc = c;
  cc.max_seq_len = std::max<int64_t>(c.max_seq_len, block_size);
  KVCache kv = create(cc, n_blocks, block_size, type);
  kv.block_size = block_size;
  return kv;
}

KVCache KVCache::create(const ModelConfig& c, int64_t n_seq, int64_t max_seq, KvType type) {
  if (max_seq > c.max_seq_len)
    fail("context {} exceeds the model's max_position_embeddings {}", max_seq, c.max_seq_len);
  KVCache kv;
  kv.n_seq = n_seq;
  kv.max_seq = max_seq;
  kv.type = type;
  const DType dt = type == KvType::F32    ? DType::F32
                   : type == KvType::BF16 ? DType::BF16
                   : type == KvType::I8   ? DType::I8
                   : type == KvType::I4   ? DType::Q4
                                          : DType::U8;
  // A QAT model's cache quantizes as it was trained (LLM-QAT's formula); a PTQ one by amax/qmax.
  kv.eps = c.quant.algorithm == "qat" && (type == KvType::I8 || type == KvType::I4) ? 1e-6f : 0.f;
  for (int64_t l = 0; l < c.n_layers; l++) {
    kv.k.push_back(Tensor::zeros(dt, {n_seq, c.n_kv_heads, max_seq, c.head_dim}));
    kv.v.push_back(Tensor::zeros(dt, {n_seq, c.n_kv_heads, max_seq, c.head_dim}));
    const bool scaled = type == KvType::I8 || type == KvType::FP8 || type == KvType::I4;
    kv.k_scale.push_back(scaled ? Tensor::zeros(DType::F32, {n_seq, c.n_kv_heads, max_seq}) : Tensor());
    kv.v_scale.push_back(scaled ? Tensor::zeros(DType::F32, {n_seq, c.n_kv_heads, max_seq}) : Tensor());
  }
  return kv;
}

size_t KVCache::bytes() const {
  size_t b = 0;
  for (size_t i = 0; i < k.size(); i++) b += k[i].nbytes() + v[i].nbytes();
  for (size_t i = 0; i < k_scale.size(); i++)
    if (k_scale[i].defined()) b += k_scale[i].nbytes() + v_scale[i].nbytes();
  return b;
}

const char* ForwardProfile::name(int kind) {
  static const char* names[kKinds] = {"rmsnorm", "q/k/v matmul", "rope", "kv store", "attention", "o matmul",
                                      "residual add", "gate/up matmul", "swiglu", "down matmul", "lm_head", "other"};
  return kind >= 0 && kind < kKinds ? names[kind] : "?";
}

namespace {
// Charges the time since the previous mark to a kind of op; free when not profiling.
struct ProfileClock {
  ForwardProfile* p;
  std::chrono::steady_clock::time_point last;
  explicit ProfileClock(ForwardProfile* prof) : p(prof) {
    if (p) last = std::chrono::steady_clock::now(), p->calls++;
  }
  void mark(ForwardProfile::Kind k) {
    if (!p) return;
    const auto now = std::chrono::steady_clock::now();
    p->secs[k] += std::chrono::duration<double>(now - last).count();
    last = now;
  }
};

void ensure_rows(Scratch& s, const ModelConfig& c, int64_t n) {
  if (s.rows >= n) return;
  auto f = [&](int64_t w) { return Tensor::empty(DType::F32, {n, w}); };
  s.x = f(c.dim);
  s.xb = f(c.dim);
  s.q = f(c.q_dim());
  s.k = f(c.kv_dim());
  s.v = f(c.kv_dim());
  s.att = f(c.q_dim());
  s.gate = f(c.ffn_dim);
  s.up = f(c.ffn_dim);
  s.cos = f(c.head_dim / 2);
  s.sin = f(c.head_dim / 2);
  s.rows = n;
}
}  // namespace

const Tensor& llama_forward(const Model& m, KVCache& cache, const Batch& b, Scratch& s) {
  const ModelConfig& c = m.config;
  const LlamaWeights& w = m.weights;
  const int64_t n = (int64_t)b.size();
  LLMQ_CHECK(b.seq.size() == b.tokens.size() && b.pos.size() == b.tokens.size());
  if ((cache.block_size > 0) != (b.pages.tables != nullptr))
    fail("forward: a paged KV cache needs the batch's block tables (and a slot cache none)");
  const KvPages* pages = cache.block_size > 0 ? &b.pages : nullptr;
  ProfileClock pc(s.profile);
  using P = ForwardProfile;
  ensure_rows(s, c, n);
  Tensor x = s.x.rows(0, n), xb = s.xb.rows(0, n), q = s.q.rows(0, n), k = s.k.rows(0, n), v = s.v.rows(0, n),
         att = s.att.rows(0, n), gate = s.gate.rows(0, n), up = s.up.rows(0, n), cs = s.cos.rows(0, n),
         sn = s.sin.rows(0, n);

  // Rotary angles per row, computed in float64 and rounded once.
  const int64_t half = c.head_dim / 2;
  for (int64_t i = 0; i < n; i++) {
    if (b.pos[i] < 0 || b.pos[i] >= c.max_seq_len)
      fail("position {} is outside the model's context of {} tokens", b.pos[i], c.max_seq_len);
    for (int64_t j = 0; j < half; j++) {
      double a = (double)b.pos[i] * m.rope_freqs[j];
      cs.host<float>()[i * half + j] = (float)std::cos(a);
      sn.host<float>()[i * half + j] = (float)std::sin(a);
    }
  }

  // An attached adapter's term on linear t of layer L: y += s (x A^T) B^T, then DoRA's y *= c,
  // for rows [r0, r1) (a run of rows with the same served adapter, or all of them).
  auto lora_rows = [&](const LoraLinear* a, Tensor& y, const Tensor& xin, int64_t r0, int64_t r1) {
    if (!a) return;
    const int64_t rows = r1 - r0, in = a->A.dim(1), r = a->A.dim(0), out = a->B.dim(0);
    std::vector<float> u((size_t)(rows * r));
    const float* xp = xin.host<float>() + r0 * in;
    float* yp = y.host<float>() + r0 * out;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)r, (int)in, 1.f, xp, (int)in,
                a->A.host<float>(), (int)in, 0.f, u.data(), (int)r);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, (int)out, (int)r, a->scale, u.data(), (int)r,
                a->B.host<float>(), (int)r, 1.f, yp, (int)out);
    if (!a->c.empty())
      for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < out; j++) yp[i * out + j] *= a->c[j];
  };
  if (!b.adapter.empty()) {
    LLMQ_CHECK((int64_t)b.adapter.size() == n);
    for (int32_t id : b.adapter)
      if (id < 0 || (id > 0 && (w.layers.empty() || id > (int32_t)w.layers[0].served.size())))
        fail("forward: adapter {} is not loaded", id);
  }
  auto lora = [&](const LlamaLayer& L, int t, Tensor& y, const Tensor& xin) {
    if (b.adapter.empty()) return lora_rows(L.lora[t].get(), y, xin, 0, xin.dim(0));
    for (int64_t r0 = 0; r0 < n;) {
      int64_t r1 = r0 + 1;
      while (r1 < n && b.adapter[(size_t)r1] == b.adapter[(size_t)r0]) r1++;
      if (b.adapter[(size_t)r0] > 0) lora_rows(L.served[(size_t)b.adapter[(size_t)r0] - 1][t].get(), y, xin, r0, r1);
      r0 = r1;
    }
  };

  op_embedding(x, w.embed, b.tokens);
  pc.mark(P::Other);
  const float eps = (float)c.norm_eps;
  for (int64_t l = 0; l < c.n_layers; l++) {
    const LlamaLayer& L = w.layers[l];
    // Attention is the only place where rows (positions) exchange information.
    op_rmsnorm(xb, x, L.attn_norm, eps);
    pc.mark(P::Norm);
    op_matmuls(xb, {{&q, &L.wq}, {&k, &L.wk}, {&v, &L.wv}});
    lora(L, 0, q, xb), lora(L, 1, k, xb), lora(L, 2, v, xb);
    pc.mark(P::QKV);
    op_rope(q, cs, sn, c.head_dim);
    op_rope(k, cs, sn, c.head_dim);
    pc.mark(P::Rope);
    op_kv_store(cache.k[l], cache.v[l], k, v, b.seq, b.pos, cache.k_scale[l], cache.v_scale[l],
                L.k_amax.empty() ? nullptr : L.k_amax.data(), L.v_amax.empty() ? nullptr : L.v_amax.data(), cache.eps,
                pages);
    pc.mark(P::KvStore);
    op_attention(att, q, cache.k[l], cache.v[l], b.seq, b.pos, c.n_heads, cache.k_scale[l], cache.v_scale[l], pages);
    pc.mark(P::Attention);
    op_matmul(xb, att, L.wo);
    lora(L, 3, xb, att);
    if (m.partial_sum) m.partial_sum(xb);
    pc.mark(P::Wo);
    op_add(x, xb);
    pc.mark(P::Add);
    // SwiGLU feed-forward.
    op_rmsnorm(xb, x, L.ffn_norm, eps);
    pc.mark(P::Norm);
    op_matmuls(xb, {{&gate, &L.w_gate}, {&up, &L.w_up}});
    lora(L, 4, gate, xb), lora(L, 5, up, xb);
    pc.mark(P::GateUp);
    op_swiglu(gate, gate, up);
    pc.mark(P::Swiglu);
    op_matmul(xb, gate, L.w_down);
    lora(L, 6, xb, gate);
    if (m.partial_sum) m.partial_sum(xb);
    pc.mark(P::Down);
    op_add(x, xb);
    pc.mark(P::Add);
  }

  const int64_t nl = (int64_t)b.logit_rows.size();
  for (auto r : b.logit_rows) LLMQ_CHECK(r >= 0 && r < n);
  if (nl == 0) {  // a prompt chunk that is not a prompt's end (serving): no head
    s.logits = Tensor();
    return s.logits;
  }
  if (s.logit_rows < nl) {
    s.last = Tensor::empty(DType::F32, {nl, c.dim});
    s.logits_buf = Tensor::empty(DType::F32, {nl, c.vocab_size});
    s.logit_rows = nl;
  }
  Tensor last = s.last.rows(0, nl);
  op_gather_rows(last, x, b.logit_rows);
  op_rmsnorm(last, last, w.norm, eps);
  s.logits = s.logits_buf.rows(0, nl);
  pc.mark(P::Other);
  op_matmul(s.logits, last, w.lm_head);
  pc.mark(P::Head);
  return s.logits;
}

}  // namespace llmq
