// Training checkpoints: the full and sharded formats (checkpoint.h), read by ranges.
#include "train/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>

#include "core/error.h"
#include "core/file_util.h"
#include "io/safetensors.h"

namespace llmq::train {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr char kStateMagic[8] = {'L', 'L', 'M', 'Q', 'T', 'R', 'N', '1'};
constexpr char kShardMagic[8] = {'L', 'L', 'M', 'Q', 'S', 'H', 'D', '1'};
constexpr const char* kShardFormat = "llmq-sharded-1";

// Calls f(spec index, offset in the spec, count, offset in [b, e)) for the pieces of the
// flat range [b, e), spec by spec.
template <class Fn>
void for_specs(const FlatLayout& L, int64_t b, int64_t e, Fn f) {
  size_t i = std::upper_bound(L.offsets.begin(), L.offsets.end(), b) - L.offsets.begin() - 1;
  for (int64_t at = b; at < e; i++) {
    const int64_t end = L.offsets[i] + shape_numel(L.specs[i].shape), n = std::min(e, end) - at;
    if (n > 0) f(i, at - L.offsets[i], n, at - b);
    at += std::max<int64_t>(n, 0);
  }
}

void check_range(int64_t b, int64_t e, int64_t n) { LLMQ_CHECK(0 <= b && b <= e && e <= n); }

// A reader that checks what it read: every value finite (and a second moment not negative),
// else one error naming the checkpoint, the buffer and the tensor. A NaN in the state would
// otherwise be trained on from the resume and reported as "the last good checkpoint".
FlatReader checked(FlatReader read, std::shared_ptr<FlatLayout> L, std::string dir, std::string what, bool nonneg,
                   std::string advice = "a corrupt or diverged state; resume from an earlier checkpoint (give it as "
                                        "--model to start a new run from its weights) or start again") {
  return [=](int64_t b, int64_t e, float* dst) {
    read(b, e, dst);
    int64_t bad = first_nonfinite(dst, DType::F32, e - b);
    if (bad < 0 && nonneg)
      for (int64_t i = 0; i < e - b && bad < 0; i++)
        if (dst[i] < 0.f) bad = i;
    if (bad < 0) return;
    const int64_t at = b + bad;
    const size_t k = std::upper_bound(L->offsets.begin(), L->offsets.end(), at) - L->offsets.begin() - 1;
    fail("{}: the {} of '{}' hold {} at element {}: {}", dir, what, L->specs[k].name, dst[bad], at - L->offsets[k], advice);
  };
}

std::string shard_name(int rank, int world) { return fmt::format("shard-{:05}-of-{:05}.bin", rank, world); }

json head_json(const CheckpointHead& h, int64_t n) {
  return {{"step", h.step}, {"cursor", h.cursor}, {"adam_step", h.adam_step}, {"n_params", n}, {"options", h.options}};
}

// The common fields of both formats' headers, checked.
CheckpointHead parse_head(const json& j, const std::string& path, int64_t n) {
  CheckpointHead h;
  auto num = [&](const char* k) {
    if (!j.contains(k) || !j[k].is_number_integer() || j[k].get<int64_t>() < 0) fail("{}: missing or bad \"{}\"", path, k);
    return j[k].get<int64_t>();
  };
  if (num("n_params") != n) fail("{}: the state has {} parameters, this model {}", path, num("n_params"), n);
  h.step = num("step"), h.cursor = num("cursor"), h.adam_step = num("adam_step");
  if (!j.contains("options") || !j["options"].is_object()) fail("{}: missing \"options\"", path);
  h.options = j["options"];
  return h;
}

CheckpointSource open_full(const std::string& dir, const ModelConfig& c) {
  CheckpointSource s = open_train_state(dir, FlatLayout(c).n);
  s.params = model_dir_reader(dir, c);
  return s;
}

}  // namespace

