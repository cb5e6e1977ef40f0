// Files: read-only memory maps, whole-file reads, and atomic writes (temp, fsync, rename).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace llmq {

// A read-only private mapping of a whole file; unmapped when the last reference goes.
struct MappedFile {
  std::string path;
  const uint8_t* data = nullptr;
  size_t size = 0;
  ~MappedFile();
  void release_data();  // unmaps early; data becomes nullptr, size stays
};
std::shared_ptr<MappedFile> map_file(const std::string& path);

std::string read_text_file(const std::string& path);
// Drops the resident pages of a consumed range of a read-only file mapping (clean pages:
// the kernel re-reads them if touched again), so streaming a large file does not grow RSS.
void release_pages(const void* p, size_t n);
// This process's resident memory now (VmRSS), bytes.
uint64_t current_rss_bytes();
// This process's peak resident memory (VmHWM, which reset_peak_rss() can reset; getrusage's
// maxrss where /proc has none).
double peak_rss_bytes();
// Reads bytes [offset, offset+n) of a file into dst (chunks in parallel); fails on a short file.
void read_file_range(const std::string& path, uint64_t offset, uint64_t n, uint8_t* dst);

// Writes `path` atomically: the writer fills a temporary file in the same directory, which
// is fsynced and renamed over `path`, then the directory is fsynced. A crash or a full disk
// leaves either the old file or the new one, never a torn file.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();  // removes the temporary file if commit() was not reached
  void write(const void* data, size_t n);
  void commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};
void write_file_atomic(const std::string& path, const std::string& contents);

}  // namespace llmq
