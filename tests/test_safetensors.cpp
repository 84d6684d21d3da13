// safetensors reader / writer (formats.md §9). Expected bytes are written out by hand from the
// format: u64 LE header length, compact JSON header padded with spaces to a multiple of 8, data.
#include <qforge/io/safetensors.hpp>
#include <qforge/io/staged_file.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

namespace fs = std::filesystem;
namespace st = qforge::safetensors;
using st::dtype;
using Catch::Matchers::Contains;

namespace {

// A fresh directory, removed with everything in it at scope exit.
struct temp_dir {
    fs::path path;
    temp_dir() {
        static int counter = 0;
        path = fs::temp_directory_path() /
               ("qforge-test-st-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~temp_dir() { fs::remove_all(path); }
    std::vector<std::string> entries() const {
        std::vector<std::string> names;
        for (const auto& e : fs::directory_iterator(path)) names.push_back(e.path().filename().string());
        std::sort(names.begin(), names.end());
        return names;
    }
};

std::string u64_le(std::uint64_t n) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
    return s;
}

// A file made of a header (length prefix computed from it, no padding added) and data bytes.
std::string file_bytes(const std::string& header, const std::string& data) {
    return u64_le(header.size()) + header + data;
}

void write_file(const fs::path& p, const std::string& bytes) {
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string as_string(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

// The header of a serialized file, without the length prefix.
std::string header_of(const std::string& file) {
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
    return file.substr(8, n);
}

template <class V>
constexpr bool can_add = requires(st::writer& w, V v) { w.add("x", dtype::F32, {1}, std::forward<V>(v)); };

}  // namespace

TEST_CASE("dtype names and item sizes follow the safetensors spelling", "[safetensors]") {
    const std::vector<std::tuple<dtype, std::string, std::size_t>> expected = {
        {dtype::BOOL, "BOOL", 1}, {dtype::U8, "U8", 1},         {dtype::I8, "I8", 1},
        {dtype::F8_E5M2, "F8_E5M2", 1}, {dtype::F8_E4M3, "F8_E4M3", 1}, {dtype::F8_E8M0, "F8_E8M0", 1},
        {dtype::I16, "I16", 2},   {dtype::U16, "U16", 2},       {dtype::F16, "F16", 2},
        {dtype::BF16, "BF16", 2}, {dtype::I32, "I32", 4},       {dtype::U32, "U32", 4},
        {dtype::F32, "F32", 4},   {dtype::C64, "C64", 8},       {dtype::F64, "F64", 8},
        {dtype::I64, "I64", 8},   {dtype::U64, "U64", 8},
    };
    for (const auto& [t, name, size] : expected) {
        CHECK(st::to_string(t) == name);
        CHECK(st::itemsize(t) == size);
        CHECK(st::parse_dtype(name) == t);
    }
    CHECK_FALSE(st::parse_dtype("f32"));
    CHECK_FALSE(st::parse_dtype("F4"));  // sub-byte dtypes are not supported
    CHECK_FALSE(st::parse_dtype("float32"));
    STATIC_REQUIRE(st::dtype_of<float> == dtype::F32);
    STATIC_REQUIRE(st::dtype_of<qforge::bf16> == dtype::BF16);
    STATIC_REQUIRE(st::dtype_of<std::int8_t> == dtype::I8);
}

TEST_CASE("a hand-built file parses: names, dtypes, shapes, bytes, metadata, file order", "[safetensors]") {
    temp_dir dir;
    // Header keys deliberately not in data order; the header length (151) is not a multiple of 8,
    // so the data section starts at an odd file offset (159).
    const std::string header =
        R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[2,10]},)"
        R"("__metadata__":{"format":"pt","note":"xy"},"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}})";
    REQUIRE(header.size() == 151);
    // h = f16 1.0 (0x3C00); w = f32 {1.0 (0x3F800000), -2.0 (0xC0000000)}.
    const std::string data("\x00\x3C" "\x00\x00\x80\x3F" "\x00\x00\x00\xC0", 10);
    const fs::path p = dir.path / "golden.safetensors";
    write_file(p, file_bytes(header, data));

    st::reader r(p);
    CHECK(r.header() == header);
    CHECK(r.data_offset() == 8 + 151);
    CHECK(r.file_size() == 8 + 151 + 10);
    CHECK(r.metadata() == st::metadata_map{{"format", "pt"}, {"note", "xy"}});

    REQUIRE(r.tensors().size() == 2);
    const st::tensor_view& h = r.tensors()[0];  // file order: data offset 0 first
    const st::tensor_view& w = r.tensors()[1];
    CHECK(h.name == "h");
    CHECK(h.type == dtype::F16);
    CHECK(std::ranges::equal(h.shape, std::vector<std::int64_t>{1}));
    CHECK(h.file_offset == 159);
    CHECK(as_string(h.bytes) == data.substr(0, 2));
    CHECK(h.to_vector<qforge::f16>() == std::vector<qforge::f16>{{0x3C00}});

    CHECK(w.name == "w");
    CHECK(w.file_offset == 161);
    CHECK(w.numel() == 2);
    CHECK(w.to_vector<float>() == std::vector<float>{1.0f, -2.0f});
    CHECK(r.find("w") == &w);
    CHECK(&r.at("h") == &h);
    CHECK(r.find("nope") == nullptr);
    CHECK_THROWS_WITH(r.at("nope"), Contains("golden.safetensors") && Contains("tensor 'nope'"));

    // Offset 161 is odd: zero-copy float access must refuse, copies must work.
    CHECK_THROWS_WITH(w.as<float>(), Contains("not aligned to 4 bytes") && Contains("byte offset 161"));
    std::vector<float> out(2);
    w.copy_to(std::span<float>(out));
    CHECK(out == std::vector<float>{1.0f, -2.0f});
    CHECK_THROWS_WITH(w.copy_to(std::span<float>(out.data(), 1)), Contains("cannot copy 8 bytes into 1 elements"));
    CHECK_THROWS_WITH(w.to_vector<qforge::f16>(), Contains("tensor 'w'") && Contains("dtype is F32, not F16"));
    CHECK_THROWS_WITH(w.to_vector<std::uint8_t>(dtype::F32), Contains("1-byte element type cannot hold dtype F32"));
    CHECK(w.to_vector<std::uint32_t>(dtype::F32) == std::vector<std::uint32_t>{0x3F800000u, 0xC0000000u});

    CHECK_NOTHROW(w.expect(dtype::F32, {2}));
    CHECK_THROWS_WITH(w.expect(dtype::F32, {1, 2}), Contains("expected F32 [1, 2], found F32 [2]"));
    CHECK_THROWS_WITH(w.expect(dtype::BF16, {2}), Contains("expected BF16 [2], found F32 [2]"));

    // Views survive moving the reader.
    const st::reader moved = std::move(r);
    CHECK(moved.at("w").to_vector<float>() == std::vector<float>{1.0f, -2.0f});
}

