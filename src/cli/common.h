// Shared pieces of the subcommands: registration, token-id parsing, resource figures.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "core/file_util.h"  // peak_rss_bytes
#include "io/safetensors.h"
#include "model/llama.h"
#include "tokenizer/tokenizer.h"

namespace llmq::cli {

// Number checks with plain messages ("must be a positive number, got 'abc'"), where CLI11's
// PositiveNumber/NonNegativeNumber print a range whose upper end is DBL_MAX in 309 digits.
inline CLI::Validator number_check(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size()) return "must be a number, got '" + s + "'";
        if (allow_zero ? !(v >= 0) : !(v > 0))
          return std::string("must be ") + (allow_zero ? "zero or positive" : "positive") + ", got " + s;
        return "";
      },
      allow_zero ? "NONNEGATIVE" : "POSITIVE");
}
// -m RUN_DIR means the run's latest checkpoint (the directory `latest` names), as a user of
// a training run expects; a model directory (config.json) or a file is left as it is.
std::string resolve_run_dir(const std::string& path);
inline const CLI::Validator kRunLatest = CLI::Validator(
    [](std::string& s) -> std::string {
      s = resolve_run_dir(s);
      return "";
    },
    "", "run-latest");
// The built-in presets, for help texts.
std::string preset_list();
inline const CLI::Validator kPositive = number_check(false);
inline const CLI::Validator kNonNegative = number_check(true);

void register_info(CLI::App& app);
void register_init(CLI::App& app);
void register_generate(CLI::App& app);
void register_eval(CLI::App& app);
void register_bench(CLI::App& app);
void register_tokenizer(CLI::App& app);
void register_data(CLI::App& app);
void register_train(CLI::App& app);
void register_finetune(CLI::App& app);
void register_qat(CLI::App& app);
void register_merge(CLI::App& app);
void register_report(CLI::App& app);
void register_quantize(CLI::App& app);
void register_export(CLI::App& app);
void register_plan(CLI::App& app);
void register_serve(CLI::App& app);
void register_bench_serve(CLI::App* bench);

// A text prompt's ids: BOS first when the tokenizer adds one (and `bos`), special-token text
// parsed when `special` (llmq generate -p, the server's prompts).
std::vector<int32_t> encode_prompt(const Tokenizer& t, const std::string& text, bool special, bool bos);
// Stop ids: the model's config.json eos_token_id(s), then the tokenizer's.
std::vector<int32_t> default_eos_ids(const ModelConfig& c, const Tokenizer* tok);

// Whitespace- or comma-separated non-negative integers; `what` names the source in errors.
std::vector<int32_t> parse_token_ids(const std::string& text, const std::string& what, const std::string& hint = "");
std::vector<int32_t> read_token_file(const std::string& path);
// Resets the peak (bench: one peak per model, not the process's high-water mark).
void reset_peak_rss();
// A note on stderr when the 1-minute load exceeds the cores (default thread count only).
void warn_if_busy();

// `--options FILE` anywhere on the command line: the file's `key = value` lines (TOML-like:
// `# comments`, [section] headers ignored, values optionally quoted, `true` for a flag,
// `false` to leave it off) become `--key value` arguments in place of it. Keys also given on
// the command line are skipped, so the command line wins. Fails naming FILE:LINE.
#include <functional>
std::vector<std::string> expand_options_files(const std::vector<std::string>& args,
                                              const std::function<bool(const std::string&)>& known_option);

// --kv-cache TYPE and --kv-scales static|dynamic, shared by generate, eval and bench.
struct KvOption {
  std::string type = "auto", scales = "auto";
  void add(CLI::App* cmd, const std::string& whose = "");
  // The cache type for model m ("auto": its calibrated KV-cache type, else f32); with
  // --kv-scales dynamic, m's calibrated KV ranges are dropped (each row scaled by its own max).
  KvType resolve(Model& m) const;
};

// --tp N under `mpirun -np N`: cuts m to this rank's tensor-parallel shard and silences the
// stdout of ranks other than 0 (every rank computes the same results). Fails when the job's
// size is not N. Nothing happens for N = 1 outside mpirun.
void shard_for_tp(Model& m, int tp, const char* command);

// A tokenizer used with a model must fit it: no more ids than the model's vocabulary, and
// the model's BOS/EOS ids (config.json) among the tokenizer's. Fails naming both otherwise
// (a truncated or foreign tokenizer file would encode into ids the model reads as other tokens).
void check_tokenizer_fits(const Tokenizer& t, const ModelConfig& c, const std::string& model);

// Global --mmap flag: map weights instead of reading them into memory.
extern bool g_mmap;
// The process exit status when the command returns normally (set by a command that ends early
// without an error, e.g. train stopped by SIGINT: 130).
extern int g_exit_code;
inline LoadMode load_mode() { return g_mmap ? LoadMode::Map : LoadMode::Read; }

// Tokens to evaluate on (eval ppl / compare, merge's report): --tokens FILE, --text FILE or
// --data DIR (its held-out split), with --split, --tokenizer and --max-tokens.
struct TokenSource {
  std::string tokens, text, tokenizer, data, split = "val";
  int64_t max_tokens = 0;
  void add(CLI::App* c);
  bool given() const { return !tokens.empty() || !text.empty() || !data.empty(); }
  std::vector<int32_t> load(const std::string& model_dir, const ModelConfig& cfg) const;
};

}  // namespace llmq::cli
