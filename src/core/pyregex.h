// Patterns from files llmq reads (GPTQModel's quantization_config.dynamic, compressed-tensors'
// "re:" targets, recipe selectors) matched as Python's re.match does: from the start of the
// name, not necessarily to its end. PCRE2's syntax is Python's for these patterns, and its DFA
// matcher (pcre2_dfa_match) never backtracks, so a pattern cannot take exponential time
// (".**" or "(a*)*" on a module name). Each matcher also has a work budget, the sum over its
// matches of pattern length x name length, so thousands of patterns over thousands of
// modules end in one error rather than minutes: deterministic, whatever the machine.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace llmq {

class PyRegex {
 public:
  // where: names the source in messages ("config.json: quantization_config.dynamic").
  explicit PyRegex(std::string where, int64_t budget = 200000000);
  ~PyRegex();
  PyRegex(const PyRegex&) = delete;
  PyRegex& operator=(const PyRegex&) = delete;
  // Whether `pattern` matches a prefix of `s`. Fails (llmq::Error) naming the pattern when it is
  // not a regular expression, longer than 512 characters, or the budget is spent.
  bool match(const std::string& pattern, const std::string& s);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace llmq
