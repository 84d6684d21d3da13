// safetensors reader and writer (formats.md §9). The writer reproduces the layout of the
// reference implementation (huggingface/safetensors, Rust `tensor::prepare`, which the Python
// `save_file` calls): data sorted by descending Dtype order then name, header keys in data order
// after `__metadata__`, compact JSON padded with spaces to a multiple of 8.
#include <qforge/io/safetensors.hpp>

#include <qforge/io/staged_file.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <functional>
#include <limits>
#include <numeric>
#include <set>
#include <system_error>
#include <tuple>
#include <unordered_map>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace qforge::safetensors {

// An entry of the header, validated on its own (layout is checked across entries afterwards).
// Outside the anonymous namespace: reader::impl, which has external linkage, holds them.
struct parsed_entry {
    std::string name;
    dtype type{};
    shape_t shape;
    std::uint64_t begin = 0, end = 0;
};

namespace {

struct dtype_info {
    dtype type;
    std::string_view name;
    std::size_t size;
};

constexpr std::array<dtype_info, 17> dtype_table{{
    {dtype::BOOL, "BOOL", 1}, {dtype::U8, "U8", 1},       {dtype::I8, "I8", 1},
    {dtype::F8_E5M2, "F8_E5M2", 1}, {dtype::F8_E4M3, "F8_E4M3", 1}, {dtype::F8_E8M0, "F8_E8M0", 1},
    {dtype::I16, "I16", 2},   {dtype::U16, "U16", 2},     {dtype::F16, "F16", 2},
    {dtype::BF16, "BF16", 2}, {dtype::I32, "I32", 4},     {dtype::U32, "U32", 4},
    {dtype::F32, "F32", 4},   {dtype::C64, "C64", 8},     {dtype::F64, "F64", 8},
    {dtype::I64, "I64", 8},   {dtype::U64, "U64", 8},
}};

constexpr bool table_follows_enum() {
    for (std::size_t i = 0; i < dtype_table.size(); ++i)
        if (static_cast<std::size_t>(dtype_table[i].type) != i) return false;
    return true;
}
static_assert(table_follows_enum(), "dtype_table must list the dtypes in enum order");

const dtype_info& info(dtype t) { return dtype_table.at(static_cast<std::size_t>(t)); }

constexpr std::uint64_t header_length_size = 8;  // the u64 prefix

std::string shape_text(std::span<const std::int64_t> shape) {
    std::string s = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
}

// "safetensors file 'f': tensor 't': what (byte offset o)"; the tensor part when there is one.
[[noreturn]] void fail(std::string_view file, const std::string* tensor, const std::string& what,
                       std::optional<std::uint64_t> offset) {
    std::string m = "safetensors file '" + std::string(file) + "': ";
    if (tensor) m += "tensor '" + *tensor + "': ";
    m += what;
    if (offset) m += " (byte offset " + std::to_string(*offset) + ")";
    throw io_error(m);
}

// The parser quotes the bytes it choked on, which may be invalid UTF-8: show those as \xNN.
std::string escape_non_ascii(std::string_view s) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    for (const char c : s) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7F) {
            out += c;
        } else {
            out += "\\x";
            out += hex[u >> 4];
            out += hex[u & 0xF];
        }
    }
    return out;
}

std::string errno_text(int err) { return std::system_category().message(err); }

// numel and byte size with checked multiplication; nullopt on overflow of 64 bits or of int64.
struct tensor_size {
    std::uint64_t numel;
    std::uint64_t bytes;
};
std::optional<tensor_size> checked_size(std::span<const std::int64_t> shape, dtype t) {
    std::uint64_t n = 1;
    for (const std::int64_t d : shape)
        if (__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n)) return std::nullopt;
    std::uint64_t bytes = 0;
    if (__builtin_mul_overflow(n, info(t).size, &bytes)) return std::nullopt;
    if (bytes > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
    return tensor_size{n, bytes};
}

bool is_utf8(const std::string& s) {
    try {
        (void)nlohmann::json(s).dump();  // the strict error handler rejects ill-formed UTF-8
        return true;
    } catch (const nlohmann::json::type_error&) {
        return false;
    }
}

