#include "infer/datagen.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "infer/generator.h"

namespace llmq {

std::pair<int, int> parse_greedy_prefix(const std::string& s) {
  int lo = 0, hi = 0;
  char dash = 0, extra = 0;
  const int n = std::sscanf(s.c_str(), "%d%c%d%c", &lo, &dash, &hi, &extra);
  if (n == 1) hi = lo;
  else if (!(n == 3 && dash == '-')) fail("--greedy-prefix {}: give a length or a range such as 3-5", s);
  if (lo < 1 || hi < lo || hi > 64) fail("--greedy-prefix {}: lengths from 1 to 64, the first not above the second", s);
  return {lo, hi};
}

namespace {
// The ids that decode to text (not BOS/EOS or other special tokens, which decode to nothing
// with special tokens skipped).
std::vector<int32_t> text_tokens(const Model& m, const Tokenizer& tok) {
  const int64_t V = std::min<int64_t>(tok.vocab_size(), m.config.vocab_size);
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < V; id++) {
    const int32_t one[1] = {id};
    if (!tok.decode(one, true).empty()) ids.push_back(id);
  }
  if (ids.empty()) fail("data generate: the tokenizer has no text tokens");
  return ids;
}

// The k-th first token: the golden-ratio sequence over the text tokens, which spreads any
// number of leading samples evenly over the vocabulary (so the layout does not depend on
// --samples, and raising it continues a file).
int32_t first_token(const std::vector<int32_t>& ids, int64_t k) {
  const double g = 0.6180339887498949;
  const double f = std::fmod(((double)k + 0.5) * g, 1.0);
  return ids[std::min(ids.size() - 1, (size_t)(f * (double)ids.size()))];
}
}  // namespace

std::vector<std::vector<int32_t>> generate_samples(const Model& m, const Tokenizer& tok, const DataGenOptions& o,
                                                   int64_t s0, int64_t s1) {
  const int64_t groups = o.greedy_hi - o.greedy_lo + 1;
  const bool bos = tok.add_bos && tok.bos_id >= 0;
  if (o.seq_len < o.greedy_hi + (bos ? 1 : 0) + 1)
    fail("data generate: --seq-len {} leaves no room to sample after a greedy prefix of {}", o.seq_len, o.greedy_hi);
  if (o.seq_len > m.config.max_seq_len)
    fail("data generate: --seq-len {} exceeds the model's context of {} tokens", o.seq_len, m.config.max_seq_len);
  const std::vector<int32_t> ids = text_tokens(m, tok);
  std::vector<int32_t> eos(m.config.eos_token_ids.begin(), m.config.eos_token_ids.end());
  for (int32_t e : tok.eos_ids)
    if (std::find(eos.begin(), eos.end(), e) == eos.end()) eos.push_back(e);
  std::vector<std::vector<int32_t>> out((size_t)(s1 - s0));
  // Sample s: first token first_token(s / groups), prefix length lo + s % groups (each first
  // token with every prefix length, as LLM-QAT's loops). One pair of generate calls per
  // prefix length; sample s samples with seed + s whatever the batch.
  for (int64_t j = o.greedy_lo; j <= o.greedy_hi; j++) {
    std::vector<int64_t> which;
    for (int64_t s = s0; s < s1; s++)
      if (o.greedy_lo + s % groups == j) which.push_back(s);
    if (which.empty()) continue;
    std::vector<std::vector<int32_t>> prompts;
    for (int64_t s : which) {
      std::vector<int32_t> p;
      if (bos) p.push_back(tok.bos_id);
      p.push_back(first_token(ids, s / groups));
      prompts.push_back(std::move(p));
    }
    // The greedy continuation to j tokens (first token included).
    GenerateOptions g;
    g.max_new_tokens = (int)j - 1;
    g.sampling = SamplingParams{0.f, 0, 1.f, 0.f, 1.f, 0, 0};
    g.eos_ids = eos;
    std::vector<bool> ended(prompts.size(), false);
    if (j > 1) {
      const auto r = generate(m, prompts, g);
      for (size_t i = 0; i < prompts.size(); i++) {
        prompts[i].insert(prompts[i].end(), r[i].tokens.begin(), r[i].tokens.end());
        ended[i] = r[i].reason == StopReason::Eos;
      }
    }
    // Then sampled to seq_len, sample s with seed + s (the samples of one prefix length are
    // every groups-th, so the seeds are given per sequence).
    size_t plen = 0;
    for (const auto& p : prompts) plen = std::max(plen, p.size());
    GenerateOptions sm;
    sm.max_new_tokens = (int)(o.seq_len - (int64_t)plen);
    sm.sampling = SamplingParams{o.temperature, o.top_k, 1.f, 0.f, 1.f, 0, o.seed};
    for (int64_t s : which) sm.seeds.push_back(o.seed + (uint64_t)s);
    sm.eos_ids = eos;
    const auto r = generate(m, prompts, sm);
    for (size_t i = 0; i < prompts.size(); i++) {
      std::vector<int32_t> t = prompts[i];
      if (!ended[i]) t.insert(t.end(), r[i].tokens.begin(), r[i].tokens.end());
      out[(size_t)(which[i] - s0)] = std::move(t);
    }
  }
  return out;
}

