// llmq export: a model directory to a GGUF file for llama.cpp (GPTQ-format directories
// come from `llmq quantize`, which writes that layout directly).
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/progress.h"
#include "io/gguf.h"

namespace llmq::cli {

void register_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "write a model in another tool's format (GGUF for llama.cpp)");
  struct Opts {
    std::string model, format = "gguf", type = "f16", out;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("-m,--model", o->model, "model directory (float weights and a tokenizer)")->required();
  cmd->add_option("--format", o->format, "gguf (GPTQ directories come from `llmq quantize`)");
  cmd->add_option("--type", o->type, "GGUF tensor type: f32, f16 (default), q8_0, q4_0");
  cmd->add_option("--out", o->out, "output file (.gguf)")->required();
  cmd->add_flag("--json", o->json, "print a JSON summary");
  cmd->callback([o] {
    if (o->format == "gptq")
      fail("export --format gptq: `llmq quantize -m MODEL --scheme w4a16|w8a16 --out DIR` already writes the GPTQ "
           "checkpoint layout (qweight, qzeros, scales, g_idx; quant_method gptq) that vLLM and transformers load");
    if (o->format != "gguf") fail("export: format '{}' is not supported (gguf)", o->format);
    GgufExportOptions g;
    g.type = o->type;
    g.progress = !o->json;
    gguf_export(o->model, o->out, g);
    const double bytes = (double)std::filesystem::file_size(o->out);
    if (o->json)
      fmt::print("{}\n", nlohmann::json{{"out", o->out}, {"type", o->type}, {"bytes", bytes}}.dump());
    else
      fmt::print("wrote {} ({}, {})\n", o->out, o->type, format_bytes(bytes));
  });
}

}  // namespace llmq::cli
