// The picture of `qforge sweep --plot`: bits per weight against error, one point per config, the
// Pareto front (no other config is both smaller and more accurate) joined, each point labelled
// with its name and speed. SVG is written directly; PNG through python3-matplotlib when installed.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace qforge::cli {

struct pareto_point {
    std::string name;
    double bits_per_weight = 0, error = 0;
    std::string speed;   // label, e.g. "312 us, M=16: 2100 us"
    double gbps = 0;     // GEMV GB/s (colour); 0 when not measured
};

// Writes `file` (.svg or .png) atomically; io_error for another extension or a failed write.
void write_pareto_plot(const std::filesystem::path& file, const std::vector<pareto_point>& points,
                       const std::string& error_label, const std::string& title);

}  // namespace qforge::cli
