// POSIX implementations of mapping, reading and atomic writing.
#include "core/file_util.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"

namespace llmq {

MappedFile::~MappedFile() { release_data(); }

void MappedFile::release_data() {
  if (data && size) munmap(const_cast<uint8_t*>(data), size);
  data = nullptr;
}

std::shared_ptr<MappedFile> map_file(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    fail("{}: not a regular file", path);
  }
  auto m = std::make_shared<MappedFile>();
  m->path = path;
  m->size = (size_t)st.st_size;
  if (m->size) {
    void* p = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      close(fd);
      fail("{}: mmap failed: {}", path, std::strerror(errno));
    }
    m->data = static_cast<const uint8_t*>(p);
  }
  close(fd);
  return m;
}

std::string read_text_file(const std::string& path) {
  auto m = map_file(path);
  return std::string(reinterpret_cast<const char*>(m->data), m->size);
}

void read_file_range(const std::string& path, uint64_t offset, uint64_t n, uint8_t* dst) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path, std::strerror(errno));
  constexpr uint64_t kChunk = 8u << 20;
  const int64_t chunks = (int64_t)((n + kChunk - 1) / kChunk);
  int err = 0;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t c = 0; c < chunks; c++) {
    uint64_t off = (uint64_t)c * kChunk, len = std::min<uint64_t>(kChunk, n - off);
    while (len) {
      ssize_t r = pread(fd, dst + off, len, (off_t)(offset + off));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
#pragma omp atomic write
        err = r < 0 ? errno : EIO;
        break;
      }
      off += (uint64_t)r;
      len -= (uint64_t)r;
    }
  }
  close(fd);
  if (err) fail("{}: read failed: {}", path, std::strerror(err));
}

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_ = path_ + ".tmp." + std::to_string(getpid());
  fd_ = open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("{}: cannot create: {}", tmp_, std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    close(fd_);
    unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fail("{}: write failed: {}; nothing was replaced (a previous version, if any, is intact)", path_, std::strerror(errno));
    p += w;
    n -= (size_t)w;
  }
}

void AtomicFile::commit() {
  if (fsync(fd_) != 0) fail("{}: fsync failed: {}", path_, std::strerror(errno));
  close(fd_);
  fd_ = -1;
  if (rename(tmp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    unlink(tmp_.c_str());
    fail("{}: rename failed: {}", path_, std::strerror(e));
  }
  std::string dir = std::filesystem::path(path_).parent_path().string();
  int dfd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
}

void write_file_atomic(const std::string& path, const std::string& contents) {
  AtomicFile f(path);
  f.write(contents.data(), contents.size());
  f.commit();
}

void release_pages(const void* p, size_t n) {
  const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  const uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + n) & ~(page - 1);
  if (b > a) madvise((void*)a, b - a, MADV_DONTNEED);
}

uint64_t current_rss_bytes() {
  std::ifstream f("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

double peak_rss_bytes() {
  if (FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    long kb = -1;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "VmHWM: %ld kB", &kb) == 1) break;
    std::fclose(f);
    if (kb >= 0) return (double)kb * 1024.0;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss * 1024.0;
}

}  // namespace llmq