TEST_CASE("FP8 codes, scalars and empty tensors read back", "[safetensors]") {
    temp_dir dir;
    // Zero-size tensors may share an offset; a scalar has shape [] and one element.
    const std::string header =
        R"({"e":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[0,3]},)"
        R"("s":{"dtype":"U8","shape":[],"data_offsets":[3,4]},)"
        R"("z1":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]},"z0":{"dtype":"BF16","shape":[0],"data_offsets":[4,4]}})";
    const fs::path p = dir.path / "fp8.safetensors";
    write_file(p, file_bytes(header, std::string("\x7E\xFE\x38\x2A", 4)));
    const st::reader r(p);
    REQUIRE(r.tensors().size() == 4);
    CHECK(r.tensors()[0].name == "e");
    CHECK(r.tensors()[1].name == "s");
    CHECK(r.tensors()[2].name == "z0");  // equal offsets: by name
    CHECK(r.tensors()[3].name == "z1");
    const auto codes = r.at("e").as<std::uint8_t>(dtype::F8_E4M3);
    CHECK(std::vector<std::uint8_t>(codes.begin(), codes.end()) == std::vector<std::uint8_t>{0x7E, 0xFE, 0x38});
    CHECK(r.at("s").numel() == 1);
    CHECK(r.at("s").as<std::uint8_t>()[0] == 0x2A);
    CHECK(r.at("z1").numel() == 0);
    CHECK(r.at("z1").to_vector<float>().empty());
    CHECK(r.metadata().empty());
}