// Offsets (within the header text) of every key of the top-level object, decoded, in order.
// Only used to point error messages at an entry; the header has already parsed as JSON.
std::vector<std::pair<std::string, std::size_t>> top_level_keys(std::string_view h) {
    std::vector<std::pair<std::string, std::size_t>> keys;
    int depth = 0;
    for (std::size_t i = 0; i < h.size(); ++i) {
        const char c = h[i];
        if (c == '"') {
            const std::size_t start = i;
            for (++i; i < h.size() && h[i] != '"'; ++i)
                if (h[i] == '\\') ++i;
            if (depth != 1) continue;
            std::size_t j = i + 1;
            while (j < h.size() && (h[j] == ' ' || h[j] == '\t' || h[j] == '\n' || h[j] == '\r')) ++j;
            if (j < h.size() && h[j] == ':')
                keys.emplace_back(nlohmann::json::parse(h.substr(start, i - start + 1)).get<std::string>(), start);
        } else if (c == '{' || c == '[') {
            ++depth;
        } else if (c == '}' || c == ']') {
            --depth;
        }
    }
    return keys;
}

// File offset of the `occurrence`-th (0-based) top-level key `name`.
std::uint64_t key_offset(std::string_view header, std::string_view name, int occurrence = 0) {
    for (const auto& [key, at] : top_level_keys(header))
        if (key == name && occurrence-- == 0) return header_length_size + at;
    return header_length_size;
}

class header_parser {
public:
    header_parser(std::string_view file, std::span<const std::byte> bytes) : file_(file), bytes_(bytes) {}

    std::uint64_t header_size = 0;
    std::vector<parsed_entry> entries;  // in file order after parse()
    metadata_map metadata;

    void parse() {
        read_length();
        const nlohmann::json root = parse_json();
        data_size_ = bytes_.size() - header_length_size - header_size;
        if (root.size() > max_tensors + 1)  // + __metadata__
            fail(file_, nullptr,
                 "header lists " + std::to_string(root.size()) + " entries; the limit is " +
                     std::to_string(max_tensors) + " tensors",
                 header_length_size);
        for (const auto& [key, value] : root.items()) {
            if (key == "__metadata__")
                read_metadata(value);
            else
                entries.push_back(read_entry(key, value));
        }
        check_layout();
    }

    std::string_view header_text() const {
        return {reinterpret_cast<const char*>(bytes_.data()) + header_length_size, header_size};
    }

private:
    std::string_view file_;
    std::span<const std::byte> bytes_;
    std::uint64_t data_size_ = 0;

    std::uint64_t data_start() const { return header_length_size + header_size; }

    void read_length() {
        const std::uint64_t size = bytes_.size();
        if (size < header_length_size)
            fail(file_, nullptr,
                 "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length", 0);
        std::memcpy(&header_size, bytes_.data(), sizeof header_size);
        if (header_size > size - header_length_size)
            fail(file_, nullptr,
                 "header length " + std::to_string(header_size) + " runs past the end of the file (" +
                     std::to_string(size) + " bytes)",
                 0);
        if (header_size > max_header_size)
            fail(file_, nullptr,
                 "header length " + std::to_string(header_size) + " exceeds the limit of " +
                     std::to_string(max_header_size) + " bytes",
                 0);
    }

