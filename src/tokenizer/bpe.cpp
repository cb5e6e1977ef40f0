// Byte-level BPE (Llama 3): loading tokenizer.json / tiktoken files, PCRE2 pre-tokenization,
// rank-ordered merges (quadratic reference and heap version), special-token splitting.
#include "tokenizer/bpe.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>

#include "core/error.h"

namespace llmq {

const char* const kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

namespace {

// GPT-2's byte <-> printable code point table used by ByteLevel vocabularies: printable
// Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in byte order.
struct ByteLevelTable {
  uint32_t to_cp[256];
  int16_t from_cp[324];  // code point -> byte, -1 if none
  ByteLevelTable() {
    std::fill(std::begin(from_cp), std::end(from_cp), int16_t(-1));
    int n = 0;
    for (int b = 0; b < 256; b++) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? (uint32_t)b : 256u + (uint32_t)n++;
      from_cp[to_cp[b]] = (int16_t)b;
    }
  }
};
const ByteLevelTable& byte_level() {
  static const ByteLevelTable t;
  return t;
}

// Decodes one UTF-8 code point at s[i]; returns false on a malformed sequence.
bool next_cp(std::string_view s, size_t& i, uint32_t& cp) {
  auto c = (unsigned char)s[i];
  int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (!len || i + len > s.size()) return false;
  cp = len == 1 ? c : c & (0x7F >> len);
  for (int k = 1; k < len; k++) {
    auto d = (unsigned char)s[i + k];
    if ((d & 0xC0) != 0x80) return false;
    cp = (cp << 6) | (d & 0x3F);
  }
  i += len;
  return true;
}

// A ByteLevel vocabulary string back to the bytes it stands for.
bool byte_level_decode(std::string_view s, std::string& out) {
  out.clear();
  for (size_t i = 0; i < s.size();) {
    uint32_t cp;
    if (!next_cp(s, i, cp) || cp >= 324 || byte_level().from_cp[cp] < 0) return false;
    out.push_back((char)byte_level().from_cp[cp]);
  }
  return true;
}

}  // namespace

std::string bytes_to_gpt2_unicode(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) {
    const uint32_t cp = byte_level().to_cp[b];
    if (cp < 0x80) out.push_back((char)cp);
    else out.push_back((char)(0xC0 | (cp >> 6))), out.push_back((char)(0x80 | (cp & 0x3F)));
  }
  return out;
}

namespace {

bool base64_decode(std::string_view in, std::string& out) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  out.clear();
  if (in.size() % 4 != 0 || in.empty()) return false;
  for (size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    for (int k = 0; k < 4; k++) {
      if (in[i + k] == '=' && i + 4 == in.size() && k >= 2) {
        v[k] = -2;
      } else {
        v[k] = val(in[i + k]);
        if (v[k] < 0) return false;
      }
    }
    if (v[2] == -2 && v[3] != -2) return false;
    uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)std::max(v[2], 0) << 6 | std::max(v[3], 0);
    out.push_back((char)(w >> 16));
    if (v[2] != -2) out.push_back((char)(w >> 8 & 0xFF));
    if (v[3] != -2) out.push_back((char)(w & 0xFF));
  }
  return true;
}

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }

// Token ids index dense tables (bytes_, kind_of_), so an id read from a file must be bounded
// by what the file holds, not only by a global cap: a file of n entries may use ids below
// 2n + 1024 (real vocabularies are dense: Llama 3's 128,256 ids are 0..128255; the slack
// allows reserved holes). A one-line file claiming id 55,555,555 would otherwise allocate
// 55M strings (1.8 GB) before failing.
int64_t id_bound(size_t entries) { return std::min<int64_t>(2 * (int64_t)entries + 1024, int64_t(1) << 24); }

// Llama 3.1's special tokens (Meta's tokenizer.py): ids 128000.. after the 128000 ranks.
constexpr int32_t kLlama3Ranks = 128000;  // lines of Llama 3's tokenizer.model

