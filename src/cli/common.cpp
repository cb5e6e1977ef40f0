// Token-id parsing and process resource figures for the CLI.
#include "cli/common.h"

#include <sys/resource.h>

#include <cctype>

#include "core/error.h"
#include "core/file_util.h"

namespace llmq::cli {

bool g_mmap = false;

std::vector<int32_t> parse_token_ids(const std::string& s, const std::string& what) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    unsigned char ch = (unsigned char)s[i];
    if (std::isspace(ch) || ch == ',') { i++; continue; }
    if (!std::isdigit(ch))
      fail("{}: expected token ids (integers separated by spaces), found '{}' at byte {}; "
           "text prompts need a tokenizer in the model directory", what, s.substr(i, 12), i);
    int64_t v = 0;
    while (i < s.size() && std::isdigit((unsigned char)s[i])) {
      v = v * 10 + (s[i++] - '0');
      if (v > INT32_MAX) fail("{}: token id too large near byte {}", what, i);
    }
    ids.push_back((int32_t)v);
  }
  return ids;
}

std::vector<int32_t> read_token_file(const std::string& path) {
  return parse_token_ids(read_text_file(path), path);
}

double peak_rss_bytes() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss * 1024.0;
}

}  // namespace llmq::cli
