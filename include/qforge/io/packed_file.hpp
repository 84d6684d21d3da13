// Packed weights on disk: matrices in their kernel layout (kernels/weights.hpp, after
// pack_weights: GPTQ / AWQ already repacked, rows with their scales), loaded by mapping the file,
// without a copy, so an engine starts without repacking.
//
//   qforge::packed_file::save("layers.qfpack", {{"q_proj", q.view()}, {"k_proj", k.view()}});
//   auto f = qforge::packed_file::open("layers.qfpack");          // maps, validates every entry
//   qforge::matrix q(f->view("q_proj"), f);                       // engine.hpp; f stays mapped
//
// File (little-endian; offsets from the start of the file):
//   [0, 8)    magic "QFPACK1\n"
//   [8, 16)   u64 entry count E        [16, 24) u64 directory bytes D
//   [24, 24+D) E entries: u32 name bytes, the name (UTF-8), then 180 bytes: the config (u8 type,
//             bits, double_quant, storage, act (qforge's enum values), 3 zero bytes, i32 group),
//             i64 rows, cols, row_stride, row_codes_offset, f32 nested_offset, outlier_threshold,
//             then 8 arrays as (u64 offset, u64 bytes): codes, scales, zeros, code_table,
//             nested_map, nested_absmax, perm, and a reserved empty one
//   data      every array at an offset that is a multiple of 64 (4096 when it spans whole pages)
// Rows with their scales (bnb4, mx, qforge): `codes` is the whole block of rows (rows x
// row_stride bytes), `scales` and `zeros` are empty; fp8_block and bnb8 are dense arrays.
//
// open() refuses, with an io_error naming the file, the entry and the byte offset: a wrong magic,
// a truncated file, a directory or array outside the file (overflow-checked), misaligned arrays,
// an invalid config, array sizes other than the shape and layout give, an act-order perm that is
// not a permutation of the columns. It reads no scale or code: values are the writer's (NaN
// included). The mapping is advised MADV_HUGEPAGE and MADV_WILLNEED (as weight_buffer's memory).
#pragma once

#include <qforge/io/safetensors.hpp>
#include <qforge/kernels/weights.hpp>

#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace qforge::packed_file {

struct named_weights {
    std::string_view name;
    weights_view weights;
};

// Writes the matrices to a temporary file next to `file`, then renames it into place. Throws
// io_error (naming the file) on write errors, std::invalid_argument for weights it cannot store
// (dense bnb4 / mx / qforge weights: pack them with pack_weights first; duplicate names; a perm
// that is not a permutation). Weights in a kernel's own arrangement (a matrix's vnni panels) are
// written as rows (qforge::rows_of): a file does not depend on the CPU that wrote it.
void save(const std::filesystem::path& file, std::span<const named_weights> matrices);
inline void save(const std::filesystem::path& file, std::initializer_list<named_weights> matrices) {
    save(file, std::span<const named_weights>(matrices.begin(), matrices.size()));
}

class mapped {
public:
    ~mapped();
    mapped(const mapped&) = delete;
    mapped& operator=(const mapped&) = delete;

    const std::filesystem::path& path() const { return path_; }
    std::span<const std::string> names() const { return names_; }
    // The weights of entry `name`, pointing into the mapping (io_error when absent).
    const weights_view& view(std::string_view name) const;

private:
    friend std::shared_ptr<const mapped> open(const std::filesystem::path& file);
    mapped() = default;
    std::filesystem::path path_;
    void* base_ = nullptr;
    std::size_t size_ = 0;
    std::vector<std::string> names_;
    std::vector<weights_view> views_;
};

// Maps and validates the file (see above).
std::shared_ptr<const mapped> open(const std::filesystem::path& file);

}  // namespace qforge::packed_file
