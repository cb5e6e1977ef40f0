#include "eval/tasks.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "eval/perplexity.h"

namespace llmq {

namespace {
using json = nlohmann::json;

// Characters (Unicode code points) of UTF-8 text: the harness's len(choice).
int64_t chars(const std::string& s) {
  int64_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace((unsigned char)s[b])) b++;
  while (e > b && std::isspace((unsigned char)s[e - 1])) e--;
  return s.substr(b, e - b);
}

int32_t argmax(const float* x, int64_t n) {
  return (int32_t)(std::max_element(x, x + n) - x);
}
}  // namespace

std::vector<TaskItem> load_tasks(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open the task file", path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return parse_tasks(text, path);
}

std::vector<TaskItem> parse_tasks(const std::string& text, const std::string& path) {
  const std::string stem = std::filesystem::path(path).stem().string();
  std::vector<TaskItem> items;
  std::string line;
  std::istringstream in(text);
  for (int64_t ln = 1; std::getline(in, line); ln++) {
    if (trim(line).empty()) continue;
    const json j = json::parse(line, nullptr, false);
    auto bad = [&](const std::string& why) {
      fail("{}:{}: {} (a line is {{\"context\", \"choices\": [...], \"answer\": index}} or {{\"prompt\", \"answer\": "
           "\"text\"}})", path, ln, why);
    };
    if (j.is_discarded() || !j.is_object()) bad("not a JSON object");
    TaskItem it;
    it.task = j.contains("task") && j["task"].is_string() ? j["task"].get<std::string>() : stem;
    if (j.contains("arguments") && j.contains("doc_id")) {
      // lm-evaluation-harness's samples (--log_samples, samples_TASK_*.jsonl): "arguments" the
      // requests, as {"gen_args_0": {"arg_0": context, "arg_1": continuation}, ...} (0.4) or
      // [[context, continuation], ...] (older); a generation request's arg_1 is its options.
      // "target" is the right choice's index (or its text), or a generation's expected text.
      std::vector<std::pair<json, json>> req;
      const json& a = j["arguments"];
      if (a.is_object()) {
        for (size_t i = 0; a.contains("gen_args_" + std::to_string(i)); i++) {
          const json& g = a["gen_args_" + std::to_string(i)];
          if (!g.is_object() || !g.contains("arg_0") || !g.contains("arg_1")) bad("gen_args_N must hold arg_0 and arg_1");
          req.emplace_back(g["arg_0"], g["arg_1"]);
        }
      } else if (a.is_array()) {
        for (const auto& g : a) {
          if (!g.is_array() || g.size() != 2) bad("each of \"arguments\" must be a [context, continuation] pair");
          req.emplace_back(g[0], g[1]);
        }
      }
      if (req.empty() || req.size() != a.size())
        bad("\"arguments\" must be gen_args_0, gen_args_1, ... or [context, continuation] pairs");
      if (!req[0].first.is_string()) bad("a request's context (arg_0) must be a string");
      it.context = req[0].first.get<std::string>();
      if (!j.contains("target")) bad("a harness sample needs its \"target\"");
      const json& t = j["target"];
      if (req.size() == 1 && req[0].second.is_object()) {  // generate_until
        if (!t.is_string() || trim(t.get<std::string>()).empty()) bad("a generation sample's \"target\" must be the expected text");
        it.target = t.get<std::string>();
      } else {
        if (req.size() < 2) bad("a multiple-choice sample needs at least two choices");
        for (const auto& [c, cont] : req) {
          if (!c.is_string() || c.get<std::string>() != it.context) bad("the choices of a sample must share one context");
          if (!cont.is_string() || cont.get<std::string>().empty()) bad("every choice must be a non-empty string");
          it.choices.push_back(cont.get<std::string>());
        }
        if (t.is_number_integer()) {
          it.answer = t.get<int64_t>();
        } else if (t.is_string()) {
          for (size_t i = 0; i < it.choices.size() && it.answer < 0; i++)
            if (trim(it.choices[i]) == trim(t.get<std::string>())) it.answer = (int64_t)i;
          if (it.answer < 0) bad("\"target\" names no choice");
        } else {
          bad("\"target\" must be the right choice's index or text");
        }
        if (it.answer < 0 || it.answer >= (int64_t)it.choices.size())
          bad(fmt::format("answer {} is out of range for {} choices (0..{})", it.answer, it.choices.size(),
                          it.choices.size() - 1));
      }
      if (!j.contains("task") && stem.rfind("samples_", 0) == 0) {  // samples_TASK_2024-06-19T16-40-21.372063
        it.task = stem.substr(8);
        const size_t u = it.task.rfind('_');
        if (u != std::string::npos && u + 1 < it.task.size() && std::isdigit((unsigned char)it.task[u + 1]))
          it.task.resize(u);
      }
    } else if (j.contains("choices")) {
      if (!j.contains("context") || !j["context"].is_string()) bad("a multiple-choice line needs a \"context\" string");
      if (!j["choices"].is_array() || j["choices"].size() < 2) bad("\"choices\" must be an array of at least two strings");
      for (const auto& c : j["choices"]) {
        if (!c.is_string() || c.get<std::string>().empty()) bad("every choice must be a non-empty string");
        it.choices.push_back(c.get<std::string>());
      }
      if (!j.contains("answer") || !j["answer"].is_number_integer()) bad("\"answer\" must be the index of the right choice");
      it.answer = j["answer"].get<int64_t>();
      if (it.answer < 0 || it.answer >= (int64_t)it.choices.size())
        bad(fmt::format("answer {} is out of range for {} choices (0..{})", it.answer, it.choices.size(),
                        it.choices.size() - 1));
      it.context = j["context"].get<std::string>();
    } else {
      if (!j.contains("prompt") || !j["prompt"].is_string()) bad("a line needs \"choices\" or a \"prompt\" string");
      if (!j.contains("answer") || !j["answer"].is_string() || trim(j["answer"].get<std::string>()).empty())
        bad("a generation line's \"answer\" must be the expected text");
      it.context = j["prompt"].get<std::string>();
      it.target = j["answer"].get<std::string>();
    }
    items.push_back(std::move(it));
  }
  if (items.empty()) fail("{}: no tasks in the file", path);
  return items;
}