    nlohmann::json parse_json() const {
        const std::string_view text = header_text();
        std::set<std::string, std::less<>> seen;
        std::optional<std::string> duplicate;
        const auto note_keys = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
            if (depth == 1 && event == nlohmann::json::parse_event_t::key && !duplicate &&
                !seen.insert(parsed.get<std::string>()).second)
                duplicate = parsed.get<std::string>();
            return true;
        };
        // nlohmann stops at a NUL byte as at the end of input; JSON has no place for one.
        if (const auto nul = text.find('\0'); nul != std::string_view::npos)
            fail(file_, nullptr, "header is not valid UTF-8 JSON: NUL byte", header_length_size + nul);
        nlohmann::json root;
        try {
            root = nlohmann::json::parse(text.begin(), text.end(), note_keys);
        } catch (const nlohmann::json::parse_error& e) {
            const std::uint64_t at = header_length_size + (e.byte > 0 ? e.byte - 1 : 0);
            fail(file_, nullptr, "header is not valid UTF-8 JSON: " + escape_non_ascii(e.what()), at);
        } catch (const nlohmann::json::exception& e) {  // e.g. out_of_range: a number beyond a double (1e400)
            fail(file_, nullptr, "header is not valid: " + escape_non_ascii(e.what()), header_length_size);
        }
        if (!root.is_object())
            fail(file_, nullptr, std::string("header is a JSON ") + root.type_name() + ", not an object",
                 header_length_size);
        if (duplicate)
            fail(file_, &*duplicate, "duplicate key in the header", key_offset(text, *duplicate, 1));
        return root;
    }

    void read_metadata(const nlohmann::json& value) {
        static const std::string key = "__metadata__";
        if (value.is_null()) return;  // the library reads null as "no metadata"
        const std::uint64_t at = key_offset(header_text(), key);
        if (!value.is_object())
            fail(file_, nullptr, key + " is a JSON " + value.type_name() + ", not a string -> string map", at);
        for (const auto& [k, v] : value.items()) {
            if (!v.is_string())
                fail(file_, nullptr,
                     key + " value of '" + k + "' is a JSON " + v.type_name() + ", not a string", at);
            metadata.emplace(k, v.get<std::string>());
        }
    }

    // A non-negative integer that fits `limit`, or nullopt.
    static std::optional<std::uint64_t> unsigned_value(const nlohmann::json& v, std::uint64_t limit) {
        if (!v.is_number_unsigned()) return std::nullopt;
        const auto x = v.get<std::uint64_t>();
        if (x > limit) return std::nullopt;
        return x;
    }

    parsed_entry read_entry(const std::string& name, const nlohmann::json& value) const {
        const std::uint64_t at = key_offset(header_text(), name);
        const auto bad = [&](const std::string& what) { fail(file_, &name, what, at); };
        if (!value.is_object()) bad(std::string("entry is a JSON ") + value.type_name() + ", not an object");
        for (const char* field : {"dtype", "shape", "data_offsets"})
            if (!value.contains(field)) bad(std::string("entry has no '") + field + "'");

        parsed_entry e;
        e.name = name;
        const auto& dt = value.at("dtype");
        if (!dt.is_string()) bad(std::string("'dtype' is a JSON ") + dt.type_name() + ", not a string");
        const auto parsed_type = parse_dtype(dt.get<std::string>());
        if (!parsed_type) bad("unknown dtype '" + dt.get<std::string>() + "'");
        e.type = *parsed_type;

        const auto& shape = value.at("shape");
        if (!shape.is_array()) bad(std::string("'shape' is a JSON ") + shape.type_name() + ", not an array");
        if (shape.size() > max_rank)
            bad("'shape' has " + std::to_string(shape.size()) + " dimensions; the limit is " + std::to_string(max_rank));
        for (const auto& d : shape) {
            const auto dim = unsigned_value(d, std::numeric_limits<std::int64_t>::max());
            if (!dim) bad("'shape' entry " + d.dump() + " is not an integer in [0, 2^63)");
            e.shape.push_back(static_cast<std::int64_t>(*dim));
        }

        const auto& offsets = value.at("data_offsets");
        if (!offsets.is_array() || offsets.size() != 2) bad("'data_offsets' is not an array of two integers");
        const auto begin = unsigned_value(offsets[0], std::numeric_limits<std::uint64_t>::max());
        const auto end = unsigned_value(offsets[1], std::numeric_limits<std::uint64_t>::max());
        if (!begin || !end) bad("'data_offsets' " + offsets.dump() + " are not two non-negative integers");
        e.begin = *begin;
        e.end = *end;

        const auto size = checked_size(e.shape, e.type);
        if (!size)
            bad("shape " + shape_text(e.shape) + " of dtype " + std::string(to_string(e.type)) +
                " overflows 64-bit element or byte counts");
        const std::string offsets_text = "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) + "]";
        if (e.begin > e.end) bad(offsets_text + " begin after end");
        if (e.end > data_size_)
            fail(file_, &name,
                 offsets_text + " end beyond the data section of " + std::to_string(data_size_) + " bytes",
                 data_start() + std::min(e.begin, data_size_));
        if (e.end - e.begin != size->bytes)
            fail(file_, &name,
                 offsets_text + " hold " + std::to_string(e.end - e.begin) + " bytes but " +
                     std::string(to_string(e.type)) + " " + shape_text(e.shape) + " needs " +
                     std::to_string(size->bytes),
                 data_start() + e.begin);
        return e;
    }

    // Sorted by offsets, the tensors must tile the data section exactly.
    void check_layout() {
        std::sort(entries.begin(), entries.end(), [](const parsed_entry& a, const parsed_entry& b) {
            return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
        });
        std::uint64_t cursor = 0;
        const parsed_entry* previous = nullptr;  // the entry that ends at cursor
        for (const parsed_entry& e : entries) {
            if (e.begin < cursor)
                fail(file_, &e.name,
                     "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                         "] overlap tensor '" + previous->name + "' [" + std::to_string(previous->begin) +
                         ", " + std::to_string(previous->end) + "]",
                     data_start() + e.begin);
            if (e.begin > cursor)
                fail(file_, &e.name,
                     "gap: data section bytes [" + std::to_string(cursor) + ", " + std::to_string(e.begin) +
                         ") before this tensor belong to no tensor",
                     data_start() + cursor);
            if (e.end > e.begin || !previous) previous = &e;
            cursor = e.end;
        }
        if (cursor != data_size_)
            fail(file_, nullptr,
                 "gap: data section bytes [" + std::to_string(cursor) + ", " + std::to_string(data_size_) +
                     ") after the last tensor belong to no tensor",
                 data_start() + cursor);
    }
};

}  // namespace

