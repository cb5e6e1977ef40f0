// llmq report RUN_DIR: write RUN_DIR/report.html (charts of a training run's metrics).
#include "cli/common.h"
#include "core/file_util.h"
#include "train/report.h"

namespace llmq::cli {

void register_report(CLI::App& app) {
  auto* cmd = app.add_subcommand("report", "write an HTML page with charts of training runs (loss, lr, tokens/s); "
                                            "several runs are overlaid on the same charts");
  auto dirs = std::make_shared<std::vector<std::string>>();
  auto out = std::make_shared<std::string>();
  cmd->add_option("RUN_DIR", *dirs, "--out directories of `llmq train` (one, or several to compare)")->required();
  cmd->add_option("-o,--out", *out, "output file (default: the first RUN_DIR's report.html)");
  cmd->callback([dirs, out] {
    const std::string path = out->empty() ? dirs->front() + "/report.html" : *out;
    write_file_atomic(path, train::report_html(*dirs));
    fmt::print("wrote {}\n", path);
  });
}

}  // namespace llmq::cli
