// SentencePiece through libsentencepiece: encode/decode behind the Tokenizer interface, and
// training. Control symbols (<s>, </s>) are parsed from text only with allow_special.
#include "tokenizer/spm.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/error.h"
#include "core/file_util.h"

namespace llmq {

namespace {
class SpmTokenizer final : public Tokenizer {
 public:
  SpmTokenizer(const std::string& path, const std::string& data) {
    auto st = sp_.LoadFromSerializedProto(data);
    if (!st.ok()) fail("{}: not a tiktoken or SentencePiece model ({})", path, st.ToString());
    n_ = sp_.GetPieceSize();
    if (n_ <= 0) fail("{}: SentencePiece model has no pieces", path);
    kind_ = "sentencepiece";
    source_ = path;
    bos_id = sp_.bos_id();
    if (sp_.eos_id() >= 0) eos_ids.push_back(sp_.eos_id());
    uint64_t h = fnv1a64(kind_);
    for (int i = 0; i < n_; i++) {
      h = fnv1a64(sp_.IdToPiece(i), h);
      h = fnv1a64(std::to_string(sp_.GetScore(i)) + (sp_.IsControl(i) ? "c" : "") + (sp_.IsByte(i) ? "b" : ""), h);
      if (sp_.IsControl(i) && !sp_.IdToPiece(i).empty()) controls_.push_back({sp_.IdToPiece(i), i});
    }
    fingerprint_ = fmt::format("{:016x}", h);
  }

  std::vector<int32_t> encode(std::string_view text, bool allow_special) const override {
    std::vector<int32_t> out;
    size_t start = 0;
    if (allow_special) {
      for (size_t i = 0; i < text.size();) {
        int hit = -1;
        size_t len = 0;
        for (const auto& [s, id] : controls_)
          if (s.size() > len && text.compare(i, s.size(), s) == 0) hit = id, len = s.size();
        if (hit < 0) {
          i++;
          continue;
        }
        plain(text.substr(start, i - start), out);
        out.push_back(hit);
        i += len;
        start = i;
      }
    }
    plain(text.substr(start), out);
    return out;
  }

  std::string token_bytes(int32_t id) const override {
    check(id);
    if (sp_.IsControl(id) || sp_.IsUnknown(id)) return sp_.IdToPiece(id);
    const std::string& p = sp_.IdToPiece(id);
    if (sp_.IsByte(id) && p.size() == 6) return std::string(1, (char)std::stoi(p.substr(3, 2), nullptr, 16));  // <0xAB>
    std::string s;
    for (size_t i = 0; i < p.size(); i++) {
      if (p.compare(i, 3, "\xE2\x96\x81") == 0) {  // U+2581, SentencePiece's space
        s += ' ';
        i += 2;
      } else {
        s += p[i];
      }
    }
    return s;
  }

  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::vector<int> v;
    for (int32_t id : ids) {
      check(id);
      if (!(skip_special && sp_.IsControl(id))) v.push_back(id);
    }
    std::string s;
    auto st = sp_.Decode(v, &s);
    if (!st.ok()) fail("sentencepiece decode: {}", st.ToString());
    return s;
  }

  int32_t vocab_size() const override { return n_; }
  bool is_special(int32_t id) const override { return id >= 0 && id < n_ && sp_.IsControl(id); }
  VocabExport export_vocab() const override {
    VocabExport v;
    v.model = "llama";
    v.pre = "default";
    v.unk_id = sp_.unk_id();
    for (int32_t i = 0; i < n_; i++) {
      v.tokens.push_back(sp_.IdToPiece(i));
      v.scores.push_back(sp_.GetScore(i));
      v.types.push_back(sp_.IsUnknown(i) ? 2 : sp_.IsControl(i) ? 3 : sp_.IsByte(i) ? 6 : sp_.IsUnused(i) ? 5 : 1);
    }
    return v;
  }
  int32_t token_id(std::string_view text) const override {
    int id = sp_.PieceToId(text);
    return (id == sp_.unk_id() && text != sp_.IdToPiece(sp_.unk_id())) ? -1 : id;
  }

 private:
  void check(int32_t id) const {
    if (id < 0 || id >= n_) fail("token id {} is outside the vocabulary ({} ids)", id, n_);
  }
  void plain(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    std::vector<int> ids;
    auto st = sp_.Encode(text, &ids);
    if (!st.ok()) fail("sentencepiece encode: {}", st.ToString());
    out.insert(out.end(), ids.begin(), ids.end());
  }
  sentencepiece::SentencePieceProcessor sp_;
  int n_ = 0;
  std::vector<std::pair<std::string, int>> controls_;
};
}  // namespace

namespace {
// Reads a protobuf varint at p (bounded by end); false when truncated or longer than 10 bytes.
bool pb_varint(const uint8_t*& p, const uint8_t* end, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 70 && p < end; shift += 7) {
    const uint8_t b = *p++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}
// The fields of one protobuf message: calls f(field, wire type, value or length, bytes) for
// each; false when the bytes are not a well-formed message.
template <class F>
bool pb_fields(const uint8_t* p, const uint8_t* end, F f) {
  while (p < end) {
    uint64_t key, v;
    if (!pb_varint(p, end, key)) return false;
    const int wt = (int)(key & 7);
    if (wt == 0) {
      if (!pb_varint(p, end, v)) return false;
      f(key >> 3, wt, v, nullptr);
    } else if (wt == 2) {
      if (!pb_varint(p, end, v) || v > (uint64_t)(end - p)) return false;
      f(key >> 3, wt, v, p);
      p += v;
    } else if (wt == 5 || wt == 1) {
      const size_t n = wt == 5 ? 4 : 8;
      if ((size_t)(end - p) < n) return false;
      p += n;
    } else {
      return false;
    }
  }
  return true;
}
}  // namespace

