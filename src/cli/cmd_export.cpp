// llmq export: a model directory to a GGUF file for llama.cpp, or to a GPTQ-format
// directory for vLLM and transformers (round-to-nearest, the same writer as `llmq quantize`),
// or a training checkpoint (sharded by fully sharded training, or full) to a plain model
// directory.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/output_dir.h"
#include "core/progress.h"
#include "io/gguf.h"
#include "quant/quantize_model.h"
#include "quant/recipe.h"
#include "io/hf_dir.h"
#include "train/checkpoint.h"
#include "train/finetune.h"

namespace llmq::cli {

void register_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "write a model in another tool's format (GGUF for llama.cpp, GPTQ), or a training checkpoint as a model directory");
  struct Opts {
    std::string model, format = "gguf", type, out, adapter, mix;
    int64_t group = -1;
    bool sym = false, json = false, overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->model, "model directory (float weights and a tokenizer), or a training checkpoint for --format hf")->required()->transform(llmq::cli::kRunLatest);
  cmd->add_option("--format", o->format,
                  "gguf (default), gptq, hf (a training checkpoint, sharded or full, as a model directory), or gguf-lora "
                  "(the --adapter of -m BASE as a llama.cpp LoRA GGUF)");
  cmd->add_option("--adapter", o->adapter, "gguf-lora: the LoRA adapter (PEFT layout, or a finetune run)")
      ->transform(llmq::cli::kRunLatest);
  cmd->add_option("--type", o->type, "gguf: f32, f16 (default), q8_0, q4_0, q2_k, q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k (k-quants mixed per tensor as llama.cpp mixes them); gptq: w4a16 (default), w8a16; hf: bf16 (default), f16, f32; gguf-lora: f32, f16 (default)");
  cmd->add_option("--group", o->group, "gptq: input channels per scale (w4a16 default 128; 0: per channel)");
  cmd->add_flag("--sym", o->sym, "gptq: symmetric codes");
  cmd->add_option("--mix", o->mix,
                  "gguf: per-module types from quantization rules (as `llmq quantize --mix`, or a recipe .json file): "
                  "a rule's bits choose the type (w8a16 q8_0, w4a16 q4_k, w3a16 q3_k, w2a16 q2_k; q4_0 where rows are "
                  "not whole 256-weight super-blocks; float f16); its group and method do not apply (GGUF types have "
                  "fixed blocks); unmatched tensors take --type's choice");
  cmd->add_option("--out", o->out, "output file (gguf) or directory (gptq, hf)")->required();
  cmd->add_flag("--json", o->json, "print a JSON summary");
  cmd->add_flag("--overwrite", o->overwrite,
                "gptq/hf: replace an --out directory that llmq did not write (outputs appear whole; a .gguf file is "
                "written to a temporary name and renamed)");
  cmd->callback([o] {
    if (o->format == "gptq") {  // AutoGPTQ v1 layout: qweight, qzeros, scales, g_idx
      QuantizeOptions q;
      q.model = o->model;
      OutputDir od(o->out, "export gptq", o->overwrite);
      q.out = od.path(), q.out_label = o->out;
      q.scheme = o->type.empty() ? "w4a16" : o->type;
      if (q.scheme != "w4a16" && q.scheme != "w8a16")
        fail("export --format gptq: --type {} (choose w4a16 or w8a16)", q.scheme);
      q.group = o->group;
      q.sym = o->sym;
      q.progress = !o->json;
      const QuantizeResult r = quantize_model(q);
      od.commit();
      if (o->json)
        fmt::print("{}\n", nlohmann::json{{"out", o->out}, {"type", q.scheme}, {"bytes", r.bytes_out}}.dump());
      else
        fmt::print("wrote {} (GPTQ {}, {})\n", o->out, q.scheme, format_bytes((double)r.bytes_out));
      return;
    }
    if (o->format == "hf") {
      const std::string t = o->type.empty() ? "bf16" : o->type;
      if (t != "bf16" && t != "f16" && t != "f32") fail("export --format hf: --type {} (choose bf16, f16 or f32)", t);
      OutputDir od(o->out, "export hf", o->overwrite);
      train::export_checkpoint_hf(o->model, od.path(), t == "f32" ? DType::F32 : t == "f16" ? DType::F16 : DType::BF16);
      od.commit();
      if (o->json) fmt::print("{}\n", nlohmann::json{{"out", o->out}, {"type", t}}.dump());
      else fmt::print("wrote {} ({})\n", o->out, t);
      return;
    }
    if (o->format == "gguf-lora") {
      if (o->adapter.empty()) fail("export --format gguf-lora: give the adapter with --adapter DIR (and its base with -m)");
      const std::string t = o->type.empty() ? "f16" : o->type;
      train::export_adapter_gguf(o->model, o->adapter, t, o->out);
      const double bytes = (double)std::filesystem::file_size(o->out);
      if (o->json) fmt::print("{}\n", nlohmann::json{{"out", o->out}, {"type", t}, {"bytes", bytes}}.dump());
      else fmt::print("wrote {} (LoRA adapter for llama.cpp, {}, {})\n", o->out, t, format_bytes(bytes));
      return;
    }
    if (o->format != "gguf") fail("export: format '{}' is not supported (gguf, gguf-lora, gptq or hf)", o->format);
    GgufExportOptions g;
    g.type = o->type.empty() ? "f16" : o->type;
    g.progress = !o->json;
    if (!o->mix.empty()) {
      auto rc = std::make_shared<QuantRecipe>(recipe_from_arg(o->mix));
      const ModelConfig cfg = model_load(o->model, LoadMode::Map).config;
      const int64_t n_layers = cfg.n_layers;
      g.type_of = [rc, n_layers](const std::string& name, int64_t K) -> std::optional<GgmlType> {
        const int ri = recipe_match(*rc, name, n_layers);
        if (ri < 0 && (!rc->has_default || name == "lm_head.weight")) return std::nullopt;
        const std::string& scheme = ri >= 0 ? rc->rules[ri].scheme : rc->defaults.scheme;
        const bool whole = K % 256 == 0;  // k-quant super-blocks
        if (scheme == "float") return GgmlType::F16;
        if (scheme == "w8a16") return GgmlType::Q8_0;
        if (scheme == "w4a16") return whole ? GgmlType::Q4_K : GgmlType::Q4_0;
        if (scheme == "w3a16") return whole ? GgmlType::Q3_K : GgmlType::Q4_0;
        if (scheme == "w2a16") return whole ? GgmlType::Q2_K : GgmlType::Q4_0;
        return std::nullopt;  // a rule that only changes options: the file type's choice
      };
    }
    gguf_export(o->model, o->out, g);
    const double bytes = (double)std::filesystem::file_size(o->out);
    if (o->json)
      fmt::print("{}\n", nlohmann::json{{"out", o->out}, {"type", g.type}, {"bytes", bytes}}.dump());
    else
      fmt::print("wrote {} ({}, {})\n", o->out, g.type, format_bytes(bytes));
  });
}

}  // namespace llmq::cli
