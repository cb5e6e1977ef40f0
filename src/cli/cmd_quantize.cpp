// llmq quantize: a model directory in, a quantized (GPTQ-layout) model directory out.
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/progress.h"
#include "core/output_dir.h"
#include "quant/quantize_model.h"
#include "quant/sensitivity.h"

namespace llmq::cli {

void register_quantize(CLI::App& app) {
  auto* cmd = app.add_subcommand("quantize", "quantize a model's linear layers (streamed from the mapped source)");
  auto o = std::make_shared<QuantizeOptions>();
  auto json = std::make_shared<bool>(false);
  auto keep = std::make_shared<std::string>();
  auto recipe = std::make_shared<std::string>();
  auto mix = std::make_shared<std::string>();
  auto sens = std::make_shared<SensitivityOptions>();
  auto sensitivity = std::make_shared<bool>(false);
  cmd->add_option("-m,--model", o->model, "source model: a directory or an f32/f16 .gguf file (float weights)")->required()->transform(llmq::cli::kRunLatest);
  cmd->add_option("--out", o->out, "output model directory (not with --sensitivity)");
  cmd->add_option("--format", o->format,
                  "output layout of integer schemes: gptq (AutoGPTQ's, the default) or compressed-tensors "
                  "(llm-compressor's, what vLLM expects: pack-quantized w4a16/w8a16, int-quantized w8a8); fp8 is "
                  "compressed-tensors always")
      ->check(CLI::IsMember({"gptq", "compressed-tensors"}));
  cmd->add_option("--method", o->method,
                  "rtn (round to nearest, the default) | hqq (no data) | gptq | awq | smoothquant (need --calib) | qat "
                  "(LLM-QAT's quantizers, per channel: the model `llmq qat` trained, e.g. RUN/checkpoint-N)");
  cmd->add_option("--scheme", o->scheme, "w8a16 | w4a16 | w3a16 | w2a16 | w8a8 | w4a8 | fp8 (default w4a16)");
  auto* calib = cmd->add_option("--calib", o->calib.source,
                  "calibration data: a text file, a .jsonl file of {\"text\": ...} lines, or a directory from "
                  "`llmq data prepare` (its train split)");
  cmd->add_option("--calib-samples", o->calib.samples, "calibration windows (default 128)");
  cmd->add_option("--calib-seq-len", o->calib.seq_len, "tokens per calibration window (default 2048; at most the model's context)");
  cmd->add_option("--text-field", o->calib.text_field, "JSONL calibration: the field with the text (default \"text\")");
  cmd->add_option("--seed", o->calib.seed, "seed for drawing the calibration windows (default 0)");
  cmd->add_option("--tokenizer", o->calib.tokenizer, "tokenizer for text calibration data (default: the model's)");
  auto* damp = cmd->add_option("--damp", o->damp, "gptq: damping as a fraction of mean(diag H) (default 0.01)");
  auto* act_order = cmd->add_flag("--act-order", o->act_order, "gptq: quantize columns by decreasing Hessian diagonal (desc_act)");
  auto* static_groups = cmd->add_flag("--static-groups", o->static_groups, "gptq: group parameters from the unmodified weights");
  auto* alpha = cmd->add_option("--alpha", o->alpha, "smoothquant: migration strength (default 0.8)");
  cmd->add_option("--axis", o->hqq_axis,
                  "hqq: 1 (default) groups consecutive input channels of a row; 0 groups along the output "
                  "channels as HQQ's axis 0 (the group must divide the rows; run by a dequantize-on-the-fly kernel)");
  cmd->add_option("--kv-cache", o->kv_cache,
                  "int8 | fp8: also calibrate static KV-cache scales, one per layer and KV head (needs --calib); "
                  "int4: a dynamic cache quantized per token and KV head as it is stored (no --calib); with --method "
                  "qat, int4 | int8 dynamic, as QAT trained; generate/eval/bench then default to that cache");
  cmd->add_option("--weight-scale", o->weight_scale, "fp8: channel (default) or tensor");
  cmd->add_option("--act-scale", o->act_scale, "fp8: token (default) or tensor, dynamic (computed per call), or static "
                                               "(one calibrated scale per tensor, needs --calib); w8a8: token (default) "
                                               "or tensor (one dynamic int8 scale per call)");
  cmd->add_option("--group", o->group, "input channels per scale: 32, 64, 128, ... or 0 for one per output channel "
                                       "(default: 128 for w4/w3/w2, 64 with hqq, per channel for w8)");
  cmd->add_flag("--sym", o->sym, "symmetric codes (zero point at the middle); w8 schemes are always symmetric");
  cmd->add_option("--keep", *keep, "comma-separated tensors left in float: lm_head, embed (always kept), or parts of "
                                   "tensor names such as down_proj or layers.0. (default: embed for rtn; embed,lm_head "
                                   "for the other methods, as their reference tools do)");
  auto* recipe_opt = cmd->add_option("--recipe", *recipe,
                  "per-module quantization: a JSON file of ordered rules, the first match deciding each linear, e.g. "
                  "{\"default\": \"w4a16:g128\", \"rules\": [{\"match\": \"mlp\", \"quant\": \"w2a16:g16:hqq:axis0\"}, "
                  "{\"match\": \"first:1|last:1\", \"quant\": \"w8a16\"}]} (docs/quantization.md, Recipes); "
                  "--scheme/--method/--group/--sym/--axis are the default for unmatched linears; lm_head stays in float "
                  "unless a rule names it")
                       ->check(CLI::ExistingFile);
  cmd->add_option("--mix", *mix,
                  "the same rules inline: 'self_attn=w4a16:g128,mlp=w2a16:g16:hqq:axis0,first:1|last:1=w8a16' "
                  "(selectors: q k v o gate up down lm_head attn mlp layers.A-B first:N last:N re:REGEX, joined by & "
                  "and |; options: gN sym asym rtn hqq gptq awq axis0 axis1; scheme float leaves a module in float)")
      ->excludes(recipe_opt);
  cmd->add_flag("--sensitivity", *sensitivity,
                "write nothing: quantize one role (all blocks' q, k, ... down) or one block at a time at --probe and "
                "print each one's KL divergence to the float model on --calib text, most sensitive first, and a --mix "
                "that protects the --protect most sensitive blocks");
  cmd->add_option("--probe", sens->probe, "--sensitivity: the low setting tried (default w2a16:g16:hqq:axis0; rtn or hqq)");
  cmd->add_option("--protect", sens->protect, "--sensitivity: blocks the suggested --mix keeps at --protect-spec (default 2)");
  cmd->add_option("--protect-spec", sens->protect_spec, "--sensitivity: their setting (default w8a16)");
  cmd->add_option("--max-shard-size", o->max_shard_gb, "largest safetensors shard, GB (default 5)")->check(llmq::cli::kPositive);
  cmd->add_flag("--json", *json, "print a JSON summary");
  auto overwrite = std::make_shared<bool>(false);
  cmd->add_flag("--overwrite", *overwrite,
                "replace an --out directory that llmq did not write (one it wrote is replaced without asking); "
                "the output appears whole, under a temporary name until it is complete");
  cmd->callback([o, json, keep, overwrite, damp, act_order, static_groups, alpha, calib, recipe, mix, sens, sensitivity] {
    if (*sensitivity) {
      if (!o->out.empty() || !recipe->empty() || !mix->empty())
        fail("quantize --sensitivity writes nothing: leave out --out, --recipe and --mix");
      if (o->calib.source.empty()) fail("quantize --sensitivity needs calibration text: give --calib FILE|DATA_DIR");
      sens->model = o->model;
      sens->calib = o->calib;
      sens->progress = !*json;
      const SensitivityResult r = quantize_sensitivity(*sens);
      auto rows = [](const std::vector<SensitivityRow>& v) {
        nlohmann::json a = nlohmann::json::array();
        for (const auto& x : v)
          a.push_back({{"unit", x.unit}, {"selector", x.selector}, {"kld_mean", x.kld_mean}, {"kld_p99", x.kld_p99},
                       {"top1", x.top1}, {"ppl_ratio", x.ppl_ratio}});
        return a;
      };
      if (*json) {
        fmt::print("{}\n", nlohmann::json{{"probe", sens->probe}, {"tokens", r.tokens}, {"roles", rows(r.roles)},
                                          {"blocks", rows(r.blocks)}, {"suggested_mix", r.suggested_mix}}.dump());
        return;
      }
      fmt::print("{} alone at {} ({} calibration tokens), most sensitive first:\n", "each unit", sens->probe, r.tokens);
      fmt::print("{:<10} {:>12} {:>12} {:>8} {:>10}\n", "unit", "KLD mean", "KLD p99", "top-1", "ppl ratio");
      for (const auto* v : {&r.roles, &r.blocks}) {
        for (const auto& x : *v)
          fmt::print("{:<10} {:>12.3e} {:>12.3e} {:>8.4f} {:>10.4f}\n", x.unit, x.kld_mean, x.kld_p99, x.top1, x.ppl_ratio);
        fmt::print("\n");
      }
      fmt::print("suggested: --mix '{}'\n", r.suggested_mix);
      return;
    }
    if (!recipe->empty()) o->recipe = recipe_load(*recipe);
    if (!mix->empty()) o->recipe = recipe_parse_mix(*mix);
    auto recipe_uses = [&](const std::string& m) {
      bool any = o->recipe.defaults.method == m;
      for (const auto& r : o->recipe.rules) any = any || r.method == m;
      return any;
    };
    // Options the chosen method would ignore are refused, not silently dropped.
    for (auto [opt, method] : {std::pair{damp, "gptq"}, {act_order, "gptq"}, {static_groups, "gptq"}, {alpha, "smoothquant"}})
      if (opt->count() > 0 && o->method != method && !recipe_uses(method))
        fail("quantize: {} applies to --method {} only (this run uses {})", opt->get_name(), method, o->method);
    const bool rule_calib = recipe_uses("gptq") || recipe_uses("awq");
    const bool needs_calib = rule_calib || o->method == "gptq" || o->method == "awq" || o->method == "smoothquant" ||
                             o->act_scale == "static" ||
                             (!o->kv_cache.empty() && o->method != "qat" && o->kv_cache != "int4");
    if (calib->count() > 0 && !needs_calib)
      fail("quantize: --calib is not used by --method {} without --act-scale static or --kv-cache (it would be ignored)",
           o->method);
    o->keep.clear();
    std::string k;
    const std::string kept = !keep->empty() ? *keep : o->method == "rtn" || !o->recipe.empty() ? "embed" : "embed,lm_head";
    for (char ch : kept + ",") {
      if (ch == ',') {
        if (!k.empty()) o->keep.push_back(k);
        k.clear();
      } else if (ch != ' ') {
        k += ch;
      }
    }
    o->progress = !*json;
    if (o->out.empty()) fail("quantize: give --out DIR");
    if (std::filesystem::exists(o->out) && std::filesystem::exists(o->model) && std::filesystem::equivalent(o->out, o->model))
      fail("quantize: --out must differ from the source model");
    OutputDir od(o->out, "quantize", *overwrite);
    QuantizeOptions q = *o;
    q.out = od.path(), q.out_label = o->out;
    auto r = quantize_model(q);
    od.commit();
    if (*json)
      fmt::print("{}\n", nlohmann::json{{"out", o->out}, {"scheme", o->scheme}, {"method", o->method},
                                        {"quantized_tensors", r.quantized_tensors}, {"kept_tensors", r.kept_tensors},
                                        {"bytes_in", r.bytes_in}, {"bytes_out", r.bytes_out}, {"seconds", r.seconds},
                                        {"peak_rss_bytes", peak_rss_bytes()}, {"calib_tokens", r.calib_tokens},
                                        {"messages", r.messages}}
                             .dump());
    else {
      for (const auto& m : r.messages) fmt::print("{}\n", m);
      fmt::print("wrote {}: {} linears quantized ({}), {} tensors kept in float; {} -> {} in {}, peak RSS {}\n",
                 o->out, r.quantized_tensors,
                 o->recipe.empty() ? o->scheme + " " + o->method
                                   : fmt::format("{} recipe rules{}; `llmq info {}` lists the mix", o->recipe.rules.size(),
                                                 o->recipe.has_default ? " and a default" : "", o->out),
                 r.kept_tensors, format_bytes((double)r.bytes_in),
                 format_bytes((double)r.bytes_out), format_duration(r.seconds), format_bytes(peak_rss_bytes()));
    }
  });
}

}  // namespace llmq::cli
