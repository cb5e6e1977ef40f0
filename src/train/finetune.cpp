#include "train/finetune.h"

#include <filesystem>

#include "core/error.h"
#include "core/progress.h"
#include "quant/quant.h"
#include "quant/quant_base.h"

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

uint64_t load_frozen_base(LlamaTrain<float>& m, const std::string& dir, const std::string& quantize, bool progress) {
  LLMQ_CHECK(m.has_adapters());
  const ModelConfig& c = m.config;
  uint64_t bytes = 0;
  m.qbase.clear();
  if (!c.quant.enabled) {
    const FlatReader read = model_dir_reader(dir, c);
    if (quantize.empty()) {
      read(0, (int64_t)m.base.size(), m.base.data());
      for (int l = 0; l < c.n_layers; l++)
        for (int t = 0; t < kBlockLinears; t++) {
          const auto [in, out] = linear_shape(c, t);
          bytes += (uint64_t)(in * out) * 4;
        }
      return bytes;
    }
    const BaseQuant q = base_quant_parse(quantize);
    m.qbase.resize(c.n_layers);
    Progress bar(fmt::format("quantizing the base ({})", quantize), (uint64_t)c.n_layers, progress);
    std::vector<float> w;
    for (size_t i = 0; i < m.base_specs.size(); i++) {
      const auto& s = m.base_specs[i];
      const int64_t off = m.base_offsets[i], n = shape_numel(s.shape);
      int l = -1, t = -1;
      if (!linear_of(s.name, l, t)) {
        read(off, off + n, m.base.data() + off);
        continue;
      }
      w.resize((size_t)n);
      read(off, off + n, w.data());
      m.qbase[l][t] = quantize_base_linear(w.data(), s.shape[0], s.shape[1], q);
      bytes += (uint64_t)weight_bytes(m.qbase[l][t]);
      if (t == kBlockLinears - 1) bar.update((uint64_t)l + 1);
    }
    bar.finish();
    return bytes;
  }
  if (!quantize.empty())
    fail("{}: the model is already quantized ({} {}); --quantize-base is for float models", dir, c.quant.algorithm,
         c.quant.scheme);
  const Model mm = model_load(dir, LoadMode::Map);
  const auto named = hf_named_tensors(mm);
  m.qbase.resize(c.n_layers);
  for (size_t i = 0; i < m.base_specs.size(); i++) {
    const auto& s = m.base_specs[i];
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

}  // namespace llmq::train
