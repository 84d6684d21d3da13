// qforge: quantization configs in, specialized kernels and checkpoints out.
// Exit status: 0 ok, 1 bad input (the message names the file, tensor, key or offset), 2 usage error.
#include "commands.hpp"

#include <qforge/io/staged_file.hpp>

#include <cstdio>
#include <exception>

int main(int argc, char** argv) {
    qforge::remove_staged_files_on_signals();  // Ctrl-C during a write leaves no partial file
    CLI::App app{"qforge: weight-quantization configs as specialized SIMD kernels"};
    app.require_subcommand(1);
    qforge::cli::add_sweep(app);
    qforge::cli::add_quantize(app);
    qforge::cli::add_dequantize(app);
    qforge::cli::add_convert(app);
    qforge::cli::add_inspect(app);
    qforge::cli::add_hessian(app);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        const int rc = app.exit(e);
        return rc == 0 ? 0 : 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "qforge: error: %s\n", e.what());
        return 1;
    }
    return 0;
}
