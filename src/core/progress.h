// A progress bar with rate and ETA on stderr (redrawn in place on a terminal, a line every
// 10% otherwise); disabled bars cost one branch per update.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace llmq {

class Progress {
 public:
  Progress(std::string label, uint64_t total, bool enabled);
  void update(uint64_t done);
  void finish();

 private:
  std::string label_;
  uint64_t total_, last_decile_ = 0;
  bool enabled_, tty_, finished_ = false, drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

std::string format_bytes(double bytes);     // "2.47 GB"
std::string format_duration(double secs);   // "1m05s"

}  // namespace llmq
