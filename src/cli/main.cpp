// qforge: quantization configs in, specialized kernels and checkpoints out.
// Exit status: 0 ok, 1 bad input (the message names the file, tensor, key or offset), 2 usage error.
#include "commands.hpp"

#include <qforge/io/staged_file.hpp>

#include <cstdio>
#include <exception>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

int main(int argc, char** argv) {
    qforge::remove_staged_files_on_signals();  // Ctrl-C during a write leaves no partial file
#if defined(__GLIBC__)
    // The checkpoint commands allocate a tensor's worth of memory (tens of MB) and free it, one
    // tensor after the other, all of about the same size. glibc would map each allocation that
    // large afresh and unmap it on free, so every tensor paid its page faults and zeroing again
    // (a fifth of a dequantize's main thread): keep freed memory for the next one instead.
    ::mallopt(M_MMAP_THRESHOLD, 1 << 30);
    ::mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
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
