// The calibrated methods' block pipeline: see calibrated.h.
#include "quant/calibrated.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/error.h"
#include "core/file_util.h"
#include "ops/ops.h"
#include "quant/awq.h"
#include "quant/gptq.h"
#include "quant/quant.h"

namespace llmq {

std::vector<float> linear_codes_dequantize(const LinearCodes& q, int64_t M, int64_t K, int64_t group) {
  const int64_t G = group ? group : K, ng = K / G;
  std::vector<float> w((size_t)(M * K));
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) {
      const int64_t g = q.g_idx.empty() ? k / G : q.g_idx[k];
      w[m * K + k] = q.scale[m * ng + g] * ((float)q.codes[m * K + k] - q.zero[m * ng + g]);
    }
  return w;
}

namespace {

const float* F(const Tensor& t) { return t.host<float>(); }

// Per-channel statistics of rows of x (n, K): sum |x| and max |x|; finite is cleared on NaN/Inf.
struct ChannelStats {
  std::vector<double> abs_sum;
  std::vector<float> amax;
  int64_t n = 0;
  bool finite = true;
  explicit ChannelStats(int64_t K = 0) : abs_sum((size_t)K, 0.0), amax((size_t)K, 0.f) {}
  void add(const Tensor& x) {
    const int64_t rows = x.dim(0), K = x.dim(1);
    const float* p = F(x);
    for (int64_t r = 0; r < rows; r++)
      for (int64_t k = 0; k < K; k++) {
        const float a = std::fabs(p[r * K + k]);
        finite = finite && std::isfinite(a);
        abs_sum[k] += a;
        amax[k] = std::max(amax[k], a);
      }
    n += rows;
  }
  std::vector<float> mean() const {
    std::vector<float> m(abs_sum.size());
    for (size_t k = 0; k < m.size(); k++) m[k] = (float)(abs_sum[k] / (double)std::max<int64_t>(n, 1));
    return m;
  }
};

// Rows of x (n, K) at stride max(1, n / 512): the tokens AWQ's clipping search looks at.
struct SampledRows {
  explicit SampledRows(int64_t s) : step(s) {}
  int64_t step = 1, K = 0;
  std::vector<float> rows;
  void take(int64_t r0, const Tensor& x) {  // x: rows r0.. of the full activations
    K = x.dim(1);
    for (int64_t r = 0; r < x.dim(0); r++)
      if ((r0 + r) % step == 0) rows.insert(rows.end(), F(x) + r * K, F(x) + (r + 1) * K);
  }
  int64_t n() const { return K ? (int64_t)rows.size() / K : 0; }
  void divide(const std::vector<float>& s) {
    for (size_t i = 0; i < rows.size(); i++) rows[i] /= s[i % K];
  }
};

void scale_columns(Tensor& W, const std::vector<float>& s) {  // W (M, K) *= s (K)
  const int64_t M = W.dim(0), K = W.dim(1);
  float* w = W.host<float>();
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) w[m * K + k] *= s[k];
}
void divide_rows(Tensor& W, const std::vector<float>& s) {  // W (M, K) row m /= s[m]; also norms (M)
  const int64_t M = W.dim(0), K = W.ndim() == 2 ? W.dim(1) : 1;
  float* w = W.host<float>();
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k++) w[m * K + k] /= s[m];
}

double mse_acc(const Tensor& a, const float* b) {
  double e = 0;
  const float* p = F(a);
  for (int64_t i = 0; i < a.numel(); i++) {
    const double d = (double)p[i] - (double)b[i];
    e += d * d;
  }
  return e;
}

void set_f32(Tensor& W, const std::vector<float>& v) { std::copy(v.begin(), v.end(), W.host<float>()); }

}  // namespace

