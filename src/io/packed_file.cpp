#include <qforge/config/name.hpp>
#include <qforge/io/packed_file.hpp>
#include <qforge/kernels/kernels.hpp>
#include <qforge/memory.hpp>
#include <qforge/registry.hpp>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <stdexcept>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace qforge::packed_file {

namespace {

constexpr char magic[8] = {'Q', 'F', 'P', 'A', 'C', 'K', '1', '\n'};
constexpr std::size_t head_bytes = 24, record_bytes = 180, arrays = 8;
enum array_index { codes_i, scales_i, zeros_i, code_table_i, nested_map_i, nested_absmax_i, perm_i };

using sizes = std::array<std::uint64_t, arrays>;

std::uint64_t mul(std::uint64_t a, std::uint64_t b, bool& overflow) {
    std::uint64_t r = 0;
    if (__builtin_mul_overflow(a, b, &r)) overflow = true;
    return r;
}

// The bytes of every array of weights w (perm: whether it has one), from its config and shape;
// an empty string when they are consistent, else why not.
std::string expected_sizes(const weights_view& w, bool has_perm, sizes& out) {
    out = {};
    const config& c = w.cfg;
    if (check(c) != config_rule::ok) return "invalid config: " + std::string(describe(check(c)).message);
    if (w.rows <= 0 || w.cols <= 0 || w.rows > (std::int64_t{1} << 40) || w.cols > (std::int64_t{1} << 40))
        return "shape [" + std::to_string(w.rows) + ", " + std::to_string(w.cols) + "] is empty or too large";
    bool overflow = false;
    const auto rows = static_cast<std::uint64_t>(w.rows), cols = static_cast<std::uint64_t>(w.cols);
    if (rows_can_carry_scales(c)) {
        if (w.row_stride <= 0)
            return canonical_name(c) + " weights must have their rows with their scales (pack_weights)";
        out[codes_i] = mul(rows, static_cast<std::uint64_t>(w.row_stride), overflow);
    } else if (w.row_stride != 0) {
        return "row_stride " + std::to_string(w.row_stride) + " for a dense layout";
    } else if (c.storage == layout::fp8_block) {
        out[codes_i] = mul(rows, cols, overflow);
        const std::uint64_t g = static_cast<std::uint64_t>(c.group);
        out[scales_i] = c.group == per_tensor ? 4 : mul(mul((rows + g - 1) / g, cols / g, overflow), 4, overflow);
    } else {  // bnb8
        out[codes_i] = mul(rows, cols, overflow);
        out[scales_i] = mul(rows, 4, overflow);
    }
    if (c.type == dtype::nf4 || c.type == dtype::fp4) out[code_table_i] = 16 * sizeof(float);
    if (c.double_quant) {
        const std::uint64_t blocks = mul(rows, cols, overflow) / static_cast<std::uint64_t>(c.group);
        out[nested_map_i] = 256 * sizeof(float);
        out[nested_absmax_i] = (blocks + 255) / 256 * sizeof(float);
    }
    if (has_perm) out[perm_i] = mul(cols, sizeof(std::int32_t), overflow);
    if (overflow) return "array sizes overflow";
    return {};
}

// The arrays of w as pointers (in the order of array_index).
std::array<const void*, arrays> pointers_of(const weights_view& w) {
    const void* rows = w.row_stride != 0 ? w.scales : w.codes;
    return {rows, w.row_stride != 0 ? nullptr : w.scales, w.row_stride != 0 ? nullptr : w.zeros, w.code_table,
            w.nested_map, w.nested_absmax, w.perm, nullptr};
}

std::uint64_t align_for(std::uint64_t at, std::uint64_t bytes) {
    const std::uint64_t a = bytes >= huge_page_bytes ? huge_page_bytes : bytes >= 4096 ? 4096 : 64;
    return (at + a - 1) / a * a;
}

template <class T>
void put(std::vector<std::uint8_t>& out, T v) {
    const std::size_t at = out.size();
    out.resize(at + sizeof(T));
    std::memcpy(out.data() + at, &v, sizeof(T));
}

// Whether v is the value of an enumerator of the vocabulary (config/vocabulary.hpp).
template <class Tokens>
bool known(const Tokens& tokens, std::uint8_t v) {
    for (const auto& t : tokens)
        if (static_cast<std::uint8_t>(t.value) == v) return true;
    return false;
}

// The first stored column of perm (cols entries) that is outside [0, cols) or repeats an earlier
// one, with why; -1 when perm is a permutation. (A repeated column would leave another column of
// a dequantized row unwritten.)
std::int64_t not_a_permutation(const std::int32_t* perm, std::int64_t cols, std::string& why) {
    std::vector<bool> seen(static_cast<std::size_t>(cols));
    for (std::int64_t j = 0; j < cols; ++j) {
        const std::int32_t c = perm[j];
        if (c < 0 || c >= cols) {
            why = "act-order column " + std::to_string(c) + " is outside [0, " + std::to_string(cols) + ")";
            return j;
        }
        if (seen[static_cast<std::size_t>(c)]) {
            why = "act-order column " + std::to_string(c) + " appears twice (perm must hold each column once)";
            return j;
        }
        seen[static_cast<std::size_t>(c)] = true;
    }
    return -1;
}

[[noreturn]] void fail(const std::filesystem::path& file, const std::string& why) {
    throw io_error("packed file " + file.string() + ": " + why);
}

}  // namespace

