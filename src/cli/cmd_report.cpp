// llmq report RUN_DIR: write RUN_DIR/report.html (charts of a training run's metrics).
#include "cli/common.h"
#include "core/file_util.h"
#include "train/report.h"

namespace llmq::cli {

void register_report(CLI::App& app) {
  auto* cmd = app.add_subcommand("report", "write an HTML page with charts of a training run (loss, lr, tokens/s)");
  auto dir = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  cmd->add_option("RUN_DIR", *dir, "the --out directory of `llmq train`")->required();
  cmd->add_option("-o,--out", *out, "output file (default RUN_DIR/report.html)");
  cmd->callback([dir, out] {
    const std::string path = out->empty() ? *dir + "/report.html" : *out;
    write_file_atomic(path, train::report_html(*dir));
    fmt::print("wrote {}\n", path);
  });
}

}  // namespace llmq::cli
