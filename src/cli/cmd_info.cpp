// llmq info: a model's config, parameter count, bytes by dtype and memory estimate.
#include <filesystem>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/progress.h"
#include "io/gguf.h"
#include "io/hf_dir.h"
#include "io/safetensors.h"
#include "quant/quant.h"

namespace llmq::cli {

namespace {
// A stored tensor's role: the linear it belongs to (q, k, v, o, gate, up, down, lm_head), the
// embeddings, or "other" (norms, KV-cache scales), from an HF or a GGUF tensor name.
std::string tensor_role(const std::string& name) {
  static const std::pair<const char*, const char*> kRoles[] = {
      {"q_proj.", "q"},          {"k_proj.", "k"},        {"v_proj.", "v"},        {"o_proj.", "o"},
      {"gate_proj.", "gate"},    {"up_proj.", "up"},      {"down_proj.", "down"},  {"lm_head.", "lm_head"},
      {"embed_tokens.", "embed"}, {"attn_q.", "q"},        {"attn_k.", "k"},        {"attn_v.", "v"},
      {"attn_output.", "o"},     {"ffn_gate.", "gate"},   {"ffn_up.", "up"},       {"ffn_down.", "down"},
      {"token_embd.", "embed"}};
  for (const auto& [k, v] : kRoles)
    if (name.find(k) != std::string::npos) return v;
  if (name.rfind("output.", 0) == 0) return "lm_head";
  return "other";
}
}  // namespace

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
    // Per role, as stored in the files: bytes of every tensor of the role (codes, scales, zero
    // points, g_idx) and the weights they hold.
    std::map<std::string, std::pair<uint64_t, uint64_t>> by_role;
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
        for (const auto& t : g.tensors) {
          uint64_t n = 1;
          for (uint64_t e : t.ne) n *= e;
          auto& r = by_role[tensor_role(t.name)];
          r.first += t.bytes, r.second += n;
        }
        std::map<std::string, int> types;
        for (const auto& t : g.tensors) types[ggml_type_name(t.type)]++;
        format = fmt::format("gguf v{} (llama.cpp)", g.version);
        scheme = gguf_file_type_name(g);
        std::string mix;
        for (const auto& [k, v] : types) mix += fmt::format("{}{} {}", mix.empty() ? "" : ", ", k, v);
        scheme += " (tensors: " + mix + ")";
      } else {
        for (const auto& s : hf_tensor_specs(c)) by_role[tensor_role(s.name)].second += (uint64_t)shape_numel(s.shape);
        for (const auto& e : std::filesystem::directory_iterator(o->dir))
          if (e.path().extension() == ".safetensors") {
            const SafetensorsFile f(e.path().string());
            for (const auto& t : f.header().tensors) by_role[tensor_role(t.name)].first += t.end - t.begin;
          }
        const QuantConfig& q = c.quant;
        format = !q.enabled  ? std::string("hugging face directory (safetensors)")
                 : q.fp8     ? std::string("hugging face directory, compressed-tensors float-quantized")
                 : !q.ct_int.empty() ? "hugging face directory, compressed-tensors " + q.ct_int
                 : q.float_zeros ? std::string("hugging face directory, hqq (llmq's gptq-packed layout)")
                 : q.awq     ? std::string("hugging face directory, awq (gemm packing)")
                             : std::string("hugging face directory, gptq");
        if (q.enabled && !q.modules.empty())
          format += q.fp8 || !q.ct_int.empty() ? ", several config groups" : ", per-module overrides (dynamic)";
        auto describe = [](const QuantConfig& x) {
          return fmt::format("{} {}-bit, group {}{}{}{} ({})", x.scheme, x.bits,
                             x.group ? std::to_string(x.group) : std::string("per channel"),
                             x.float_zeros && x.hqq_axis == 0 ? " along outputs" : "",
                             x.sym ? ", symmetric" : ", asymmetric", x.desc_act ? ", act-order" : "", x.algorithm);
        };
        scheme = q.enabled ? describe(q) : std::string(dtype_name(c.dtype));
        if (q.enabled && !q.modules.empty()) {  // a per-module mix: each scheme and how many linears take it
          std::map<std::string, int> n;
          for (const std::string& name : quant_linear_names(c))
            if (name != "lm_head.weight" || !c.tie_embeddings || q.quantizes(name))
              n[q.quantizes(name) ? describe(q.of(name)) : std::string("float")]++;
          scheme = "mix of " + std::to_string(n.size()) + ":";
          for (const auto& [k, v] : n) scheme += fmt::format(" {} x {};", v, k);
          scheme.pop_back();
        }
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
        {"bits_blocks_linears", [&] {  // the blocks' seven linears together, as stored
           uint64_t b = 0, n = 0;
           for (const char* r : {"q", "k", "v", "o", "gate", "up", "down"})
             if (by_role.count(r)) b += by_role[r].first, n += by_role[r].second;
           return n ? 8.0 * (double)b / (double)n : 0.0;
         }()},
        {"bits_by_role", [&] {
           nlohmann::json r = nlohmann::json::object();
           for (const auto& [k, v] : by_role)
             if (v.second > 0) r[k] = 8.0 * (double)v.first / (double)v.second;
           return r;
         }()},
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
    if (!by_role.empty()) {
      std::string line;
      uint64_t lb = 0, ln = 0;  // the blocks' linears together
      for (const char* r : {"q", "k", "v", "o", "gate", "up", "down", "lm_head", "embed"})
        if (by_role.count(r) && by_role[r].second > 0) {
          line += fmt::format("{}{} {:.2f}", line.empty() ? "" : ", ", r, 8.0 * (double)by_role[r].first / (double)by_role[r].second);
          if (std::string(r) != "lm_head" && std::string(r) != "embed") lb += by_role[r].first, ln += by_role[r].second;
        }
      fmt::print("stored bits per role: {}; the blocks' linears {:.2f} (file bytes, scales and zero points included)\n",
                 line, ln ? 8.0 * (double)lb / (double)ln : 0.0);
    }
    fmt::print("memory      ctx {} x batch {}: weights {} + KV cache (f32) {} + activations {} = {}\n", ctx, o->batch,
               format_bytes((double)weight_bytes), format_bytes((double)kv), format_bytes((double)act),
               format_bytes((double)(weight_bytes + kv + act)));
  });
}

}  // namespace llmq::cli