CheckpointSource open_train_state(const std::string& dir, int64_t n) {
  const std::string path = (fs::path(dir) / "train_state.bin").string();
  if (!fs::is_regular_file(path)) fail("{}: missing (not an llmq training checkpoint)", path);
  const uint64_t size = fs::file_size(path);
  char magic[8];
  uint64_t len = 0;
  if (size < 16) fail("{}: not an llmq training state", path);
  read_file_range(path, 0, 8, reinterpret_cast<uint8_t*>(magic));
  read_file_range(path, 8, 8, reinterpret_cast<uint8_t*>(&len));
  if (std::memcmp(magic, kStateMagic, 8) != 0) fail("{}: not an llmq training state", path);
  // The header is a small JSON object (step, cursor, options): a length field beyond 16 MiB
  // is corruption, not a header to allocate for.
  if (len > (16u << 20)) fail("{}: header length {} exceeds the 16 MiB limit (corrupt file?)", path, len);
  if (len > size - 16) fail("{}: truncated", path);
  std::string text(len, '\0');
  read_file_range(path, 16, len, reinterpret_cast<uint8_t*>(text.data()));
  CheckpointSource s;
  s.head = parse_state_header(text, path, n);
  if (size != 16 + len + 8 * (uint64_t)n) fail("{}: the state does not fit this model ({} parameters)", path, n);
  auto moment = [path, len, n](int k) -> FlatReader {
    return [=](int64_t b, int64_t e, float* dst) {
      check_range(b, e, n);
      read_file_range(path, 16 + len + 4 * ((uint64_t)k * n + b), 4 * (uint64_t)(e - b), reinterpret_cast<uint8_t*>(dst));
    };
  };
  s.m = moment(0), s.v = moment(1);
  return s;
}

void write_train_state(const std::string& tmp, const CheckpointHead& head, int64_t n, const float* m, const float* v) {
  const std::string h = head_json(head, n).dump();
  AtomicFile st((fs::path(tmp) / "train_state.bin").string());
  st.write(kStateMagic, 8);
  uint64_t len = h.size();
  st.write(&len, 8);
  st.write(h.data(), h.size());
  const std::vector<float> zeros(m && v ? 0 : (size_t)n, 0.f);
  st.write(m ? m : zeros.data(), (size_t)n * 4);
  st.write(v ? v : zeros.data(), (size_t)n * 4);
  st.commit();
}

CheckpointHead parse_state_header(const std::string& text, const std::string& path, int64_t n) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail("{}: corrupt header", path);
  return parse_head(j, path, n);
}

ShardedMeta parse_sharded_meta(const std::string& text, const std::string& path, int64_t n) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) fail("{}: not valid JSON", path);
  if (!j.contains("format") || !j["format"].is_string() || j["format"].get<std::string>() != kShardFormat)
    fail("{}: format is not \"{}\"", path, kShardFormat);
  ShardedMeta meta;
  meta.head = parse_head(j, path, n);
  if (!j.contains("world_size") || !j["world_size"].is_number_integer() || j["world_size"].get<int64_t>() < 1 ||
      j["world_size"].get<int64_t>() > 65536)
    fail("{}: \"world_size\" must be an integer in 1..65536", path);
  const int W = j["world_size"].get<int>();
  meta.head.world_size = W;
  // Units: contiguous, covering the buffer, each cut into W chunks.
  if (!j.contains("units") || !j["units"].is_array()) fail("{}: missing \"units\"", path);
  int64_t at = 0;
  for (const auto& u : j["units"]) {
    if (!u.is_array() || u.size() != 3 || !u[0].is_number_integer() || !u[1].is_number_integer() || !u[2].is_number_integer())
      fail("{}: a unit must be [begin, end, chunk]", path);
    const int64_t b = u[0].get<int64_t>(), e = u[1].get<int64_t>(), ch = u[2].get<int64_t>();
    if (b != at || e <= b || e > n || ch != (e - b + W - 1) / W)
      fail("{}: unit [{}, {}, {}] does not continue the layout at {} of {} parameters over {} ranks", path, b, e, ch, at, n, W);
    meta.units.push_back({b, e, ch});
    meta.per_rank += ch;
    at = e;
  }
  if (at != n) fail("{}: the units cover {} of {} parameters", path, at, n);
  return meta;
}

