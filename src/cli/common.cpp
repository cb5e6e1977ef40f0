// Token-id parsing and process resource figures for the CLI.
#include "cli/common.h"
#include "train/checkpoint.h"

#include <sys/resource.h>

#include <omp.h>

#include <cctype>
#include <filesystem>

#include "core/error.h"
#include "core/file_util.h"
#include "dist/tensor_parallel.h"
#include "io/hf_dir.h"
#include "eval/perplexity.h"
#include "model/config.h"

namespace llmq::cli {

bool g_mmap = false;
int g_exit_code = 0;

std::vector<int32_t> parse_token_ids(const std::string& s, const std::string& what, const std::string& hint) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    unsigned char ch = (unsigned char)s[i];
    if (std::isspace(ch) || ch == ',') { i++; continue; }
    if (!std::isdigit(ch))
      fail("{}: expected token ids (integers separated by spaces), found '{}' at byte {}{}", what,
           s.substr(i, std::min<size_t>(12, s.find_first_of(" \t\r\n", i) - i)), i,
           hint.empty() ? "" : "; " + hint);
    int64_t v = 0;
    while (i < s.size() && std::isdigit((unsigned char)s[i])) {
      v = v * 10 + (s[i++] - '0');
      if (v > INT32_MAX) fail("{}: token id too large near byte {}", what, i);
    }
    ids.push_back((int32_t)v);
  }
  return ids;
}

std::string resolve_run_dir(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  if (!fs::is_directory(p) || fs::exists(p / "config.json") || !train::has_checkpoint(path)) return path;
  const std::string ck = train::latest_checkpoint(path);  // the newest complete checkpoint
  fmt::print(stderr, "{}: a training run; using its latest checkpoint {}\n", path, ck);
  return ck;
}

void check_tokenizer_fits(const Tokenizer& t, const ModelConfig& c, const std::string& model) {
  if (t.vocab_size() > c.vocab_size)
    fail("{}: the tokenizer has {} ids but the model's vocabulary is {} (a tokenizer from another model?)", t.source(),
         t.vocab_size(), c.vocab_size);
  if (t.bos_id >= 0 && !c.bos_token_ids.empty() &&
      std::find(c.bos_token_ids.begin(), c.bos_token_ids.end(), (int64_t)t.bos_id) == c.bos_token_ids.end())
    fail("{}: the tokenizer's BOS is id {} but {}'s config.json says bos_token_id {}: the tokenizer does not belong to "
         "this model (truncated or from another one?)", t.source(), t.bos_id, model, c.bos_token_ids[0]);
  bool eos_shared = t.eos_ids.empty() || c.eos_token_ids.empty();
  for (auto e : t.eos_ids) eos_shared = eos_shared || std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), (int64_t)e) != c.eos_token_ids.end();
  if (!eos_shared)
    fail("{}: the tokenizer's EOS id {} is none of {}'s config.json eos_token_id ({}): the tokenizer does not belong "
         "to this model (truncated or from another one?)", t.source(), t.eos_ids[0], model, c.eos_token_ids[0]);
}

std::string preset_list() {
  std::string s;
  for (const auto& n : config_preset_names()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::vector<int32_t> read_token_file(const std::string& path) {
  return parse_token_ids(read_text_file(path), path, "a --tokens file holds token ids (give --text FILE for text)");
}

std::vector<std::string> expand_options_files(const std::vector<std::string>& args,
                                              const std::function<bool(const std::string&)>& known_option) {
  auto given = [&](const std::string& key) {
    const std::string flag = "--" + key;
    for (const auto& a : args)
      if (a == flag || a.rfind(flag + "=", 0) == 0) return true;
    return false;
  };
  auto trim = [](std::string v) {
    const size_t b = v.find_first_not_of(" \t\r"), e = v.find_last_not_of(" \t\r");
    return b == std::string::npos ? std::string() : v.substr(b, e - b + 1);
  };
  std::vector<std::string> out;
  for (size_t i = 0; i < args.size(); i++) {
    std::string file;
    if (args[i] == "--options") {
      if (i + 1 >= args.size()) fail("--options needs a file name");
      file = args[++i];
    } else if (args[i].rfind("--options=", 0) == 0) {
      file = args[i].substr(10);
    } else {
      out.push_back(args[i]);
      continue;
    }
    const std::string text = read_text_file(file);
    size_t pos = 0;
    for (int line_no = 1; pos < text.size(); line_no++) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      std::string line = text.substr(pos, nl - pos);
      pos = nl + 1;
      if (line.find('\0') != std::string::npos) fail("{}:{}: a NUL byte; an options file is text", file, line_no);
      line = trim(line.substr(0, line.find('#')));
      if (line.empty() || line.front() == '[') continue;
      const size_t eq = line.find('=');
      if (eq == std::string::npos) fail("{}:{}: expected `key = value`, found '{}'", file, line_no, line.substr(0, 60));
      std::string key = trim(line.substr(0, eq)), value = trim(line.substr(eq + 1));
      if (key.rfind("--", 0) == 0) key = key.substr(2);
      for (char& c : key)
        if (c == '_') c = '-';
      if (key.empty() || key.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") != std::string::npos)
        fail("{}:{}: '{}' is not an option name (lower-case letters, digits, '-')", file, line_no, key);
      if (key == "options") fail("{}:{}: an options file cannot name another options file", file, line_no);
      if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front())
        value = value.substr(1, value.size() - 2);
      if (!known_option(key)) fail("{}:{}: no command has an option --{}; see --help", file, line_no, key);
      if (given(key)) continue;
      if (value == "true") out.push_back("--" + key);
      else if (value == "false") continue;
      else out.push_back("--" + key), out.push_back(value);
    }
  }
  return out;
}

void warn_if_busy() {
  // The default is one thread per core (what the benchmarks measure best on an idle machine);
  // with other work running, threads wait on each other at every barrier, so say so.
  double load = 0;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &load) != 1) load = 0;
    std::fclose(f);
  }
  const int cores = omp_get_num_procs();
  if (dist::launched_by_mpirun() || load < cores + 0.5) return;
  fmt::print(stderr, "note: the machine is busy (load {:.1f} on {} cores); with other work running, fewer threads "
             "(-t {}) can be much faster\n", load, cores, std::max(1, cores / 2));
}

