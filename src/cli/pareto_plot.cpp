#include "pareto_plot.hpp"

#include <qforge/io/safetensors.hpp>  // io_error

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

namespace qforge::cli {

namespace {

namespace fs = std::filesystem;

// Points on the front: sorted by size, each more accurate than every smaller one.
std::vector<const pareto_point*> front_of(const std::vector<pareto_point>& points) {
    std::vector<const pareto_point*> sorted;
    for (const pareto_point& p : points) sorted.push_back(&p);
    std::sort(sorted.begin(), sorted.end(), [](const pareto_point* a, const pareto_point* b) {
        return a->bits_per_weight != b->bits_per_weight ? a->bits_per_weight < b->bits_per_weight : a->error < b->error;
    });
    std::vector<const pareto_point*> front;
    double best = std::numeric_limits<double>::infinity();
    for (const pareto_point* p : sorted)
        if (p->error < best) {
            front.push_back(p);
            best = p->error;
        }
    return front;
}

std::string escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '<') out += "&lt;";
        else if (c == '>') out += "&gt;";
        else if (c == '&') out += "&amp;";
        else out += c;
    }
    return out;
}

std::string svg(const std::vector<pareto_point>& points, const std::string& error_label, const std::string& title) {
    constexpr double width = 960, height = 600, left = 90, right = 30, top = 50, bottom = 70;
    double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, e0 = x0, e1 = -x0, g1 = 0;
    for (const pareto_point& p : points) {
        x0 = std::min(x0, p.bits_per_weight);
        x1 = std::max(x1, p.bits_per_weight);
        const double e = std::log10(std::max(p.error, 1e-12));
        e0 = std::min(e0, e);
        e1 = std::max(e1, e);
        g1 = std::max(g1, p.gbps);
    }
    x0 = std::floor(x0 - 0.5), x1 = std::ceil(x1 + 0.5), e0 = std::floor(e0), e1 = std::ceil(e1);
    if (e1 <= e0) e1 = e0 + 1;
    const auto px = [&](double b) { return left + (b - x0) / (x1 - x0) * (width - left - right); };
    const auto py = [&](double e) { return top + (e1 - std::log10(std::max(e, 1e-12))) / (e1 - e0) * (height - top - bottom); };
    std::ostringstream o;
    o.precision(5);
    o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    o << "<text x=\"" << width / 2 << "\" y=\"25\" text-anchor=\"middle\" font-size=\"15\">" << escape(title) << "</text>\n";
    for (double b = x0; b <= x1 + 1e-9; b += 1) {  // grid and ticks
        o << "<line x1=\"" << px(b) << "\" y1=\"" << top << "\" x2=\"" << px(b) << "\" y2=\"" << height - bottom
          << "\" stroke=\"#ddd\"/><text x=\"" << px(b) << "\" y=\"" << height - bottom + 16 << "\" text-anchor=\"middle\">" << b
          << "</text>\n";
    }
    for (double e = e0; e <= e1 + 1e-9; e += 1) {
        const double y = top + (e1 - e) / (e1 - e0) * (height - top - bottom);
        o << "<line x1=\"" << left << "\" y1=\"" << y << "\" x2=\"" << width - right << "\" y2=\"" << y
          << "\" stroke=\"#ddd\"/><text x=\"" << left - 6 << "\" y=\"" << y + 4 << "\" text-anchor=\"end\">1e" << e
          << "</text>\n";
    }
    o << "<text x=\"" << (left + width - right) / 2 << "\" y=\"" << height - 25
      << "\" text-anchor=\"middle\" font-size=\"13\">bits per weight (scales and zero points included)</text>\n";
    o << "<text transform=\"translate(22," << (top + height - bottom) / 2
      << ") rotate(-90)\" text-anchor=\"middle\" font-size=\"13\">" << escape(error_label) << " (log)</text>\n";
    const auto front = front_of(points);
    o << "<polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" points=\"";
    for (const pareto_point* p : front) o << px(p->bits_per_weight) << "," << py(p->error) << " ";
    o << "\"/>\n";
    for (const pareto_point& p : points) {
        // colour: GEMV GB/s from grey (slow or not measured) to blue (the fastest)
        const double f = g1 > 0 ? p.gbps / g1 : 0;
        const int shade = static_cast<int>(200 - 170 * f);
        const bool on_front = std::find(front.begin(), front.end(), &p) != front.end();
        o << "<circle cx=\"" << px(p.bits_per_weight) << "\" cy=\"" << py(p.error) << "\" r=\"" << (on_front ? 6 : 4)
          << "\" fill=\"rgb(" << shade << "," << shade << ",255)\" stroke=\"" << (on_front ? "#c0392b" : "#555") << "\"/>\n";
        o << "<text x=\"" << px(p.bits_per_weight) + 8 << "\" y=\"" << py(p.error) - 4 << "\">" << escape(p.name)
          << (p.speed.empty() ? "" : " (" + escape(p.speed) + ")") << "</text>\n";
    }
    o << "<text x=\"" << width - right << "\" y=\"" << top - 8
      << "\" text-anchor=\"end\">red: Pareto front; colour: M=1 GEMV GB/s (darker is faster); labels: M=1 time, batch time</text>\n";
    o << "</svg>\n";
    return o.str();
}

