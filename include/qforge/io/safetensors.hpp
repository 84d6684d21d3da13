// safetensors files (formats.md §9): a validating zero-copy reader over a read-only mmap, and a
// writer that produces the bytes the Python `safetensors` library writes and replaces its target
// atomically (temp file + fsync + rename).
//
// File = u64 little-endian header length n, n bytes of UTF-8 JSON, then the data section. Every
// error is a qforge::io_error whose message names the file, the byte offset and, where there is
// one, the tensor.
#pragma once

#include <qforge/format/float.hpp>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <ranges>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace qforge {

class staged_file;

// Any failure to read, validate or write a checkpoint file.
struct io_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

namespace safetensors {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

// Declaration order is significant: it is the safetensors library's `Dtype` order (increasing
// alignment, then a fixed tie order), and the writer lays data out in descending order of it.
// Sub-byte dtypes (F4, F6_*) are not supported and are rejected as unknown.
enum class dtype : std::uint8_t {
    BOOL, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, BF16, I32, U32, F32, C64, F64, I64, U64,
};

std::string_view to_string(dtype t);                      // "F32", "F8_E4M3", ...
std::optional<dtype> parse_dtype(std::string_view name);  // exact, case-sensitive
std::size_t itemsize(dtype t);                            // bytes per element

// Limits of the reader (docs/limits.md). Headers larger than max_header_size are rejected on
// reading and on writing (as the Python library does); more tensors than max_tensors, or a shape
// of more than max_rank dimensions, on reading.
inline constexpr std::uint64_t max_header_size = 100'000'000;
inline constexpr std::size_t max_tensors = 1'000'000;
inline constexpr std::size_t max_rank = 32;

// The dtype a C++ element type stands for, for the typed helpers. FP8 / E8M0 codes have no C++
// type of their own: read them as std::uint8_t with an explicit dtype, e.g.
// `view.as<std::uint8_t>(dtype::F8_E4M3)`.
template <class T>
inline constexpr bool has_dtype = false;
template <class T>
inline constexpr dtype dtype_of = [] {
    static_assert(has_dtype<T>, "no safetensors dtype for this type: pass one explicitly");
    return dtype::U8;
}();
#define QFORGE_SAFETENSORS_DTYPE_OF(T, D) \
    template <>                           \
    inline constexpr bool has_dtype<T> = true; \
    template <>                           \
    inline constexpr dtype dtype_of<T> = dtype::D;
QFORGE_SAFETENSORS_DTYPE_OF(std::uint8_t, U8)
QFORGE_SAFETENSORS_DTYPE_OF(std::int8_t, I8)
QFORGE_SAFETENSORS_DTYPE_OF(std::int16_t, I16)
QFORGE_SAFETENSORS_DTYPE_OF(std::uint16_t, U16)
QFORGE_SAFETENSORS_DTYPE_OF(f16, F16)
QFORGE_SAFETENSORS_DTYPE_OF(bf16, BF16)
QFORGE_SAFETENSORS_DTYPE_OF(std::int32_t, I32)
QFORGE_SAFETENSORS_DTYPE_OF(std::uint32_t, U32)
QFORGE_SAFETENSORS_DTYPE_OF(float, F32)
QFORGE_SAFETENSORS_DTYPE_OF(double, F64)
QFORGE_SAFETENSORS_DTYPE_OF(std::int64_t, I64)
QFORGE_SAFETENSORS_DTYPE_OF(std::uint64_t, U64)
#undef QFORGE_SAFETENSORS_DTYPE_OF

using shape_t = std::vector<std::int64_t>;

// One tensor of an open file. Zero-copy: `bytes`, `name`, `shape` and `file` point into the
// reader, which must outlive the view. The data may be unaligned (the format does not promise
// alignment): as<T>() refuses misaligned data, to_vector / copy_to always work.
struct tensor_view {
    std::string_view name;
    dtype type{};
    std::span<const std::int64_t> shape;
    std::span<const std::byte> bytes;
    std::uint64_t file_offset = 0;  // absolute offset of bytes.data() in the file
    std::string_view file;          // path of the file, for messages

    std::int64_t numel() const;  // 1 for shape []
    bool aligned_for(std::size_t alignment) const {
        return reinterpret_cast<std::uintptr_t>(bytes.data()) % alignment == 0;
    }