TEST_CASE("the writer produces the library's bytes", "[safetensors]") {
    SECTION("one F32 tensor: header of exactly 64 bytes, no padding") {
        st::writer w;
        const std::vector<float> v{0, 1, 2, 3, 4, 5};
        w.add("attn.0", dtype::F32, {1, 2, 3}, v);
        const std::string header = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
        REQUIRE(header.size() == 64);
        std::string data(24, '\0');
        std::memcpy(data.data(), v.data(), 24);
        CHECK(as_string(w.serialize()) == u64_le(64) + header + data);
    }
    SECTION("padding with spaces to a multiple of 8") {
        st::writer w;
        const std::vector<float> v{0, 1, 2, 3, 4, 5};
        w.add("attn0", dtype::F32, {1, 1, 2, 3}, v);
        const std::string header = R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}})";
        REQUIRE(header.size() == 65);
        CHECK(header_of(as_string(w.serialize())) == header + std::string(7, ' '));
    }
    SECTION("no tensors") {
        st::writer w;
        CHECK(as_string(w.serialize()) == u64_le(8) + "{}      ");
        w.set_metadata("framework", "pt");
        CHECK(as_string(w.serialize()) == u64_le(40) + R"({"__metadata__":{"framework":"pt"}})" + "     ");
    }
    SECTION("data order: descending dtype order, then name; __metadata__ first, keys sorted") {
        st::writer w;
        const std::vector<std::uint8_t> a{1, 2, 3};
        const std::vector<float> b{1.5f, 2.5f};
        const std::vector<qforge::bf16> c{{0x3F80}};
        const std::vector<qforge::f16> d{{0x3C00}};
        const std::vector<std::int64_t> e{-7};
        const std::vector<std::uint8_t> f{0x38, 0xB8};
        const std::vector<std::int8_t> g{-1};
        const std::vector<std::int32_t> h{42};
        const std::vector<float> z{9.0f};
        w.add("z", dtype::F32, {1}, z);
        w.add("a", dtype::U8, {3}, a);
        w.add("f", dtype::F8_E4M3, {2}, f);
        w.add("c", dtype::BF16, {1}, c);
        w.add("h", dtype::I32, {1}, h);
        w.add("b", dtype::F32, {2}, b);
        w.add("g", dtype::I8, {1}, g);
        w.add("d", dtype::F16, {1}, d);
        w.add("e", dtype::I64, {1}, e);
        w.set_metadata("format", "pt");
        w.set_metadata("a", "1");
        // I64 > F32 > I32 > BF16 > F16 > F8_E4M3 > I8 > U8 (the library's Dtype order, reversed).
        const std::string expected_header =
            R"({"__metadata__":{"a":"1","format":"pt"},)"
            R"("e":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)"
            R"("z":{"dtype":"F32","shape":[1],"data_offsets":[16,20]},)"
            R"("h":{"dtype":"I32","shape":[1],"data_offsets":[20,24]},)"
            R"("c":{"dtype":"BF16","shape":[1],"data_offsets":[24,26]},)"
            R"("d":{"dtype":"F16","shape":[1],"data_offsets":[26,28]},)"
            R"("f":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[28,30]},)"
            R"("g":{"dtype":"I8","shape":[1],"data_offsets":[30,31]},)"
            R"("a":{"dtype":"U8","shape":[3],"data_offsets":[31,34]}})";
        const std::string file = as_string(w.serialize());
        const std::string header = header_of(file);
        CHECK(header.size() % 8 == 0);
        CHECK(header.size() - expected_header.size() < 8);
        CHECK(header.substr(0, expected_header.size()) == expected_header);
        CHECK(header.find_first_not_of(' ', expected_header.size()) == std::string::npos);
        const auto bytes_of = [](const auto& vec) {
            return std::string(reinterpret_cast<const char*>(vec.data()), vec.size() * sizeof(vec[0]));
        };
        CHECK(file.substr(8 + header.size()) ==
              bytes_of(e) + bytes_of(b) + bytes_of(z) + bytes_of(h) + bytes_of(c) + bytes_of(d) + bytes_of(f) +
                  bytes_of(g) + bytes_of(a));
    }
    SECTION("names and metadata are escaped as compact JSON, UTF-8 kept as is") {
        st::writer w;
        const std::vector<std::uint8_t> one{1};
        w.add("q\"\\\n\x01\xC3\xA9", dtype::U8, {1}, one);
        CHECK(header_of(as_string(w.serialize())).rfind(
                  R"({"q\"\\\n\u0001)" "\xC3\xA9" R"(":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", 0) == 0);
    }
}

TEST_CASE("file ranges are written as the same bytes held in memory would be", "[safetensors]") {
    temp_dir dir;
    std::vector<float> weights(1000);
    for (std::size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<float>(i) * 0.5f - 7.0f;
    const std::vector<std::uint8_t> codes{1, 2, 3, 4, 5, 6};
    // The source: 3 junk bytes, the weights, the codes.
    const fs::path src = dir.path / "source.bin";
    write_file(src, "abc" + std::string(reinterpret_cast<const char*>(weights.data()), weights.size() * 4) +
                        std::string(codes.begin(), codes.end()));
    const int fd = ::open(src.c_str(), O_RDONLY);
    REQUIRE(fd >= 0);

    st::writer in_memory, from_file;
    in_memory.add("w", dtype::F32, {10, 100}, weights);
    in_memory.add("codes", dtype::U8, {6}, codes);
    in_memory.set_metadata("format", "pt");
    from_file.add_file_range("w", dtype::F32, {10, 100}, fd, 3, weights.size() * 4);
    from_file.add("codes", dtype::U8, {6}, codes);
    from_file.set_metadata("format", "pt");
    CHECK(from_file.serialize() == in_memory.serialize());
    from_file.write(dir.path / "a.safetensors");
    in_memory.write(dir.path / "b.safetensors");
    CHECK(read_file(dir.path / "a.safetensors") == read_file(dir.path / "b.safetensors"));
    int visited = 0;
    from_file.for_each_in_memory([&](const std::string& name, dtype, const st::shape_t&, std::span<const std::byte>) {
        CHECK(name == "codes");
        ++visited;
    });
    CHECK(visited == 1);
    CHECK_THROWS_WITH(from_file.add_file_range("x", dtype::F32, {3}, fd, 0, 8), Contains("needs 12"));
    ::close(fd);
}

TEST_CASE("deferred tensors are written in place, in any order", "[safetensors]") {
    temp_dir dir;
    std::vector<float> a(300), b(7);
    for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) - 0.5f;
    for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i) * 3.0f;
    const std::vector<std::uint8_t> codes{9, 8, 7};
    st::writer in_memory, deferred;
    in_memory.add("a", dtype::F32, {3, 100}, a);
    in_memory.add("b", dtype::F32, {7}, b);
    in_memory.add("c", dtype::U8, {3}, codes);
    deferred.add_deferred("a", dtype::F32, {3, 100});
    deferred.add("c", dtype::U8, {3}, codes);
    deferred.add_deferred("b", dtype::F32, {7});
    deferred.write_deferred(dir.path / "d.safetensors", [&](const st::writer::put_fn& put) {
        put("b", std::as_bytes(std::span(b)));
        put("a", std::as_bytes(std::span(a)));
    });
    CHECK(read_file(dir.path / "d.safetensors") == as_string(in_memory.serialize()));
    // a tensor in pieces, put in order
    const std::span<const std::byte> a_bytes = std::as_bytes(std::span(a));
    deferred.write_deferred(dir.path / "p.safetensors", [&](const st::writer::put_fn& put) {
        put("a", a_bytes.first(400));
        put("b", std::as_bytes(std::span(b)));
        put("a", a_bytes.subspan(400, 4));
        put("a", a_bytes.subspan(404));
    });
    CHECK(read_file(dir.path / "p.safetensors") == as_string(in_memory.serialize()));
    fs::remove(dir.path / "p.safetensors");
    const auto bad = [&](const std::function<void(const st::writer::put_fn&)>& fill) {
        deferred.write_deferred(dir.path / "e.safetensors", fill);
    };
    CHECK_THROWS_WITH(bad([&](const st::writer::put_fn& put) { put("a", std::as_bytes(std::span(a))); }),
                      Contains("'b': was never written"));
    CHECK_THROWS_WITH(bad([&](const st::writer::put_fn& put) { put("a", std::as_bytes(std::span(b))); }),
                      Contains("holds 28 bytes, its shape needs 1200"));
    CHECK_THROWS_WITH(bad([&](const st::writer::put_fn& put) {
                          put("b", std::as_bytes(std::span(b)));
                          put("a", a_bytes.first(1000));
                          put("a", a_bytes.first(201));
                      }),
                      Contains("'a': holds 1201 bytes, its shape needs 1200"));
    CHECK_THROWS_WITH(bad([&](const st::writer::put_fn& put) {
                          put("a", a_bytes);
                          put("b", std::as_bytes(std::span(b)));
                          put("b", std::as_bytes(std::span(b)).first(1));
                      }),
                      Contains("'b': written twice"));
    CHECK_THROWS_WITH(bad([&](const st::writer::put_fn& put) { put("c", std::as_bytes(std::span(codes))); }),
                      Contains("not a deferred tensor"));
    CHECK_THROWS_WITH(deferred.write(dir.path / "f.safetensors"), Contains("never written"));
    CHECK(!fs::exists(dir.path / "e.safetensors"));
    CHECK(dir.entries() == std::vector<std::string>{"d.safetensors"});  // no temp file left
}

