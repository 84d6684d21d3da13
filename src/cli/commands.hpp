// Subcommands of the `qforge` command-line tool. Each adds itself to the CLI11 app.
#pragma once

#include <CLI/CLI.hpp>

namespace qforge::cli {

void add_sweep(CLI::App& app);
void add_quantize(CLI::App& app);    // quantize.cpp
void add_dequantize(CLI::App& app);  // quantize.cpp
void add_convert(CLI::App& app);     // quantize.cpp
void add_inspect(CLI::App& app);     // inspect.cpp
void add_hessian(CLI::App& app);     // calibration.cpp

}  // namespace qforge::cli
