// Sensitivity probes: see sensitivity.h.
#include "quant/sensitivity.h"

#include <algorithm>

#include "core/error.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "io/hf_dir.h"
#include "quant/quantize_model.h"

namespace llmq {

SensitivityResult quantize_sensitivity(const SensitivityOptions& o) {
  Model base = model_load(o.model, LoadMode::Read);
  const ModelConfig& c = base.config;
  if (c.quant.enabled) fail("{}: the model is already quantized; probe the float model", o.model);
  if (o.protect < 0 || o.protect > c.n_layers) fail("--protect {}: 0..{} blocks", o.protect, c.n_layers);
  CalibOptions cal = o.calib;
  if (cal.seq_len > c.max_seq_len) cal.seq_len = c.max_seq_len;
  const CalibData data = calib_load(cal, o.model, c.vocab_size);
  std::vector<int32_t> toks;
  for (const auto& s : data.seqs) toks.insert(toks.end(), s.begin(), s.end());
  const int64_t ctx = (int64_t)data.seqs[0].size();
  static const char* kRoles[] = {"q", "k", "v", "o", "gate", "up", "down"};
  SensitivityResult res;
  res.tokens = (int64_t)toks.size();
  Progress bar("sensitivity (" + o.probe + ")", (uint64_t)(7 + c.n_layers), o.progress);
  uint64_t done = 0;
  // The model with linears `which` (block, role index) quantized at the probe setting.
  auto probe = [&](const std::vector<std::pair<int64_t, int>>& which, const std::string& unit, const std::string& sel) {
    Model v = base;  // tensors shared with base; the probed ones replaced
    for (auto [l, r] : which) {
      LlamaLayer& L = v.weights.layers[l];
      Tensor* t[] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
      static const char* kNames[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                     "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
      const std::string name = "model.layers." + std::to_string(l) + "." + kNames[r] + ".weight";
      const std::vector<float> w = fake_quantize_linear(*t[r], o.probe, name);
      Tensor f = Tensor::empty(DType::F32, t[r]->shape());
      std::copy(w.begin(), w.end(), f.host<float>());
      *t[r] = f;
    }
    const CompareResult cr = eval_compare(base, v, toks, ctx);
    bar.update(++done);
    return SensitivityRow{unit, sel, cr.kld_mean, cr.kld_p99, cr.top1_agreement, cr.ppl_ratio};
  };
  for (int r = 0; r < 7; r++) {
    std::vector<std::pair<int64_t, int>> w;
    for (int64_t l = 0; l < c.n_layers; l++) w.push_back({l, r});
    res.roles.push_back(probe(w, kRoles[r], kRoles[r]));
  }
  for (int64_t l = 0; l < c.n_layers; l++) {
    std::vector<std::pair<int64_t, int>> w;
    for (int r = 0; r < 7; r++) w.push_back({l, r});
    res.blocks.push_back(probe(w, "block " + std::to_string(l), "layers." + std::to_string(l)));
  }
  bar.finish();
  auto by_kld = [](const SensitivityRow& a, const SensitivityRow& b) { return a.kld_mean > b.kld_mean; };
  std::stable_sort(res.roles.begin(), res.roles.end(), by_kld);
  std::stable_sort(res.blocks.begin(), res.blocks.end(), by_kld);
  std::string sel;
  for (int64_t i = 0; i < o.protect; i++) sel += (i ? "|" : "") + res.blocks[i].selector;
  res.suggested_mix = (sel.empty() ? "" : sel + "=" + o.protect_spec + ",") + "default=" + o.probe;
  return res;
}

}  // namespace llmq