std::pair<std::vector<int32_t>, std::vector<int32_t>> encode_pair(const Tokenizer& tok, const std::string& context,
                                                                   const std::string& continuation) {
  // The harness: trailing whitespace of the context goes to the continuation; the whole is
  // encoded, and the continuation is what follows the context's own encoding.
  std::string ctx = context, cont = continuation;
  size_t k = ctx.size();
  while (k > 0 && std::isspace((unsigned char)ctx[k - 1])) k--;
  cont = ctx.substr(k) + cont;
  ctx.resize(k);
  std::vector<int32_t> c, w;
  if (tok.add_bos && tok.bos_id >= 0) c.push_back(tok.bos_id);
  w = c;
  const auto ce = tok.encode(ctx, false), we = tok.encode(ctx + cont, false);
  c.insert(c.end(), ce.begin(), ce.end());
  w.insert(w.end(), we.begin(), we.end());
  // A continuation must predict at least one token; the context keeps at least one (BOS or
  // its first token) to predict from.
  size_t split = std::min(c.size(), w.size() - 1);
  if (split == 0) fail("eval tasks: an empty context and continuation");
  return {std::vector<int32_t>(w.begin(), w.begin() + (int64_t)split), std::vector<int32_t>(w.begin() + (int64_t)split, w.end())};
}