std::unique_ptr<Tokenizer> spm_load(const std::string& path, const std::string& data) {
  // libsentencepiece's trie builder (Darts) throws from code that cannot propagate it (the
  // process aborts) on a piece that is empty or holds a NUL byte: such pieces (field 1 of
  // each ModelProto.pieces entry) are refused here first. Found by tests/fuzz/campaign.sh.
  // Only well-formed messages are judged: anything else libsentencepiece rejects itself.
  const uint8_t* b = reinterpret_cast<const uint8_t*>(data.data());
  const auto noop = [](uint64_t, int, uint64_t, const uint8_t*) {};
  int64_t index = 0;
  if (pb_fields(b, b + data.size(), noop)) {
    pb_fields(b, b + data.size(), [&](uint64_t field, int wt, uint64_t len, const uint8_t* msg) {
      if (field != 1 || wt != 2 || !pb_fields(msg, msg + len, noop)) return;
      bool has_piece = false;
      pb_fields(msg, msg + len, [&](uint64_t f, int w, uint64_t n, const uint8_t* s) {
        if (f != 1 || w != 2) return;
        has_piece = true;
        const std::string_view piece(reinterpret_cast<const char*>(s), n);
        if (piece.empty() || piece.find('\0') != std::string_view::npos)
          fail("{}: SentencePiece model piece {} is empty or holds a NUL byte (a corrupt tokenizer.model)", path, index);
      });
      if (!has_piece) fail("{}: SentencePiece model piece {} has no text (a corrupt tokenizer.model)", path, index);
      index++;
    });
  }
  return std::make_unique<SpmTokenizer>(path, data);
}

void spm_train(const SpmTrainOptions& o, const std::string& out_dir) {
  if (o.inputs.empty()) fail("tokenizer train: give at least one --input file");
  std::string inputs;
  for (const auto& f : o.inputs) {
    if (!std::filesystem::is_regular_file(f)) fail("{}: no such input file", f);
    if (f.find(',') != std::string::npos) fail("{}: input paths may not contain commas", f);
    inputs += (inputs.empty() ? "" : ",") + f;
  }
  if (o.type != "bpe" && o.type != "unigram") fail("tokenizer train: --type must be bpe or unigram, not {}", o.type);
  if (o.vocab_size < 260) fail("tokenizer train: --vocab {} is too small (byte fallback alone needs 259)", o.vocab_size);
  const int threads = o.threads > 0 ? o.threads : (int)std::max(1u, std::thread::hardware_concurrency());
  // Llama 2's conventions: <unk>=0, <s>=1, </s>=2, byte fallback so no text is unknown,
  // digits split, the whole character set kept (character_coverage 1), and no
  // normalization or whitespace folding, so decode(encode(s)) == s.
  const std::string args = fmt::format(
      "--input={} --model_type={} --vocab_size={} --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 "
      "--byte_fallback=true --split_digits=true --normalization_rule_name=identity "
      "--remove_extra_whitespaces=false --allow_whitespace_only_pieces=true --character_coverage=1.0 --num_threads={} "
      "--input_sentence_size={} --shuffle_input_sentence=true --max_sentence_length=16384 "
      "--train_extremely_large_corpus=false --minloglevel=1",
      inputs, o.type, o.vocab_size, threads, o.max_sentences);
  sentencepiece::SetRandomGeneratorSeed((unsigned)(o.seed ? o.seed : 1));
  std::string proto;
  // SentencePiece logs its whole command line before it reads --minloglevel: stderr is
  // silenced for the call (errors come back in the status and are reported below).
  std::fflush(stderr);
  const int saved = dup(2), devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (saved >= 0 && devnull >= 0) dup2(devnull, 2);
  auto st = sentencepiece::SentencePieceTrainer::Train(args, nullptr, &proto);
  std::fflush(stderr);
  if (saved >= 0) dup2(saved, 2), close(saved);
  if (devnull >= 0) close(devnull);
  if (!st.ok()) {
    // SentencePiece's own words name its source line ("Internal: ./src/trainer_interface.cc(428)
    // [!sentences_.empty()]"); the usual causes get a plain sentence.
    const std::string why = st.ToString();
    if (why.find("sentences_.empty()") != std::string::npos)
      fail("tokenizer train: the input holds no text to learn from ({}): give non-empty --input files", inputs);
    if (why.find("Vocabulary size is smaller than required_chars") != std::string::npos ||
        why.find("Vocabulary size too high") != std::string::npos)
      fail("tokenizer train: --vocab {} does not fit this input ({}); try a {} --vocab", o.vocab_size, why,
           why.find("too high") != std::string::npos ? "smaller" : "larger");
    fail("tokenizer train: SentencePiece failed: {}", why);
  }
  std::filesystem::create_directories(out_dir);
  write_file_atomic(out_dir + "/tokenizer.model", proto);
  nlohmann::json cfg = {{"tokenizer_class", "LlamaTokenizer"}, {"bos_token", "<s>"}, {"eos_token", "</s>"},
                        {"unk_token", "<unk>"},               {"add_bos_token", true}, {"add_eos_token", false}};
  write_file_atomic(out_dir + "/tokenizer_config.json", cfg.dump(2) + "\n");
}

}  // namespace llmq