std::vector<SpecialToken> llama31_specials(int32_t base) {
  const char* named[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                         "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                         "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"};
  std::vector<SpecialToken> v;
  for (const char* s : named) v.push_back({s, base + (int32_t)v.size(), true});
  for (int i = 2; v.size() < 256; i++) v.push_back({fmt::format("<|reserved_special_token_{}|>", i), base + (int32_t)v.size(), true});
  return v;
}
}  // namespace

BpeTokenizer::~BpeTokenizer() {
  if (code_) pcre2_code_free((pcre2_code*)code_);
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_hf_json(const std::string& path, const std::string& text) {
  // A field of an unexpected JSON type anywhere below is one error naming the file.
  try {
    return from_hf_json_checked(path, text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: a field has the wrong JSON type ({})", path, e.what());
  }
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_hf_json_checked(const std::string& path, const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail("{}: malformed JSON ({})", path, e.what());
  }
  auto bad = [&](const std::string& what) -> Error { return Error(fmt::format("{}: {}", path, what)); };
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) throw bad("no \"model\" object (not a tokenizer.json?)");
  const auto& m = j["model"];
  if (m.value("type", "") != "BPE") throw bad(fmt::format("model type \"{}\" is not supported (only BPE)", m.value("type", "?")));
  if (!m.contains("vocab") || !m["vocab"].is_object()) throw bad("model.vocab must be an object of token -> id");
  if (!m.contains("merges") || !m["merges"].is_array()) throw bad("model.merges must be an array");
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  t->ignore_merges_ = m.value("ignore_merges", false);
  // Byte-level is the only pre-tokenizer family supported: check that one is declared.
  const std::string dump = j.contains("pre_tokenizer") ? j["pre_tokenizer"].dump() : "";
  if (dump.find("ByteLevel") == std::string::npos) throw bad("pre_tokenizer is not ByteLevel (only byte-level BPE is supported)");
  std::string pattern = kLlama3Pattern;
  if (j["pre_tokenizer"].is_object()) {
    auto scan = [&](const nlohmann::json& p) {
      if (p.is_object() && p.value("type", "") == "Split" && p.contains("pattern") && p["pattern"].is_object() &&
          p["pattern"].contains("Regex") && p["pattern"]["Regex"].is_string())
        pattern = p["pattern"]["Regex"].get<std::string>();
    };
    scan(j["pre_tokenizer"]);
    if (j["pre_tokenizer"].contains("pretokenizers") && j["pre_tokenizer"]["pretokenizers"].is_array())
      for (const auto& p : j["pre_tokenizer"]["pretokenizers"]) scan(p);
  }
  std::string bytes;
  const size_t n_added = j.contains("added_tokens") && j["added_tokens"].is_array() ? j["added_tokens"].size() : 0;
  const int64_t max_id = id_bound(m["vocab"].size() + n_added);
  for (const auto& [k, v] : m["vocab"].items()) {
    if (!v.is_number_integer() || v.get<int64_t>() < 0)
      throw bad(fmt::format("model.vocab: entry \"{}\" has an invalid id", k));
    if (v.get<int64_t>() >= max_id)
      throw bad(fmt::format("model.vocab: entry \"{}\" has id {}, beyond what {} entries can use (ids below {}; "
                            "a vocabulary's ids are dense)", k, v.get<int64_t>(), m["vocab"].size() + n_added, max_id));
    if (!byte_level_decode(k, bytes)) throw bad(fmt::format("vocab entry \"{}\" is not a ByteLevel string", k));
    int32_t id = v.get<int32_t>();
    if ((size_t)id >= t->bytes_.size()) t->bytes_.resize(id + 1), t->kind_of_.resize(id + 1);
    if (t->kind_of_[id]) throw bad(fmt::format("id {} appears twice in the vocab", id));
    if (!t->ids_.emplace(bytes, id).second) throw bad(fmt::format("vocab entry \"{}\" appears twice", k));
    t->bytes_[id] = bytes;
    t->kind_of_[id] = 1;
  }
  int32_t rank = 0;
  std::string a, b;
  for (const auto& mg : m["merges"]) {
    std::string sa, sb;
    if (mg.is_string()) {
      const std::string s = mg.get<std::string>();
      size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) throw bad(fmt::format("merge \"{}\" is not \"a b\"", s));
      sa = s.substr(0, sp), sb = s.substr(sp + 1);
    } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
      sa = mg[0].get<std::string>(), sb = mg[1].get<std::string>();
    } else {
      throw bad(fmt::format("merge {} is neither \"a b\" nor [a, b]", rank));
    }
    if (!byte_level_decode(sa, a) || !byte_level_decode(sb, b)) throw bad(fmt::format("merge {} is not ByteLevel text", rank));
    auto ia = t->ids_.find(a), ib = t->ids_.find(b), im = t->ids_.find(a + b);
    if (ia == t->ids_.end() || ib == t->ids_.end() || im == t->ids_.end())
      throw bad(fmt::format("merge {} (\"{} {}\") uses or makes a token missing from the vocab", rank, sa, sb));
    t->merges_.emplace(pair_key(ia->second, ib->second), Merge{rank, im->second});
    rank++;
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const auto& at : j["added_tokens"]) {
      if (!at.is_object() || !at.contains("id") || !at["id"].is_number_integer() || !at.contains("content") ||
          !at["content"].is_string())
        throw bad("added_tokens entries need an integer \"id\" and a string \"content\"");
      int64_t id = at["id"].get<int64_t>();
      std::string content = at["content"].get<std::string>();
      if (id < 0 || content.empty()) throw bad(fmt::format("added_tokens: token \"{}\" is invalid", content));
      if (id >= max_id)
        throw bad(fmt::format("added_tokens: token \"{}\" has id {}, beyond what {} entries can use (ids below {})", content,
                              id, m["vocab"].size() + n_added, max_id));
      t->specials_.push_back({content, (int32_t)id, at.value("special", true)});
    }
  }
  t->finish(path, pattern);
  return t;
}

