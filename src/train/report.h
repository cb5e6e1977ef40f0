// Training-run report: an HTML page with SVG charts built from RUN_DIR/metrics.jsonl.
#pragma once
#include <string>

namespace llmq::train {

std::string report_html(const std::string& run_dir);

}  // namespace llmq::train