CalibratedQuantizer::CalibratedQuantizer(const Model& src, const CalibData& data, const CalibratedOptions& o)
    : m_(src), o_(o) {
  const ModelConfig& c = src.config;
  if (data.seqs.empty()) fail("calibration: no calibration windows");
  S_ = (int64_t)data.seqs.size();
  L_ = (int64_t)data.seqs[0].size();
  N_ = S_ * L_;
  if (L_ > c.max_seq_len)
    fail("calibration windows of {} tokens are longer than the model's context of {} (give --calib-seq-len {} or less)",
         L_, c.max_seq_len, c.max_seq_len);
  if (o.method != "gptq" && o.method != "awq" && o.method != "smoothquant" && o.method != "amax")
    fail("calibrated quantization: unknown method '{}'", o.method);
  chunk_seqs_ = std::max<int64_t>(1, 4096 / L_);
  std::vector<int32_t> toks;
  toks.reserve((size_t)N_);
  for (const auto& s : data.seqs) toks.insert(toks.end(), s.begin(), s.end());
  X_ = Tensor::empty(DType::F32, {N_, c.dim});
  XB_ = Tensor::empty(DType::F32, {N_, c.dim});
  op_embedding(X_, src.weights.embed, toks);
  const int64_t rows = std::min(S_, chunk_seqs_) * L_, half = c.head_dim / 2;
  cos_ = Tensor::empty(DType::F32, {rows, half});
  sin_ = Tensor::empty(DType::F32, {rows, half});
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < half; j++) {
      const double a = (double)(i % L_) * src.rope_freqs[j];
      cos_.host<float>()[i * half + j] = (float)std::cos(a);
      sin_.host<float>()[i * half + j] = (float)std::sin(a);
    }
}

void CalibratedQuantizer::attn_pass(const BlockW& w, const Tensor& xb, const ChunkFn& f, CalibratedBlock* kv_out) {
  const ModelConfig& c = m_.config;
  const int64_t rows = std::min(S_, chunk_seqs_) * L_;
  if (!sc_.q.defined()) {  // scratch for one chunk, reused by every pass
    sc_.q = Tensor::empty(DType::F32, {rows, c.q_dim()});
    sc_.att = Tensor::empty(DType::F32, {rows, c.q_dim()});
    sc_.k = Tensor::empty(DType::F32, {rows, c.kv_dim()});
    sc_.v = Tensor::empty(DType::F32, {rows, c.kv_dim()});
    sc_.kc = Tensor::empty(DType::F32, {std::min(S_, chunk_seqs_), c.n_kv_heads, L_, c.head_dim});
    sc_.vc = Tensor::empty(DType::F32, {std::min(S_, chunk_seqs_), c.n_kv_heads, L_, c.head_dim});
  }
  for (int64_t s0 = 0; s0 < S_; s0 += chunk_seqs_) {
    const int64_t r0 = s0 * L_, n = (std::min(S_, s0 + chunk_seqs_) - s0) * L_;
    Tensor q = sc_.q.rows(0, n), k = sc_.k.rows(0, n), v = sc_.v.rows(0, n), att = sc_.att.rows(0, n), none;
    const Tensor x = xb.rows(r0, r0 + n), cs = cos_.rows(0, n), sn = sin_.rows(0, n);
    op_matmuls(x, {{&q, &w.q}, {&k, &w.k}, {&v, &w.v}});
    op_rope(q, cs, sn, c.head_dim);
    op_rope(k, cs, sn, c.head_dim);
    std::vector<int32_t> seq((size_t)n), pos((size_t)n);
    for (int64_t i = 0; i < n; i++) seq[i] = (int32_t)(i / L_), pos[i] = (int32_t)(i % L_);
    if (kv_out) {
      kv_out->k_amax.resize((size_t)c.n_kv_heads, 0.f);
      kv_out->v_amax.resize((size_t)c.n_kv_heads, 0.f);
      for (int64_t i = 0; i < n * c.kv_dim(); i++) {
        const size_t h = (size_t)((i % c.kv_dim()) / c.head_dim);
        kv_out->k_amax[h] = std::max(kv_out->k_amax[h], std::fabs(F(k)[i]));
        kv_out->v_amax[h] = std::max(kv_out->v_amax[h], std::fabs(F(v)[i]));
      }
    }
    op_kv_store(sc_.kc, sc_.vc, k, v, seq, pos, none, none);
    op_attention(att, q, sc_.kc, sc_.vc, seq, pos, c.n_heads, none, none);
    f(r0, r0 + n, att);
  }
}

