// Python-style prefix matching over PCRE2's DFA matcher: see pyregex.h.
#include "core/pyregex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <vector>

#include "core/error.h"

namespace llmq {

struct PyRegex::Impl {
  std::string where;
  int64_t budget = 0;
  std::map<std::string, pcre2_code*> cache;
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  std::vector<int> workspace = std::vector<int>(4096);
  ~Impl() {
    for (auto& [p, c] : cache) pcre2_code_free(c);
    if (md) pcre2_match_data_free(md);
    if (mc) pcre2_match_context_free(mc);
  }
};

PyRegex::PyRegex(std::string where, int64_t budget) : impl_(std::make_unique<Impl>()) {
  impl_->where = std::move(where);
  impl_->budget = budget;
  impl_->md = pcre2_match_data_create(16, nullptr);
  impl_->mc = pcre2_match_context_create(nullptr);
  pcre2_set_depth_limit(impl_->mc, 200);  // DFA recursion (lookarounds, recursion) stays shallow
  if (!impl_->md || !impl_->mc) fail("{}: out of memory for pattern matching", impl_->where);
}

PyRegex::~PyRegex() = default;

bool PyRegex::match(const std::string& pattern, const std::string& s) {
  Impl& m = *impl_;
  if (pattern.size() > 512) fail("{}: pattern \"{}...\" is longer than 512 characters", m.where, pattern.substr(0, 40));
  m.budget -= (int64_t)(pattern.size() + 1) * (int64_t)(s.size() + 1);
  if (m.budget < 0)
    fail("{}: too many patterns for this many names (name them exactly, \"^name$\", or use fewer patterns)", m.where);
  auto it = m.cache.find(pattern);
  if (it == m.cache.end()) {
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), 0, &err, &off, nullptr);
    if (!c) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("{}: \"{}\" is not a regular expression llmq can read ({} at offset {})", m.where, pattern,
           reinterpret_cast<const char*>(msg), (size_t)off);
    }
    it = m.cache.emplace(pattern, c).first;
  }
  const int rc = pcre2_dfa_match(it->second, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), 0, PCRE2_ANCHORED, m.md,
                                 m.mc, m.workspace.data(), m.workspace.size());
  if (rc >= 0) return true;  // (0: more matches than the ovector holds, still a match)
  if (rc == PCRE2_ERROR_NOMATCH || rc == PCRE2_ERROR_PARTIAL) return false;
  PCRE2_UCHAR msg[256];
  pcre2_get_error_message(rc, msg, sizeof msg);
  fail("{}: pattern \"{}\" cannot be matched against {} ({})", m.where, pattern, s, reinterpret_cast<const char*>(msg));
}

}  // namespace llmq