TEST_CASE("write then read round-trips data and header bytes", "[safetensors]") {
    temp_dir dir;
    std::vector<float> weights(37);
    for (std::size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<float>(i) * 0.25f - 3.0f;
    const std::vector<std::uint8_t> codes{0x00, 0x7E, 0x80, 0xFE, 0x01};
    std::vector<std::int32_t> packed{-1, 0x12345678, 7};

    st::writer w;
    w.add("model.layers.0.weight", dtype::F32, {37}, weights);
    w.add("model.layers.0.weight_scale_inv", dtype::F8_E4M3, {5}, std::span(codes));
    w.add_owned("model.layers.0.qweight", dtype::I32, {3, 1}, std::move(packed));
    w.add_owned("bias", dtype::BF16, {2}, std::vector<qforge::bf16>{{0x3F80}, {0xBF80}});
    w.add("scalar", dtype::F32, {}, std::span(weights).first(1));
    w.set_metadata("format", "pt");
    const fs::path p = dir.path / "model.safetensors";
    w.write(p);
    CHECK(dir.entries() == std::vector<std::string>{"model.safetensors"});  // no temp file left

    const std::string file = read_file(p);
    CHECK(file == as_string(w.serialize()));
    const st::reader r(p);
    CHECK(r.header() == header_of(file));
    CHECK(r.metadata() == st::metadata_map{{"format", "pt"}});
    REQUIRE(r.tensors().size() == 5);
    CHECK(r.at("model.layers.0.weight").to_vector<float>() == weights);
    // The library's layout plus page-aligned mapping: every tensor is naturally aligned.
    const auto zero_copy = r.at("model.layers.0.weight").as<float>();
    CHECK(std::vector<float>(zero_copy.begin(), zero_copy.end()) == weights);
    CHECK(r.at("model.layers.0.qweight").as<std::int32_t>()[1] == 0x12345678);
    CHECK(r.at("bias").as<qforge::bf16>()[1] == qforge::bf16{0xBF80});
    CHECK(r.at("scalar").shape.empty());
    CHECK(r.at("scalar").as<float>()[0] == -3.0f);
    const auto c = r.at("model.layers.0.weight_scale_inv").as<std::uint8_t>(dtype::F8_E4M3);
    CHECK(std::vector<std::uint8_t>(c.begin(), c.end()) == codes);

    // Copying every tensor through a second writer reproduces the file byte for byte.
    st::writer again;
    for (const st::tensor_view& v : r.tensors()) again.add(v);
    for (const auto& [k, v] : r.metadata()) again.set_metadata(k, v);
    const fs::path p2 = dir.path / "copy.safetensors";
    again.write(p2);
    CHECK(read_file(p2) == file);
}

TEST_CASE("bad files are rejected with file, offset and tensor in the message", "[safetensors]") {
    temp_dir dir;
    struct bad_file {
        std::string what;
        std::string bytes;
        std::vector<std::string> message_parts;
    };
    const std::string f32x2 = R"("dtype":"F32","shape":[2])";
    const std::string eight(8, '\x11');
    const std::vector<bad_file> corpus = {
        {"truncated", std::string("\x08\x00\x00", 3), {"file is 3 bytes, shorter than the 8-byte header", "byte offset 0"}},
        {"empty", "", {"file is 0 bytes", "byte offset 0"}},
        {"header length beyond the file", u64_le(100) + "{}" + eight,
         {"header length 100 runs past the end of the file (18 bytes)", "byte offset 0"}},
        {"header length 2^64-1", u64_le(~0ull) + "{}", {"runs past the end of the file", "byte offset 0"}},
        {"invalid JSON", file_bytes(R"({"w":{"dtype":"F32",)", ""), {"header is not valid UTF-8 JSON"}},
        {"invalid UTF-8 in a key", file_bytes("{\"w\xFF\":{}}", ""), {"header is not valid UTF-8 JSON", "ill-formed UTF-8 byte", "\\xFF", "byte offset 11"}},
        {"NUL byte after the JSON", file_bytes(std::string("{} \0x", 5), ""), {"NUL byte", "byte offset 11"}},
        {"header not an object", file_bytes("[1,2]", ""), {"header is a JSON array, not an object", "byte offset 8"}},
        {"duplicate key", file_bytes(R"({"w":{)" + f32x2 + R"(,"data_offsets":[0,8]},"w":{)" + f32x2 + R"(,"data_offsets":[0,8]}})", eight),
         {"tensor 'w': duplicate key", "byte offset 62"}},
        {"entry not an object", file_bytes(R"({"w":3})", ""), {"tensor 'w': entry is a JSON number, not an object", "byte offset 9"}},
        {"missing dtype", file_bytes(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", eight), {"tensor 'w': entry has no 'dtype'"}},
        {"missing shape", file_bytes(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", eight), {"tensor 'w': entry has no 'shape'"}},
        {"missing data_offsets", file_bytes(R"({"w":{)" + f32x2 + "}}", eight), {"tensor 'w': entry has no 'data_offsets'"}},
        {"dtype not a string", file_bytes(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", eight),
         {"'dtype' is a JSON number, not a string"}},
        {"shape not an array", file_bytes(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", eight),
         {"'shape' is a JSON string, not an array"}},
        {"negative dimension", file_bytes(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
         {"'shape' entry -2 is not an integer in [0, 2^63)"}},
        {"fractional dimension", file_bytes(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", eight),
         {"'shape' entry 2.0 is not an integer"}},
        {"data_offsets of three", file_bytes(R"({"w":{)" + f32x2 + R"(,"data_offsets":[0,8,8]}})", eight),
         {"'data_offsets' is not an array of two integers"}},
        {"negative data_offsets", file_bytes(R"({"w":{)" + f32x2 + R"(,"data_offsets":[-1,8]}})", eight),
         {"'data_offsets' [-1,8] are not two non-negative integers"}},
        {"unknown dtype", file_bytes(R"({"w":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}})", "\x11"),
         {"tensor 'w': unknown dtype 'F4'", "byte offset 9"}},
        {"shape product overflow", file_bytes(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""),
         {"tensor 'w': shape [4294967296, 4294967296] of dtype U8 overflows"}},
        {"byte size overflow", file_bytes(R"({"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}})", ""),
         {"shape [2305843009213693952] of dtype F64 overflows"}},
        {"offsets out of range", file_bytes(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", eight),
         {"tensor 'w': data_offsets [0, 16] end beyond the data section of 8 bytes"}},
        {"begin after end", file_bytes(R"({"w":{)" + f32x2 + R"(,"data_offsets":[8,0]}})", eight),
         {"tensor 'w': data_offsets [8, 0] begin after end"}},
        {"size mismatch", file_bytes(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
         {"tensor 'w': data_offsets [0, 8] hold 8 bytes but F32 [3] needs 12"}},
        {"overlap", file_bytes(R"({"a":{)" + f32x2 + R"(,"data_offsets":[0,8]},"b":{)" + f32x2 + R"(,"data_offsets":[4,12]}})", eight + "1234"),
         {"tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]", "byte offset 120"}},
        {"gap between tensors", file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})", eight + "1234"),
         {"tensor 'b': gap: data section bytes [4, 8) before this tensor belong to no tensor"}},
        {"trailing bytes", file_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", eight),
         {"gap: data section bytes [4, 8) after the last tensor", "byte offset 66"}},
        {"metadata not a map", file_bytes(R"({"__metadata__":"pt"})", ""),
         {"__metadata__ is a JSON string, not a string -> string map", "byte offset 9"}},
        {"metadata value not a string", file_bytes(R"({"__metadata__":{"format":"pt","n":1}})", ""),
         {"__metadata__ value of 'n' is a JSON number, not a string"}},
    };
    for (const bad_file& b : corpus) {
        DYNAMIC_SECTION(b.what) {
            const fs::path p = dir.path / "bad.safetensors";
            write_file(p, b.bytes);
            try {
                const st::reader r(p);
                FAIL("accepted: " << b.what);
            } catch (const qforge::io_error& e) {
                const std::string message = e.what();
                INFO(message);
                CHECK_THAT(message, Contains(p.string()));
                for (const std::string& part : b.message_parts) CHECK_THAT(message, Contains(part));
            }
        }
    }
}

TEST_CASE("the writer refuses inconsistent tensors up front", "[safetensors]") {
    temp_dir dir;
    st::writer w;
    const std::vector<float> six(6);
    CHECK_THROWS_WITH(w.add("w", dtype::F32, {2, 2}, six), Contains("tensor 'w'") && Contains("holds 24 bytes but F32 [2, 2] needs 16"));
    CHECK_THROWS_WITH(w.add("w", dtype::F16, {6}, six), Contains("4-byte elements do not match dtype F16"));
    CHECK_THROWS_WITH(w.add("w", dtype::F32, {-1, -6}, six), Contains("negative dimension"));
    CHECK_THROWS_WITH(w.add("__metadata__", dtype::F32, {6}, six), Contains("reserved"));
    CHECK_THROWS_WITH(w.add("bad\xFF", dtype::F32, {6}, six), Contains("not valid UTF-8"));
    CHECK_THROWS_WITH(w.add("w", dtype::U8, {1ll << 32, 1ll << 32}, std::span<const std::byte>()), Contains("overflows"));
    CHECK_THROWS_WITH(w.set_metadata("k", "\xC3"), Contains("not valid UTF-8"));
    w.add("w", dtype::F32, {6}, six);
    CHECK_THROWS_WITH(w.add("w", dtype::F32, {6}, six), Contains("tensor 'w': added twice"));
    CHECK(w.size() == 1);
    CHECK(dir.entries().empty());  // nothing touched the disk

    // Borrowing a temporary would dangle: refused at compile time.
    STATIC_REQUIRE(can_add<std::vector<float>&>);
    STATIC_REQUIRE(can_add<std::span<const float>>);
    STATIC_REQUIRE_FALSE(can_add<std::vector<float>&&>);
}

TEST_CASE("a failed write leaves no output, no temp file and the old target intact", "[safetensors]") {
    temp_dir dir;
    const std::vector<float> big(64 * 1024, 1.5f);
    st::writer w;
    w.add("big", dtype::F32, {64, 1024}, big);

    SECTION("missing directory") {
        const fs::path p = dir.path / "missing" / "out.safetensors";
        CHECK_THROWS_WITH(w.write(p), Contains(p.string()) && Contains("cannot create the temporary file") &&
                                          Contains("No such file or directory"));
        CHECK(dir.entries().empty());
    }
    SECTION("target is a directory: the rename fails after a complete temp file") {
        const fs::path p = dir.path / "out.safetensors";
        fs::create_directory(p);
        CHECK_THROWS_WITH(w.write(p), Contains("cannot rename the temporary file over the target") &&
                                          Contains("byte offset " + std::to_string(8 + 72 + big.size() * 4)));
        CHECK(dir.entries() == std::vector<std::string>{"out.safetensors"});
        CHECK(fs::is_directory(p));
    }
    SECTION("the disk fills up mid-write (RLIMIT_FSIZE): the existing target is not clobbered") {
        const fs::path p = dir.path / "out.safetensors";
        st::writer small;
        const std::vector<float> one{2.0f};
        small.add("one", dtype::F32, {1}, one);
        small.write(p);
        const std::string before = read_file(p);

        rlimit old{};
        REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
        const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);  // get EFBIG instead of a signal
        rlimit limited = old;
        limited.rlim_cur = 4096;
        REQUIRE(::setrlimit(RLIMIT_FSIZE, &limited) == 0);
        std::string message;
        try {
            w.write(p);
        } catch (const qforge::io_error& e) {
            message = e.what();
        }
        ::setrlimit(RLIMIT_FSIZE, &old);
        std::signal(SIGXFSZ, old_handler);

        CHECK_THAT(message, Contains("tensor 'big'") && Contains("write failed") && Contains("byte offset 4096"));
        CHECK(dir.entries() == std::vector<std::string>{"out.safetensors"});
        CHECK(read_file(p) == before);
    }
}

TEST_CASE("staged files: removed on failure and by remove_staged_files (the signal path)", "[safetensors]") {
    temp_dir dir;
    const fs::path target = dir.path / "out" / "model.safetensors";
    {
        qforge::staged_directory out_dir(dir.path / "out");
        qforge::staged_file f(target);
        const std::vector<std::byte> bytes(1000, std::byte{7});
        f.write(bytes);
        CHECK(fs::exists(f.temporary_path()));
        CHECK(f.temporary_path().parent_path() == target.parent_path());
        qforge::remove_staged_files();  // what the SIGINT / SIGTERM handler calls
        CHECK(dir.entries().empty());   // the file, then its (now empty) directory
    }
    CHECK(dir.entries().empty());
    {
        qforge::staged_directory out_dir(dir.path / "out");
        qforge::staged_file f(target);
        f.commit();
        out_dir.commit();
        qforge::remove_staged_files();  // committed: not staged any more
    }
    CHECK(fs::exists(target));
}