// ---- dtype ---------------------------------------------------------------------------------

std::string_view to_string(dtype t) { return info(t).name; }

std::optional<dtype> parse_dtype(std::string_view name) {
    for (const dtype_info& d : dtype_table)
        if (d.name == name) return d.type;
    return std::nullopt;
}

std::size_t itemsize(dtype t) { return info(t).size; }

// ---- tensor_view ---------------------------------------------------------------------------

std::int64_t tensor_view::numel() const {
    return std::accumulate(shape.begin(), shape.end(), std::int64_t{1}, std::multiplies<>());
}

void tensor_view::expect(dtype t, std::span<const std::int64_t> s) const {
    if (type == t && std::ranges::equal(shape, s)) return;
    const std::string n(name);
    fail(file, &n,
         "expected " + std::string(to_string(t)) + " " + shape_text(s) + ", found " +
             std::string(to_string(type)) + " " + shape_text(shape),
         file_offset);
}

void tensor_view::check_element_size(dtype expected, std::size_t element_size) const {
    const std::string n(name);
    if (type != expected)
        fail(file, &n, "dtype is " + std::string(to_string(type)) + ", not " + std::string(to_string(expected)),
             file_offset);
    if (element_size != itemsize(expected))
        fail(file, &n,
             "a " + std::to_string(element_size) + "-byte element type cannot hold dtype " +
                 std::string(to_string(expected)),
             file_offset);
}

void tensor_view::throw_misaligned(std::size_t alignment) const {
    const std::string n(name);
    fail(file, &n,
         "data is not aligned to " + std::to_string(alignment) +
             " bytes for zero-copy access (use to_vector or copy_to)",
         file_offset);
}

void tensor_view::throw_copy_size(std::size_t elements) const {
    const std::string n(name);
    fail(file, &n,
         "cannot copy " + std::to_string(bytes.size()) + " bytes into " + std::to_string(elements) + " elements",
         file_offset);
}

// ---- reader --------------------------------------------------------------------------------

