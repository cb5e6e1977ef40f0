#include "train/finetune.h"

#include <cblas.h>

#include <filesystem>

#include "core/error.h"
#include "core/progress.h"
#include "io/gguf.h"
#include "quant/quant.h"
#include "quant/quant_base.h"
#include "quant/quantize_model.h"
#include "quant/recipe.h"

namespace llmq::train {

namespace fs = std::filesystem;

namespace {
// (layer, linear index) of a base tensor name, or false.
bool linear_of(const std::string& name, int& l, int& t) {
  if (std::sscanf(name.c_str(), "model.layers.%d.", &l) != 1) return false;
  for (t = 0; t < kBlockLinears; t++)
    if (name == fmt::format("model.layers.{}.{}.weight", l, kLinearModules[t])) return true;
  return false;
}
}  // namespace

uint64_t load_frozen_base(LlamaTrain<float>& m, const std::string& dir, const std::string& quantize, bool progress,
                          const std::function<bool(int)>& keep) {
  LLMQ_CHECK(m.has_adapters());
  const ModelConfig& c = m.config;
  uint64_t bytes = 0;
  m.qbase.clear();
  auto kept = [&](const std::string& name) { return !keep || keep(unit_of_tensor(name, c.n_layers)); };
  if (!c.quant.enabled) {
    const FlatReader read = model_dir_reader(dir, c);
    if (quantize.empty()) {
      for (size_t i = 0; i < m.base_specs.size(); i++) {
        const auto& s = m.base_specs[i];
        if (!kept(s.name)) continue;
        const int64_t off = m.base_offsets[i], n = shape_numel(s.shape);
        read(off, off + n, m.base.data() + off);
        int l = -1, t = -1;
        if (linear_of(s.name, l, t)) bytes += (uint64_t)n * 4;
      }
      return bytes;
    }
    const bool recipe = recipe_is_arg(quantize);  // per-module rules (quant/recipe.h)
    const QuantRecipe rc = recipe ? recipe_from_arg(quantize) : QuantRecipe{};
    const BaseQuant q = recipe ? BaseQuant{} : base_quant_parse(quantize);
    m.qbase.resize(c.n_layers);
    Progress bar(fmt::format("quantizing the base ({})", quantize), (uint64_t)c.n_layers, progress);
    std::vector<float> w;
    for (size_t i = 0; i < m.base_specs.size(); i++) {
      const auto& s = m.base_specs[i];
      const int64_t off = m.base_offsets[i], n = shape_numel(s.shape);
      int l = -1, t = -1;
      if (!kept(s.name)) {
        if (linear_of(s.name, l, t) && t == kBlockLinears - 1) bar.update((uint64_t)l + 1);
        continue;
      }
      if (!linear_of(s.name, l, t)) {
        read(off, off + n, m.base.data() + off);
        continue;
      }
      w.resize((size_t)n);
      read(off, off + n, w.data());
      if (recipe) {
        m.qbase[l][t] = recipe_quantize_linear(rc, w.data(), s.shape[0], s.shape[1], s.name, c.n_layers);
        if (!m.qbase[l][t].defined()) {  // a linear the recipe leaves in float
          std::copy(w.begin(), w.end(), m.base.data() + off);
          bytes += (uint64_t)n * 4;
        }
      } else {
        m.qbase[l][t] = quantize_base_linear(w.data(), s.shape[0], s.shape[1], q);
      }
      if (m.qbase[l][t].defined()) bytes += (uint64_t)weight_bytes(m.qbase[l][t]);
      if (t == kBlockLinears - 1) bar.update((uint64_t)l + 1);
    }
    bar.finish();
    return bytes;
  }
  if (!quantize.empty())
    fail("{}: the model is already quantized ({} {}); --quantize-base is for float models", dir, c.quant.algorithm,
         c.quant.scheme);
  const Model mm = model_load(dir, LoadMode::Map, [&](const std::string& name) { return kept(name); });
  const auto named = hf_named_tensors(mm);
  m.qbase.resize(c.n_layers);
  for (size_t i = 0; i < m.base_specs.size(); i++) {
    const auto& s = m.base_specs[i];
    if (!kept(s.name)) continue;
    auto it = named.find(s.name);
    if (it == named.end()) fail("{}: tensor {} is missing", dir, s.name);
    const Tensor& x = it->second;
    const int64_t off = m.base_offsets[i], n = shape_numel(s.shape);
    int l = -1, t = -1;
    if (linear_of(s.name, l, t) && x.quant()) {
      if (x.quant()->fp8) fail("{}: {} is FP8; fine-tuning on an FP8 base is not supported (use a float or integer-quantized base)", dir, s.name);
      m.qbase[l][t] = x;  // keeps the mapping alive
      bytes += (uint64_t)weight_bytes(x);
      continue;
    }
    if (x.quant()) {  // a quantized lm_head: dequantized once (it is frozen)
      dequantize_tensor_rows(x, 0, x.dim(0), m.base.data() + off);
      continue;
    }
    const Tensor f = to_f32(x);
    std::copy(f.host<float>(), f.host<float>() + n, m.base.data() + off);
    if (linear_of(s.name, l, t)) bytes += (uint64_t)n * 4;
  }
  return bytes;
}

double base_linear_bits(const ModelConfig& c, const std::string& quantize) {
  if (!quantize.empty() && recipe_is_arg(quantize)) return recipe_linear_bits(recipe_from_arg(quantize), c);
  if (!quantize.empty()) {
    const BaseQuant q = base_quant_parse(quantize);
    // 2-, 3-bit codes in the 4-bit layout; f32 scale and scale x zero per group (not f16 values)
    return (q.bits == 8 ? 8 : 4) + 64.0 / (double)base_quant_group(q, c.dim);
  }
  if (!c.quant.enabled) return 32;
  if (c.quant.fp8) return 8;
  return (c.quant.bits == 8 ? 8 : 4) + 32.0 / (double)(c.quant.group > 0 ? c.quant.group : c.dim);
}

void write_adapter_checkpoint(const std::string& tmp, const LlamaTrain<float>& m, const float* mom, const float* v,
                              const CheckpointHead& head, const std::string& tokenizer_src) {
  save_adapter(tmp, m.adapter_config(), m.specs, m.offsets, m.params.data());
  copy_tokenizer(tokenizer_src, tmp);
  write_train_state(tmp, head, m.n_params(), mom, v);
}

CheckpointSource open_adapter_checkpoint(const std::string& dir, const ModelConfig& c, const AdapterConfig& a) {
  CheckpointSource s = open_train_state(dir, (int64_t)[&] {
    int64_t n = 0;
    for (const auto& sp : adapter_specs(c, a)) n += shape_numel(sp.shape);
    return n;
  }());
  s.params = adapter_reader(dir, c, a);
  return s;
}

void attach_adapter(Model& m, const std::string& dir) {
  if (m.partial_sum) fail("{}: adapters on a tensor-parallel model are not supported", dir);
  const ModelConfig& c = m.config;
  const AdapterConfig a = adapter_config_load(dir);
  const AdapterLayout lay = adapter_layout(c, a);
  std::vector<float> flat((size_t)lay.n);
  adapter_reader(dir, c, a)(0, lay.n, flat.data());
  auto f32 = [&](int64_t off, Shape shape) {
    LLMQ_CHECK(off >= 0);
    Tensor t = Tensor::empty(DType::F32, shape);
    std::copy(flat.data() + off, flat.data() + off + shape_numel(shape), t.host<float>());
    return t;
  };
  for (int l = 0; l < c.n_layers; l++) {
    LlamaLayer& L = m.weights.layers[l];
    const auto W = L.linears();
    if (a.train_norms) {
      L.attn_norm = f32(lay.attn_norm[l], {c.dim});
      L.ffn_norm = f32(lay.ffn_norm[l], {c.dim});
    }
    for (int t = 0; t < kBlockLinears; t++) {
      L.lora[t] = nullptr;
      if (!a.targets[t]) continue;
      const auto [in, out] = linear_shape(c, t);
      const AdapterLayout::Linear& o = lay.lin[l][t];
      auto ll = std::make_shared<LoraLinear>();
      ll->A = f32(o.A, {a.rank, in});
      ll->B = f32(o.B, {out, a.rank});
      ll->scale = (float)a.scale();
      if (a.dora) {
        // c = m / ||W + s B A|| over the weights as the model runs them (dequantized).
        std::vector<float> w((size_t)(in * out)), norm((size_t)out);
        if (W[t]->quant()) dequantize_tensor_rows(*W[t], 0, out, w.data());
        else {
          const Tensor f = to_f32(*W[t]);
          std::copy(f.host<float>(), f.host<float>() + in * out, w.data());
        }
        dora_weight_norms<float>(w.data(), ll->A.host<float>(), ll->B.host<float>(), a.rank, a.scale(), in, out,
                                 norm.data());
        const float* mag = flat.data() + o.mag;
        ll->c.resize((size_t)out);
        for (int64_t j = 0; j < out; j++) ll->c[j] = norm[j] > 0 ? mag[j] / norm[j] : 0.f;
      }
      L.lora[t] = std::move(ll);
    }
  }
  if (a.train_norms) m.weights.norm = f32(lay.norm, {c.dim});
}

int64_t merge_adapter(Model& m) {
  const ModelConfig& c = m.config;
  int64_t merged = 0;
  auto as_f32 = [](const Tensor& W) {
    if (!W.quant()) return to_f32(W);
    Tensor f = Tensor::empty(DType::F32, {W.dim(0), W.dim(1)});
    dequantize_tensor_rows(W, 0, W.dim(0), f.host<float>());
    return f;
  };
  for (int l = 0; l < c.n_layers; l++) {
    LlamaLayer& L = m.weights.layers[l];
    Tensor* W[kBlockLinears] = {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down};
    for (int t = 0; t < kBlockLinears; t++) {
      const LoraLinear* a = L.lora[t].get();
      if (!a && !W[t]->quant()) continue;
      Tensor f = as_f32(*W[t]);
      if (a) {
        const int64_t out = f.dim(0), in = f.dim(1), r = a->A.dim(0);
        float* w = f.host<float>();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)out, (int)in, (int)r, a->scale, a->B.host<float>(),
                    (int)r, a->A.host<float>(), (int)in, 1.f, w, (int)in);
        if (!a->c.empty())
          for (int64_t j = 0; j < out; j++)
            for (int64_t i = 0; i < in; i++) w[j * in + i] *= a->c[j];
        merged++;
      }
      *W[t] = std::move(f);
      L.lora[t] = nullptr;
    }
  }
  if (m.weights.lm_head.quant()) m.weights.lm_head = as_f32(m.weights.lm_head);
  m.config.quant = QuantConfig{};
  return merged;
}