void CalibratedQuantizer::mlp_pass(const BlockW& w, const Tensor& xb, const ChunkFn& f) {
  const ModelConfig& c = m_.config;
  if (!sc_.g.defined()) {
    const int64_t rows = std::min(S_, chunk_seqs_) * L_;
    sc_.g = Tensor::empty(DType::F32, {rows, c.ffn_dim});
    sc_.u = Tensor::empty(DType::F32, {rows, c.ffn_dim});
  }
  for (int64_t s0 = 0; s0 < S_; s0 += chunk_seqs_) {
    const int64_t r0 = s0 * L_, n = (std::min(S_, s0 + chunk_seqs_) - s0) * L_;
    Tensor g = sc_.g.rows(0, n), u = sc_.u.rows(0, n);
    op_matmuls(xb.rows(r0, r0 + n), {{&g, &w.g}, {&u, &w.u}});
    op_swiglu(g, g, u);
    f(r0, r0 + n, g);
  }
}

void CalibratedQuantizer::row_chunks(const Tensor& all, const ChunkFn& f) const {
  for (int64_t r0 = 0; r0 < N_; r0 += chunk_seqs_ * L_) {
    const int64_t r1 = std::min(N_, r0 + chunk_seqs_ * L_);
    f(r0, r1, all.rows(r0, r1));
  }
}

void CalibratedQuantizer::out_pass(const Tensor& in, const Tensor& W, int64_t r0, int64_t r1, Tensor& out) {
  if (!sc_.out.defined()) sc_.out = Tensor::empty(DType::F32, {std::min(S_, chunk_seqs_) * L_, m_.config.dim});
  out = sc_.out.rows(0, r1 - r0);
  op_matmul(out, in, W);
}

void CalibratedQuantizer::emit_scaled_rtn(int64_t l, const BlockW& w, CalibratedBlock& out) const {
  const std::string p = block_prefix(l);
  const int64_t dim = m_.config.dim;
  out.floats[p + "input_layernorm.weight"].assign(F(w.an), F(w.an) + dim);
  out.floats[p + "post_attention_layernorm.weight"].assign(F(w.fn), F(w.fn) + dim);
  const std::pair<const char*, const Tensor*> lin[] = {{"self_attn.q_proj", &w.q}, {"self_attn.k_proj", &w.k},
                                                       {"self_attn.v_proj", &w.v}, {"self_attn.o_proj", &w.o},
                                                       {"mlp.gate_proj", &w.g},    {"mlp.up_proj", &w.u},
                                                       {"mlp.down_proj", &w.d}};
  for (const auto& [name, W] : lin) {
    const std::string full = p + name + ".weight";
    const CalibratedOptions::Linear q = linear_of(full);
    if (q.method.empty()) out.floats[full].assign(F(*W), F(*W) + W->numel());  // left in float, folded
    else if (q.method == o_.method) out.linears[full] = rtn(*W, q);
    else out.linears[full] = o_.other(full, *W).first;
  }
}

CalibratedOptions::Linear CalibratedQuantizer::linear_of(const std::string& name) const {
  if (o_.linear) return o_.linear(name);
  return {o_.method, o_.bits, o_.group, o_.sym};
}

GptqOptions CalibratedQuantizer::gptq_options() const {
  GptqOptions go;
  go.bits = o_.bits, go.group = o_.group, go.sym = o_.sym, go.damp = o_.damp, go.act_order = o_.act_order,
  go.static_groups = o_.static_groups;
  return go;
}

LinearCodes CalibratedQuantizer::rtn(const Tensor& W, const CalibratedOptions::Linear& lq) const {
  const int64_t M = W.dim(0), K = W.dim(1), G = lq.group ? lq.group : K, ng = K / G;
  LinearCodes q;
  q.codes.resize((size_t)(M * K));
  q.scale.resize((size_t)(M * ng));
  q.zero.resize((size_t)(M * ng));
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t m = 0; m < M; m++)
    quantize_rows_rtn(F(W) + m * K, 1, K, lq.bits, G, lq.sym, q.codes.data() + m * K, q.scale.data() + m * ng,
                      q.zero.data() + m * ng);
  return q;
}