std::unique_ptr<BpeTokenizer> BpeTokenizer::from_tiktoken(const std::string& path, const std::string& text,
                                                         std::vector<SpecialToken> specials) {
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer());
  t->ignore_merges_ = true;  // tiktoken looks a whole piece up before merging
  std::string bytes;
  // Ranks are bounded by the number of lines the file really has (id_bound).
  const size_t n_lines = (size_t)std::count(text.begin(), text.end(), '\n') + (text.empty() || text.back() != '\n');
  const int64_t max_rank = id_bound(n_lines);
  size_t pos = 0, line = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    std::string_view l(text.data() + pos, eol - pos);
    pos = eol + 1;
    line++;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (l.empty()) continue;
    size_t sp = l.find(' ');
    if (sp == std::string_view::npos) fail("{}:{}: expected \"base64-token rank\"", path, line);
    if (!base64_decode(l.substr(0, sp), bytes)) fail("{}:{}: invalid base64 token", path, line);
    std::string_view r = l.substr(sp + 1);
    int64_t rank = 0;
    if (r.empty() || r.size() > 8) fail("{}:{}: invalid rank", path, line);
    for (char c : r) {
      if (c < '0' || c > '9') fail("{}:{}: invalid rank \"{}\"", path, line, r);
      rank = rank * 10 + (c - '0');
    }
    if (rank >= max_rank)
      fail("{}:{}: rank {} is beyond what a file of {} lines can use (ranks below {}; tiktoken ranks are dense)", path,
           line, rank, n_lines, max_rank);
    if ((size_t)rank >= t->bytes_.size()) t->bytes_.resize(rank + 1), t->kind_of_.resize(rank + 1);
    if (t->kind_of_[rank]) fail("{}:{}: rank {} appears twice", path, line, rank);
    if (!t->ids_.emplace(bytes, (int32_t)rank).second) fail("{}:{}: token appears twice", path, line);
    t->bytes_[rank] = bytes;
    t->kind_of_[rank] = 1;
  }
  if (t->ids_.empty()) fail("{}: no tokens (empty or not a tiktoken file)", path);
  // tiktoken merges the adjacent pair whose concatenation has the lowest rank; as a pair
  // table: every split of every multi-byte token into two tokens, ranked by the token.
  for (int32_t id = 0; id < (int32_t)t->bytes_.size(); id++) {
    const std::string& s = t->bytes_[id];
    for (size_t k = 1; k < s.size(); k++) {
      auto ia = t->ids_.find(std::string_view(s).substr(0, k)), ib = t->ids_.find(std::string_view(s).substr(k));
      if (ia != t->ids_.end() && ib != t->ids_.end()) t->merges_.emplace(pair_key(ia->second, ib->second), Merge{id, id});
    }
  }
  // Special tokens follow the ranks. From tokenizer_config.json they have fixed ids: a gap
  // between the last rank and the first of them means lines are missing (a truncated file
  // would otherwise load, with every id above the cut unknown). Without a config the Llama 3
  // layout is assumed, whose file has 128,000 ranks: other counts are said, since the special
  // tokens then move (BOS would be 64000 for a file cut at 64,000 lines).
  const int32_t n_ranks = (int32_t)t->bytes_.size();
  if (!specials.empty()) {
    int32_t first = INT32_MAX;
    for (const auto& sp : specials) first = std::min(first, sp.id);
    if (first > n_ranks)
      fail("{}: the ranks end at {} but tokenizer_config.json's first added token \"{}\" has id {}: {} ranks are "
           "missing (a truncated file?)", path, n_ranks - 1,
           std::min_element(specials.begin(), specials.end(), [](auto& a, auto& b) { return a.id < b.id; })->text, first,
           first - n_ranks);
  }
  const bool assumed = specials.empty();
  t->specials_ = assumed ? llama31_specials(n_ranks) : std::move(specials);
  t->finish(path, kLlama3Pattern);
  if (assumed && n_ranks != kLlama3Ranks)
    fmt::print(stderr, "warning: {}: {} ranks, not Llama 3's {}: without a tokenizer_config.json beside it the Llama 3 "
               "special tokens are placed at {}..{} (BOS {}); a truncated file?\n", path, n_ranks, kLlama3Ranks, n_ranks,
               n_ranks + 255, n_ranks);
  return t;
}

