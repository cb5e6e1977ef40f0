// llmq info: a model's config, parameter count, bytes by dtype and memory estimate.
#include <filesystem>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/progress.h"
#include "io/gguf.h"
#include "io/hf_dir.h"
#include "quant/quant.h"

namespace llmq::cli {

void register_info(CLI::App& app) {
  auto* cmd = app.add_subcommand("info", "show a model's configuration, size and memory needs");
  struct Opts {
    std::string dir, preset;
    int64_t ctx = 0, batch = 1;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* d = cmd->add_option("model", o->dir, "model directory, .gguf file or training run")->transform(llmq::cli::kRunLatest);
  auto* p = cmd->add_option("--preset", o->preset, "built-in shape instead of a model: " + preset_list());
  d->excludes(p);
  cmd->add_option("--ctx", o->ctx, "context length for the KV-cache estimate (default: 4096 or the model's maximum)");
  cmd->add_option("--batch", o->batch, "sequences for the KV-cache estimate")->check(llmq::cli::kPositive);
  cmd->add_flag("--json", o->json, "machine-readable output");
  cmd->callback([o] {
    if (o->dir.empty() && o->preset.empty()) fail("info: give a model directory or --preset NAME");
    ModelConfig c;
    std::map<std::string, uint64_t> by_dtype, params_by_dtype;
    uint64_t weight_bytes = 0;
    std::string format = "preset", scheme = "bf16";
    if (!o->preset.empty()) {
      // A preset's tensors as bf16 would hold them.
      c = config_preset(o->preset);
      for (const auto& s : hf_tensor_specs(c)) {
        const uint64_t b = dtype_bytes(DType::BF16, shape_numel(s.shape));
        by_dtype["bf16"] += b;
        weight_bytes += b;
      }
    } else {
      // A model: the tensors as loaded (quantized ones packed: codes, scales, zero points).
      Model m = model_load(o->dir, LoadMode::Map);
      c = m.config;
      std::set<const void*> seen;  // tied embeddings: one tensor listed twice
      for (const auto& [name, t] : hf_named_tensors(m)) {
        if (!seen.insert(t.host_data()).second) continue;
        // Quantized tensors with their scales and zero points (quant/quant.h weight_bytes).
        const uint64_t b = (uint64_t)llmq::weight_bytes(t);
        by_dtype[std::string(dtype_name(t.dtype()))] += b;
        params_by_dtype[std::string(dtype_name(t.dtype()))] += (uint64_t)t.numel();
        weight_bytes += b;
      }
      // What the file or directory is: the format, and the scheme its weights use.
      if (std::filesystem::path(o->dir).extension() == ".gguf") {
        const GgufFile g = gguf_parse(o->dir);
        std::map<std::string, int> types;
        for (const auto& t : g.tensors) types[ggml_type_name(t.type)]++;
        format = fmt::format("gguf v{} (llama.cpp)", g.version);
        scheme = gguf_file_type_name(g);
        std::string mix;
        for (const auto& [k, v] : types) mix += fmt::format("{}{} {}", mix.empty() ? "" : ", ", k, v);
        scheme += " (tensors: " + mix + ")";
      } else {
        const QuantConfig& q = c.quant;
        format = q.enabled ? (q.fp8 ? "hugging face directory, compressed-tensors float-quantized"
                              : q.float_zeros ? "hugging face directory, hqq" : q.awq ? "hugging face directory, awq (gemm packing)" : q.scheme == "w8a8" ? "hugging face directory, compressed-tensors int-quantized"
                              : "hugging face directory, gptq")
                           : "hugging face directory (safetensors)";
        scheme = q.enabled ? fmt::format("{} {}-bit, group {}{}{} ({})", q.scheme, q.bits, q.group ? std::to_string(q.group) : std::string("per channel"),
                                         q.sym ? ", symmetric" : ", asymmetric", q.desc_act ? ", act-order" : "", q.algorithm)
                           : std::string(dtype_name(c.dtype));
      }
    }
    int64_t ctx = o->ctx > 0 ? o->ctx : std::min<int64_t>(c.max_seq_len, 4096);
    uint64_t kv = (uint64_t)(2 * c.n_layers * c.kv_dim() * ctx * o->batch * 4);
    // Activations for a prefill of ctx rows: residual, norm, q, k, v, attention, gate, up.
    uint64_t act = (uint64_t)(ctx * o->batch) * (uint64_t)(3 * c.dim + 2 * c.q_dim() + 2 * c.kv_dim() + 2 * c.ffn_dim) * 4 +
                   (uint64_t)c.vocab_size * 4 * o->batch;
    nlohmann::json j = {
        {"source", o->preset.empty() ? o->dir : "preset " + o->preset},
        {"format", format},
        {"scheme", scheme},
        {"config", config_to_hf_json(c)},
        {"parameters", c.n_params()},
        {"bits_per_weight", 8.0 * (double)weight_bytes / (double)c.n_params()},
        {"bytes_by_dtype", by_dtype},
        {"memory", {{"ctx", ctx}, {"batch", o->batch}, {"weights", weight_bytes}, {"kv_cache_f32", kv},
                    {"activations", act}, {"total", weight_bytes + kv + act}}},
    };
    if (o->json) {
      fmt::print("{}\n", j.dump(2));
      return;
    }
    fmt::print("model       {}\n", j["source"].get<std::string>());
    fmt::print("format      {}\n", format);
    fmt::print("scheme      {}\n", scheme);
    fmt::print("shape       dim {}  layers {}  heads {} (kv {}, head_dim {})  ffn {}  vocab {}\n", c.dim, c.n_layers,
               c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size);
    fmt::print("rope        theta {}  scaling {}  max context {}\n", c.rope_theta,
               c.rope_scaling.enabled ? fmt::format("llama3 x{} (orig {})", c.rope_scaling.factor,
                                                    c.rope_scaling.original_max_position)
                                      : std::string("none"),
               c.max_seq_len);
    fmt::print("embeddings  {}\n", c.tie_embeddings ? "tied" : "untied");
    fmt::print("parameters  {} ({:.2f} B)\n", c.n_params(), c.n_params() / 1e9);
    for (auto& [k, v] : by_dtype)
      fmt::print("weights     {}: {}{}\n", k, format_bytes((double)v),
                 params_by_dtype.count(k) && params_by_dtype[k] ? fmt::format(" ({} weights, {:.4g} bits each)", params_by_dtype[k], 8.0 * (double)v / (double)params_by_dtype[k]) : std::string());
    fmt::print("bits/weight {:.2f} (all weights, scales and zero points included)\n", 8.0 * (double)weight_bytes / (double)c.n_params());
    fmt::print("memory      ctx {} x batch {}: weights {} + KV cache (f32) {} + activations {} = {}\n", ctx, o->batch,
               format_bytes((double)weight_bytes), format_bytes((double)kv), format_bytes((double)act),
               format_bytes((double)(weight_bytes + kv + act)));
  });
}

}  // namespace llmq::cli
