// The text of one generated sequence, token by token, with stop strings: a stop string ends the
// sequence and is not part of the text (as vLLM and the OpenAI API return it). While
// streaming, the last (longest stop - 1) bytes are held back until they cannot begin a stop
// string, and bytes of an unfinished UTF-8 character until it completes.
#pragma once
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace llmq {

class TextStream {
 public:
  TextStream(const Tokenizer& t, const std::vector<std::string>& stops);
  // Appends token id; returns true when a stop string has appeared (the sequence ends there).
  bool push(int32_t id);
  // At the end: whatever the decoder still holds (unless stopped) is added to the text.
  void finish();
  // Text that can be shown now and was not returned before (all of it after finish()).
  std::string take();
  const std::string& text() const { return text_; }
  bool stopped() const { return stopped_; }

 private:
  const std::vector<std::string>* stops_;
  StreamDecoder dec_;
  std::string text_;
  size_t released_ = 0, shown_ = 0, hold_ = 0;
  bool stopped_ = false;
};

}  // namespace llmq
