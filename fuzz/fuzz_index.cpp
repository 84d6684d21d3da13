// A sharded model's index (model.safetensors.index.json) over two fixed shards: any text ends in
// an opened model or an io_error naming the index.
#include "fuzz_input.hpp"

#include "../src/cli/model_files.hpp"

#include <qforge/io/safetensors.hpp>

namespace {

void write_shards() {
    namespace st = qforge::safetensors;
    static const bool done = [] {
        const std::vector<float> w(64, 0.5f);
        st::writer a;
        a.add("model.layers.0.mlp.down_proj.weight", st::dtype::F32, {8, 8}, w);
        a.write(qforge::fuzz::work_dir() / "model-00001-of-00002.safetensors");
        st::writer b;
        b.add("lm_head.weight", st::dtype::F32, {8, 8}, w);
        b.add("model.norm.weight", st::dtype::F32, {8}, std::span(w).first(8));
        b.write(qforge::fuzz::work_dir() / "model-00002-of-00002.safetensors");
        return true;
    }();
    (void)done;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    write_shards();
    const auto path = qforge::fuzz::input_file(data, size, "model.safetensors.index.json");
    try {
        const qforge::cli::input_model m = qforge::cli::open_model(path);
        (void)qforge::cli::detect_checked(m);
    } catch (const qforge::io_error&) {
    }
    return 0;
}
