// Token-shard manifest (JSON) and validated opening of a prepared data directory.
#include "data/shards.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace llmq {

namespace {
nlohmann::json split_json(const SplitInfo& s) {
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& sh : s.shards)
    shards.push_back({{"file", sh.file}, {"index", sh.index}, {"tokens", sh.tokens}, {"documents", sh.documents}});
  return {{"tokens", s.tokens}, {"documents", s.documents}, {"shards", shards}};
}

// A shard file name must be a plain name inside the directory (no paths from the manifest
// may point elsewhere).
bool plain_name(const std::string& f) {
  return !f.empty() && f.find('/') == std::string::npos && f != "." && f != ".." && f.find('\0') == std::string::npos;
}

SplitInfo split_parse(const nlohmann::json& j, const std::string& path, const char* name) {
  auto bad = [&](const std::string& what) { return Error(fmt::format("{}: splits.{}: {}", path, name, what)); };
  if (!j.is_object()) throw bad("must be an object");
  auto count = [&](const nlohmann::json& o, const char* k) -> int64_t {
    if (!o.contains(k) || !o[k].is_number_integer() || o[k].get<int64_t>() < 0) throw bad(fmt::format("\"{}\" must be a non-negative integer", k));
    return o[k].get<int64_t>();
  };
  SplitInfo s;
  s.tokens = count(j, "tokens");
  s.documents = count(j, "documents");
  if (!j.contains("shards") || !j["shards"].is_array()) throw bad("\"shards\" must be an array");
  int64_t tok = 0, docs = 0;
  for (const auto& sh : j["shards"]) {
    if (!sh.is_object() || !sh.contains("file") || !sh["file"].is_string() || !sh.contains("index") || !sh["index"].is_string())
      throw bad("each shard needs \"file\" and \"index\" names");
    ShardInfo si{sh["file"].get<std::string>(), sh["index"].get<std::string>(), count(sh, "tokens"), count(sh, "documents")};
    if (!plain_name(si.file) || !plain_name(si.index)) throw bad(fmt::format("shard name \"{}\" is not a plain file name", si.file));
    if (si.tokens > (int64_t(1) << 40) || si.documents > si.tokens) throw bad(fmt::format("shard {} has impossible counts", si.file));
    tok += si.tokens, docs += si.documents;
    s.shards.push_back(si);
  }
  if (tok != s.tokens || docs != s.documents) throw bad("token or document counts do not add up over the shards");
  return s;
}
}  // namespace

std::string ShardManifest::to_json() const {
  nlohmann::json j = {{"format", kShardFormat},
                      {"dtype", "uint32"},
                      {"tokenizer",
                       {{"fingerprint", tokenizer_fingerprint},
                        {"kind", tokenizer_kind},
                        {"source", tokenizer_source},
                        {"vocab_size", vocab_size},
                        {"bos_id", bos_id},
                        {"eos_id", eos_id}}},
                      {"splits", {{"train", split_json(train)}, {"val", split_json(val)}}}};
  if (loss_mask) j["loss_mask"] = true;
  return j.dump(2) + "\n";
}

ShardManifest ShardManifest::parse(const std::string& text, const std::string& path) {
  // A field of an unexpected JSON type anywhere below is one error naming the file.
  try {
    return parse_checked(text, path);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: a field has the wrong JSON type ({})", path, e.what());
  }
}

