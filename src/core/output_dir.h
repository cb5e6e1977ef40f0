// Whole-directory outputs (DESIGN.md invariant 10): a command that writes a directory (a
// model, a quantized model, an export, a dataset, a tokenizer) builds it under a temporary
// name beside the target, holding an advisory lock on the target, and renames it into place
// only when complete. Readers never see a half-written output at the target's name; a kill or
// a full disk leaves the previous output (or none) intact, and the next run cleans the
// temporary directories that dead writers left behind.
#pragma once
#include <string>

namespace llmq {

// The marker file every llmq output directory holds, written last: a directory with it was
// made by llmq and is complete, so it may be replaced by the next command that writes there.
inline constexpr const char* kOutputMarker = ".llmq-output.json";

class OutputDir {
 public:
  // Locks `target` (flock on `.NAME.lock` beside it: a second writer gets one clear error
  // naming the holder's PID) and makes the temporary directory. An existing target is
  // replaced only when it is empty, was written by llmq (has the marker), or `overwrite`.
  // `what` names the command in messages and in the marker ("quantize", "init", ...).
  OutputDir(const std::string& target, const std::string& what, bool overwrite = false);
  ~OutputDir();  // not committed: the temporary directory is removed; the lock is released
  OutputDir(const OutputDir&) = delete;
  OutputDir& operator=(const OutputDir&) = delete;

  const std::string& path() const { return tmp_; }  // write everything here
  const std::string& target() const { return target_; }
  // Writes the marker, fsyncs the directory, swaps it into place (the old one is moved aside
  // and removed after) and fsyncs the parent.
  void commit();

 private:
  std::string target_, tmp_, what_;
  int lock_fd_ = -1;
  bool committed_ = false;
};

// Locks a directory that is updated in place (a training run's directory): the same lock
// file and message as OutputDir; released by the destructor.
class DirLock {
 public:
  DirLock(const std::string& target, const std::string& what);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace llmq
