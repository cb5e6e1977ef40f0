// Data preparation: documents from text/JSONL files, parallel encoding in ordered batches,
// train/validation split by a seeded hash of the document index, atomic shard writes.
#include "data/prepare.h"

#include "tokenizer/chat.h"

#include <zlib.h>

#include <algorithm>
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

// The compression of a file from its first bytes ("" for none).
std::string compression_of(const std::string& path) {
  unsigned char m[6] = {};
  std::ifstream f(path, std::ios::binary);
  f.read(reinterpret_cast<char*>(m), 6);
  if (f.gcount() >= 2 && m[0] == 0x1f && m[1] == 0x8b) return "gzip";
  if (f.gcount() >= 6 && m[0] == 0xfd && m[1] == '7' && m[2] == 'z' && m[3] == 'X' && m[4] == 'Z' && m[5] == 0) return "xz";
  if (f.gcount() >= 4 && m[0] == 0x28 && m[1] == 0xb5 && m[2] == 0x2f && m[3] == 0xfd) return "zstd";
  if (f.gcount() >= 3 && m[0] == 'B' && m[1] == 'Z' && m[2] == 'h') return "bzip2";
  return "";
}

// A gzip file read as a stream (zlib), so .gz inputs are tokenized as the text they hold.
class GzBuf : public std::streambuf {
 public:
  explicit GzBuf(const std::string& path) : path_(path), gz_(gzopen(path.c_str(), "rb")) {
    if (!gz_) fail("{}: cannot open", path);
    gzbuffer(gz_, 1 << 17);
  }
  ~GzBuf() override { gzclose(gz_); }

 protected:
  int_type underflow() override {
    const int n = gzread(gz_, buf_, sizeof buf_);
    if (n < 0) {
      int err = 0;
      fail("{}: corrupt gzip data ({})", path_, gzerror(gz_, &err));
    }
    if (n == 0) return traits_type::eof();
    setg(buf_, buf_, buf_ + n);
    return traits_type::to_int_type(buf_[0]);
  }

 private:
  std::string path_;
  gzFile gz_;
  char buf_[1 << 16];
};

// Yields the documents of one input file in order (plain or gzip-compressed).
class DocReader {
 public:
  DocReader(const std::string& path, const PrepareOptions& o) : path_(path), o_(o), in_(nullptr) {
    if (compression_of(path) == "gzip") {
      buf_ = std::make_unique<GzBuf>(path);
    } else {
      auto fb = std::make_unique<std::filebuf>();
      if (!fb->open(path, std::ios::in | std::ios::binary)) fail("{}: cannot open", path);
      buf_ = std::move(fb);
    }
    in_.rdbuf(buf_.get());
    std::string fmt = o.format;
    if (fmt == "auto") {
      fs::path p(path);
      if (p.extension() == ".gz") p = p.stem();
      const auto ext = p.extension().string();
      fmt = (ext == ".jsonl" || ext == ".json") ? "jsonl" : "text";
    }
    jsonl_ = fmt == "jsonl" || fmt == "chat";
    chat_ = fmt == "chat";
  }
  int64_t line() const { return line_no_; }
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
        doc = chat_ ? std::move(line) : jsonl_text(line);  // chat lines are parsed where they are encoded
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
  std::unique_ptr<std::streambuf> buf_;
  std::istream in_;
  bool jsonl_ = false, chat_ = false, done_ = false;
  int64_t line_no_ = 0;
};

