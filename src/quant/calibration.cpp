#include "quant/calibration.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "core/rng.h"
#include "data/shards.h"
#include "tokenizer/tokenizer.h"

namespace llmq {

namespace fs = std::filesystem;

std::vector<std::string> calib_jsonl_texts(const std::string& all, const std::string& path, const std::string& field) {
  std::vector<std::string> out;
  size_t line = 0, pos = 0;
  while (pos < all.size()) {
    size_t end = all.find('\n', pos);
    if (end == std::string::npos) end = all.size();
    const std::string s = all.substr(pos, end - pos);
    pos = end + 1;
    line++;
    if (s.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(s, nullptr, false);
    if (j.is_discarded()) fail("{}:{}: not a JSON object (JSONL calibration files hold one {{\"text\": ...}} per line)", path, line);
    if (!j.is_object() || !j.contains(field) || !j[field].is_string())
      fail("{}:{}: the line has no \"{}\" string (JSONL calibration files hold one {{\"{}\": ...}} per line; "
           "--text-field names another field)", path, line, field, field);
    out.push_back(j[field].get<std::string>());
  }
  return out;
}

namespace {

// Windows from one token stream at seeded random starts.
void draw_windows(const std::vector<int32_t>& toks, const CalibOptions& o, CalibData& d, const std::string& where) {
  const int64_t n = (int64_t)toks.size();
  if (n < o.seq_len)
    fail("{}: {} tokens, fewer than one calibration window of {} (give more text or a smaller --calib-seq-len)", where,
         n, o.seq_len);
  Rng rng{splitmix64(o.seed ^ 0xca11b), 0};
  for (int64_t s = 0; s < o.samples; s++) {
    const int64_t start = (int64_t)(rng.uniform() * (double)(n - o.seq_len + 1));
    d.seqs.emplace_back(toks.begin() + start, toks.begin() + start + o.seq_len);
  }
  d.source_tokens = n;
  // Windows drawn from too little text repeat it: say how often each token is seen.
  if (o.samples * o.seq_len > 2 * n)
    fmt::print(stderr, "warning: {} calibration windows of {} tokens from {} tokens of {}: each token is in ~{:.0f} windows "
               "(give more text, or fewer --calib-samples)\n", o.samples, o.seq_len, n, where,
               (double)(o.samples * o.seq_len) / (double)n);
}

}  // namespace

CalibData calib_load(const CalibOptions& o, const std::string& model_dir, int64_t vocab) {
  if (o.source.empty()) fail("this method needs calibration data: give --calib FILE|DATA_DIR (text, .jsonl or a "
                             "directory from `llmq data prepare`)");
  if (o.samples < 1) fail("--calib-samples must be at least 1, got {}", o.samples);
  if (o.seq_len < 2) fail("--calib-seq-len must be at least 2, got {}", o.seq_len);
  if (!fs::exists(o.source)) fail("{}: no such calibration file or directory", o.source);
  CalibData d;
  if (fs::is_directory(o.source)) {
    d.kind = "shards";
    TokenDataset ds = token_dataset_open(o.source);
    // The shards must come from the model's tokenizer, as train requires.
    const std::string tk = !o.tokenizer.empty() ? o.tokenizer : fs::is_directory(model_dir) ? tokenizer_find(model_dir) : "";
    if (!tk.empty())
      ds.require_tokenizer(tokenizer_load(tk)->fingerprint(), tk);
    else
      fmt::print(stderr, "warning: the model has no tokenizer, so {}'s tokenizer ({}) cannot be checked against it\n",
                 o.source, ds.manifest.tokenizer_source);
    if (ds.manifest.vocab_size > vocab)
      fail("{}: the data's tokenizer has {} ids but the model's vocabulary is {}", o.source, ds.manifest.vocab_size, vocab);
    const TokenSplit& sp = ds.train.tokens > 0 ? ds.train : ds.val;
    // Starts that keep the window inside one shard, numbered across shards.
    std::vector<int64_t> starts;  // cumulative count of valid starts per shard
    int64_t total = 0;
    for (const auto& sh : sp.shards) {
      total += std::max<int64_t>(0, sh.tokens - o.seq_len + 1);
      starts.push_back(total);
    }
    if (total == 0)
      fail("{}: no shard holds a calibration window of {} tokens (give a smaller --calib-seq-len)", o.source, o.seq_len);
    Rng rng{splitmix64(o.seed ^ 0xca11b), 0};
    for (int64_t s = 0; s < o.samples; s++) {
      int64_t g = std::min(total - 1, (int64_t)(rng.uniform() * (double)total));
      size_t k = 0;
      while (starts[k] <= g) k++;
      const int64_t off = g - (k ? starts[k - 1] : 0);
      const uint32_t* ids = sp.shards[k].ids() + off;
      std::vector<int32_t> w((size_t)o.seq_len);
      for (int64_t i = 0; i < o.seq_len; i++) {
        const uint32_t id = ids[i] & ~kLossMaskBit;  // chat data: the mask does not matter here
        if ((int64_t)id >= vocab)
          fail("{}: token id {} is outside the model's vocabulary of {} (data prepared with another tokenizer?)",
               o.source, id, vocab);
        w[i] = (int32_t)id;
      }
      d.seqs.push_back(std::move(w));
    }
    d.source_tokens = sp.tokens;
    return d;
  }
  std::vector<std::string> docs;  // read (and checked) before the tokenizer is needed
  if (o.source.ends_with(".jsonl")) {
    d.kind = "jsonl";
    docs = calib_jsonl_texts(read_text_file(o.source), o.source, o.text_field);
  } else {
    d.kind = "text";
    docs.push_back(read_text_file(o.source));
  }
  auto tok = tokenizer_load(o.tokenizer.empty() ? model_dir : o.tokenizer);
  if (tok->vocab_size() > vocab)
    fail("{}: the tokenizer has {} tokens but the model only {} (give the model's tokenizer with --tokenizer)",
         o.source, tok->vocab_size(), vocab);
  std::vector<int32_t> toks;
  for (const auto& doc : docs) {
    if (tok->add_bos && tok->bos_id >= 0) toks.push_back(tok->bos_id);
    auto v = tok->encode(doc, false);
    toks.insert(toks.end(), v.begin(), v.end());
  }
  draw_windows(toks, o, d, o.source);
  return d;
}

}  // namespace llmq