CalibratedBlock CalibratedQuantizer::run_block(int64_t l) {
  LLMQ_CHECK(l == next_ && l < m_.config.n_layers);
  next_++;
  const LlamaLayer& L = m_.weights.layers[l];
  BlockW w{to_f32(L.attn_norm), to_f32(L.ffn_norm), to_f32(L.wq), to_f32(L.wk), to_f32(L.wv),
           to_f32(L.wo),        to_f32(L.w_gate),   to_f32(L.w_up), to_f32(L.w_down)};
  for (const Tensor* t : L.linears())
    release_pages(t->host_data(), t->nbytes());
  CalibratedBlock out;
  if (o_.method == "gptq") gptq_block(l, w, out);
  else if (o_.method == "awq") awq_block(l, w, out);
  else if (o_.method == "smoothquant") smoothquant_block(l, w, out);
  else amax_block(l, w, out);
  double ss = 0;
  bool finite = true;
  for (int64_t i = 0; i < X_.numel(); i++) {
    const double v = F(X_)[i];
    finite = finite && std::isfinite(v);
    ss += v * v;
  }
  if (!finite)
    fail("calibration activations became NaN or Inf in block {} (the model's weights overflow f32 on this data); "
         "check the source model", l);
  out.output_rms = std::sqrt(ss / (double)X_.numel());
  return out;
}

void CalibratedQuantizer::gptq_block(int64_t l, BlockW& w, CalibratedBlock& out) {
  const ModelConfig& c = m_.config;
  const float eps = (float)c.norm_eps;
  const std::string p = block_prefix(l);
  auto quantize = [&](const std::string& name, Tensor& W, const GptqHessian& H) {
    const int64_t M = W.dim(0), K = W.dim(1);
    const std::string full = p + name + ".weight";
    const CalibratedOptions::Linear lq = linear_of(full);
    if (lq.method.empty()) return;  // left in float: the float weights feed forward
    if (lq.method != "gptq") {      // another method's codes; what they stand for feeds forward
      auto [q, deq] = o_.other(full, W);
      set_f32(W, deq);
      out.linears[full] = std::move(q);
      return;
    }
    GptqOptions go = gptq_options();
    go.bits = lq.bits, go.group = lq.group, go.sym = lq.sym;
    GptqResult r = gptq_quantize(F(W), M, K, H, go);
    if (!r.message.empty()) out.messages.push_back(full + ": " + r.message);
    LinearCodes q{std::move(r.codes), std::move(r.scale), std::move(r.zero), std::move(r.g_idx)};
    set_f32(W, linear_codes_dequantize(q, M, K, lq.group));
    out.linears[full] = std::move(q);
  };
  op_rmsnorm(XB_, X_, w.an, eps);
  {
    GptqHessian H(c.dim);
    H.add(F(XB_), N_);
    quantize("self_attn.q_proj", w.q, H);
    quantize("self_attn.k_proj", w.k, H);
    quantize("self_attn.v_proj", w.v, H);
  }
  // The attention output (o's input), computed once with the quantized q/k/v: o's Hessian,
  // then, with o quantized, the residual (N x q_dim f32, freed before the MLP's larger Hessian).
  Tensor att_all = Tensor::empty(DType::F32, {N_, c.q_dim()});
  {
    GptqHessian H(c.q_dim());
    attn_pass(w, XB_, [&](int64_t r0, int64_t, const Tensor& att) {
      H.add(F(att), att.dim(0));
      std::copy(F(att), F(att) + att.numel(), att_all.host<float>() + r0 * c.q_dim());
    }, o_.kv_ranges ? &out : nullptr);
    quantize("self_attn.o_proj", w.o, H);
  }
  row_chunks(att_all, [&](int64_t r0, int64_t r1, const Tensor& att) {
    Tensor a, x = X_.rows(r0, r1), xb = XB_.rows(r0, r1);
    out_pass(att, w.o, r0, r1, a);
    op_add(x, a);
    op_rmsnorm(xb, x, w.fn, eps);
  });
  att_all = Tensor();
  {
    GptqHessian H(c.dim);
    H.add(F(XB_), N_);
    quantize("mlp.gate_proj", w.g, H);
    quantize("mlp.up_proj", w.u, H);
  }
  {
    GptqHessian H(c.ffn_dim);
    mlp_pass(w, XB_, [&](int64_t, int64_t, const Tensor& h) { H.add(F(h), h.dim(0)); });
    quantize("mlp.down_proj", w.d, H);
  }
  mlp_pass(w, XB_, [&](int64_t r0, int64_t r1, const Tensor& h) {
    Tensor a, x = X_.rows(r0, r1);
    out_pass(h, w.d, r0, r1, a);
    op_add(x, a);
  });
}