struct reader::impl {
    std::filesystem::path path;
    std::string path_text;
    void* map = nullptr;
    std::size_t map_size = 0;
    std::uint64_t header_size = 0;
    std::string_view header;
    std::vector<parsed_entry> entries;
    std::vector<tensor_view> views;
    std::unordered_map<std::string_view, std::size_t> index;
    metadata_map metadata;

    impl() = default;
    impl(const impl&) = delete;
    impl& operator=(const impl&) = delete;
    ~impl() {
        if (map) ::munmap(map, map_size);
    }

    void map_file() {
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail(path_text, nullptr, "cannot open: " + errno_text(errno), std::nullopt);
        struct stat st {};
        if (::fstat(fd, &st) != 0) {
            const int err = errno;
            ::close(fd);
            fail(path_text, nullptr, "cannot stat: " + errno_text(err), std::nullopt);
        }
        if (!S_ISREG(st.st_mode)) {
            ::close(fd);
            fail(path_text, nullptr, "not a regular file", std::nullopt);
        }
        map_size = static_cast<std::size_t>(st.st_size);
        if (map_size > 0) {  // an empty file cannot be mapped; the parser rejects it anyway
            void* p = ::mmap(nullptr, map_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                const int err = errno;
                ::close(fd);
                fail(path_text, nullptr, "cannot map: " + errno_text(err), std::nullopt);
            }
            map = p;
        }
        ::close(fd);
    }
};

reader::reader(const std::filesystem::path& file) : impl_(std::make_unique<impl>()) {
    impl& m = *impl_;
    m.path = file;
    m.path_text = file.string();
    m.map_file();
    const std::span<const std::byte> bytes(static_cast<const std::byte*>(m.map), m.map_size);

    header_parser p(m.path_text, bytes);
    p.parse();
    m.header_size = p.header_size;
    m.header = p.header_text();
    m.metadata = std::move(p.metadata);
    m.entries = std::move(p.entries);  // final: views point into these entries from here on

    const std::uint64_t data_start = header_length_size + m.header_size;
    m.views.reserve(m.entries.size());
    for (const parsed_entry& e : m.entries) {
        tensor_view v;
        v.name = e.name;
        v.type = e.type;
        v.shape = e.shape;
        v.bytes = bytes.subspan(data_start + e.begin, e.end - e.begin);
        v.file_offset = data_start + e.begin;
        v.file = m.path_text;
        m.index.emplace(v.name, m.views.size());
        m.views.push_back(v);
    }
}

reader::reader(reader&&) noexcept = default;
reader& reader::operator=(reader&&) noexcept = default;
reader::~reader() = default;

const std::filesystem::path& reader::path() const { return impl_->path; }
std::span<const tensor_view> reader::tensors() const { return impl_->views; }

const tensor_view* reader::find(std::string_view name) const {
    const auto it = impl_->index.find(name);
    return it == impl_->index.end() ? nullptr : &impl_->views[it->second];
}

const tensor_view& reader::at(std::string_view name) const {
    if (const tensor_view* v = find(name)) return *v;
    const std::string n(name);
    fail(impl_->path_text, &n, "no such tensor in the file", std::nullopt);
}

const metadata_map& reader::metadata() const { return impl_->metadata; }
std::string_view reader::header() const { return impl_->header; }
std::uint64_t reader::data_offset() const { return header_length_size + impl_->header_size; }
std::uint64_t reader::file_size() const { return impl_->map_size; }

// ---- writer --------------------------------------------------------------------------------

namespace {

[[noreturn]] void writer_fail(const std::string& tensor, const std::string& what) {
    throw io_error("safetensors writer: tensor '" + tensor + "': " + what);
}

}  // namespace