// One chat JSONL line -> token ids, prompt tokens with kLossMaskBit. The conversation is
// rendered with the template up to each assistant turn (with the generation prompt) and
// through it: what the turn adds is trained on, the rest is not. Each piece is encoded on
// its own (with special tokens), so pieces split where the template's markup does.
std::vector<uint32_t> encode_chat(const Tokenizer& tok, const std::string& line, const std::string& where,
                                  const PrepareOptions& o, int64_t* targets) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail("{}: not a JSON object (chat JSONL needs one object per line)", where);
  if (!j.contains("messages") || !j["messages"].is_array() || j["messages"].empty())
    fail("{}: no \"messages\" list (chat JSONL lines are {{\"messages\": [{{\"role\": ..., \"content\": ...}}, ...]}})",
         where);
  std::vector<ChatMessage> msgs;
  bool any = false;
  for (const auto& m : j["messages"]) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string())
      fail("{}: message {} needs a string \"role\" and a string \"content\"", where, msgs.size() + 1);
    msgs.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    any = any || msgs.back().role == "assistant";
  }
  if (!any) fail("{}: the conversation has no assistant message, so nothing in it would be trained on", where);
  std::vector<uint32_t> out;
  auto add = [&](const std::string& text, bool train) {
    const std::vector<int32_t> v = tok.encode(text, true);
    for (int32_t id : v) out.push_back(train ? (uint32_t)id : (uint32_t)id | kLossMaskBit);
    if (train) *targets += (int64_t)v.size();
  };
  const auto broken = [&] {
    fail("{}: the chat template does not render this conversation turn by turn (a rendering up to a turn is not a prefix "
         "of the one through it), so the assistant tokens cannot be found", where);
  };
  // Some templates end every rendering with the generation prompt, asked for or not (the
  // first Llama 3 Instruct template does): what a rendering of no messages gives, when a
  // rendering ends with it, is cut off, so a turn ends where its message does.
  std::string always;
  try {
    always = chat_render({}, o.chat_template, o.bos_text, false);
  } catch (const std::exception&) {
  }
  auto render = [&](const std::vector<ChatMessage>& m) {
    std::string r = chat_render(m, o.chat_template, o.bos_text, false);
    if (!always.empty() && r.size() > always.size() && r.compare(r.size() - always.size(), always.size(), always) == 0)
      r.resize(r.size() - always.size());
    return r;
  };
  std::string cur;
  for (size_t i = 0; i < msgs.size(); i++) {
    if (msgs[i].role != "assistant") continue;
    const std::vector<ChatMessage> before(msgs.begin(), msgs.begin() + (long)i), through(msgs.begin(), msgs.begin() + (long)i + 1);
    const std::string P = chat_render(before, o.chat_template, o.bos_text, true);
    const std::string Q = render(through);
    if (P.compare(0, cur.size(), cur) != 0 || Q.compare(0, P.size(), P) != 0) broken();
    add(P.substr(cur.size()), false);
    add(Q.substr(P.size()), true);
    cur = Q;
  }
  const std::string all = render(msgs);
  if (all.compare(0, cur.size(), cur) != 0) broken();
  if (all.size() > cur.size()) add(all.substr(cur.size()), false);
  return out;
}

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
  if (o.format != "auto" && o.format != "text" && o.format != "jsonl" && o.format != "chat")
    fail("data prepare: --format must be auto, text, jsonl or chat");
  const bool chat = o.format == "chat";
  // Inputs: files, and directories walked (recursively, in name order, hidden files skipped).
  std::vector<std::string> inputs;
  for (const auto& f : o.inputs) {
    if (fs::is_directory(f)) {
      std::vector<std::string> found;
      for (const auto& e : fs::recursive_directory_iterator(f))
        if (e.is_regular_file() && e.path().filename().string()[0] != '.') found.push_back(e.path().string());
      if (found.empty()) fail("{}: the directory holds no files", f);
      std::sort(found.begin(), found.end());
      inputs.insert(inputs.end(), found.begin(), found.end());
    } else if (fs::is_regular_file(f)) {
      inputs.push_back(f);
    } else {
      fail("{}: no such input file or directory", f);
    }
  }
  uint64_t total = 0;
  for (const auto& f : inputs) {
    const std::string c = compression_of(f);
    if (!c.empty() && c != "gzip")
      fail("{}: {}-compressed input; llmq reads plain text, JSONL and gzip (.gz): decompress it first", f, c);
    uint64_t n = fs::file_size(f);
    if (c == "gzip" && n >= 18) {  // progress counts text bytes: the gzip trailer's size (mod 2^32)
      unsigned char t[4];
      std::ifstream g(f, std::ios::binary);
      g.seekg(-4, std::ios::end);
      g.read(reinterpret_cast<char*>(t), 4);
      n = (uint64_t)t[0] | (uint64_t)t[1] << 8 | (uint64_t)t[2] << 16 | (uint64_t)t[3] << 24;
    }
    total += n;
  }
  fs::create_directories(o.out_dir);
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t bos = o.bos && tok.add_bos ? tok.bos_id : -1;
  const int32_t eos = o.eos && !tok.eos_ids.empty() ? tok.eos_ids.front() : -1;
  ShardWriter train(o.out_dir, "train", o.shard_tokens), val(o.out_dir, "val", o.shard_tokens);
  PrepareStats st;
  Progress bar("data prepare", total, o.progress);
  std::vector<std::string> batch, where;
  std::vector<std::vector<uint32_t>> ids;
  std::vector<int64_t> targets;
  auto flush = [&] {
    ids.assign(batch.size(), {});
    targets.assign(batch.size(), 0);
    std::string err;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < batch.size(); i++) {
      try {
        if (chat) {
          ids[i] = encode_chat(tok, batch[i], where[i], o, &targets[i]);
          continue;
        }
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
    for (int64_t t : targets) st.target_tokens += t;
    for (size_t i = 0; i < batch.size(); i++) {
      const int64_t index = st.documents++;
      const bool is_val = (double)(splitmix64(o.seed * 0x100000001b3ull + (uint64_t)index) >> 11) * 0x1.0p-53 < o.val_fraction;
      (is_val ? val : train).add(ids[i]);
    }
    batch.clear();
    where.clear();
    bar.update((uint64_t)st.bytes);
  };
  int64_t batch_bytes = 0;
  std::string doc;
  for (const auto& f : inputs) {
    DocReader r(f, o);
    while (r.next(doc, st.bytes)) {
      if (doc.empty()) {
        st.empty_documents++;
        continue;
      }
      batch_bytes += (int64_t)doc.size();
      batch.push_back(std::move(doc));
      if (chat) where.push_back(fmt::format("{}:{}", f, r.line()));
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
  m.loss_mask = chat;
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
