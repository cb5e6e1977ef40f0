// Whole-directory outputs: lock, build under a temporary name, swap into place.
#include "core/output_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"

namespace llmq {

namespace fs = std::filesystem;

namespace {

// The target without a trailing slash, and its parent ("." for a bare name).
fs::path normal(const std::string& target) {
  fs::path p = fs::path(target).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p;
}
fs::path parent_of(const fs::path& p) { return p.has_parent_path() ? p.parent_path() : fs::path("."); }
std::string hidden(const fs::path& p, const std::string& suffix) {
  // fmt::format, not "." + string: GCC 12 warns falsely (-Wrestrict) on that concatenation.
  return (parent_of(p) / fmt::format(".{}{}", p.filename().string(), suffix)).string();
}

int lock_target(const fs::path& p, const std::string& what) {
  fs::create_directories(parent_of(p));
  const std::string lf = hidden(p, ".lock");
  const int fd = open(lf.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) fail("{}: cannot create the lock file {}: {}", p.string(), lf, std::strerror(errno));
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char buf[256] = {};
    (void)!pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    std::string holder(buf);
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    fail("{}: another llmq process ({}) is writing it; wait for it to finish or choose another output",
         p.string(), holder.empty() ? "unknown pid" : "pid " + holder);
  }
  const std::string me = fmt::format("{} {}\n", getpid(), what);
  if (ftruncate(fd, 0) == 0) (void)!pwrite(fd, me.data(), me.size(), 0);
  return fd;
}

void fsync_path(const fs::path& p, int flags) {
  const int fd = open(p.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return;
  fsync(fd);
  close(fd);
}

}  // namespace

OutputDir::OutputDir(const std::string& target, const std::string& what, bool overwrite) : what_(what) {
  const fs::path p = normal(target);
  target_ = p.string();
  lock_fd_ = lock_target(p, what);
  try {
    // Holding the lock, any temporary or set-aside directory of ours is a dead writer's.
    const std::string stem = fmt::format(".{}", p.filename().string());
    for (const auto& e : fs::directory_iterator(parent_of(p))) {
      const std::string n = e.path().filename().string();
      if (n.rfind(stem + ".tmp.", 0) == 0 || n.rfind(stem + ".old.", 0) == 0) fs::remove_all(e.path());
    }
    if (fs::exists(p)) {
      if (!fs::is_directory(p)) fail("{}: exists and is not a directory; choose another output", target_);
      const bool ours = fs::is_regular_file(p / kOutputMarker), empty = fs::is_empty(p);
      if (!ours && !empty && !overwrite)
        fail("{}: exists, is not empty and was not written by llmq; give --overwrite to replace it, or choose another "
             "output", target_);
    }
    tmp_ = hidden(p, fmt::format(".tmp.{}", getpid()));
    fs::create_directories(tmp_);
  } catch (...) {
    close(lock_fd_);
    throw;
  }
}

OutputDir::~OutputDir() {
  if (!committed_ && !tmp_.empty()) {
    std::error_code ec;
    fs::remove_all(tmp_, ec);
  }
  if (lock_fd_ >= 0) close(lock_fd_);
}

void OutputDir::commit() {
  const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char when[32];
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  nlohmann::json marker = {{"command", what_}, {"written", when}, {"writer", "llmq 0.1.0"}};
  write_file_atomic((fs::path(tmp_) / kOutputMarker).string(), marker.dump(2) + "\n");
  // Files copied in (tokenizers) were not fsynced by their writer: everything reaches the
  // disk before the directory becomes visible under the target's name.
  for (const auto& e : fs::recursive_directory_iterator(tmp_))
    if (e.is_regular_file()) fsync_path(e.path(), O_RDONLY);
  fsync_path(tmp_, O_RDONLY | O_DIRECTORY);
  const fs::path p(target_);
  const bool had = fs::exists(p);
  std::string old;  // where the previous output is after the swap, removed at the end
  if (had && renameat2(AT_FDCWD, tmp_.c_str(), AT_FDCWD, target_.c_str(), RENAME_EXCHANGE) == 0) {
    // One atomic step: the target is the previous output until it is the new one.
    old = tmp_;
  } else if (had) {
    // Filesystems without RENAME_EXCHANGE: move the old one aside, then the new one in (a
    // crash between the two leaves the target absent and both directories beside it).
    old = hidden(p, fmt::format(".old.{}", getpid()));
    if (std::rename(target_.c_str(), old.c_str()) != 0)
      fail("{}: cannot move the previous output aside: {}", target_, std::strerror(errno));
    if (std::rename(tmp_.c_str(), target_.c_str()) != 0) {
      const int e = errno;
      std::rename(old.c_str(), target_.c_str());  // put the previous output back
      fail("{}: cannot rename the new output into place: {}", target_, std::strerror(e));
    }
  } else if (std::rename(tmp_.c_str(), target_.c_str()) != 0) {
    fail("{}: cannot rename the new output into place: {}", target_, std::strerror(errno));
  }
  committed_ = true;
  fsync_path(parent_of(p), O_RDONLY | O_DIRECTORY);
  if (!old.empty()) {
    std::error_code ec;
    fs::remove_all(old, ec);
  }
}

DirLock::DirLock(const std::string& target, const std::string& what) { fd_ = lock_target(normal(target), what); }

DirLock::~DirLock() {
  if (fd_ >= 0) close(fd_);
}

}  // namespace llmq
