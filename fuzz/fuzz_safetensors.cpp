// The safetensors reader: any bytes end in a validated file or an io_error. An accepted file,
// copied through the writer, reads back with the same tensors and metadata.
#include "fuzz_input.hpp"

#include <qforge/io/safetensors.hpp>

#include <algorithm>

namespace st = qforge::safetensors;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using qforge::fuzz::require;
    const auto path = qforge::fuzz::input_file(data, size, "in.safetensors");
    try {
        const st::reader r(path);
        st::writer w;
        for (const auto& [k, v] : r.metadata()) w.set_metadata(k, v);
        for (const st::tensor_view& v : r.tensors()) {
            require(v.numel() * static_cast<std::int64_t>(st::itemsize(v.type)) == static_cast<std::int64_t>(v.bytes.size()),
                    "numel * itemsize == bytes");
            w.add(v);
        }
        const auto again = qforge::fuzz::input_file(nullptr, 0, "again.safetensors");
        w.write(again);
        const st::reader back(again);
        require(back.metadata() == r.metadata(), "metadata survives a copy");
        require(back.tensors().size() == r.tensors().size(), "tensor count survives a copy");
        for (const st::tensor_view& v : r.tensors()) {
            const st::tensor_view* b = back.find(v.name);
            require(b && b->type == v.type && std::ranges::equal(b->shape, v.shape) && std::ranges::equal(b->bytes, v.bytes),
                    "every tensor survives a copy");
        }
    } catch (const qforge::io_error&) {
    }
    return 0;
}
