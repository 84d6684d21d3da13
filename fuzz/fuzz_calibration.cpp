// GPTQ calibration files: any bytes end in a checked file or an io_error; the Hessian of an
// accepted one accumulates or fails with an io_error (K capped here: H is K^2 doubles by design).
#include "fuzz_input.hpp"

#include "../src/cli/calibration.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto path = qforge::fuzz::input_file(data, size, "calib.safetensors");
    try {
        const qforge::cli::calibration_file f(path);
        for (const auto& [module, c] : f.modules()) {
            if (c.cols() > 256) continue;
            std::optional<qforge::gptq::hessian> h;
            qforge::cli::accumulate(h, module, c, f.path(), 1);
        }
    } catch (const qforge::io_error&) {
    }
    return 0;
}