namespace {

CheckpointSource open_sharded(const std::string& dir, const ModelConfig& c) {
  const FlatLayout L(c);
  const std::string meta_path = (fs::path(dir) / "sharded_state.json").string();
  const ShardedMeta meta = parse_sharded_meta(read_text_file(meta_path), meta_path, L.n);
  CheckpointSource s;
  s.head = meta.head;
  const int W = meta.head.world_size;
  const int64_t per_rank = meta.per_rank;
  struct U {
    int64_t begin, end, chunk, shard_off;
  };
  auto units = std::make_shared<std::vector<U>>();
  int64_t off = 0;
  for (const auto& u : meta.units) units->push_back({u.begin, u.end, u.chunk, off}), off += u.chunk;
  auto files = std::make_shared<std::vector<std::string>>();
  for (int r = 0; r < W; r++) {
    const std::string f = (fs::path(dir) / shard_name(r, W)).string();
    if (!fs::is_regular_file(f)) fail("{}: missing (the checkpoint was written by {} ranks)", f, W);
    char magic[8];
    uint64_t n = 0;
    const uint64_t size = fs::file_size(f);
    if (size < 16) fail("{}: truncated", f);
    read_file_range(f, 0, 8, reinterpret_cast<uint8_t*>(magic));
    read_file_range(f, 8, 8, reinterpret_cast<uint8_t*>(&n));
    if (std::memcmp(magic, kShardMagic, 8) != 0) fail("{}: not an llmq shard", f);
    if (n != (uint64_t)per_rank || size != 16 + 12 * (uint64_t)per_rank)
      fail("{}: {} bytes, expected {} for {} elements per rank (truncated or from another run)", f, size,
           16 + 12 * per_rank, per_rank);
    files->push_back(f);
  }
  const int64_t total = L.n;
  auto reader = [=](int k) -> FlatReader {
    return [=](int64_t b, int64_t e, float* dst) {
      check_range(b, e, total);
      size_t u = 0;
      while (b < e) {
        while ((*units)[u].end <= b) u++;
        const U& x = (*units)[u];
        const int64_t r = (b - x.begin) / x.chunk, n = std::min({e, x.end, x.begin + (r + 1) * x.chunk}) - b;
        const int64_t at_shard = x.shard_off + (b - x.begin - r * x.chunk);
        read_file_range((*files)[r], 16 + 4 * ((uint64_t)k * per_rank + at_shard), 4 * (uint64_t)n,
                        reinterpret_cast<uint8_t*>(dst));
        dst += n, b += n;
      }
    };
  };
  s.params = reader(0), s.m = reader(1), s.v = reader(2);
  return s;
}

}  // namespace

void copy_tokenizer(const std::string& src, const std::string& tmp) {
  if (src.empty()) return;
  const fs::path p = src;
  write_file_atomic((fs::path(tmp) / p.filename()).string(), read_text_file(src));
  if (fs::is_regular_file(p.parent_path() / "tokenizer_config.json"))
    write_file_atomic((fs::path(tmp) / "tokenizer_config.json").string(),
                      read_text_file((p.parent_path() / "tokenizer_config.json").string()));
}

namespace {

TensorFill flat_fill(const FlatLayout& L, const FlatReader& read) {
  return [&L, read](const HfTensorSpec& s, DType dt, uint8_t* dst, uint64_t off, uint64_t nbytes) {
    size_t i = 0;
    while (L.specs[i].name != s.name) i++;
    const uint64_t es = dtype_bits(dt) / 8, e0 = off / es, n = nbytes / es;
    std::vector<float> buf(n);
    read(L.offsets[i] + (int64_t)e0, L.offsets[i] + (int64_t)(e0 + n), buf.data());
    for (uint64_t k = 0; k < n; k++) {
      const float f = buf[k];
      if (dt == DType::F32) std::memcpy(dst + 4 * k, &f, 4);
      else if (dt == DType::BF16) { uint16_t h = f32_to_bf16(f); std::memcpy(dst + 2 * k, &h, 2); }
      else { uint16_t h = f32_to_f16(f); std::memcpy(dst + 2 * k, &h, 2); }
    }
  };
}
}  // namespace

FlatReader init_reader(const ModelConfig& c, uint64_t seed) {
  auto L = std::make_shared<FlatLayout>(c);
  TensorFill f = init_fill(c, seed);
  return [L, f](int64_t b, int64_t e, float* dst) {
    check_range(b, e, L->n);
    for_specs(*L, b, e, [&](size_t i, int64_t off, int64_t n, int64_t d) {
      f(L->specs[i], DType::F32, reinterpret_cast<uint8_t*>(dst + d), (uint64_t)off * 4, (uint64_t)n * 4);
    });
  };
}