void CalibratedQuantizer::awq_block(int64_t l, BlockW& w, CalibratedBlock& out) {
  const ModelConfig& c = m_.config;
  const float eps = (float)c.norm_eps;
  const std::string p = block_prefix(l);
  const bool mha = c.kv_dim() == c.q_dim();  // v -> o only when v's outputs are o's inputs
  const int64_t step = std::max<int64_t>(1, N_ / 512);
  // Module outputs of the float block and input statistics.
  op_rmsnorm(XB_, X_, w.an, eps);
  ChannelStats s_qkv(c.dim), s_o(c.q_dim()), s_gu(c.dim), s_d(c.ffn_dim);
  s_qkv.add(XB_);
  SampledRows x_qkv(step), x_o(step), x_gu(step), x_d(step);
  x_qkv.take(0, XB_);
  Tensor A = Tensor::empty(DType::F32, {N_, c.dim});
  attn_pass(w, XB_, [&](int64_t r0, int64_t r1, const Tensor& att) {
    Tensor a = A.rows(r0, r1);
    op_matmul(a, att, w.o);
    s_o.add(att);
    x_o.take(r0, att);
  }, o_.kv_ranges ? &out : nullptr);
  // The scaled weights as the search sees them quantized: each linear with its own bits and
  // group (round-to-nearest stands in for another method's codes; a float linear is exact).
  auto fq = [&](const Tensor& W, const std::vector<float>& s, const char* name) {
    const CalibratedOptions::Linear lq = linear_of(p + name + ".weight");
    Tensor r = Tensor::empty(DType::F32, W.shape());
    if (lq.method.empty()) {
      std::copy(F(W), F(W) + W.numel(), r.host<float>());
      return r;
    }
    awq_scaled_fake_quant(F(W), W.dim(0), W.dim(1), s.data(), lq.bits, lq.group ? lq.group : W.dim(1), lq.sym, false,
                          r.host<float>());
    return r;
  };
  // A pass's callback adding the squared error of (its inputs) @ Wout^T against the float
  // module output A, row for row.
  auto output_error = [&](Tensor Wout, double& e) -> ChunkFn {
    return [&, Wout](int64_t r0, int64_t r1, const Tensor& in) {
      Tensor a;
      out_pass(in, Wout, r0, r1, a);
      e += mse_acc(a, F(A) + r0 * c.dim);
    };
  };
  auto check = [&](const ChannelStats& s, const char* what) {
    if (!s.finite) fail("AWQ: block {}: the inputs of {} hold NaN or Inf; check the source model", l, what);
  };
  check(s_qkv, "q/k/v");
  check(s_o, "o_proj");
  const double na = (double)N_ * (double)c.dim;
  // (input_layernorm -> q, k, v), inspected: the attention's output.
  AwqScaleResult sc_qkv = awq_search_scale(s_qkv.mean(), o_.awq_grid, [&](const std::vector<float>& s) {
    BlockW t = w;
    t.q = fq(w.q, s, "self_attn.q_proj"), t.k = fq(w.k, s, "self_attn.k_proj"), t.v = fq(w.v, s, "self_attn.v_proj");
    double e = 0;
    attn_pass(t, XB_, output_error(t.o, e));
    return e / na;
  });
  AwqScaleResult sc_o;
  if (mha)  // (v -> o), inspected: o_proj
    sc_o = awq_search_scale(s_o.mean(), o_.awq_grid, [&](const std::vector<float>& s) {
      double e = 0;
      attn_pass(w, XB_, output_error(fq(w.o, s, "self_attn.o_proj"), e));
      return e / na;
    });
  // The float block's attention residual; XB_ becomes the MLP's input.
  op_add(X_, A);
  op_rmsnorm(XB_, X_, w.fn, eps);
  s_gu.add(XB_);
  check(s_gu, "gate/up");
  x_gu.take(0, XB_);
  // down_proj's inputs, kept when they fit in 1 GiB so its scale search need not recompute them.
  Tensor Hd = (double)N_ * (double)c.ffn_dim * 4 <= (double)(1 << 30) ? Tensor::empty(DType::F32, {N_, c.ffn_dim}) : Tensor();
  mlp_pass(w, XB_, [&](int64_t r0, int64_t r1, const Tensor& h) {
    Tensor a = A.rows(r0, r1);
    op_matmul(a, h, w.d);
    s_d.add(h);
    x_d.take(r0, h);
    if (Hd.defined()) std::copy(F(h), F(h) + h.numel(), Hd.host<float>() + r0 * c.ffn_dim);
  });
  check(s_d, "down_proj");
  // (post_attention_layernorm -> gate, up), inspected: the MLP's output.
  AwqScaleResult sc_gu = awq_search_scale(s_gu.mean(), o_.awq_grid, [&](const std::vector<float>& s) {
    BlockW t = w;
    t.g = fq(w.g, s, "mlp.gate_proj"), t.u = fq(w.u, s, "mlp.up_proj");
    double e = 0;
    mlp_pass(t, XB_, output_error(t.d, e));
    return e / na;
  });
  // (up -> down), inspected: down_proj.
  AwqScaleResult sc_d = awq_search_scale(s_d.mean(), o_.awq_grid, [&](const std::vector<float>& s) {
    double e = 0;
    if (Hd.defined()) row_chunks(Hd, output_error(fq(w.d, s, "mlp.down_proj"), e));
    else mlp_pass(w, XB_, output_error(fq(w.d, s, "mlp.down_proj"), e));
    return e / na;
  });
  op_add(X_, A);  // the float block's output is the next block's input
  // Fold the scales: the previous op divides, the linears' input columns multiply.
  divide_rows(w.an, sc_qkv.scales);
  for (Tensor* W : {&w.q, &w.k, &w.v}) scale_columns(*W, sc_qkv.scales);
  x_qkv.divide(sc_qkv.scales);
  if (mha) {
    divide_rows(w.v, sc_o.scales);
    scale_columns(w.o, sc_o.scales);
    x_o.divide(sc_o.scales);
  }
  divide_rows(w.fn, sc_gu.scales);
  for (Tensor* W : {&w.g, &w.u}) scale_columns(*W, sc_gu.scales);
  x_gu.divide(sc_gu.scales);
  divide_rows(w.u, sc_d.scales);
  scale_columns(w.d, sc_d.scales);
  x_d.divide(sc_d.scales);
  // Clipping, skipping q and k (their products go through softmax, not a sum the search models).
  // (AWQ's linears only: another method's codes and float linears take the folded weights.)
  auto clip = [&](Tensor& W, const SampledRows& x, const char* name) {
    const CalibratedOptions::Linear lq = linear_of(p + name + ".weight");
    if (lq.method != "awq") return;
    const int64_t M = W.dim(0), K = W.dim(1), G = lq.group ? lq.group : K;
    auto mv = awq_search_clip(F(W), M, K, x.rows.data(), x.n(), lq.bits, G, lq.sym, false, o_.awq_grid, 0.5, x.n());
    awq_apply_clip(W.host<float>(), M, K, G, mv);
  };
  clip(w.v, x_qkv, "self_attn.v_proj");
  clip(w.o, x_o, "self_attn.o_proj");
  clip(w.g, x_gu, "mlp.gate_proj");
  clip(w.u, x_gu, "mlp.up_proj");
  clip(w.d, x_d, "mlp.down_proj");
  emit_scaled_rtn(l, w, out);
  out.messages.push_back(fmt::format("block {}: AWQ ratios q/k/v {:.2f}{} gate/up {:.2f} down {:.2f}", l, sc_qkv.ratio,
                                     mha ? fmt::format(" o {:.2f}", sc_o.ratio) : std::string(), sc_gu.ratio,
                                     sc_d.ratio));
}

