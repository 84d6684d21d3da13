// Packed weight files (io/packed_file.hpp) from any bytes: open() ends in a mapped file or an
// io_error. Every matrix of an accepted file whose kernels this build has is then dequantized,
// multiplied (GEMV on raw and on prepared activations, a two-row GEMM) without an exception: an
// accepted file must be usable. The kernels run on copies of the arrays in heap memory of exactly
// the sizes open() validated, so that a kernel reading past them shows up under ASan (the file's
// mapping itself is not instrumented, and a page holds more than the array).
#include "fuzz_input.hpp"

#include <qforge/engine.hpp>
#include <qforge/io/packed_file.hpp>

#include <array>
#include <cstring>
#include <new>
#include <optional>
#include <vector>

namespace pf = qforge::packed_file;

namespace {

constexpr std::size_t arrays = 8;

struct array_span {
    std::uint64_t offset = 0, bytes = 0;
};

template <class T>
T load(const std::uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

// The arrays of every entry, in directory order, read from the format (packed_file.hpp) once more
// here: the file was accepted, so the directory is whole.
std::vector<std::array<array_span, arrays>> directory(const std::uint8_t* data) {
    const auto count = load<std::uint64_t>(data + 8);
    std::vector<std::array<array_span, arrays>> out;
    std::size_t pos = 24;
    for (std::uint64_t e = 0; e < count; ++e) {
        pos += 4 + load<std::uint32_t>(data + pos) + 52;  // name, config and shape
        std::array<array_span, arrays> a;
        for (array_span& s : a) {
            s = {load<std::uint64_t>(data + pos), load<std::uint64_t>(data + pos + 8)};
            pos += 16;
        }
        out.push_back(a);
    }
    return out;
}

// Heap copies of one entry's arrays (64-byte aligned, as in the file), and a view rebased on them.
class heap_weights {
public:
    heap_weights(const qforge::weights_view& w, const std::array<array_span, arrays>& spans, const std::uint8_t* data)
        : view_(w), spans_(spans) {
        // the mapping's base, from the codes array (never empty: rows and cols are positive)
        const auto* codes = static_cast<const std::uint8_t*>(w.row_stride != 0 ? w.scales : w.codes);
        base_ = codes - spans[0].offset;
        for (std::size_t i = 0; i < arrays; ++i) {
            if (spans[i].bytes == 0) continue;
            copies_[i] = static_cast<std::uint8_t*>(::operator new(spans[i].bytes, std::align_val_t{64}));
            std::memcpy(copies_[i], data + spans[i].offset, spans[i].bytes);
        }
        // the arrays in packed_file.hpp's order (rows with their scales: all three in array 0)
        const std::size_t scales_array = w.row_stride != 0 ? 0 : 1;
        view_.codes = rebase(w.codes, 0);
        view_.scales = rebase(w.scales, scales_array);
        view_.zeros = rebase(w.zeros, 0);
        view_.code_table = rebase(w.code_table, 3);
        view_.nested_map = rebase(w.nested_map, 4);
        view_.nested_absmax = rebase(w.nested_absmax, 5);
        view_.perm = rebase(w.perm, 6);
    }
    ~heap_weights() {
        for (std::uint8_t* c : copies_)
            if (c != nullptr) ::operator delete(c, std::align_val_t{64});
    }
    heap_weights(const heap_weights&) = delete;
    heap_weights& operator=(const heap_weights&) = delete;
    const qforge::weights_view& view() const { return view_; }

private:
    // p (into the mapping, in array i: arrays may overlap) as the same byte of array i's copy
    template <class T>
    const T* rebase(const T* p, std::size_t i) const {
        if (p == nullptr) return nullptr;
        const auto at = reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(base_);
        qforge::fuzz::require(spans_[i].bytes != 0 && at >= spans_[i].offset && at - spans_[i].offset < spans_[i].bytes,
                              "every pointer of a view lies in its array");
        return reinterpret_cast<const T*>(copies_[i] + (at - spans_[i].offset));
    }
    qforge::weights_view view_;
    std::array<array_span, arrays> spans_;
    const std::uint8_t* base_ = nullptr;
    std::array<std::uint8_t*, arrays> copies_{};
};

void run_kernels(const qforge::weights_view& w) {
    std::optional<qforge::matrix> m;
    try {
        m.emplace(w, nullptr);
    } catch (const qforge::unsupported_config&) {
        return;  // a layout this build has no kernel for (the fuzz build's kernel set is reduced)
    }
    const auto n = static_cast<std::size_t>(w.rows), k = static_cast<std::size_t>(w.cols);
    std::vector<float> x(2 * k);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = 1.0f / static_cast<float>(1 + i % 7);
    const qforge::prepared_x px(*m, {x.data()});
    // Each output is computed twice, into memory holding two different patterns: every element
    // must be written (the same bits both times).
    std::array<std::vector<float>, 2> d, y, yp, ym;
    for (int i = 0; i < 2; ++i) {
        const float fill = i == 0 ? 0.0f : -1.5f;
        d[i].assign(n * k, fill), y[i].assign(n, fill), yp[i].assign(n, fill), ym[i].assign(2 * n, fill);
        m->dequantize(0, w.rows, d[i].data(), qforge::element::f32);
        m->gemv(qforge::activations{x.data()}, nullptr, {y[i].data()}, 0, w.rows);
        m->gemv(px, nullptr, {yp[i].data()}, 0, w.rows);
        m->gemm(2, {x.data()}, nullptr, {ym[i].data()}, 0, w.rows);
    }
    const auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
        return std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    using qforge::fuzz::require;
    require(same(d[0], d[1]), "dequantize writes every element");
    require(same(y[0], y[1]) && same(yp[0], yp[1]) && same(ym[0], ym[1]), "GEMV and GEMM write every output");
    require(same(y[0], yp[0]), "prepared activations give the bits of raw ones");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto path = qforge::fuzz::input_file(data, size, "in.qfpack");
    std::shared_ptr<const pf::mapped> file;
    try {
        file = pf::open(path);
    } catch (const qforge::io_error&) {
        return 0;
    }
    const auto spans = directory(data);
    qforge::fuzz::require(spans.size() == file->names().size(), "one directory entry per matrix");
    for (std::size_t e = 0; e < spans.size(); ++e) {
        const heap_weights h(file->view(file->names()[e]), spans[e], data);
        run_kernels(h.view());
    }
    return 0;
}