ShardManifest ShardManifest::parse_checked(const std::string& text, const std::string& path) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail("{}: malformed JSON ({})", path, e.what());
  }
  if (!j.is_object() || !j.contains("format") || j["format"] != kShardFormat)
    fail("{}: not a token-shard manifest (\"format\" must be \"{}\")", path, kShardFormat);
  if (!j.contains("dtype") || j["dtype"] != "uint32") fail("{}: dtype must be \"uint32\"", path);
  if (!j.contains("tokenizer") || !j["tokenizer"].is_object()) fail("{}: missing \"tokenizer\" object", path);
  const auto& t = j["tokenizer"];
  ShardManifest m;
  if (!t.contains("fingerprint") || !t["fingerprint"].is_string()) fail("{}: tokenizer.fingerprint must be a string", path);
  if (!t.contains("vocab_size") || !t["vocab_size"].is_number_integer() || t["vocab_size"].get<int64_t>() <= 0 ||
      t["vocab_size"].get<int64_t>() > (int64_t(1) << 31))
    fail("{}: tokenizer.vocab_size must be a positive integer", path);
  m.tokenizer_fingerprint = t["fingerprint"].get<std::string>();
  m.vocab_size = t["vocab_size"].get<int64_t>();
  m.tokenizer_kind = t.contains("kind") && t["kind"].is_string() ? t["kind"].get<std::string>() : "";
  m.tokenizer_source = t.contains("source") && t["source"].is_string() ? t["source"].get<std::string>() : "";
  auto id = [&](const char* k) -> int32_t {
    if (!t.contains(k)) return -1;
    if (!t[k].is_number_integer() || t[k].get<int64_t>() < -1 || t[k].get<int64_t>() >= m.vocab_size)
      fail("{}: tokenizer.{} must be -1 or an id below vocab_size", path, k);
    return t[k].get<int32_t>();
  };
  m.bos_id = id("bos_id");
  m.eos_id = id("eos_id");
  if (!j.contains("splits") || !j["splits"].is_object() || !j["splits"].contains("train") || !j["splits"].contains("val"))
    fail("{}: \"splits\" must hold \"train\" and \"val\"", path);
  if (j.contains("loss_mask")) {
    if (!j["loss_mask"].is_boolean()) fail("{}: \"loss_mask\" must be true or false", path);
    m.loss_mask = j["loss_mask"].get<bool>();
  }
  m.train = split_parse(j["splits"]["train"], path, "train");
  m.val = split_parse(j["splits"]["val"], path, "val");
  return m;
}

void TokenDataset::require_tokenizer(const std::string& fingerprint, const std::string& tokenizer_path) const {
  if (fingerprint != manifest.tokenizer_fingerprint)
    fail("{}: the data was tokenized with tokenizer {} ({}), but {} has fingerprint {}; re-run `llmq data prepare` "
         "with this tokenizer",
         dir, manifest.tokenizer_fingerprint, manifest.tokenizer_source, tokenizer_path, fingerprint);
}

TokenDataset token_dataset_open(const std::string& dir) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(dir)) fail("{}: not a directory (prepare data with `llmq data prepare`)", dir);
  const std::string mpath = (fs::path(dir) / "manifest.json").string();
  if (!fs::is_regular_file(mpath)) fail("{}: no manifest.json (an unfinished or foreign data directory)", dir);
  TokenDataset d;
  d.dir = dir;
  d.manifest = ShardManifest::parse(read_text_file(mpath), mpath);
  auto open_split = [&](const SplitInfo& si, TokenSplit& out) {
    for (const auto& sh : si.shards) {
      TokenSplit::Shard s;
      const std::string bin = (fs::path(dir) / sh.file).string(), idx = (fs::path(dir) / sh.index).string();
      if (!fs::is_regular_file(bin)) fail("{}: shard missing", bin);
      if (!fs::is_regular_file(idx)) fail("{}: shard index missing", idx);
      s.bin = map_file(bin);
      s.idx = map_file(idx);
      if (s.bin->size != (uint64_t)sh.tokens * 4)
        fail("{}: {} bytes, but the manifest says {} tokens ({} bytes): truncated or corrupt", bin, s.bin->size, sh.tokens,
             sh.tokens * 4);
      if (s.idx->size != (uint64_t)sh.documents * 8)
        fail("{}: {} bytes, but the manifest says {} documents: truncated or corrupt", idx, s.idx->size, sh.documents);
      s.tokens = sh.tokens;
      s.documents = sh.documents;
      const uint64_t* st = s.doc_starts();
      for (int64_t k = 0; k < s.documents; k++)
        if (st[k] >= (uint64_t)s.tokens || (k > 0 && st[k] <= st[k - 1]))
          fail("{}: document start {} is out of order or past the shard's end", idx, k);
      out.tokens += s.tokens;
      out.documents += s.documents;
      out.shards.push_back(std::move(s));
    }
  };
  open_split(d.manifest.train, d.train);
  open_split(d.manifest.val, d.val);
  return d;
}

}  // namespace llmq