void writer::check_entry(const std::string& name, dtype type, const shape_t& shape, std::uint64_t bytes) const {
    if (name == "__metadata__") writer_fail(name, "the name is reserved for the metadata map");
    if (!is_utf8(name)) writer_fail(name, "the name is not valid UTF-8");
    if (names_.contains(name)) writer_fail(name, "added twice");
    if (std::ranges::any_of(shape, [](std::int64_t d) { return d < 0; }))
        writer_fail(name, "negative dimension in shape " + shape_text(shape));
    const auto size = checked_size(shape, type);
    if (!size) writer_fail(name, "shape " + shape_text(shape) + " overflows 64-bit element or byte counts");
    if (size->bytes != bytes)
        writer_fail(name, "holds " + std::to_string(bytes) + " bytes but " + std::string(to_string(type)) + " " +
                              shape_text(shape) + " needs " + std::to_string(size->bytes));
}

void writer::add_entry(std::string name, dtype type, shape_t shape, std::span<const std::byte> bytes,
                       std::shared_ptr<const void> owner, std::size_t element_size) {
    if (element_size != 1 && element_size != itemsize(type))
        writer_fail(name, std::to_string(element_size) + "-byte elements do not match dtype " +
                              std::string(to_string(type)));
    check_entry(name, type, shape, bytes.size());
    names_.insert(name);
    entries_.push_back({std::move(name), type, std::move(shape), bytes, std::move(owner)});
}

void writer::add_file_range(std::string name, dtype type, shape_t shape, int fd, std::uint64_t offset,
                            std::uint64_t size) {
    if (fd < 0) writer_fail(name, "no file to copy from");
    check_entry(name, type, shape, size);
    names_.insert(name);
    entries_.push_back({std::move(name), type, std::move(shape), {}, nullptr, fd, offset, size});
}

void writer::add(const tensor_view& v) {
    add_entry(std::string(v.name), v.type, shape_t(v.shape.begin(), v.shape.end()), v.bytes, nullptr, 1);
}

void writer::add_deferred(std::string name, dtype type, shape_t shape) {
    const auto size = checked_size(shape, type);
    if (!size) writer_fail(name, "shape " + shape_text(shape) + " overflows 64-bit element or byte counts");
    check_entry(name, type, shape, size->bytes);
    names_.insert(name);
    entry e{std::move(name), type, std::move(shape), {}, nullptr};
    e.file_size = size->bytes;
    e.deferred = true;
    entries_.push_back(std::move(e));
}

void writer::set_metadata(std::string key, std::string value) {
    if (!is_utf8(key) || !is_utf8(value))
        throw io_error("safetensors writer: metadata key '" + key + "': key or value is not valid UTF-8");
    metadata_.insert_or_assign(std::move(key), std::move(value));
}

writer::layout writer::plan() const {
    layout l;
    for (const entry& e : entries_) l.in_order.push_back(&e);
    std::sort(l.in_order.begin(), l.in_order.end(), [](const entry* a, const entry* b) {
        if (a->type != b->type) return a->type > b->type;
        return a->name < b->name;  // bytewise, as Rust's String order
    });

    nlohmann::ordered_json root = nlohmann::ordered_json::object();
    if (!metadata_.empty()) {
        auto& m = root["__metadata__"] = nlohmann::ordered_json::object();
        for (const auto& [k, v] : metadata_) m[k] = v;
    }
    for (const entry* e : l.in_order) {
        nlohmann::ordered_json info = nlohmann::ordered_json::object();
        info["dtype"] = to_string(e->type);
        info["shape"] = e->shape;
        info["data_offsets"] = {l.data_size, l.data_size + e->size()};
        root[e->name] = std::move(info);
        l.data_size += e->size();
    }
    l.header = root.dump();
    l.header.resize((l.header.size() + 7) / 8 * 8, ' ');
    if (l.header.size() > max_header_size)
        throw io_error("safetensors writer: header of " + std::to_string(l.header.size()) +
                       " bytes exceeds the limit of " + std::to_string(max_header_size));
    return l;
}

namespace {

std::array<std::byte, 8> length_prefix(std::uint64_t n) {
    std::array<std::byte, 8> out{};
    std::memcpy(out.data(), &n, sizeof n);  // little-endian host (static_assert in the header)
    return out;
}

}  // namespace