void save(const std::filesystem::path& file, std::span<const named_weights> arranged) {
    // Weights in a kernel's own arrangement are stored as rows: a file does not depend on the CPU.
    std::vector<weight_buffer> rows(arranged.size());
    std::vector<named_weights> matrices(arranged.begin(), arranged.end());
    for (std::size_t i = 0; i < matrices.size(); ++i) matrices[i].weights = rows_of(matrices[i].weights, rows[i]);
    std::set<std::string_view> seen;
    std::uint64_t dir_bytes = 0;
    for (const named_weights& m : matrices) {
        if (!seen.insert(m.name).second) throw std::invalid_argument("packed file: the name '" + std::string(m.name) + "' is used twice");
        if (m.name.size() > 65535) throw std::invalid_argument("packed file: a name longer than 65535 bytes");
        dir_bytes += 4 + m.name.size() + record_bytes;
    }
    // Layout: the directory, then each matrix's arrays.
    std::vector<std::uint8_t> dir;
    std::vector<std::array<std::uint64_t, arrays>> offsets;
    std::uint64_t at = head_bytes + dir_bytes;
    for (const named_weights& m : matrices) {
        sizes s{};
        const std::string why = expected_sizes(m.weights, m.weights.perm != nullptr, s);
        if (!why.empty()) throw std::invalid_argument("packed file: '" + std::string(m.name) + "': " + why);
        detail::check_weights(m.weights.cfg, m.weights);
        std::string bad_perm;
        if (m.weights.perm != nullptr && not_a_permutation(m.weights.perm, m.weights.cols, bad_perm) >= 0)
            throw std::invalid_argument("packed file: '" + std::string(m.name) + "': " + bad_perm);
        std::array<std::uint64_t, arrays> off{};
        for (std::size_t i = 0; i < arrays; ++i)
            if (s[i] != 0) {
                at = align_for(at, s[i]);
                off[i] = at;
                at += s[i];
            }
        offsets.push_back(off);
        const weights_view& w = m.weights;
        put<std::uint32_t>(dir, static_cast<std::uint32_t>(m.name.size()));
        dir.insert(dir.end(), m.name.begin(), m.name.end());
        put<std::uint8_t>(dir, static_cast<std::uint8_t>(w.cfg.type));
        put<std::uint8_t>(dir, w.cfg.bits);
        put<std::uint8_t>(dir, w.cfg.double_quant ? 1 : 0);
        put<std::uint8_t>(dir, static_cast<std::uint8_t>(w.cfg.storage));
        put<std::uint8_t>(dir, static_cast<std::uint8_t>(w.cfg.act));
        for (int i = 0; i < 3; ++i) put<std::uint8_t>(dir, 0);
        put<std::int32_t>(dir, w.cfg.group);
        const std::int64_t codes_offset =
            w.row_stride != 0 ? static_cast<const std::uint8_t*>(static_cast<const void*>(w.codes)) -
                                    static_cast<const std::uint8_t*>(w.scales)
                              : 0;
        for (const std::int64_t v : {w.rows, w.cols, w.row_stride, codes_offset}) put<std::int64_t>(dir, v);
        put<float>(dir, w.nested_offset);
        put<float>(dir, w.outlier_threshold);
        for (std::size_t i = 0; i < arrays; ++i) {
            put<std::uint64_t>(dir, off[i]);
            put<std::uint64_t>(dir, s[i]);
        }
    }

    std::filesystem::path tmp = file;
    tmp += ".tmp-" + std::to_string(::getpid());
    std::FILE* f = std::fopen(tmp.c_str(), "wb");
    if (f == nullptr) fail(tmp, std::string("cannot create: ") + std::strerror(errno));
    bool ok = true;
    auto write_at = [&](std::uint64_t offset, const void* p, std::uint64_t n) {
        ok = ok && std::fseek(f, static_cast<long>(offset), SEEK_SET) == 0 && std::fwrite(p, 1, n, f) == n;
    };
    std::vector<std::uint8_t> head(magic, magic + 8);
    put<std::uint64_t>(head, matrices.size());
    put<std::uint64_t>(head, dir_bytes);
    write_at(0, head.data(), head.size());
    write_at(head_bytes, dir.data(), dir.size());
    for (std::size_t m = 0; m < matrices.size(); ++m) {
        sizes s{};
        (void)expected_sizes(matrices[m].weights, matrices[m].weights.perm != nullptr, s);
        const auto ptr = pointers_of(matrices[m].weights);
        for (std::size_t i = 0; i < arrays; ++i)
            if (s[i] != 0) write_at(offsets[m][i], ptr[i], s[i]);
    }
    ok = ok && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
    ok = (std::fclose(f) == 0) && ok;
    std::error_code ec;
    if (ok) std::filesystem::rename(tmp, file, ec);
    if (!ok || ec) {
        std::filesystem::remove(tmp, ec);
        fail(file, "write failed");
    }
}

