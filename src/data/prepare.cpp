// Data preparation: documents from text/JSONL files, parallel encoding in ordered batches,
// train/validation split by a seeded hash of the document index, atomic shard writes.
#include "data/prepare.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "data/shards.h"

namespace llmq {

namespace fs = std::filesystem;

namespace {

// Yields the documents of one input file in order.
class DocReader {
 public:
  DocReader(const std::string& path, const PrepareOptions& o) : path_(path), o_(o), in_(path, std::ios::binary) {
    if (!in_) fail("{}: cannot open", path);
    std::string fmt = o.format;
    if (fmt == "auto") {
      auto ext = fs::path(path).extension().string();
      fmt = (ext == ".jsonl" || ext == ".json") ? "jsonl" : "text";
    }
    jsonl_ = fmt == "jsonl";
  }
  // Next document into `doc`; false at the end. `bytes` accumulates bytes consumed.
  bool next(std::string& doc, int64_t& bytes) {
    doc.clear();
    if (!jsonl_ && o_.docs == "file") {
      if (done_) return false;
      done_ = true;
      doc.assign(std::istreambuf_iterator<char>(in_), {});
      bytes += (int64_t)doc.size();
      return true;
    }
    std::string line;
    bool any = false;
    while (std::getline(in_, line)) {
      line_no_++;
      bytes += (int64_t)line.size() + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (jsonl_) {
        if (line.find_first_not_of(" \t") == std::string::npos) continue;
        doc = jsonl_text(line);
        return true;
      }
      if (o_.docs == "lines") {
        if (line.empty()) continue;
        doc = std::move(line);
        return true;
      }
      // blank-line separated paragraphs: lines joined with '\n'
      if (line.find_first_not_of(" \t") == std::string::npos) {
        if (any) return true;
        continue;
      }
      if (any) doc += '\n';
      doc += line;
      any = true;
    }
    return any;
  }

 private:
  std::string jsonl_text(const std::string& line) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception&) {
      fail("{}:{}: not a JSON object (JSONL needs one object per line)", path_, line_no_);
    }
    if (!j.is_object() || !j.contains(o_.text_field) || !j[o_.text_field].is_string())
      fail("{}:{}: the object has no string field \"{}\" (choose another with --text-field)", path_, line_no_,
           o_.text_field);
    return j[o_.text_field].get<std::string>();
  }
  std::string path_;
  const PrepareOptions& o_;
  std::ifstream in_;
  bool jsonl_ = false, done_ = false;
  int64_t line_no_ = 0;
};

// Appends whole documents to numbered shard files of one split.
class ShardWriter {
 public:
  ShardWriter(std::string dir, std::string split, int64_t max_tokens)
      : dir_(std::move(dir)), split_(std::move(split)), max_(max_tokens) {}
  void add(const std::vector<uint32_t>& doc) {
    if (doc.empty()) return;
    if (bin_ && cur_ + (int64_t)doc.size() > max_) close_shard();
    if (!bin_) open_shard();
    starts_.push_back((uint64_t)cur_);
    bin_->write(doc.data(), doc.size() * 4);
    cur_ += (int64_t)doc.size();
  }
  SplitInfo finish() {
    if (bin_) close_shard();
    return info_;
  }

 private:
  void open_shard() {
    name_ = fmt::format("{}_{:06}", split_, info_.shards.size());
    bin_ = std::make_unique<AtomicFile>((fs::path(dir_) / (name_ + ".bin")).string());
    cur_ = 0;
    starts_.clear();
  }
  void close_shard() {
    bin_->commit();
    bin_.reset();
    AtomicFile idx((fs::path(dir_) / (name_ + ".idx")).string());
    idx.write(starts_.data(), starts_.size() * 8);
    idx.commit();
    info_.shards.push_back({name_ + ".bin", name_ + ".idx", cur_, (int64_t)starts_.size()});
    info_.tokens += cur_;
    info_.documents += (int64_t)starts_.size();
  }
  std::string dir_, split_, name_;
  int64_t max_, cur_ = 0;
  std::unique_ptr<AtomicFile> bin_;
  std::vector<uint64_t> starts_;
  SplitInfo info_;
};

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
}  // namespace

PrepareStats data_prepare(const Tokenizer& tok, const PrepareOptions& o) {
  if (o.inputs.empty()) fail("data prepare: give at least one --input file");
  if (o.val_fraction < 0 || o.val_fraction >= 1) fail("data prepare: --val-fraction must be in [0, 1)");
  if (o.docs != "lines" && o.docs != "blank" && o.docs != "file") fail("data prepare: --docs must be lines, blank or file");
  if (o.format != "auto" && o.format != "text" && o.format != "jsonl") fail("data prepare: --format must be auto, text or jsonl");
  uint64_t total = 0;
  for (const auto& f : o.inputs) {
    if (!fs::is_regular_file(f)) fail("{}: no such input file", f);
    total += fs::file_size(f);
  }
  fs::create_directories(o.out_dir);
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t bos = o.bos && tok.add_bos ? tok.bos_id : -1;
  const int32_t eos = o.eos && !tok.eos_ids.empty() ? tok.eos_ids.front() : -1;
  ShardWriter train(o.out_dir, "train", o.shard_tokens), val(o.out_dir, "val", o.shard_tokens);
  PrepareStats st;
  Progress bar("data prepare", total, o.progress);
  std::vector<std::string> batch;
  std::vector<std::vector<uint32_t>> ids;
  auto flush = [&] {
    ids.assign(batch.size(), {});
    std::string err;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < batch.size(); i++) {
      try {
        auto v = tok.encode(batch[i], false);
        auto& d = ids[i];
        d.reserve(v.size() + 2);
        if (bos >= 0) d.push_back((uint32_t)bos);
        d.insert(d.end(), v.begin(), v.end());
        if (eos >= 0) d.push_back((uint32_t)eos);
      } catch (const std::exception& e) {
#pragma omp critical
        err = e.what();
      }
    }
    if (!err.empty()) throw Error(err);
    for (size_t i = 0; i < batch.size(); i++) {
      const int64_t index = st.documents++;
      const bool is_val = (double)(splitmix64(o.seed * 0x100000001b3ull + (uint64_t)index) >> 11) * 0x1.0p-53 < o.val_fraction;
      (is_val ? val : train).add(ids[i]);
    }
    batch.clear();
    bar.update((uint64_t)st.bytes);
  };
  int64_t batch_bytes = 0;
  std::string doc;
  for (const auto& f : o.inputs) {
    DocReader r(f, o);
    while (r.next(doc, st.bytes)) {
      if (doc.empty()) {
        st.empty_documents++;
        continue;
      }
      batch_bytes += (int64_t)doc.size();
      batch.push_back(std::move(doc));
      if (batch_bytes >= o.batch_bytes) flush(), batch_bytes = 0;
    }
  }
  flush();
  bar.finish();
  ShardManifest m;
  m.tokenizer_fingerprint = tok.fingerprint();
  m.tokenizer_kind = tok.kind();
  m.tokenizer_source = tok.source();
  m.vocab_size = tok.vocab_size();
  m.bos_id = bos;
  m.eos_id = eos;
  m.train = train.finish();
  m.val = val.finish();
  write_file_atomic((fs::path(o.out_dir) / "manifest.json").string(), m.to_json());
  st.train_tokens = m.train.tokens;
  st.val_tokens = m.val.tokens;
  st.train_docs = m.train.documents;
  st.val_docs = m.val.documents;
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace llmq
