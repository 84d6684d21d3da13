// Writes the seed corpus of fuzz_packed (fuzz/corpus/packed): small packed files, one per kind of
// layout (rows with their scales: qforge with and without zero points and act-order, bnb4 plain
// and double-quantized, mx; dense: fp8_block, bnb8) and one of two matrices, all written by
// packed_file::save. usage: packed_seeds DIR (fuzz/make_seeds.py runs it).
#include <qforge/config/name.hpp>
#include <qforge/io/packed_file.hpp>
#include <qforge/kernels/pack.hpp>
#include <qforge/reference/reference.hpp>
#include <qforge/synthetic.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <string>
#include <vector>

using namespace qforge;

namespace {

// Quantized as 32 rows (GPTQ needs multiples of 32), saved as the first 4: files of 1-3 KB.
constexpr std::int64_t rows = 32, saved_rows = 4, cols = 128;

// A matrix of kernel config `name`, quantized from synthetic weights as its checkpoint stores it.
packed_weights make(const std::string& name) {
    const config cfg = parse_name(name);
    config stored = cfg;
    if (stored.storage == layout::qforge) stored.storage = layout::gptq_v1;
    const std::vector<float> w = synthetic_weights({.rows = rows, .cols = cols, .seed = 7});
    return pack_weights(cfg, ref::quantize(stored, std::span<const float>(w), rows, cols));
}

// The first saved_rows rows of p (each layout's arrays start with them).
weights_view first_rows(const packed_weights& p) {
    weights_view v = p.view();
    v.rows = saved_rows;
    return v;
}

constexpr int code_table_array = 3, perm_array = 6;  // packed_file.hpp's array order

// A copy `to` of packed file `from` with `size` bytes of its first entry's array `array` replaced,
// from byte `at` of the array on.
void altered(const std::filesystem::path& from, const std::filesystem::path& to, int array, std::size_t at,
             const void* bytes, std::size_t size) {
    std::vector<char> file(std::filesystem::file_size(from));
    std::ifstream(from, std::ios::binary).read(file.data(), static_cast<std::streamsize>(file.size()));
    std::uint32_t name_bytes = 0;
    std::memcpy(&name_bytes, file.data() + 24, 4);
    std::uint64_t offset = 0;  // the array's (offset, bytes) after the name and 52 bytes of config and shape
    std::memcpy(&offset, file.data() + 24 + 4 + name_bytes + 52 + 16 * array, 8);
    std::memcpy(file.data() + offset + at, bytes, size);
    std::ofstream(to, std::ios::binary).write(file.data(), static_cast<std::streamsize>(file.size()));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: packed_seeds DIR\n");
        return 2;
    }
    const std::filesystem::path dir = argv[1];
    std::filesystem::create_directories(dir);
    for (const char* name : {"int4sym_g128_qf_f32", "int4sym_g128_qf_i8", "int4asym_g128_qf_f32", "int3sym_g128_qf_f32",
                             "nf4_b64_bnb_f32", "nf4_b64_bnb_i8", "nf4_b64_dq_bnb_f32", "e2m1_g32_mx_f32",
                             "e4m3_t128_fp8blk_f32", "int8row_pc_bnb8_i8"}) {
        const packed_weights p = make(name);
        packed_file::save(dir / (std::string(name) + ".qfpack"), {{name, first_rows(p)}});
    }
    packed_weights act_order = make("int4sym_g128_qf_f32");
    act_order.perm.resize(cols);
    std::iota(act_order.perm.rbegin(), act_order.perm.rend(), 0);  // any permutation of the columns
    packed_file::save(dir / "act_order.qfpack", {{"act_order", first_rows(act_order)}});
    // Files open() refuses (issue 20), kept as seeds: a column repeated in perm, a NaN in a code table.
    const std::int32_t perm1 = act_order.perm[1];
    const float nan = std::nanf("");
    altered(dir / "act_order.qfpack", dir / "act_order_repeated_column.qfpack", perm_array, 4 * 3, &perm1, 4);
    altered(dir / "nf4_b64_bnb_i8.qfpack", dir / "nf4_nan_code_table.qfpack", code_table_array, 4 * 5, &nan, 4);
    const packed_weights q = make("int4sym_g128_qf_i8"), k = make("nf4_b64_bnb_f32");
    packed_file::save(dir / "two.qfpack", {{"q_proj", first_rows(q)}, {"k_proj", first_rows(k)}});
    return 0;
}