namespace {
// Complete lines at the start of the file: their count and byte length (a last line without
// its newline, or one that is not a JSON object with "text", is a killed run's partial write).
std::pair<int64_t, int64_t> complete_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {0, 0};
  std::string line;
  int64_t n = 0, bytes = 0;
  while (std::getline(in, line)) {
    if (in.eof()) break;  // no newline after it
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("text") || !j["text"].is_string()) {
      fail("{}:{}: not a line llmq data generate writes ({{\"text\": ...}}); give another --out or remove it", path,
           n + 1);
    }
    n++, bytes += (int64_t)line.size() + 1;
  }
  return {n, bytes};
}
}  // namespace

DataGenResult generate_data_file(const Model& m, const Tokenizer& tok, const DataGenOptions& o, const std::string& path,
                                 const std::function<void(int64_t, int64_t)>& progress) {
  if (o.samples < 1 || o.batch < 1) fail("data generate: --samples and --batch must be positive");
  const auto t0 = std::chrono::steady_clock::now();
  DataGenResult r;
  auto [kept, bytes] = complete_lines(path);
  if (kept > o.samples)
    fail("{}: already holds {} samples, more than --samples {}; give at least that many or another --out", path, kept,
         o.samples);
  r.kept = kept;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT, 0644);
  if (fd < 0) fail("{}: cannot open for writing: {}", path, std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  // A partial last line of a killed run goes; the complete ones stay.
  if (::ftruncate(fd, bytes) != 0) fail("{}: cannot truncate: {}", path, std::strerror(errno));
  if (progress) progress(kept, o.samples);
  for (int64_t s0 = kept; s0 < o.samples; s0 += o.batch) {
    const int64_t s1 = std::min(o.samples, s0 + o.batch);
    std::string chunk;
    for (const auto& t : generate_samples(m, tok, o, s0, s1)) {
      chunk += nlohmann::json{{"text", tok.decode(t, true)}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
      r.tokens += (int64_t)t.size();
    }
    // The batch's lines whole or not at all: on a failed write the file goes back to its
    // last complete line.
    size_t done = 0;
    while (done < chunk.size()) {
      const ssize_t w = ::pwrite(fd, chunk.data() + done, chunk.size() - done, (off_t)(bytes + (int64_t)done));
      if (w <= 0) {
        const int err = errno;
        if (::ftruncate(fd, bytes) != 0) {}
        fail("{}: writing samples {}-{} failed ({}); the file keeps its {} complete samples: free space and run again to "
             "continue", path, s0 + 1, s1, std::strerror(err), s0);
      }
      done += (size_t)w;
    }
    if (::fsync(fd) != 0) {
      const int err = errno;
      if (::ftruncate(fd, bytes) != 0) {}
      fail("{}: fsync failed ({}); the file keeps its {} complete samples", path, std::strerror(err), s0);
    }
    bytes += (int64_t)chunk.size();
    r.written += s1 - s0;
    if (progress) progress(s1, o.samples);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace llmq