void reset_peak_rss() {
  // Linux: writing 5 to clear_refs resets the peak resident set size to the current one.
  if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
    std::fputs("5", f);
    std::fclose(f);
  }
}

void KvOption::add(CLI::App* cmd, const std::string& whose) {
  cmd->add_option("--kv-cache", type,
                  "KV-cache type" + whose + ": f32, bf16, int8, int4, fp8 (E4M3), or auto (the default: the model's "
                  "own KV-cache type if `llmq quantize --kv-cache` or `llmq qat` gave it one, else f32)");
  cmd->add_option("--kv-scales", scales,
                  "int8/fp8 caches: static (the model's calibrated per-head scales; values beyond saturate), dynamic "
                  "(each cached row scaled by its own max), or auto (static when the model has them, the default)");
}

KvType KvOption::resolve(Model& m) const {
  if (scales != "auto" && scales != "static" && scales != "dynamic")
    fail("--kv-scales {}: choose static, dynamic or auto", scales);
  const bool has = !m.weights.layers.empty() && !m.weights.layers[0].k_amax.empty();
  if (scales == "static" && !has)
    fail("{}: --kv-scales static, but the model has no calibrated KV-cache scales (make them with `llmq quantize "
         "--kv-cache int8|fp8 --calib ...`)", m.source);
  if (scales == "dynamic")
    for (auto& L : m.weights.layers) L.k_amax.clear(), L.v_amax.clear();
  return kv_type_for(m.config, type);
}

void shard_for_tp(Model& m, int tp, const char* command) {
  if (tp <= 1 && !dist::launched_by_mpirun()) return;
  dist::Communicator& w = dist::world();
  if (w.size() != tp && tp <= 1)
    fail("this job has {} ranks: give --tp {} to split the model over them (mpirun -np {} llmq {} --tp {} ...), or run "
         "one process without mpirun", w.size(), w.size(), w.size(), command, w.size());
  if (w.size() != tp)
    fail("--tp {} needs a job of {} ranks (mpirun -np {} llmq {} --tp {} ...); this one has {}", tp, tp, tp, command,
         tp, w.size());
  dist::shard_model_tp(m, w.rank(), tp, w);
  if (w.rank() != 0 && !std::freopen("/dev/null", "w", stdout)) fail("cannot silence rank {}'s output", w.rank());
}

void TokenSource::add(CLI::App* c) {
  auto* tk = c->add_option("--tokens", tokens, "file of whitespace-separated token ids");
  auto* tx = c->add_option("--text", text, "text file, tokenized with the model's tokenizer (BOS first)");
  auto* dt = c->add_option("--data", data, "a prepared data directory (`llmq data prepare`): its held-out split");
  tk->excludes(tx)->excludes(dt);
  tx->excludes(dt);
  c->add_option("--split", split, "split of --data: val (default) or train");
  c->add_option("--tokenizer", tokenizer, "tokenizer for --text (default: the model directory's)");
  c->add_option("--max-tokens", max_tokens, "score at most this many tokens (default: all)");
}

std::vector<int32_t> TokenSource::load(const std::string& model_dir, const ModelConfig& cfg) const {
  if ((int)!tokens.empty() + (int)!text.empty() + (int)!data.empty() != 1)
    fail("give one of --tokens FILE, --text FILE or --data DIR");
  std::vector<int32_t> toks;
  if (!text.empty()) {
    auto tok = tokenizer_load(tokenizer.empty() ? model_dir : tokenizer);
    check_tokenizer_fits(*tok, cfg, model_dir);
    if (tok->add_bos && tok->bos_id >= 0) toks.push_back(tok->bos_id);
    auto v = tok->encode(read_text_file(text), false);
    toks.insert(toks.end(), v.begin(), v.end());
  } else if (!data.empty()) {
    const std::string tk = !tokenizer.empty() ? tokenizer : std::filesystem::is_directory(model_dir) ? tokenizer_find(model_dir) : "";
    toks = data_split_tokens(data, split, max_tokens, tk);
  } else {
    toks = read_token_file(tokens);
  }
  if (max_tokens > 0 && (int64_t)toks.size() > max_tokens) toks.resize(max_tokens);
  return toks;
}

}  // namespace llmq::cli