// The file, piece by piece, in order: sink(bytes, tensor name or nullptr), or for a file range
// or a deferred tensor file_sink(entry).
template <class Sink, class FileSink>
void writer::emit(const layout& l, Sink&& sink, FileSink&& file_sink) {
    const auto prefix = length_prefix(l.header.size());
    sink(std::span<const std::byte>(prefix), nullptr);
    sink(std::as_bytes(std::span(l.header)), nullptr);
    for (const entry* e : l.in_order) {
        if (e->fd >= 0 || e->deferred)
            file_sink(*e);
        else
            sink(e->bytes, &e->name);
    }
}

std::vector<std::byte> writer::serialize() const {
    const layout l = plan();
    std::vector<std::byte> out(header_length_size + l.header.size() + l.data_size);
    std::byte* cursor = out.data();
    emit(
        l,
        [&cursor](std::span<const std::byte> piece, const std::string*) {
            if (!piece.empty()) std::memcpy(cursor, piece.data(), piece.size());
            cursor += piece.size();
        },
        [&cursor](const entry& e) {
            if (e.deferred) writer_fail(e.name, "is deferred: only write_deferred writes it");
            for (std::uint64_t done = 0; done < e.file_size;) {
                const ssize_t n = ::pread(e.fd, cursor, e.file_size - done, static_cast<off_t>(e.file_offset + done));
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) writer_fail(e.name, "cannot read its bytes: " + errno_text(n < 0 ? errno : EIO));
                cursor += n;
                done += static_cast<std::uint64_t>(n);
            }
        });
    return out;
}

void writer::write(const std::filesystem::path& out) const {
    write_deferred(out, [](const put_fn&) {});
}

void writer::write_deferred(const std::filesystem::path& out, const std::function<void(const put_fn&)>& fill) const {
    if (!out.has_filename()) throw io_error("safetensors writer: '" + out.string() + "' names no file");
    staged_file file(out);  // removed again if planning or writing fails
    write_deferred(file, fill);
    file.commit();
}

void writer::write(staged_file& file) const {
    write_deferred(file, [](const put_fn&) {});
}

void writer::write_deferred(staged_file& file, const std::function<void(const put_fn&)>& fill) const {
    const layout l = plan();  // every error that does not need the disk comes first
    // Where each deferred tensor goes, and whether it came.
    std::unordered_map<std::string_view, std::pair<std::uint64_t, const entry*>> deferred;
    std::uint64_t at = header_length_size + l.header.size();
    for (const entry* e : l.in_order) {
        if (e->deferred) deferred.emplace(e->name, std::pair{at, e});
        at += e->size();
    }
    file.reserve(at);
    emit(
        l, [&file](std::span<const std::byte> piece, const std::string* tensor) { file.write(piece, tensor); },
        [&file](const entry& e) {
            if (e.deferred) file.skip(e.file_size, &e.name);
            else file.copy_from(e.fd, e.file_offset, e.file_size, &e.name);
        });
    std::unordered_map<std::string_view, std::uint64_t> filled;  // bytes put so far
    fill([&](std::string_view name, std::span<const std::byte> bytes) {
        const auto it = deferred.find(name);
        const std::string n(name);
        if (it == deferred.end()) writer_fail(n, "is not a deferred tensor of this writer");
        const std::uint64_t size = it->second.second->file_size;
        const auto [at, first_piece] = filled.try_emplace(it->first, 0);
        std::uint64_t& have = at->second;
        if (!first_piece && have == size) writer_fail(n, "written twice");
        if (have + bytes.size() > size)
            writer_fail(n, "holds " + std::to_string(have + bytes.size()) + " bytes, its shape needs " + std::to_string(size));
        file.write_at(it->second.first + have, bytes, &n);
        have += bytes.size();
    });
    for (const auto& [name, have] : filled)
        if (have != deferred.at(name).second->file_size)
            writer_fail(std::string(name), "holds " + std::to_string(have) + " bytes, its shape needs " +
                                               std::to_string(deferred.at(name).second->file_size));
    for (const auto& [name, place] : deferred)
        if (!filled.contains(name)) writer_fail(std::string(name), "was never written");
    file.finish();
}

}  // namespace qforge::safetensors