mapped::~mapped() {
    if (base_ != nullptr) ::munmap(base_, size_);
}

const weights_view& mapped::view(std::string_view name) const {
    for (std::size_t i = 0; i < names_.size(); ++i)
        if (names_[i] == name) return views_[i];
    fail(path_, "no matrix named '" + std::string(name) + "'");
}

std::shared_ptr<const mapped> open(const std::filesystem::path& file) {
    std::shared_ptr<mapped> m(new mapped());
    m->path_ = file;
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(file, std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        ::close(fd);
        fail(file, "cannot stat");
    }
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (size < head_bytes) {
        ::close(fd);
        fail(file, "truncated: " + std::to_string(size) + " bytes, the header alone has 24");
    }
    void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (base == MAP_FAILED) fail(file, std::string("cannot map: ") + std::strerror(errno));
    m->base_ = base;
    m->size_ = size;
#if defined(MADV_HUGEPAGE)
    (void)::madvise(base, size, MADV_HUGEPAGE);  // advice only (file-backed THP where the kernel has it)
#endif
    const auto* p = static_cast<const std::uint8_t*>(base);
    auto at = [&](std::uint64_t offset, const std::string& what) {
        return [&, offset, what](std::string why) {
            fail(file, what + " at byte " + std::to_string(offset) + ": " + why);
        };
    };
    if (std::memcmp(p, magic, 8) != 0) at(0, "magic")("not a qforge packed file");
    std::uint64_t count = 0, dir_bytes = 0;
    std::memcpy(&count, p + 8, 8);
    std::memcpy(&dir_bytes, p + 16, 8);
    if (dir_bytes > size - head_bytes) at(16, "directory")(std::to_string(dir_bytes) + " bytes pass the end of the file (" + std::to_string(size) + " bytes)");
    if (count > dir_bytes / (4 + record_bytes)) at(8, "entry count")(std::to_string(count) + " entries cannot fit the directory's " + std::to_string(dir_bytes) + " bytes");
    std::uint64_t pos = head_bytes;
    const std::uint64_t dir_end = head_bytes + dir_bytes;
    auto get = [&](auto& v) {
        std::memcpy(&v, p + pos, sizeof(v));
        pos += sizeof(v);
    };
    for (std::uint64_t e = 0; e < count; ++e) {
        const std::uint64_t entry_at = pos;
        std::uint32_t name_len = 0;
        if (dir_end - pos < 4) at(pos, "entry " + std::to_string(e))("truncated directory");
        get(name_len);
        if (dir_end - pos < std::uint64_t{name_len} + record_bytes) at(entry_at, "entry " + std::to_string(e))("truncated directory");
        std::string name(reinterpret_cast<const char*>(p + pos), name_len);
        pos += name_len;
        const std::string what = "matrix '" + name + "'";
        for (const std::string& n : m->names_)
            if (n == name) at(entry_at, what)("the name is used twice");
        const std::uint64_t record_at = pos;
        std::uint8_t type = 0, bits = 0, dq = 0, storage = 0, act = 0, pad[3] = {};
        std::int32_t group = 0;
        get(type), get(bits), get(dq), get(storage), get(act), get(pad), get(group);
        if (!known(dtype_tokens, type) || !known(layout_tokens, storage) || !known(compute_tokens, act) || dq > 1 ||
            pad[0] != 0 || pad[1] != 0 || pad[2] != 0)
            at(record_at, what)("unknown config field values");
        weights_view w;
        w.cfg = {static_cast<dtype>(type), bits, group, dq != 0, static_cast<layout>(storage), static_cast<compute>(act)};
        std::int64_t codes_offset = 0;
        get(w.rows), get(w.cols), get(w.row_stride), get(codes_offset);
        get(w.nested_offset), get(w.outlier_threshold);
        std::array<std::uint64_t, arrays> off{}, bytes{};
        for (std::size_t i = 0; i < arrays; ++i) get(off[i]), get(bytes[i]);
        sizes want{};
        const std::string why = expected_sizes(w, bytes[perm_i] != 0, want);
        if (!why.empty()) at(record_at, what)(why);
        for (std::size_t i = 0; i < arrays; ++i) {
            const std::uint64_t field_at = record_at + 52 + 16 * i;
            if (bytes[i] != want[i])
                at(field_at, what)("array " + std::to_string(i) + " has " + std::to_string(bytes[i]) + " bytes, the shape and layout give " + std::to_string(want[i]));
            if (bytes[i] == 0) continue;
            if (off[i] % 64 != 0) at(field_at, what)("array offset " + std::to_string(off[i]) + " is not a multiple of 64");
            if (off[i] < dir_end || off[i] > size || bytes[i] > size - off[i])
                at(field_at, what)("array [" + std::to_string(off[i]) + ", +" + std::to_string(bytes[i]) + ") is outside the data (file of " + std::to_string(size) + " bytes)");
        }
        auto ptr = [&](std::size_t i) -> const void* { return bytes[i] != 0 ? p + off[i] : nullptr; };
        if (w.row_stride != 0) {
            const row_parts r = row_bytes(w.cfg, w.cols);
            if (w.row_stride % 64 != 0 || codes_offset % 64 != 0 || codes_offset < r.scales + r.zeros ||
                codes_offset > w.row_stride - r.codes)
                at(record_at + 28, what)("row_stride " + std::to_string(w.row_stride) + " and codes offset " + std::to_string(codes_offset) + " do not hold a row's " + std::to_string(r.scales + r.zeros) + " bytes of scales and " + std::to_string(r.codes) + " bytes of codes (64-byte aligned)");
            const auto* rows = static_cast<const std::uint8_t*>(ptr(codes_i));
            w.scales = rows;
            w.codes = rows + codes_offset;
            w.zeros = w.cfg.type == dtype::int_asym ? rows + r.scales : nullptr;
        } else {
            w.codes = static_cast<const std::uint8_t*>(ptr(codes_i));
            w.scales = ptr(scales_i);
        }
        w.code_table = static_cast<const float*>(ptr(code_table_i));
        w.nested_map = static_cast<const float*>(ptr(nested_map_i));
        w.nested_absmax = static_cast<const float*>(ptr(nested_absmax_i));
        w.perm = static_cast<const std::int32_t*>(ptr(perm_i));
        std::string bad_perm;
        if (w.perm != nullptr)
            if (const std::int64_t j = not_a_permutation(w.perm, w.cols, bad_perm); j >= 0)
                at(off[perm_i] + 4 * static_cast<std::uint64_t>(j), what)(bad_perm);
        try {
            detail::check_weights(w.cfg, w);
        } catch (const std::invalid_argument& e) {
            at(record_at, what)(e.what());
        }
        m->names_.push_back(std::move(name));
        m->views_.push_back(w);
    }
    if (pos != dir_end) at(pos, "directory")(std::to_string(dir_end - pos) + " bytes after the last entry");
#if defined(MADV_WILLNEED)
    (void)::madvise(base, size, MADV_WILLNEED);  // start reading ahead now
#endif
    return m;
}

}  // namespace qforge::packed_file