std::vector<TaskScore> eval_tasks(const Model& m, const Tokenizer& tok, const std::vector<TaskItem>& items,
                                  const std::function<void(int64_t, int64_t)>& progress, KvType kv) {
  const ModelConfig& c = m.config;
  const int64_t V = c.vocab_size, maxT = c.max_seq_len;
  std::map<std::string, size_t> at;
  std::vector<TaskScore> scores;
  int64_t max_choices = 1;
  for (const auto& it : items) max_choices = std::max<int64_t>(max_choices, (int64_t)it.choices.size());
  KVCache cache = KVCache::create(c, max_choices, maxT, kv);
  Scratch scratch;
  int64_t done = 0;
  for (const auto& it : items) {
    if (!at.count(it.task)) at[it.task] = scores.size(), scores.push_back({it.task, 0, it.generate()});
    TaskScore& s = scores[at[it.task]];
    if (s.generate != it.generate()) fail("eval tasks: task '{}' mixes multiple-choice and generation lines", it.task);
    s.n++;
    if (!it.generate()) {
      // Every choice a sequence of one batch; logits at the rows that predict its tokens.
      Batch b;
      std::vector<std::vector<int32_t>> conts;
      std::vector<std::pair<int64_t, int64_t>> rows;  // first logit row, count, per choice
      for (size_t k = 0; k < it.choices.size(); k++) {
        auto [ctx, cont] = encode_pair(tok, it.context, it.choices[k]);
        if ((int64_t)cont.size() >= maxT) fail("eval tasks: a choice of task '{}' is longer than the model's context", it.task);
        std::vector<int32_t> seq = ctx;
        seq.insert(seq.end(), cont.begin(), cont.end());
        if ((int64_t)seq.size() > maxT) seq.erase(seq.begin(), seq.end() - maxT);  // left truncation, as the harness
        const int64_t first = (int64_t)(seq.size() - cont.size()) - 1;
        rows.push_back({(int64_t)b.logit_rows.size(), (int64_t)cont.size()});
        for (int64_t t = 0; t < (int64_t)seq.size(); t++)
          b.add(seq[t], (int32_t)k, (int32_t)t, t >= first && t < (int64_t)seq.size() - 1);
        conts.push_back(std::move(cont));
      }
      const Tensor& logits = llama_forward(m, cache, b, scratch);
      int64_t best = 0, best_norm = 0;
      double bl = -INFINITY, bn = -INFINITY;
      for (size_t k = 0; k < it.choices.size(); k++) {
        double ll = 0;
        for (int64_t j = 0; j < rows[k].second; j++)
          ll -= nll_of(logits.host<float>() + (rows[k].first + j) * V, V, conts[k][j]);
        const double norm = ll / (double)chars(it.choices[k]);
        if (ll > bl) bl = ll, best = (int64_t)k;
        if (norm > bn) bn = norm, best_norm = (int64_t)k;
      }
      s.acc += best == it.answer;
      s.acc_norm += best_norm == it.answer;
    } else {
      // Greedy decoding of as many tokens as the answer has after the prompt (the harness's
      // "is greedy" check, as LAMBADA scores it): exact match of the decoded text.
      auto [seq, want] = encode_pair(tok, it.context, it.target);
      const int64_t budget = (int64_t)want.size();
      if (budget + 1 >= maxT) fail("eval tasks: an answer of task '{}' is longer than the model's context", it.task);
      if ((int64_t)seq.size() + budget > maxT) seq.erase(seq.begin(), seq.end() - (maxT - budget));
      Batch b;
      for (int64_t t = 0; t < (int64_t)seq.size(); t++) b.add(seq[t], 0, (int32_t)t, t + 1 == (int64_t)seq.size());
      std::vector<int32_t> out;
      int32_t next = argmax(llama_forward(m, cache, b, scratch).host<float>(), V);
      for (int64_t g = 0; g < budget; g++) {
        out.push_back(next);
        if (g + 1 == budget) break;
        Batch n;
        n.add(next, 0, (int32_t)(seq.size() + out.size() - 1), true);
        next = argmax(llama_forward(m, cache, n, scratch).host<float>(), V);
      }
      s.exact_match += trim(tok.decode(out, false)) == trim(it.target);
    }
    if (progress) progress(++done, (int64_t)items.size());
  }
  for (auto& s : scores) s.acc /= (double)s.n, s.acc_norm /= (double)s.n, s.exact_match /= (double)s.n;
  return scores;
}


namespace {
std::vector<std::string> split_documents(const std::string& text) {
  std::vector<std::string> docs;
  const bool blank = text.find("\n\n") != std::string::npos || text.find("\n\r\n") != std::string::npos;
  std::string cur;
  size_t i = 0;
  while (i <= text.size()) {
    const size_t e = std::min(text.find('\n', i), text.size());
    const std::string line = trim(text.substr(i, e - i));
    if (line.empty() || !blank) {
      if (!blank && !line.empty()) cur = line;
      if (!trim(cur).empty()) docs.push_back(trim(cur));
      cur.clear();
    } else {
      cur += (cur.empty() ? "" : " ") + line;
    }
    i = e + 1;
  }
  if (!trim(cur).empty()) docs.push_back(trim(cur));
  return docs;
}

std::vector<std::string> split_sentences(const std::string& doc) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t i = 0; i < doc.size(); i++)
    if ((doc[i] == '.' || doc[i] == '!' || doc[i] == '?') && (i + 1 == doc.size() || doc[i + 1] == ' ')) {
      const std::string s = trim(doc.substr(b, i + 1 - b));
      if (!s.empty()) out.push_back(s);
      b = i + 1;
    }
  if (!trim(doc.substr(std::min(b, doc.size()))).empty()) out.push_back(trim(doc.substr(b)));
  return out;
}