    // Throws unless this tensor has exactly dtype `t` and shape `s` (message names both).
    void expect(dtype t, std::span<const std::int64_t> s) const;
    void expect(dtype t, std::initializer_list<std::int64_t> s) const {
        expect(t, std::span<const std::int64_t>(s.begin(), s.size()));
    }

    // Typed zero-copy access: dtype must be `expected`, sizeof(T) its itemsize, and the data
    // aligned for T.
    template <class T>
    std::span<const T> as(dtype expected = dtype_of<T>) const {
        check_element<T>(expected);
        if (!aligned_for(alignof(T))) throw_misaligned(alignof(T));
        return {reinterpret_cast<const T*>(bytes.data()), bytes.size() / sizeof(T)};
    }
    // Typed copies, safe for unaligned data.
    template <class T>
    void copy_to(std::span<T> out, dtype expected = dtype_of<T>) const {
        check_element<T>(expected);
        if (out.size() * sizeof(T) != bytes.size()) throw_copy_size(out.size());
        if (!bytes.empty()) std::memcpy(out.data(), bytes.data(), bytes.size());
    }
    template <class T>
    std::vector<T> to_vector(dtype expected = dtype_of<T>) const {
        check_element<T>(expected);
        std::vector<T> out(bytes.size() / sizeof(T));
        copy_to(std::span<T>(out), expected);
        return out;
    }

private:
    template <class T>
    void check_element(dtype expected) const {
        static_assert(std::is_trivially_copyable_v<T>);
        check_element_size(expected, sizeof(T));
    }
    void check_element_size(dtype expected, std::size_t element_size) const;
    [[noreturn]] void throw_misaligned(std::size_t alignment) const;
    [[noreturn]] void throw_copy_size(std::size_t elements) const;
};

using metadata_map = std::map<std::string, std::string, std::less<>>;

// An open, fully validated safetensors file, mapped read-only. Move-only; views stay valid
// across moves. The file must not be truncated while it is open (the mapping would fault).
//
// Rejected (io_error naming file, byte offset, tensor): file shorter than 8 bytes; header length
// beyond the file or above max_header_size; header not UTF-8 JSON, not an object, with a
// duplicate key or with a number beyond a double (1e400); more than max_tensors entries; an
// entry that is not an object with dtype (string), shape (array of at most max_rank integers in
// [0, 2^63)) and data_offsets (two unsigned integers); unknown dtype; shape product or byte size
// overflowing 64 bits; begin > end; end beyond the data section; end - begin != numel *
// itemsize; overlapping tensors; bytes of the data section not covered by any tensor;
// `__metadata__` not a string -> string map (null counts as absent, as in the library).
class reader {
public:
    explicit reader(const std::filesystem::path& file);
    reader(reader&&) noexcept;
    reader& operator=(reader&&) noexcept;
    ~reader();

    const std::filesystem::path& path() const;
    // In file order (increasing data offset; zero-size tensors by name at their offset).
    std::span<const tensor_view> tensors() const;
    const tensor_view* find(std::string_view name) const;  // nullptr when absent
    const tensor_view& at(std::string_view name) const;    // throws io_error naming it
    bool contains(std::string_view name) const { return find(name) != nullptr; }
    const metadata_map& metadata() const;