FlatReader model_dir_reader(const std::string& dir, const ModelConfig& c) {
  auto L = std::make_shared<FlatLayout>(c);
  std::vector<std::string> names;
  if (fs::is_regular_file(fs::path(dir) / "model.safetensors.index.json")) {
    json idx = json::parse(read_text_file((fs::path(dir) / "model.safetensors.index.json").string()), nullptr, false);
    if (idx.is_discarded() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
      fail("{}/model.safetensors.index.json: malformed index", dir);
    for (auto& [k, v] : idx["weight_map"].items())
      if (v.is_string() && v.get<std::string>().find('/') == std::string::npos) names.push_back(v.get<std::string>());
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
  } else {
    names.push_back("model.safetensors");
  }
  auto files = std::make_shared<std::vector<std::unique_ptr<SafetensorsFile>>>();
  for (const auto& f : names) files->push_back(std::make_unique<SafetensorsFile>((fs::path(dir) / f).string(), LoadMode::Map));
  auto tensors = std::make_shared<std::vector<Tensor>>();
  for (const auto& spec : L->specs) {
    const SafetensorsEntry* e = nullptr;
    const SafetensorsFile* owner = nullptr;
    for (const auto& f : *files)
      if ((e = f->find(spec.name))) {
        owner = f.get();
        break;
      }
    if (!e) fail("{}: tensor {} is missing", dir, spec.name);
    if (e->shape != spec.shape) fail("{}: tensor {} has shape {}, expected {}", dir, spec.name, shape_str(e->shape), shape_str(spec.shape));
    Tensor t = owner->tensor(*e);
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      fail("{}: tensor {} has dtype {}, expected f32, bf16 or f16", dir, spec.name, dtype_name(t.dtype()));
    tensors->push_back(std::move(t));
  }
  FlatReader read = [L, files, tensors](int64_t b, int64_t e, float* dst) {
    check_range(b, e, L->n);
    for_specs(*L, b, e, [&](size_t i, int64_t off, int64_t n, int64_t d) {
      const Tensor& t = (*tensors)[i];
      float* out = dst + d;
      switch (t.dtype()) {
        case DType::F32: std::memcpy(out, t.host<float>() + off, (size_t)n * 4); break;
        case DType::BF16: for (int64_t k = 0; k < n; k++) out[k] = bf16_to_f32(t.host<uint16_t>()[off + k]); break;
        default: for (int64_t k = 0; k < n; k++) out[k] = f16_to_f32(t.host<uint16_t>()[off + k]); break;
      }
      // Each range is read once (into the training buffer, a shard, or a linear being
      // quantized): the file's pages leave this process's resident set as they are used.
      const size_t es = t.dtype() == DType::F32 ? 4 : 2;
      release_pages(static_cast<const uint8_t*>(t.host_data()) + (size_t)off * es, (size_t)n * es);
    });
  };
  return checked(read, L, dir, "weights", false, "the weights are corrupt (a diverged run or a damaged file); use an "
                 "earlier checkpoint or re-export the model");
}

CheckpointSource open_checkpoint(const std::string& dir, const ModelConfig& c) {
  CheckpointSource s = fs::is_regular_file(fs::path(dir) / "sharded_state.json") ? open_sharded(dir, c) : open_full(dir, c);
  auto L = std::make_shared<FlatLayout>(c);
  s.params = checked(s.params, L, dir, "parameters", false);
  s.m = checked(s.m, L, dir, "AdamW first moments", false);
  s.v = checked(s.v, L, dir, "AdamW second moments", true);
  return s;
}

std::string latest_checkpoint(const std::string& out) {
  // A checkpoint-N directory exists only once complete (it is renamed into place from its
  // temporary name), and `latest` is updated after that rename: a kill between the two leaves
  // a newer complete checkpoint than `latest` names. Resume from the newest one.
  std::string newest;
  if (fs::is_directory(out))
    for (const auto& e : fs::directory_iterator(out)) {
      const std::string n = e.path().filename().string();
      if (e.is_directory() && n.size() == 17 && n.rfind("checkpoint-", 0) == 0 &&
          n.find_first_not_of("0123456789", 11) == std::string::npos && n > newest)
        newest = n;
    }
  const fs::path latest = fs::path(out) / "latest";
  if (fs::is_regular_file(latest)) {
    std::string name = read_text_file(latest.string());
    while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
    if (name.empty() || name.find('/') != std::string::npos || !fs::is_directory(fs::path(out) / name)) {
      if (newest.empty()) fail("{}: 'latest' names {}, which is missing", out, name);
      fmt::print(stderr, "note: {}/latest names {}, which is missing; resuming from {}\n", out, name, newest);
    } else if (name < newest) {
      fmt::print(stderr, "note: {}/latest names {}, but {} is newer and complete (a run stopped between the two); "
                 "resuming from it\n", out, name, newest);
    } else {
      newest = name;
    }
  }
  if (newest.empty()) fail("{}: nothing to resume (no checkpoint); run without --resume", out);
  return (fs::path(out) / newest).string();
}

bool has_checkpoint(const std::string& out) {
  if (!fs::is_directory(out)) return false;
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string n = e.path().filename().string();
    if (n == "latest" || (e.is_directory() && n.rfind("checkpoint-", 0) == 0)) return true;
  }
  return false;
}

