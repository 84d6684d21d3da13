// Subcommands of the `qforge` command-line tool. Each adds itself to the CLI11 app.
#pragma once

#include <CLI/CLI.hpp>

namespace qforge::cli {

void add_sweep(CLI::App& app);

}  // namespace qforge::cli