std::array<std::vector<float>, 4> CalibratedQuantizer::float_amax(int64_t l, const BlockW& w, CalibratedBlock& out) {
  const ModelConfig& c = m_.config;
  const float eps = (float)c.norm_eps;
  ChannelStats st[4] = {ChannelStats(c.dim), ChannelStats(c.q_dim()), ChannelStats(c.dim), ChannelStats(c.ffn_dim)};
  op_rmsnorm(XB_, X_, w.an, eps);
  st[0].add(XB_);
  attn_pass(w, XB_, [&](int64_t r0, int64_t r1, const Tensor& att) {
    Tensor a, x = X_.rows(r0, r1), xb = XB_.rows(r0, r1);
    st[1].add(att);
    out_pass(att, w.o, r0, r1, a);
    op_add(x, a);
    op_rmsnorm(xb, x, w.fn, eps);
  }, o_.kv_ranges ? &out : nullptr);
  st[2].add(XB_);
  mlp_pass(w, XB_, [&](int64_t r0, int64_t r1, const Tensor& h) {
    Tensor a, x = X_.rows(r0, r1);
    st[3].add(h);
    out_pass(h, w.d, r0, r1, a);
    op_add(x, a);
  });
  for (const auto& s : st)
    if (!s.finite) fail("{}: block {}: the calibration activations hold NaN or Inf; check the source model", o_.method, l);
  return {st[0].amax, st[1].amax, st[2].amax, st[3].amax};
}