    std::string_view header() const;    // the n header bytes as stored, padding included
    std::uint64_t data_offset() const;  // 8 + n: where the data section starts
    std::uint64_t file_size() const;

private:
    struct impl;
    std::unique_ptr<impl> impl_;
};

// Collects tensors and metadata, then writes a file as the Python library does:
// header `{"__metadata__":{...},"<name>":{"dtype":..,"shape":[..],"data_offsets":[b,e]},...}`
// in compact JSON, `__metadata__` first (omitted when empty; keys sorted, where the library's
// order is unspecified), then the tensors in data order: descending dtype (enum order above),
// then name (bytewise); the header is padded with spaces to a multiple of 8 bytes.
//
// add() validates at once (io_error naming the tensor): name valid UTF-8, not `__metadata__`,
// not a duplicate; dims >= 0; byte size == numel * itemsize.
class writer {
public:
    // Borrows `data`: it must stay alive and unchanged until write()/serialize() return.
    // Elements are either bytes or of the dtype's size. Temporaries that own their storage
    // are refused at compile time: use add_owned for those.
    template <std::ranges::contiguous_range R>
        requires std::ranges::sized_range<R> &&
                 (std::is_lvalue_reference_v<R> || std::ranges::borrowed_range<R>)
    void add(std::string name, dtype type, shape_t shape, R&& data) {
        using T = std::ranges::range_value_t<R>;
        static_assert(std::is_trivially_copyable_v<T>);
        const auto elements = std::span<const T>(std::ranges::data(data), std::ranges::size(data));
        add_entry(std::move(name), type, std::move(shape), std::as_bytes(elements), nullptr, sizeof(T));
    }
    // Takes ownership of `data`.
    template <class T, class Allocator>
    void add_owned(std::string name, dtype type, shape_t shape, std::vector<T, Allocator> data) {
        static_assert(std::is_trivially_copyable_v<T>);
        auto owner = std::make_shared<const std::vector<T, Allocator>>(std::move(data));
        add_entry(std::move(name), type, std::move(shape), std::as_bytes(std::span<const T>(*owner)), owner,
                  sizeof(T));
    }
    // Copies a tensor of an open file through unchanged (borrows: keep the reader open).
    void add(const tensor_view& v);
    // A tensor whose `size` bytes are those of the open file descriptor `fd` from `offset`: copied
    // in the kernel when writing (copy_file_range), never held in memory. Keep fd open until then.
    void add_file_range(std::string name, dtype type, shape_t shape, int fd, std::uint64_t offset, std::uint64_t size);
    // A tensor whose bytes are given only while writing, by write_deferred.
    void add_deferred(std::string name, dtype type, shape_t shape);
    // Every tensor added so far but file ranges, in the order added: f(name, dtype, shape, bytes),
    // bytes empty for a deferred tensor.
    template <class F>
    void for_each_in_memory(F&& f) const {
        for (const entry& e : entries_)
            if (e.fd < 0) f(e.name, e.type, e.shape, e.bytes);
    }

    void set_metadata(std::string key, std::string value);  // overwrites; key and value UTF-8

    std::size_t size() const { return entries_.size(); }

    // The whole file in memory.
    std::vector<std::byte> serialize() const;
    // Writes a staged file beside `out` (staged_file.hpp), fsyncs it, renames it over `out`, then
    // fsyncs the directory. On any failure the temporary file is removed, `out` is untouched, and
    // an io_error names `out` and the byte offset reached.
    void write(const std::filesystem::path& out) const;
    // As write(), for a writer with deferred tensors: writes the header and every other tensor,
    // then calls fill(put); put(name, bytes) writes the bytes of deferred tensor `name` in place
    // (tensors in any order, each once, the size add_deferred's shape implies; a tensor may come in
    // several pieces, put in order, each after the previous one). Every deferred tensor must be
    // complete before fill returns.
    using put_fn = std::function<void(std::string_view name, std::span<const std::byte> bytes)>;
    void write_deferred(const std::filesystem::path& out, const std::function<void(const put_fn&)>& fill) const;
    // The same into `file`, finished (fsync, close) but not committed: the caller commits (several
    // files at once).
    void write(staged_file& file) const;
    void write_deferred(staged_file& file, const std::function<void(const put_fn&)>& fill) const;

private:
    struct entry {
        std::string name;
        dtype type;
        shape_t shape;
        std::span<const std::byte> bytes;
        std::shared_ptr<const void> owner;  // keeps owned data alive; null when borrowed
        int fd = -1;                        // a file range instead of bytes (add_file_range)
        std::uint64_t file_offset = 0, file_size = 0;
        bool deferred = false;              // file_size bytes given by write_deferred's fill
        std::uint64_t size() const { return fd < 0 && !deferred ? bytes.size() : file_size; }
    };
    struct layout {
        std::string header;                  // padded
        std::vector<const entry*> in_order;  // data order
        std::uint64_t data_size = 0;
    };

    void add_entry(std::string name, dtype type, shape_t shape, std::span<const std::byte> bytes,
                   std::shared_ptr<const void> owner, std::size_t element_size);
    void check_entry(const std::string& name, dtype type, const shape_t& shape, std::uint64_t bytes) const;
    layout plan() const;
    template <class Sink, class FileSink>
    static void emit(const layout& l, Sink&& sink, FileSink&& file_sink);

    std::vector<entry> entries_;
    std::set<std::string, std::less<>> names_;
    metadata_map metadata_;
};

}  // namespace safetensors
}  // namespace qforge
