// llmq merge: fold a PEFT adapter (LoRA/DoRA) into its base. A float base gives a float model
// directory; a quantized base's merged weights are quantized again (its method, bits and
// group) unless --requantize none, and with evaluation tokens the command reports how much of
// the adapter's effect the merged model keeps: KL(unmerged || merged) against
// KL(unmerged || base without the adapter), and the three perplexities.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/output_dir.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "io/hf_dir.h"
#include "quant/quantize_model.h"
#include "quant/recipe.h"
#include "train/finetune.h"

namespace llmq::cli {

namespace fs = std::filesystem;

void register_merge(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "merge", "fold a LoRA/DoRA adapter into its base (a quantized base is quantized again after merging)");
  struct Opts {
    std::string model, adapter, out, dtype = "bf16", requantize = "auto";
    bool json = false, overwrite = false;
    TokenSource src;
    int64_t ctx = 0;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->model, "the base model directory (float or quantized)")->required()->transform(llmq::cli::kRunLatest);
  cmd->add_option("--adapter", o->adapter, "the adapter (PEFT layout; a finetune run takes its latest checkpoint)")
      ->required()
      ->transform(llmq::cli::kRunLatest);
  cmd->add_option("--out", o->out, "output model directory")->required();
  cmd->add_option("--dtype", o->dtype, "float output: bf16 (default), f16 or f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_option("--requantize", o->requantize,
                  "auto (default: a quantized base is quantized again with its method (RTN or HQQ; GPTQ and AWQ "
                  "bases with RTN, which needs no calibration), bits and group; a float base stays float), rtn, hqq "
                  "(4-bit, or the base's scheme), or none (a float model)")
      ->check(CLI::IsMember({"auto", "rtn", "hqq", "none"}));
  o->src.add(cmd);
  cmd->add_option("--ctx", o->ctx, "report: window length in tokens (default: 512, or the model's context if smaller)");
  cmd->add_flag("--overwrite", o->overwrite, "replace an --out directory llmq did not write");
  cmd->add_flag("--json", o->json, "print a JSON summary");
  cmd->callback([o] {
    Model m = model_load(o->model, LoadMode::Map);
    const QuantConfig qc = m.config.quant;
    if (qc.enabled && qc.fp8) fail("{}: an FP8 base; merging adapters into FP8 weights is not supported", o->model);
    std::string method = o->requantize;
    if (method == "auto") method = !qc.enabled ? "none" : qc.algorithm == "hqq" ? "hqq" : "rtn";
    const bool report = o->src.given();
    std::vector<int32_t> toks;
    if (report) toks = o->src.load(o->model, m.config);  // bad evaluation input fails before any work
    const Model base = m;  // the base alone (tensors shared), for the report
    train::attach_adapter(m, o->adapter);
    const Model unmerged = m;  // base + adapter applied unmerged: what was trained
    const int64_t n = train::merge_adapter(m);
    OutputDir od(o->out, "merge", o->overwrite);
    SaveOptions so;
    so.progress = !o->json;
    std::string scheme;
    if (method == "none") {
      so.dtype = o->dtype == "f32" ? DType::F32 : o->dtype == "f16" ? DType::F16 : DType::BF16;
      model_save(od.path(), m, so);
    } else {
      // The merged weights in f32 beside the target (removed when done), then quantized into it.
      OutputDir f32(o->out + ".merged-f32", "merge", true);
      so.dtype = DType::F32;
      model_save(f32.path(), m, so);
      copy_tokenizer_files(o->model, f32.path());
      QuantizeOptions q;
      q.model = f32.path(), q.out = od.path(), q.out_label = o->out;
      q.method = method;
      q.scheme = qc.enabled && !qc.scheme.empty() ? qc.scheme : "w4a16";
      q.group = qc.enabled ? (qc.group > 0 ? qc.group : 0) : -1;
      q.sym = qc.enabled ? qc.sym : false;
      if (method == "hqq" && qc.enabled && qc.algorithm == "hqq") q.hqq_axis = qc.hqq_axis;
      q.keep = {"embed"};
      if (qc.enabled ? !qc.lm_head : method == "hqq") q.keep.push_back("lm_head");
      if (qc.enabled && !qc.modules.empty()) {
        // A per-module mix: each linear requantized as the base held it (one exact rule per
        // linear that differs from the base scheme; lm_head only if the base quantized it).
        auto rule = [&](const std::string& name, const QuantConfig& x) {
          QuantRule r;
          r.selector = name;  // a whole tensor name is part of no other name: an exact match
          r.scheme = x.enabled ? fmt::format("w{}a16", x.bits) : "float";
          r.group = x.group, r.sym = x.sym ? 1 : 0, r.axis = x.hqq_axis;
          r.method = x.algorithm == "hqq" || x.float_zeros ? "hqq" : "rtn";
          if (r.method == "hqq") r.sym = 0;
          r.text = name + "=" + r.scheme;
          return r;
        };
        for (const auto& [name, x] : qc.modules) q.recipe.rules.push_back(rule(name, qc.quantizes(name) ? x : QuantConfig{}));
        if (qc.lm_head) q.recipe.rules.push_back(rule("lm_head.weight", qc));
        q.recipe.source = o->model + " (its per-module quantization)";
        q.keep = {"embed"};
      }
      q.progress = !o->json;
      quantize_model(q);
      scheme = q.recipe.empty() ? q.scheme : "the base's per-module mix";
    }
    copy_tokenizer_files(o->model, od.path());
    od.commit();
    nlohmann::json j{{"out", o->out}, {"merged_linears", n}, {"base_was_quantized", qc.enabled},
                     {"requantized", method == "none" ? nlohmann::json() : nlohmann::json(method + " " + scheme)}};
    if (method == "none") j["dtype"] = o->dtype;
    if (report) {
      const Model merged = model_load(o->out, LoadMode::Map);
      if (o->ctx == 0) o->ctx = std::min<int64_t>(512, m.config.max_seq_len);
      auto run = [&](const Model& x, const char* what) {
        Progress bar(what, 1, !o->json);
        auto r = eval_compare(unmerged, x, toks, o->ctx, [&](int64_t done, int64_t total) {
          bar = Progress(what, (uint64_t)total, !o->json && total > 1);
          bar.update((uint64_t)done);
        });
        bar.finish();
        return r;
      };
      const CompareResult effect = run(base, "adapter's effect"), kept = run(merged, "merged model");
      // The share of the adapter's effect the merged model keeps: 1 - KL(unmerged || merged) /
      // KL(unmerged || base). 1: merged exactly; 0: as far from the adapter as the bare base.
      const double survives = effect.kld_mean > 0 ? 1 - kept.kld_mean / effect.kld_mean : 1.0;
      j["report"] = {{"tokens", kept.predictions},
                     {"ppl_base", effect.ppl_quant},
                     {"ppl_unmerged", effect.ppl_base},
                     {"ppl_merged", kept.ppl_quant},
                     {"kld_unmerged_vs_base", effect.kld_mean},
                     {"kld_unmerged_vs_merged", kept.kld_mean},
                     {"kld_unmerged_vs_merged_p99", kept.kld_p99},
                     {"top1_agreement_merged", kept.top1_agreement},
                     {"effect_kept", survives}};
    }
    if (o->json) {
      fmt::print("{}\n", j.dump());
      return;
    }
    fmt::print("wrote {}: {} linears merged, {}\n", o->out, n,
               method == "none" ? o->dtype + (qc.enabled ? " (the quantized base dequantized)" : "")
                                : fmt::format("quantized again ({} {})", method, scheme));
    if (report) {
      const auto& r = j["report"];
      fmt::print("on {} tokens: perplexity base {:.4f}, with the adapter unmerged {:.4f}, merged {:.4f}\n",
                 r["tokens"].get<int64_t>(), r["ppl_base"].get<double>(), r["ppl_unmerged"].get<double>(),
                 r["ppl_merged"].get<double>());
      fmt::print("KL(unmerged || base) {:.6f} nats (the adapter's effect), KL(unmerged || merged) {:.6f} nats: the "
                 "merged model keeps {:.1f}% of the effect\n",
                 r["kld_unmerged_vs_base"].get<double>(), r["kld_unmerged_vs_merged"].get<double>(),
                 100 * r["effect_kept"].get<double>());
    }
  });
}

}  // namespace llmq::cli