void CalibratedQuantizer::smoothquant_block(int64_t l, BlockW& w, CalibratedBlock& out) {
  const auto amax = float_amax(l, w, out);
  auto smooth = [&](Tensor& norm, std::initializer_list<Tensor*> ws, const std::vector<float>& act_max) {
    std::vector<WeightRef> refs;
    for (Tensor* W : ws) refs.push_back({F(*W), W->dim(0)});
    const std::vector<float> s = smoothquant_scales(act_max, refs, o_.alpha);
    divide_rows(norm, s);
    for (Tensor* W : ws) scale_columns(*W, s);
  };
  smooth(w.an, {&w.q, &w.k, &w.v}, amax[0]);
  smooth(w.fn, {&w.g, &w.u}, amax[2]);
  emit_scaled_rtn(l, w, out);
}

void CalibratedQuantizer::amax_block(int64_t l, const BlockW& w, CalibratedBlock& out) {
  const auto amax = float_amax(l, w, out);
  const std::string p = block_prefix(l);
  auto mx = [](const std::vector<float>& v) { return *std::max_element(v.begin(), v.end()); };
  for (const char* n : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"})
    out.input_amax[p + n + ".weight"] = mx(amax[0]);
  out.input_amax[p + "self_attn.o_proj.weight"] = mx(amax[1]);
  for (const char* n : {"mlp.gate_proj", "mlp.up_proj"}) out.input_amax[p + n + ".weight"] = mx(amax[2]);
  out.input_amax[p + "mlp.down_proj.weight"] = mx(amax[3]);
}

float CalibratedQuantizer::lm_head_input_amax() {
  LLMQ_CHECK(next_ == m_.config.n_layers);
  op_rmsnorm(XB_, X_, m_.weights.norm, (float)m_.config.norm_eps);
  float a = 0.f;
  for (int64_t i = 0; i < XB_.numel(); i++) a = std::max(a, std::fabs(F(XB_)[i]));
  return a;
}

LinearCodes CalibratedQuantizer::lm_head() {
  LLMQ_CHECK(next_ == m_.config.n_layers);
  Tensor W = to_f32(m_.weights.lm_head);
  const CalibratedOptions::Linear lq = linear_of("lm_head.weight");
  if (lq.method != o_.method && !lq.method.empty()) return o_.other("lm_head.weight", W).first;
  if (o_.method != "gptq") return rtn(W, lq);
  op_rmsnorm(XB_, X_, m_.weights.norm, (float)m_.config.norm_eps);
  GptqHessian H(m_.config.dim);
  H.add(F(XB_), N_);
  GptqOptions go = gptq_options();
  go.bits = lq.bits, go.group = lq.group, go.sym = lq.sym;
  GptqResult r = gptq_quantize(F(W), W.dim(0), W.dim(1), H, go);
  return {std::move(r.codes), std::move(r.scale), std::move(r.zero), std::move(r.g_idx)};
}

}  // namespace llmq