std::string checkpoint_tmp_dir(const std::string& out, int64_t step) {
  return (fs::path(out) / fmt::format(".tmp-checkpoint-{:06}", step)).string();
}

std::string checkpoint_begin(const std::string& out, int64_t step) {
  const fs::path tmp = checkpoint_tmp_dir(out, step);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  return tmp.string();
}

void checkpoint_publish(const std::string& out, int64_t step, int64_t keep) {
  const std::string name = fmt::format("checkpoint-{:06}", step);
  const fs::path final_dir = fs::path(out) / name, tmp = fs::path(out) / (".tmp-" + name);
  fs::remove_all(final_dir);
  fs::rename(tmp, final_dir);
  write_file_atomic((fs::path(out) / "latest").string(), name + "\n");
  // Keep the newest `keep` checkpoints.
  std::vector<std::string> all;
  for (const auto& e : fs::directory_iterator(out))
    if (e.is_directory() && e.path().filename().string().rfind("checkpoint-", 0) == 0) all.push_back(e.path().string());
  std::sort(all.begin(), all.end());
  for (size_t i = 0; i + (size_t)std::max<int64_t>(1, keep) < all.size(); i++) fs::remove_all(all[i]);
}

void write_full_checkpoint(const std::string& tmp, const ModelConfig& c, const float* params, const float* m,
                           const float* v, const CheckpointHead& head, const std::string& tokenizer_src) {
  const FlatLayout L(c);
  SaveOptions so;
  so.dtype = DType::F32;
  model_save(tmp, c, flat_fill(L, [params](int64_t b, int64_t e, float* dst) { std::copy(params + b, params + e, dst); }), so);
  copy_tokenizer(tokenizer_src, tmp);
  write_train_state(tmp, head, L.n, m, v);
}

void write_shard(const std::string& tmp, int rank, int world, const float* params, const float* m, const float* v,
                 int64_t n) {
  AtomicFile f((fs::path(tmp) / shard_name(rank, world)).string());
  f.write(kShardMagic, 8);
  const uint64_t un = (uint64_t)n;
  f.write(&un, 8);
  for (const float* p : {params, m, v}) f.write(p, (size_t)n * 4);
  f.commit();
}

void write_shard_meta(const std::string& tmp, const ModelConfig& c, const std::vector<ShardUnit>& units, int world,
                      const CheckpointHead& head, const std::string& tokenizer_src) {
  write_model_configs(tmp, c);
  copy_tokenizer(tokenizer_src, tmp);
  json j = head_json(head, FlatLayout(c).n);
  j["format"] = kShardFormat;
  j["world_size"] = world;
  json us = json::array();
  for (const auto& u : units) us.push_back({u.begin, u.end, u.chunk});
  j["units"] = us;
  write_file_atomic((fs::path(tmp) / "sharded_state.json").string(), j.dump(1) + "\n");
}

void export_checkpoint_hf(const std::string& dir, const std::string& out, DType dtype) {
  if (!fs::is_regular_file(fs::path(dir) / "sharded_state.json") && !fs::is_regular_file(fs::path(dir) / "train_state.bin"))
    fail("{}: not a training checkpoint (no sharded_state.json or train_state.bin)", dir);
  if (fs::absolute(dir).lexically_normal() == fs::absolute(out).lexically_normal())
    fail("export: --out must differ from the checkpoint directory");
  const ModelConfig c = config_load((fs::path(dir) / "config.json").string());
  const FlatLayout L(c);
  const CheckpointSource s = open_checkpoint(dir, c);
  SaveOptions so;
  so.dtype = dtype;
  so.progress = true;
  model_save(out, c, flat_fill(L, s.params), so);
  copy_tokenizer_files(dir, out);
}

}  // namespace llmq::train