void BpeTokenizer::finish(const std::string& path, const std::string& pattern) {
  source_ = path;
  kind_ = "llama3-bpe";
  for (int b = 0; b < 256; b++) {
    auto it = ids_.find(std::string(1, (char)b));
    if (it == ids_.end()) fail("{}: byte 0x{:02x} has no token (byte-level BPE needs all 256)", path, b);
    byte_ids_[b] = it->second;
  }
  // Added/special tokens (tokenizer_config.json's added_tokens_decoder for tiktoken files)
  // are bounded the same way, by every entry the files hold.
  const int64_t max_id = id_bound(ids_.size() + specials_.size());
  for (const auto& s : specials_) {
    if (s.id >= max_id)
      fail("{}: added token \"{}\" has id {}, beyond what {} tokens can use (ids below {})", path, s.text, s.id,
           ids_.size() + specials_.size(), max_id);
    if ((size_t)s.id >= bytes_.size()) bytes_.resize(s.id + 1), kind_of_.resize(s.id + 1);
    if (kind_of_[s.id] == 1 && bytes_[s.id] == s.text) continue;  // an added token that is also in the vocab
    if (kind_of_[s.id]) fail("{}: added token \"{}\" reuses id {}", path, s.text, s.id);
    bytes_[s.id] = s.text;
    kind_of_[s.id] = s.special ? 2 : 3;
  }
  std::stable_sort(specials_.begin(), specials_.end(), [](auto& a, auto& b) { return a.text.size() > b.text.size(); });
  for (const auto& s : specials_) {
    first_byte_[1][(unsigned char)s.text[0]] = true;
    if (!s.special) first_byte_[0][(unsigned char)s.text[0]] = true;
  }
  int err;
  PCRE2_SIZE off;
  auto* code = pcre2_compile((PCRE2_SPTR)pattern.data(), pattern.size(),
                             PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("{}: pre-tokenizer regex does not compile at offset {}: {}", path, off, (const char*)msg);
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  code_ = code;
  // Fingerprint: tokens in id order, merges in rank order (as merged ids), the pattern.
  uint64_t h = fnv1a64(kind_);
  for (size_t i = 0; i < bytes_.size(); i++) h = fnv1a64(bytes_[i] + char('0' + kind_of_[i]), h);
  std::vector<std::pair<int32_t, uint64_t>> order;
  for (const auto& [k, m] : merges_) order.push_back({m.rank, k});
  std::sort(order.begin(), order.end());
  for (const auto& [r, k] : order) h = fnv1a64(std::string_view((const char*)&k, 8), h);
  h = fnv1a64(pattern, h);
  fingerprint_ = fmt::format("{:016x}", h);
  auto find = [&](const char* s) { return token_id(s); };
  bos_id = find("<|begin_of_text|>");
  for (const char* e : {"<|end_of_text|>", "<|eot_id|>", "<|eom_id|>"})
    if (find(e) >= 0) eos_ids.push_back(find(e));
}

const BpeTokenizer::Merge* BpeTokenizer::find_merge(int32_t a, int32_t b) const {
  auto it = merges_.find(pair_key(a, b));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeTokenizer::merge_quadratic(std::vector<int32_t>& ids) const {
  while (ids.size() > 1) {
    int32_t best = INT32_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < ids.size(); i++) {
      const Merge* m = find_merge(ids[i], ids[i + 1]);
      if (m && m->rank < best) best = m->rank, at = i;
    }
    if (best == INT32_MAX) break;
    ids[at] = find_merge(ids[at], ids[at + 1])->merged;
    ids.erase(ids.begin() + at + 1);
  }
}

// The same merges in O(n log n): a linked list of symbols and a min-heap of candidate pairs
// keyed by (rank, position); entries made stale by earlier merges are skipped on pop.
void BpeTokenizer::merge_heap(std::vector<int32_t>& ids) const {
  const int n = (int)ids.size();
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; i++) prev[i] = i - 1, next[i] = i + 1 < n ? i + 1 : -1;
  struct Cand {
    int32_t rank;
    int pos;
    int32_t left, right;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<>> heap;
  auto push = [&](int i) {
    if (i < 0 || next[i] < 0) return;
    if (const Merge* m = find_merge(ids[i], ids[next[i]])) heap.push({m->rank, i, ids[i], ids[next[i]]});
  };
  for (int i = 0; i + 1 < n; i++) push(i);
  std::vector<bool> dead(n, false);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    int r = next[c.pos];
    if (dead[c.pos] || r < 0 || ids[c.pos] != c.left || ids[r] != c.right) continue;
    ids[c.pos] = find_merge(c.left, c.right)->merged;
    dead[r] = true;
    next[c.pos] = next[r];
    if (next[r] >= 0) prev[next[r]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  int w = 0;
  for (int i = 0; i < n; i++)
    if (!dead[i]) ids[w++] = ids[i];
  ids.resize(w);
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out, bool heap) const {
  if (ignore_merges_) {
    auto it = ids_.find(piece);
    if (it != ids_.end()) return out.push_back(it->second);
  }
  std::vector<int32_t> ids(piece.size());
  for (size_t i = 0; i < piece.size(); i++) ids[i] = byte_ids_[(unsigned char)piece[i]];
  if (heap) merge_heap(ids);
  else merge_quadratic(ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

void BpeTokenizer::encode_ordinary(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  // A small per-thread cache of piece -> ids: real text repeats its words constantly.
  struct Cache {
    const BpeTokenizer* owner = nullptr;
    std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> map;
  };
  thread_local Cache cache;
  if (cache.owner != this) cache.map.clear(), cache.owner = this;
  auto* code = (pcre2_code*)code_;
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  size_t pos = 0;
  auto emit = [&](std::string_view piece) {
    if (piece.size() > 64) return encode_piece(piece, out, true);
    if (auto it = cache.map.find(piece); it != cache.map.end())
      return out.insert(out.end(), it->second.begin(), it->second.end()), void();
    size_t at = out.size();
    encode_piece(piece, out, false);
    if (cache.map.size() > (1 << 16)) cache.map.clear();
    cache.map.emplace(std::string(piece), std::vector<int32_t>(out.begin() + at, out.end()));
  };
  while (pos < text.size()) {
    int rc = pcre2_match(code, (PCRE2_SPTR)text.data(), text.size(), pos, 0, md, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) {
      emit(text.substr(pos));  // the text no alternative matches (e.g. invalid UTF-8) is a piece
      break;
    }
    if (rc < 0) {
      pcre2_match_data_free(md);
      fail("tokenizer: regex match failed (PCRE2 error {})", rc);
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    size_t s = ov[0], e = ov[1];
    if (s > pos) emit(text.substr(pos, s - pos));  // a gap between matches is a piece too
    if (e == s) {  // an empty match cannot advance: step over one byte
      e = s + 1;
      emit(text.substr(s, 1));
    } else {
      emit(text.substr(s, e - s));
    }
    pos = e;
  }
  pcre2_match_data_free(md);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  size_t start = 0, i = 0;
  // Special-token text splits the input where allowed; plain added tokens always do.
  while (i < text.size()) {
    const SpecialToken* hit = nullptr;
    if (first_byte_[allow_special][(unsigned char)text[i]]) {
      for (const auto& s : specials_) {
        if ((s.special && !allow_special) || s.text[0] != text[i]) continue;
        if (text.compare(i, s.text.size(), s.text) == 0) {
          hit = &s;
          break;
        }
      }
    }
    if (!hit) {
      i++;
      continue;
    }
    encode_ordinary(text.substr(start, i - start), out);
    out.push_back(hit->id);
    i += hit->text.size();
    start = i;
  }
  encode_ordinary(text.substr(start), out);
  return out;
}

std::string BpeTokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= (int32_t)bytes_.size() || !kind_of_[id]) fail("token id {} is outside the vocabulary ({} ids)", id, bytes_.size());
  return bytes_[id];
}

bool BpeTokenizer::is_special(int32_t id) const {
  return id >= 0 && id < (int32_t)kind_of_.size() && kind_of_[id] == 2;
}

int32_t BpeTokenizer::token_id(std::string_view text) const {
  for (const auto& s : specials_)
    if (s.text == text) return s.id;
  auto it = ids_.find(text);
  return it == ids_.end() ? -1 : it->second;
}

VocabExport BpeTokenizer::export_vocab() const {
  VocabExport v;
  v.model = "gpt2";
  v.pre = "llama-bpe";  // the Llama 3 pre-tokenizer regex (kLlama3Pattern)
  const int32_t n = vocab_size();
  v.tokens.resize(n);
  v.types.resize(n);
  for (int32_t i = 0; i < n; i++) {
    switch (kind_of_[i]) {
      case 0: v.tokens[i] = fmt::format("[PAD{}]", i), v.types[i] = 5; break;
      case 1: v.tokens[i] = bytes_to_gpt2_unicode(bytes_[i]), v.types[i] = 1; break;
      case 2: v.tokens[i] = bytes_[i], v.types[i] = 3; break;
      default: v.tokens[i] = bytes_[i], v.types[i] = 4; break;
    }
  }
  std::vector<std::pair<int64_t, uint64_t>> order;  // (rank, pair key)
  order.reserve(merges_.size());
  for (const auto& [key, m] : merges_) order.push_back({m.rank, key});
  std::sort(order.begin(), order.end());
  v.merges.reserve(order.size());
  for (const auto& [rank, key] : order)
    v.merges.push_back(v.tokens[(int32_t)(key >> 32)] + " " + v.tokens[(int32_t)(key & 0xffffffffu)]);
  return v;
}

}  // namespace llmq
