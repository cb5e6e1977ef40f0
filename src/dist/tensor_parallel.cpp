#include "dist/tensor_parallel.h"

#include <cstring>
#include <memory>

#include "core/dtype.h"
#include "core/error.h"
#include "kernels/cpu/kernels.h"

namespace llmq::dist {

namespace {

// Rows [r0, r1) as a new tensor (owned memory, so the full one can be dropped).
Tensor copy_rows(const Tensor& W, int64_t r0, int64_t r1, const std::string& name) {
  const QuantInfo* q = W.quant();
  if (q && !q->fp8 && (r0 % kQPanel != 0 || (r1 - r0) % kQPanel != 0))
    fail("tensor parallel: {} rows {}..{} are not whole {}-row panels of the quantized layout", name, r0, r1, kQPanel);
  const Tensor v = W.rows(r0, r1);
  Tensor t = Tensor::empty(v.dtype(), v.shape());
  std::memcpy(t.host_data(), v.host_data(), v.nbytes());
  if (!q) return t;
  auto info = std::make_shared<QuantInfo>(*q);
  if (q->fp8) {
    if (!q->weight_per_tensor) info->scale.assign(q->scale.begin() + r0, q->scale.begin() + r1);
  } else {
    const int64_t ng = W.dim(1) / q->group, a = r0 / kQPanel * ng * kQPanel, b = r1 / kQPanel * ng * kQPanel;
    if (!q->sz16.empty()) {
      const int64_t per = q->sz16_per_group() / kQPanel;  // halves per row and group
      info->sz16.assign(q->sz16.begin() + per * a, q->sz16.begin() + per * b);
    } else {
      info->scale.assign(q->scale.begin() + a, q->scale.begin() + b);
      info->zs.assign(q->zs.begin() + a, q->zs.begin() + b);
    }
  }
  t.set_quant(info);
  return t;
}

// Input columns [k0, k1) as a new tensor.
Tensor copy_cols(const Tensor& W, int64_t k0, int64_t k1, const std::string& name) {
  const int64_t M = W.dim(0), K = W.dim(1), Kn = k1 - k0;
  const QuantInfo* q = W.quant();
  if (!q || q->fp8) {  // row-major: a slice of every row
    const int64_t es = dtype_bits(W.dtype()) / 8;
    Tensor t = Tensor::empty(W.dtype(), {M, Kn});
    for (int64_t m = 0; m < M; m++)
      std::memcpy(t.host<uint8_t>() + m * Kn * es, W.host<uint8_t>() + (m * K + k0) * es, (size_t)(Kn * es));
    if (q) t.set_quant(std::make_shared<QuantInfo>(*q));
    return t;
  }
  // One scale per row (group K): every slice of the row keeps it.
  const int64_t G = q->group == K ? Kn : q->group;
  if ((q->group != K && (k0 % G != 0 || Kn % G != 0)) || Kn % 32 != 0)
    fail("tensor parallel: {} columns {}..{} are not whole groups of {}", name, k0, k1, q->group);
  // Integer panels: column k's bytes lie at k * 16 * bits/8 within each 16-row panel.
  const int64_t panels = (M + kQPanel - 1) / kQPanel, per_col = kQPanel * q->bits / 8, ng = K / q->group,
                ngn = Kn / G, g0 = q->group == K ? 0 : k0 / G;
  Tensor t = Tensor::zeros(W.dtype(), {panels * kQPanel, Kn}).rows(0, M);
  for (int64_t p = 0; p < panels; p++)
    std::memcpy(t.host<uint8_t>() + p * Kn * per_col, W.host<uint8_t>() + p * K * per_col + k0 * per_col,
                (size_t)(Kn * per_col));
  auto info = std::make_shared<QuantInfo>(*q);
  info->group = G;
  if (!q->sz16.empty()) {
    const int64_t per = q->sz16_per_group();
    info->sz16.assign((size_t)(panels * ngn * per), 0);
    for (int64_t p = 0; p < panels; p++)
      for (int64_t g = 0; g < ngn; g++)
        std::memcpy(&info->sz16[(p * ngn + g) * per], &q->sz16[(p * ng + g0 + g) * per], per * sizeof(uint16_t));
  } else {
    info->scale.assign((size_t)(panels * ngn * kQPanel), 0.f);
    info->zs.assign(info->scale.size(), 0.f);
    for (int64_t p = 0; p < panels; p++)
      for (int64_t g = 0; g < ngn; g++)
        for (int64_t r = 0; r < kQPanel; r++) {
          info->scale[(p * ngn + g) * kQPanel + r] = q->scale[(p * ng + g0 + g) * kQPanel + r];
          info->zs[(p * ngn + g) * kQPanel + r] = q->zs[(p * ng + g0 + g) * kQPanel + r];
        }
  }
  t.set_quant(info);
  return t;
}

void check_splittable(const Tensor& W, const std::string& name) {
  const QuantInfo* q = W.quant();
  if (!q) return;
  if (!q->perm.empty()) fail("tensor parallel: {} is act-order (desc_act) quantized; requantize without --act-order", name);
  if (q->axis0_classes) fail("tensor parallel: {} is HQQ axis 0 (its scales span the output rows)", name);
  if (q->act_per_token || q->act_per_tensor || (q->fp8 && q->act_scale == 0))
    fail("tensor parallel: {} quantizes its activations per token or per tensor, which would differ per shard "
         "(use a weight-only scheme such as w4a16 or w8a16, or fp8 with static activation scales)", name);
}

}  // namespace

void shard_model_tp(Model& m, int rank, int tp, Communicator& comm) {
  ModelConfig& c = m.config;
  if (tp < 1 || rank < 0 || rank >= tp) fail("tensor parallel: rank {} of {}", rank, tp);
  if (tp == 1) return;
  if (c.n_heads % tp != 0 || c.n_kv_heads % tp != 0 || c.ffn_dim % tp != 0)
    fail("tensor parallel: --tp {} must divide the attention heads ({}), KV heads ({}) and FFN width ({})", tp,
         c.n_heads, c.n_kv_heads, c.ffn_dim);
  const int64_t QD = c.q_dim() / tp, KD = c.kv_dim() / tp, FF = c.ffn_dim / tp;
  for (size_t l = 0; l < m.weights.layers.size(); l++) {
    LlamaLayer& L = m.weights.layers[l];
    const std::string p = "layer " + std::to_string(l) + " ";
    if (!L.k_amax.empty())
      L.k_amax = std::vector<float>(L.k_amax.begin() + rank * (c.n_kv_heads / tp),
                                    L.k_amax.begin() + (rank + 1) * (c.n_kv_heads / tp)),
      L.v_amax = std::vector<float>(L.v_amax.begin() + rank * (c.n_kv_heads / tp),
                                    L.v_amax.begin() + (rank + 1) * (c.n_kv_heads / tp));
    for (auto [W, n] : {std::pair{&L.wo, "o_proj"}, std::pair{&L.w_down, "down_proj"}}) check_splittable(*W, p + n);
    L.wq = copy_rows(L.wq, rank * QD, (rank + 1) * QD, p + "q_proj");
    L.wk = copy_rows(L.wk, rank * KD, (rank + 1) * KD, p + "k_proj");
    L.wv = copy_rows(L.wv, rank * KD, (rank + 1) * KD, p + "v_proj");
    L.w_gate = copy_rows(L.w_gate, rank * FF, (rank + 1) * FF, p + "gate_proj");
    L.w_up = copy_rows(L.w_up, rank * FF, (rank + 1) * FF, p + "up_proj");
    L.wo = copy_cols(L.wo, rank * QD, (rank + 1) * QD, p + "o_proj");
    L.w_down = copy_cols(L.w_down, rank * FF, (rank + 1) * FF, p + "down_proj");
  }
  c.n_heads /= tp, c.n_kv_heads /= tp, c.ffn_dim /= tp;
  m.partial_sum = [&comm](Tensor& t) { comm.all_reduce_sum(t.host<float>(), (size_t)t.numel()); };
}

}  // namespace llmq::dist
