// safetensors: a little-endian u64 header length N, N bytes of JSON describing each tensor
// (dtype, shape, data_offsets relative to the data section), then the data section.
// Format: https://github.com/huggingface/safetensors (the spec is also in docs/formats.md).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/file_util.h"
#include "core/tensor.h"

namespace llmq {

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets within the data section
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> tensors;  // in file order
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + N
};

// Validates every field against a file of `file_size` bytes: header length within the file
// (and at most 100 MB, as the reference reader), JSON object of objects, known dtypes,
// non-negative shapes whose byte size equals end - begin, offsets inside the data section,
// no overlaps and no holes (the spec requires the data to be entirely indexed). `where`
// names the file in errors. Used by the reader and the fuzz target.
SafetensorsHeader safetensors_parse_header(const uint8_t* data, size_t file_size, const std::string& where);

// How tensor data is held. Map: zero-copy views into a read-only file mapping (instant
// start, memory shared with the page cache). Read: one copy in anonymous memory. Decode
// streams all weights per token, and on this project's machines GEMV over mapped file pages
// runs at less than half the speed of anonymous memory (docs/benchmarks.md), so inference
// reads by default and streaming tools (quantize) map.
enum class LoadMode { Map, Read };

// A safetensors file; tensors are views into its mapping or into the copy of its data.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path, LoadMode mode = LoadMode::Map);
  const std::string& path() const { return file_->path; }
  const SafetensorsHeader& header() const { return header_; }
  const SafetensorsEntry* find(const std::string& name) const;
  Tensor tensor(const SafetensorsEntry& e) const;

 private:
  std::shared_ptr<MappedFile> file_;
  std::shared_ptr<Storage> storage_;
  uint64_t base_ = 0;  // offset of the data section within storage_
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// Streams tensors to a file without holding them all: each tensor's bytes come from a fill
// callback called with consecutive chunks. Written atomically (temp, fsync, rename).
class SafetensorsWriter {
 public:
  using Fill = std::function<void(uint8_t* dst, uint64_t offset, uint64_t n)>;  // byte range of the tensor
  void add(std::string name, DType dtype, Shape shape, Fill fill);
  void add(std::string name, const Tensor& t);  // copies from a host tensor
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }
  uint64_t data_bytes() const { return data_bytes_; }
  size_t size() const { return entries_.size(); }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  void write(const std::string& path, const std::function<void(uint64_t)>& progress = nullptr) const;

 private:
  std::vector<SafetensorsEntry> entries_;
  std::vector<Fill> fills_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_bytes_ = 0;
};

}  // namespace llmq