void export_adapter_gguf(const std::string& base_dir, const std::string& adapter_dir, const std::string& type,
                         const std::string& out) {
  const ModelConfig c = config_load((fs::path(base_dir) / "config.json").string());
  const AdapterConfig a = adapter_config_load(adapter_dir);
  if (a.dora)
    fail("{}: a DoRA adapter; llama.cpp's LoRA adapters have no magnitude vector: fold it into the base with llmq merge "
         "and export that model", adapter_dir);
  if (a.train_norms)
    fail("{}: the adapter trains the norms (modules_to_save), which llama.cpp's LoRA adapters cannot carry: fold it into "
         "the base with llmq merge", adapter_dir);
  const AdapterLayout lay = adapter_layout(c, a);
  std::vector<float> flat((size_t)lay.n);
  adapter_reader(adapter_dir, c, a)(0, lay.n, flat.data());
  std::vector<GgufLoraLinear> lin;
  for (int l = 0; l < c.n_layers; l++)
    for (int t = 0; t < kBlockLinears; t++) {
      if (!a.targets[t]) continue;
      const auto [in, out_f] = linear_shape(c, t);
      const AdapterLayout::Linear& o = lay.lin[l][t];
      GgufLoraLinear x{l, t, Tensor::empty(DType::F32, {a.rank, in}), Tensor::empty(DType::F32, {out_f, a.rank})};
      std::copy(flat.begin() + o.A, flat.begin() + o.A + a.rank * in, x.A.host<float>());
      std::copy(flat.begin() + o.B, flat.begin() + o.B + out_f * a.rank, x.B.host<float>());
      lin.push_back(std::move(x));
    }
  const float alpha = (float)(a.rslora ? a.alpha * std::sqrt((double)a.rank) : a.alpha);
  gguf_export_lora(c, lin, alpha, type, fs::path(adapter_dir).filename().string(), out);
}

}  // namespace llmq::train