int64_t words(const std::string& s) {
  int64_t n = 0;
  bool in = false;
  for (unsigned char c : s) {
    const bool w = !std::isspace(c);
    n += w && !in;
    in = w;
  }
  return n;
}
}  // namespace

std::vector<std::string> make_tasks(const std::vector<std::string>& texts, const MakeTasksOptions& o) {
  if (o.kind != "cloze" && o.kind != "final-word") fail("data tasks: --kind must be cloze or final-word");
  if (o.n < 1 || o.passage_words < 5) fail("data tasks: --n must be positive and --passage-words at least 5");
  std::vector<std::vector<std::string>> docs;
  for (const auto& text : texts)
    for (const auto& d : split_documents(text)) docs.push_back(split_sentences(d));
  std::vector<std::string> out;
  uint64_t draw = 0;
  auto rnd = [&](uint64_t n) { return (uint64_t)(rng_uniform(o.seed, draw++) * (double)n) % n; };
  // Passages at seeded (document, first sentence) draws, each used once.
  std::vector<std::pair<size_t, size_t>> used;
  for (int64_t tries = 0; (int64_t)out.size() < o.n && tries < o.n * 50 && !docs.empty(); tries++) {
    const size_t di = rnd(docs.size());
    const auto& all = docs[di];
    if (all.size() < 2) continue;
    const size_t s0 = rnd(all.size() - 1);
    if (std::find(used.begin(), used.end(), std::make_pair(di, s0)) != used.end()) continue;
    used.push_back({di, s0});
    const std::vector<std::string> sents(all.begin() + (int64_t)s0, all.end());
    // The passage: whole sentences up to about passage_words words, at least one.
    size_t k = 1;
    int64_t w = words(sents[0]);
    while (k + 1 < sents.size() && w + words(sents[k]) <= o.passage_words) w += words(sents[k++]);
    std::string passage;
    for (size_t i = 0; i < k; i++) passage += (i ? " " : "") + sents[i];
    json j;
    if (o.kind == "cloze") {
      // The right next sentence and three from other documents (not empty, not the same text).
      std::vector<std::string> choices = {" " + sents[k]};
      for (int tries = 0; choices.size() < 4 && tries < 1000; tries++) {
        const size_t od = rnd(docs.size());
        if (od == di || docs[od].empty()) continue;  // distractors from other documents only
        const std::string c = " " + docs[od][rnd(docs[od].size())];
        if (std::find(choices.begin(), choices.end(), c) == choices.end()) choices.push_back(c);
      }
      if (choices.size() < 4) continue;
      const int64_t ans = (int64_t)rnd(4);
      std::swap(choices[0], choices[ans]);
      j = {{"task", "cloze"}, {"context", passage}, {"choices", choices}, {"answer", ans}};
    } else {
      // The passage's last word, letters only (3 or more), is the answer; the punctuation after
      // it is dropped.
      std::string p = passage;
      while (!p.empty() && !std::isalpha((unsigned char)p.back())) p.pop_back();
      size_t b = p.size();
      while (b > 0 && std::isalpha((unsigned char)p[b - 1])) b--;
      const std::string word = p.substr(b);
      if (word.size() < 3 || b == 0 || p[b - 1] != ' ' || words(p) < 5) continue;
      j = {{"task", "final-word"}, {"prompt", trim(p.substr(0, b))}, {"answer", " " + word}};
    }
    out.push_back(j.dump());
  }
  if ((int64_t)out.size() < o.n)
    fail("data tasks: the text gives only {} {} items of the {} asked (documents need two sentences or more)",
         out.size(), o.kind, o.n);
  return out;
}

}  // namespace llmq
