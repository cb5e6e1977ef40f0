// llmq init: a randomly initialised model directory of a preset or config shape.
#include "cli/common.h"
#include "core/progress.h"
#include <filesystem>

#include "io/hf_dir.h"
#include "core/output_dir.h"
#include "tokenizer/tokenizer.h"

namespace llmq::cli {

void register_init(CLI::App& app) {
  auto* cmd = app.add_subcommand("init", "write a randomly initialised model directory (for tests and benchmarks)");
  struct Opts {
    std::string preset, config, out, dtype = "bf16", tokenizer;
    uint64_t seed = 0;
    int64_t layers = 0;
    double shard_gb = 5;
    bool overwrite = false;
  };
  auto o = std::make_shared<Opts>();
  auto* p = cmd->add_option("--preset", o->preset, "built-in shape: " + [] {
    std::string s;
    for (auto& n : config_preset_names()) s += (s.empty() ? "" : ", ") + n;
    return s;
  }());
  auto* c = cmd->add_option("--config", o->config, "HF config.json or Meta params.json")->check(CLI::ExistingFile);
  p->excludes(c);
  cmd->add_option("--out", o->out, "output directory")->required();
  cmd->add_option("--seed", o->seed, "random seed");
  cmd->add_option("--layers", o->layers, "number of blocks instead of the shape's (same widths; for benchmarks)")
      ->check(llmq::cli::kPositive);
  cmd->add_option("--dtype", o->dtype, "weight dtype")->check(CLI::IsMember({"f32", "bf16", "f16"}));
  cmd->add_option("--tokenizer", o->tokenizer,
                  "copy this tokenizer (file or directory) into the model; vocab size, BOS and EOS follow it");
  cmd->add_option("--max-shard-size", o->shard_gb, "largest safetensors shard, GB")->check(llmq::cli::kPositive);
  cmd->add_flag("--overwrite", o->overwrite,
                "replace an --out directory that llmq did not write (one it wrote is replaced whole without asking)");
  cmd->callback([o] {
    if (o->preset.empty() && o->config.empty()) fail("init: give --preset NAME or --config FILE");
    ModelConfig cfg = o->preset.empty() ? config_load(o->config) : config_preset(o->preset);
    if (o->layers > 0) cfg.n_layers = o->layers;
    std::unique_ptr<Tokenizer> tok;
    if (!o->tokenizer.empty()) {
      tok = tokenizer_load(o->tokenizer);
      cfg.vocab_size = tok->vocab_size();
      cfg.bos_token_ids.clear();
      cfg.eos_token_ids.clear();
      if (tok->bos_id >= 0) cfg.bos_token_ids.push_back(tok->bos_id);
      for (auto e : tok->eos_ids) cfg.eos_token_ids.push_back(e);
    }
    SaveOptions so;
    so.dtype = dtype_parse(o->dtype);
    so.max_shard_bytes = (uint64_t)(o->shard_gb * 1e9);
    so.progress = true;
    // The directory appears whole: written under a temporary name, swapped in at the end, so
    // nothing of an earlier output (another tokenizer, more shards) survives beside it.
    OutputDir od(o->out, "init", o->overwrite);
    model_save(od.path(), cfg, init_fill(cfg, o->seed), so);
    if (tok) {
      // The tokenizer file and its tokenizer_config.json (BOS/EOS, chat template) go beside.
      namespace fs = std::filesystem;
      const fs::path src = tok->source(), dir = src.parent_path();
      fs::copy_file(src, fs::path(od.path()) / src.filename(), fs::copy_options::overwrite_existing);
      if (fs::is_regular_file(dir / "tokenizer_config.json"))
        fs::copy_file(dir / "tokenizer_config.json", fs::path(od.path()) / "tokenizer_config.json", fs::copy_options::overwrite_existing);
    }
    od.commit();
    fmt::print(stderr, "wrote {}: {} parameters, {}\n", o->out, cfg.n_params(),
               format_bytes((double)dtype_bytes(so.dtype, cfg.n_params())));
  });
}

}  // namespace llmq::cli
