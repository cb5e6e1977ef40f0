// llmq merge: fold a PEFT adapter (LoRA/DoRA) into its base, writing a float model directory.
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/output_dir.h"
#include "io/hf_dir.h"
#include "train/finetune.h"

namespace llmq::cli {

void register_merge(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "merge", "fold a LoRA/DoRA adapter into its base: a float model directory (a quantized base is dequantized)");
  struct Opts {
    std::string model, adapter, out, dtype = "bf16";
    bool json = false, overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->model, "the base model directory (float or quantized)")->required()->transform(llmq::cli::kRunLatest);
  cmd->add_option("--adapter", o->adapter, "the adapter (PEFT layout; a finetune run takes its latest checkpoint)")
      ->required()
      ->transform(llmq::cli::kRunLatest);
  cmd->add_option("--out", o->out, "output model directory")->required();
  cmd->add_option("--dtype", o->dtype, "bf16 (default), f16 or f32")->check(CLI::IsMember({"bf16", "f16", "f32"}));
  cmd->add_flag("--overwrite", o->overwrite, "replace an --out directory llmq did not write");
  cmd->add_flag("--json", o->json, "print a JSON summary");
  cmd->callback([o] {
    Model m = model_load(o->model, LoadMode::Map);
    const bool was_quantized = m.config.quant.enabled;
    train::attach_adapter(m, o->adapter);
    const int64_t n = train::merge_adapter(m);
    OutputDir od(o->out, "merge", o->overwrite);
    SaveOptions so;
    so.dtype = o->dtype == "f32" ? DType::F32 : o->dtype == "f16" ? DType::F16 : DType::BF16;
    so.progress = !o->json;
    model_save(od.path(), m, so);
    copy_tokenizer_files(o->model, od.path());
    od.commit();
    if (o->json) {
      fmt::print("{}\n", nlohmann::json{{"out", o->out}, {"merged_linears", n}, {"dtype", o->dtype},
                                        {"base_was_quantized", was_quantized}}.dump());
      return;
    }
    fmt::print("wrote {}: {} linears merged, {}{}\n", o->out, n, o->dtype,
               was_quantized ? " (the quantized base dequantized; re-quantize with llmq quantize)" : "");
  });
}

}  // namespace llmq::cli
