// safetensors reader (validating, memory-mapped) and streaming writer.
#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace llmq {

using nlohmann::json;

constexpr uint64_t kMaxHeader = 100u << 20;  // the reference implementation's limit

SafetensorsHeader safetensors_parse_header(const uint8_t* data, size_t size, const std::string& where) {
  if (size < 8) fail("{}: truncated safetensors file ({} bytes, need at least 8)", where, size);
  uint64_t n = 0;
  for (int i = 7; i >= 0; i--) n = (n << 8) | data[i];
  if (n > kMaxHeader) fail("{}: safetensors header length {} exceeds the 100 MB limit (corrupt file?)", where, n);
  if (n > size - 8) fail("{}: truncated safetensors file: header says {} bytes, file has {}", where, n, size - 8);
  json j = json::parse(data + 8, data + 8 + n, nullptr, false);
  if (j.is_discarded()) fail("{}: safetensors header is not valid JSON", where);
  if (!j.is_object()) fail("{}: safetensors header must be a JSON object", where);

  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t data_size = size - h.data_start;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("{}: __metadata__ must be an object of strings", where);
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail("{}: __metadata__[\"{}\"] must be a string", where, m.key());
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& why) { fail("{}: tensor '{}': {}", where, name, why); };
    if (!v.is_object()) bad("entry must be an object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) bad("missing string \"dtype\"");
    if (!v.contains("shape") || !v["shape"].is_array()) bad("missing array \"shape\"");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
      bad("\"data_offsets\" must be [begin, end]");
    SafetensorsEntry e;
    e.name = name;
    std::string dt = v["dtype"].get<std::string>();
    if (!dtype_try_parse_safetensors(dt, &e.dtype)) bad("unsupported dtype \"" + dt + "\"");
    // Element count with overflow checks: every dim fits in 2^40 and the product in 2^56.
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
        bad("shape entries must be non-negative integers");
      uint64_t x = d.get<uint64_t>();
      if (x > (uint64_t(1) << 40) || (x && numel > (uint64_t(1) << 56) / x)) bad("shape is too large");
      numel *= x;
      e.shape.push_back((int64_t)x);
    }
    for (int i = 0; i < 2; i++)
      if (!v["data_offsets"][i].is_number_unsigned()) bad("data_offsets must be non-negative integers");
    e.begin = v["data_offsets"][0].get<uint64_t>();
    e.end = v["data_offsets"][1].get<uint64_t>();
    if (e.begin > e.end) bad(fmt::format("data_offsets [{}, {}] are reversed", e.begin, e.end));
    if (e.end > data_size)
      bad(fmt::format("data_offsets end {} is past the data section ({} bytes): truncated file?", e.end, data_size));
    uint64_t want = dtype_bytes(e.dtype, (int64_t)numel);
    if (e.end - e.begin != want)
      bad(fmt::format("{} {} needs {} bytes but data_offsets span {}", dt, shape_str(e.shape), want, e.end - e.begin));
    h.tensors.push_back(std::move(e));
  }
  // No overlaps and no holes: sorted by offset, each tensor starts where the previous ended.
  std::vector<const SafetensorsEntry*> by_off;
  for (const auto& e : h.tensors) by_off.push_back(&e);
  std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t pos = 0;
  for (const auto* e : by_off) {
    if (e->begin < pos) fail("{}: tensor '{}' overlaps the previous tensor (offset {} < {})", where, e->name, e->begin, pos);
    if (e->begin > pos) fail("{}: hole in the data section before tensor '{}' (bytes {}..{})", where, e->name, pos, e->begin);
    pos = e->end;
  }
  if (pos != data_size)
    fail("{}: data section is {} bytes but tensors cover {} (trailing bytes or truncation)", where, data_size, pos);
  return h;
}

SafetensorsFile::SafetensorsFile(const std::string& path, LoadMode mode) {
  file_ = map_file(path);
  header_ = safetensors_parse_header(file_->data, file_->size, path);
  if (mode == LoadMode::Map) {
    storage_ = Storage::borrow(const_cast<uint8_t*>(file_->data), file_->size, file_);
    base_ = header_.data_start;
  } else {
    // pread, not a copy from the mapping, so the page cache never counts in our RSS.
    file_->release_data();
    const uint64_t n = file_->size - header_.data_start;
    storage_ = Storage::allocate(n);
    read_file_range(path, header_.data_start, n, static_cast<uint8_t*>(storage_->data));
    base_ = 0;
  }
  for (size_t i = 0; i < header_.tensors.size(); i++) index_[header_.tensors[i].name] = i;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.tensors[it->second];
}

Tensor SafetensorsFile::tensor(const SafetensorsEntry& e) const {
  return Tensor::view(storage_, base_ + e.begin, e.dtype, e.shape);
}

void SafetensorsWriter::add(std::string name, DType dtype, Shape shape, Fill fill) {
  if (dtype_safetensors_name(dtype).empty()) fail("tensor '{}': dtype {} cannot be stored in safetensors", name, dtype_name(dtype));
  SafetensorsEntry e;
  e.name = std::move(name);
  e.dtype = dtype;
  e.shape = std::move(shape);
  e.begin = data_bytes_;
  e.end = e.begin + dtype_bytes(dtype, shape_numel(e.shape));
  data_bytes_ = e.end;
  entries_.push_back(std::move(e));
  fills_.push_back(std::move(fill));
}

void SafetensorsWriter::add(std::string name, const Tensor& t) {
  add(std::move(name), t.dtype(), t.shape(), [t](uint8_t* dst, uint64_t off, uint64_t n) {
    std::memcpy(dst, t.host<uint8_t>() + off, n);
  });
}

void SafetensorsWriter::write(const std::string& path, const std::function<void(uint64_t)>& progress) const {
  json j = json::object();
  if (!metadata_.empty()) j["__metadata__"] = metadata_;
  for (const auto& e : entries_)
    j[e.name] = {{"dtype", dtype_safetensors_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  std::string hdr = j.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
  while ((8 + hdr.size()) % 8) hdr.push_back(' ');
  uint8_t len[8];
  for (int i = 0; i < 8; i++) len[i] = (uint8_t)(hdr.size() >> (8 * i));
  AtomicFile f(path);
  f.write(len, 8);
  f.write(hdr.data(), hdr.size());
  constexpr uint64_t kChunk = 16u << 20;
  std::vector<uint8_t> buf(kChunk);
  uint64_t done = 0;
  for (size_t i = 0; i < entries_.size(); i++) {
    uint64_t n = entries_[i].end - entries_[i].begin;
    for (uint64_t off = 0; off < n; off += kChunk) {
      uint64_t c = std::min(kChunk, n - off);
      fills_[i](buf.data(), off, c);
      f.write(buf.data(), c);
      done += c;
      if (progress) progress(done);
    }
  }
  f.commit();
}

}  // namespace llmq
