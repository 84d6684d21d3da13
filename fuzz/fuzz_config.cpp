// A quantization_config / config.json: JSON parse, parse_hf_quant_config, to_config, the module
// filter. Any text ends in a config or a documented error (std::invalid_argument naming the key);
// to_json of a parsed config parses back to the same config (hf.hpp).
#include "fuzz_input.hpp"

#include <qforge/config/hf.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using qforge::fuzz::require;
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(data, data + size);
    } catch (const nlohmann::json::exception&) {  // the CLI turns these into io_error (model_files.cpp)
        return 0;
    }
    try {
        qforge::hf_quant_config q = qforge::parse_hf_quant_config(j);
        const qforge::hf_quant_config again = qforge::parse_hf_quant_config(qforge::to_json(q));
        q.unknown_keys.clear();
        require(again == q, "parse(to_json(q)) == q");
        const qforge::hf_module_filter filter(q);
        for (const char* name : {"lm_head", "model.layers.0.mlp.down_proj", "model.layers.12.self_attn.q_proj",
                                 "model.embed_tokens", ""})
            (void)filter.excluded(name);
        (void)qforge::to_config(q);
    } catch (const std::invalid_argument&) {
    }
    return 0;
}
