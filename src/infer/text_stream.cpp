#include "infer/text_stream.h"

#include <algorithm>

namespace llmq {

TextStream::TextStream(const Tokenizer& t, const std::vector<std::string>& stops) : stops_(&stops), dec_(t) {
  for (const auto& s : stops) hold_ = std::max(hold_, s.empty() ? 0 : s.size() - 1);
}

bool TextStream::push(int32_t id) {
  if (stopped_) return true;
  const std::string piece = dec_.push(id);
  text_ += piece;
  size_t first = std::string::npos;
  for (const auto& s : *stops_) {
    if (s.empty()) continue;
    // Only the tail that the new piece could have completed needs a look.
    const size_t from = text_.size() > piece.size() + s.size() ? text_.size() - piece.size() - s.size() : 0;
    first = std::min(first, text_.find(s, from));
  }
  if (first != std::string::npos) {
    text_.resize(first);
    released_ = first;
    stopped_ = true;
    return true;
  }
  // Released text ends on a character boundary (a piece sent alone must be valid UTF-8).
  size_t r = text_.size() > hold_ ? text_.size() - hold_ : 0;
  while (r > released_ && r < text_.size() && ((unsigned char)text_[r] & 0xC0) == 0x80) r--;
  released_ = std::max(released_, r);
  return false;
}

void TextStream::finish() {
  if (!stopped_) text_ += dec_.flush();
  released_ = text_.size();
}

std::string TextStream::take() {
  if (released_ <= shown_) return "";
  std::string s = text_.substr(shown_, released_ - shown_);
  shown_ = released_;
  return s;
}

}  // namespace llmq