// matplotlib, reading the points as JSON on stdin.
constexpr const char* png_script = R"PY(import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.load(sys.stdin)
p = d["points"]
fig, ax = plt.subplots(figsize=(10, 6.25))
ax.set_yscale("log")
g = max([q["gbps"] for q in p] + [1e-9])
ax.scatter([q["bits"] for q in p], [q["error"] for q in p], c=[q["gbps"] / g for q in p], cmap="Blues", vmin=-0.2, vmax=1, edgecolors="k", zorder=3)
f = sorted(p, key=lambda q: (q["bits"], q["error"]))
front, best = [], float("inf")
for q in f:
    if q["error"] < best:
        front.append(q); best = q["error"]
ax.plot([q["bits"] for q in front], [q["error"] for q in front], color="#c0392b", zorder=2, label="Pareto front")
for q in p:
    ax.annotate(q["name"] + (" (" + q["speed"] + ")" if q["speed"] else ""), (q["bits"], q["error"]), fontsize=7, xytext=(5, 3), textcoords="offset points")
ax.set_xlabel("bits per weight (scales and zero points included)")
ax.set_ylabel(d["ylabel"])
ax.set_title(d["title"])
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(d["out"], dpi=120, format="png")
)PY";

}  // namespace

void write_pareto_plot(const fs::path& file, const std::vector<pareto_point>& points, const std::string& error_label,
                       const std::string& title) {
    const fs::path tmp = file.parent_path() / ("." + file.filename().string() + ".partial" + file.extension().string());
    if (file.extension() == ".svg") {
        std::ofstream out(tmp, std::ios::binary);
        out << svg(points, error_label, title);
        if (!out.flush()) {
            fs::remove(tmp);
            throw io_error("cannot write the plot '" + file.string() + "'");
        }
    } else if (file.extension() == ".png") {
        nlohmann::json j = {{"ylabel", error_label}, {"title", title}, {"out", tmp.string()}};
        for (const pareto_point& p : points)
            j["points"].push_back({{"name", p.name}, {"bits", p.bits_per_weight}, {"error", p.error}, {"speed", p.speed}, {"gbps", p.gbps}});
        const std::string script = tmp.string() + ".py";
        std::ofstream(script) << png_script;
        FILE* py = ::popen(("python3 '" + script + "' 2>&1 >/dev/null").c_str(), "w");
        if (py == nullptr) throw io_error("cannot run python3 for the PNG plot");
        const std::string text = j.dump();
        std::fwrite(text.data(), 1, text.size(), py);
        const int status = ::pclose(py);
        fs::remove(script);
        if (status != 0 || !fs::exists(tmp)) {
            fs::remove(tmp);
            throw io_error("cannot draw '" + file.string() +
                           "': PNG needs python3 with matplotlib (apt-get install python3-matplotlib); an .svg plot needs nothing");
        }
    } else {
        throw io_error("plot '" + file.string() + "': the file must end in .svg or .png");
    }
    fs::rename(tmp, file);
}

}  // namespace qforge::cli
