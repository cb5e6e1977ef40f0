// Training-run report: an HTML page with SVG charts built from RUN_DIR/metrics.jsonl.
#pragma once
#include <string>
#include <vector>

namespace llmq::train {

// One run, or several overlaid (each its own colour, named by its directory).
std::string report_html(const std::vector<std::string>& run_dirs);

}  // namespace llmq::train
