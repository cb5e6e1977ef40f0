// `llmq report RUN_DIR`: a self-contained HTML page with SVG line charts of a training run's
// metrics.jsonl (loss and validation loss, learning rate, gradient norm, tokens/s).
#include "train/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/file_util.h"

namespace llmq::train {

namespace {
struct Series {
  std::string name, color;
  std::vector<std::pair<double, double>> pts;  // (step, value)
};

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) o += c == '<' ? "&lt;" : c == '>' ? "&gt;" : c == '&' ? "&amp;" : std::string(1, c);
  return o;
}

// One chart: axes with 5 ticks each, a polyline per series, a legend.
std::string chart(const std::string& title, const std::vector<Series>& series, bool log_y) {
  const double W = 640, H = 300, L = 70, R = 20, T = 30, B = 40;
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  auto fy = [&](double v) { return log_y ? std::log10(std::max(v, 1e-12)) : v; };
  for (const auto& s : series)
    for (auto [x, y] : s.pts) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, fy(y)), y1 = std::max(y1, fy(y));
    }
  std::string svg = fmt::format("<svg xmlns='http://www.w3.org/2000/svg' width='{}' height='{}' font-family='sans-serif' font-size='12'>",
                                W, H);
  svg += fmt::format("<text x='{}' y='18' font-weight='bold'>{}</text>", L, esc(title));
  if (x0 > x1) return svg + fmt::format("<text x='{}' y='{}'>no data</text></svg>", L, H / 2);
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1, y0 -= 1;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (fy(y) - y0) / (y1 - y0) * (H - T - B); };
  svg += fmt::format("<rect x='{}' y='{}' width='{}' height='{}' fill='none' stroke='#999'/>", L, T, W - L - R, H - T - B);
  for (int i = 0; i <= 4; i++) {
    double xv = x0 + (x1 - x0) * i / 4, yv = y0 + (y1 - y0) * i / 4;
    double yl = log_y ? std::pow(10, yv) : yv;
    double ypx = H - B - (H - T - B) * i / 4.0;
    svg += fmt::format("<text x='{:.1f}' y='{}' text-anchor='middle'>{:.0f}</text>", px(xv), H - B + 16, xv);
    svg += fmt::format("<text x='{}' y='{:.1f}' text-anchor='end'>{:.4g}</text>", L - 6, ypx + 4, yl);
    svg += fmt::format("<line x1='{}' x2='{}' y1='{:.1f}' y2='{:.1f}' stroke='#eee'/>", L, W - R, ypx, ypx);
  }
  svg += fmt::format("<text x='{}' y='{}' text-anchor='middle'>step</text>", (L + W - R) / 2, H - 6);
  int li = 0;
  for (const auto& s : series) {
    std::string pts;
    for (auto [x, y] : s.pts)
      if (std::isfinite(y)) pts += fmt::format("{:.1f},{:.1f} ", px(x), py(y));
    svg += fmt::format("<polyline fill='none' stroke='{}' stroke-width='1.5' points='{}'/>", s.color, pts);
    if (s.pts.size() == 1) svg += fmt::format("<circle cx='{:.1f}' cy='{:.1f}' r='3' fill='{}'/>", px(s.pts[0].first), py(s.pts[0].second), s.color);
    svg += fmt::format("<text x='{}' y='{}' fill='{}'>{}</text>", W - R - 140, T + 16 + 14 * li++, s.color, esc(s.name));
  }
  return svg + "</svg>";
}
}  // namespace

std::string report_html(const std::string& run_dir) {
  const std::string path = (std::filesystem::path(run_dir) / "metrics.jsonl").string();
  if (!std::filesystem::is_regular_file(path)) fail("{}: no metrics.jsonl (is this an `llmq train --out` directory?)", run_dir);
  std::ifstream in(path);
  std::string line;
  Series loss{"train loss", "#1f77b4", {}}, val{"validation loss", "#d62728", {}}, lr{"learning rate", "#2ca02c", {}},
      gn{"gradient norm", "#9467bd", {}}, tps{"tokens/s", "#ff7f0e", {}};
  int64_t n = 0, bad = 0;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number()) {
      bad++;
      continue;
    }
    const double s = j["step"].get<double>();
    auto add = [&](Series& se, const char* k) {
      if (j.contains(k) && j[k].is_number()) se.pts.push_back({s, j[k].get<double>()});
    };
    add(loss, "loss"), add(val, "val_loss"), add(lr, "lr"), add(gn, "grad_norm"), add(tps, "tokens_per_s");
    n++;
  }
  std::string html = "<!doctype html><html><head><meta charset='utf-8'><title>llmq run " + esc(run_dir) +
                     "</title></head><body style='font-family:sans-serif;max-width:700px;margin:auto'>";
  html += "<h2>Training run " + esc(run_dir) + "</h2>";
  html += fmt::format("<p>{} steps logged", n);
  if (!loss.pts.empty()) html += fmt::format("; last train loss {:.4f}", loss.pts.back().second);
  if (!val.pts.empty())
    html += fmt::format("; last validation loss {:.4f} (perplexity {:.2f})", val.pts.back().second, std::exp(val.pts.back().second));
  if (bad) {
    html += fmt::format("; {} unreadable lines skipped", bad);
    fmt::print(stderr, "warning: {}: skipped {} unreadable line{} (a row cut by a kill or a full disk)\n", path, bad,
               bad == 1 ? "" : "s");
  }
  html += ".</p>";
  html += chart("Loss (nats/token)", {loss, val}, false) + "<br>";
  html += chart("Learning rate", {lr}, false) + "<br>";
  html += chart("Gradient norm (before clipping)", {gn}, true) + "<br>";
  html += chart("Throughput (tokens/s)", {tps}, false);
  return html + "</body></html>\n";
}

}  // namespace llmq::train
