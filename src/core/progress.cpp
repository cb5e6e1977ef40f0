// Progress bar drawing.
#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

namespace llmq {

Progress::Progress(std::string label, uint64_t total, bool enabled)
    : label_(std::move(label)), total_(total ? total : 1), enabled_(enabled), tty_(isatty(2)) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

void Progress::update(uint64_t done) {
  if (!enabled_ || finished_) return;
  auto now = std::chrono::steady_clock::now();
  double frac = std::min(1.0, (double)done / (double)total_);
  uint64_t decile = (uint64_t)(frac * 10);
  // Quiet for the first second (short jobs print nothing), then at most 10 redraws a second
  // on a terminal, or a line per 10% into a log.
  if (now - start_ < std::chrono::seconds(1)) return;
  if (tty_ ? (now - last_draw_ < std::chrono::milliseconds(100) && done < total_) : (decile <= last_decile_ && drawn_)) return;
  drawn_ = true;
  last_draw_ = now;
  last_decile_ = decile;
  double el = std::chrono::duration<double>(now - start_).count();
  double eta = frac > 0 ? el * (1 - frac) / frac : 0;
  int w = 30, fill = (int)(frac * w);
  std::string bar(fill, '#');
  bar += std::string(w - fill, '.');
  std::string line = fmt::format("{} [{}] {:5.1f}%  {} elapsed, ETA {}", label_, bar, frac * 100,
                                 format_duration(el), format_duration(eta));
  std::fprintf(stderr, tty_ ? "\r%s\033[K" : "%s\n", line.c_str());
}

void Progress::finish() {
  if (!enabled_ || finished_) return;
  if (drawn_) update(total_);
  finished_ = true;
  if (tty_ && drawn_) std::fprintf(stderr, "\n");
}

std::string format_bytes(double b) {
  const char* u[] = {"B", "KB", "MB", "GB", "TB"};
  int i = 0;
  while (b >= 1000 && i < 4) b /= 1000, i++;
  return i ? fmt::format("{:.2f} {}", b, u[i]) : fmt::format("{:.0f} {}", b, u[i]);
}

std::string format_duration(double s) {
  if (s < 60) return fmt::format("{:.1f}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", (int)s / 60, (int)s % 60);
  return fmt::format("{}h{:02d}m", (int)s / 3600, ((int)s % 3600) / 60);
}

}  // namespace llmq
