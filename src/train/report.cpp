// `llmq report RUN [RUN...]`: a self-contained HTML page with SVG line charts of training runs'
// metrics.jsonl (loss and validation loss, learning rate, gradient norm, tokens/s), several
// runs overlaid on the same axes (f32 against bf16, one option against another).
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

// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `n` intervals over range.
double nice_step(double range, int n) {
  const double raw = range / n, p = std::pow(10.0, std::floor(std::log10(raw))), f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

// One chart: axes with round tick values, a polyline per series, a legend. `zero_y`: the
// y axis starts at 0 (throughput, so differences are not magnified); `log_y`: decades.
std::string chart(const std::string& title, const std::vector<Series>& series, bool log_y, bool zero_y = false) {
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
  if (zero_y && !log_y) y0 = std::min(0.0, y0);
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1, y0 -= 1;
  // Axes widened to whole tick steps, so every tick is a round value.
  const double xs = std::max(1.0, nice_step(x1 - x0, 5)), ys = log_y ? std::max(1.0, std::ceil((y1 - y0) / 5)) : nice_step(y1 - y0, 5);
  x0 = std::floor(x0 / xs) * xs, x1 = std::ceil(x1 / xs) * xs;
  y0 = std::floor(y0 / ys) * ys, y1 = std::ceil(y1 / ys) * ys;
  if (x1 == x0) x1 = x0 + xs;
  if (y1 == y0) y1 = y0 + ys;
  auto px = [&](double x) { return L + (x - x0) / (x1 - x0) * (W - L - R); };
  auto py = [&](double y) { return H - B - (fy(y) - y0) / (y1 - y0) * (H - T - B); };
  auto pyv = [&](double v) { return H - B - (v - y0) / (y1 - y0) * (H - T - B); };  // v already on the axis scale
  svg += fmt::format("<rect x='{}' y='{}' width='{}' height='{}' fill='none' stroke='#999'/>", L, T, W - L - R, H - T - B);
  for (double xv = x0; xv <= x1 + xs * 1e-9; xv += xs)
    svg += fmt::format("<text x='{:.1f}' y='{}' text-anchor='middle'>{:g}</text>", px(xv), H - B + 16, xv);
  for (double yv = y0; yv <= y1 + ys * 1e-9; yv += ys) {
    const double ypx = pyv(yv);
    const double label = log_y ? std::pow(10, yv) : std::fabs(yv) < ys * 1e-9 ? 0.0 : yv;
    svg += fmt::format("<text x='{}' y='{:.1f}' text-anchor='end'>{:g}</text>", L - 6, ypx + 4, label);
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
    svg += fmt::format("<text x='{}' y='{}' fill='{}'>{}</text>", W - R - 200, T + 16 + 14 * li++, s.color, esc(s.name));
  }
  return svg + "</svg>";
}

struct RunMetrics {
  std::string name;
  Series loss, val, lr, gn, tps;
  int64_t n = 0, bad = 0;
};

RunMetrics read_run(const std::string& run_dir, const std::string& name, int k, bool several) {
  const std::string path = (std::filesystem::path(run_dir) / "metrics.jsonl").string();
  if (!std::filesystem::is_regular_file(path)) fail("{}: no metrics.jsonl (is this an `llmq train --out` directory?)", run_dir);
  // One hue per run; train and validation loss of a run share it (validation dashed below).
  static const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};
  const std::string c = kColors[k % 8], p = several ? name + ": " : "";
  RunMetrics r{name, {p + "train loss", several ? c : "#1f77b4", {}}, {p + "validation loss", several ? c : "#d62728", {}},
               {p + "learning rate", several ? c : "#2ca02c", {}}, {p + "gradient norm", several ? c : "#9467bd", {}},
               {p + "tokens/s", several ? c : "#ff7f0e", {}}};
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("step") || !j["step"].is_number()) {
      r.bad++;
      continue;
    }
    const double s = j["step"].get<double>();
    auto add = [&](Series& se, const char* key) {
      if (j.contains(key) && j[key].is_number()) se.pts.push_back({s, j[key].get<double>()});
    };
    add(r.loss, "loss"), add(r.val, "val_loss"), add(r.lr, "lr"), add(r.gn, "grad_norm"), add(r.tps, "tokens_per_s");
    r.n++;
  }
  if (r.bad)
    fmt::print(stderr, "warning: {}: skipped {} unreadable line{} (a row cut by a kill or a full disk)\n", path, r.bad,
               r.bad == 1 ? "" : "s");
  return r;
}
}  // namespace

std::string report_html(const std::vector<std::string>& run_dirs) {
  if (run_dirs.empty()) fail("report: give at least one run directory");
  const bool several = run_dirs.size() > 1;
  std::vector<RunMetrics> runs;
  for (size_t k = 0; k < run_dirs.size(); k++) {
    std::string name = std::filesystem::path(run_dirs[k]).lexically_normal().filename().string();
    if (name.empty()) name = run_dirs[k];
    runs.push_back(read_run(run_dirs[k], name, (int)k, several));
  }
  std::string title;
  for (const auto& d : run_dirs) title += (title.empty() ? "" : ", ") + d;
  std::string html = "<!doctype html><html><head><meta charset='utf-8'><title>llmq run " + esc(title) +
                     "</title></head><body style='font-family:sans-serif;max-width:700px;margin:auto'>";
  html += (several ? "<h2>Training runs " : "<h2>Training run ") + esc(title) + "</h2>";
  for (const auto& r : runs) {
    html += fmt::format("<p>{}{} steps logged", several ? esc(r.name) + ": " : "", r.n);
    if (!r.loss.pts.empty()) html += fmt::format("; last train loss {:.4f}", r.loss.pts.back().second);
    if (!r.val.pts.empty())
      html += fmt::format("; last validation loss {:.4f} (perplexity {:.2f})", r.val.pts.back().second, std::exp(r.val.pts.back().second));
    if (r.bad) html += fmt::format("; {} unreadable lines skipped", r.bad);
    html += ".</p>";
  }
  std::vector<Series> loss, lr, gn, tps;
  for (const auto& r : runs) {
    loss.push_back(r.loss), loss.push_back(r.val);
    if (several) loss.back().color += "' stroke-dasharray='5,3";  // validation dashed, same hue
    lr.push_back(r.lr), gn.push_back(r.gn), tps.push_back(r.tps);
  }
  html += chart("Loss (nats/token)", loss, false) + "<br>";
  html += chart("Learning rate", lr, false) + "<br>";
  html += chart("Gradient norm (before clipping)", gn, true) + "<br>";
  html += chart("Throughput (tokens/s)", tps, false, true);
  return html + "</body></html>\n";
}

}  // namespace llmq::train
