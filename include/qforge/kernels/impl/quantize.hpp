// SIMD round-to-nearest quantizers into the checkpoint layouts, and dequantizers out of them, on
// xsimd arch A (kernels/quantize.hpp is the interface; quantize_jobs.hpp the work items).
//
// Every f32 operation is the scalar reference's (src/reference/*.cpp), in the same order and
// rounded the same way, element by element: products and quotients are IEEE operations (no FMA:
// the translation units are built with -ffp-contract=off), rounding to integers is RNE
// (nearbyint), and the small-format encoders work on the bits. So the bytes are equal, which
// tests/test_quantize.cpp checks on every ISA.
//
// Included only by src/kernels/quantize_<isa>.cpp. Everything is a static member of a template
// on A, and math goes through compiler builtins rather than <cmath>'s inline wrappers: a plain
// inline function could be shared across ISAs by the linker.
#pragma once

#include <qforge/format/float.hpp>
#include <qforge/format/packing.hpp>
#include <qforge/format/tables.hpp>
#include <qforge/kernels/impl/quantize_jobs.hpp>
#include <qforge/kernels/impl/simd.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace qforge::kernels::quant {

template <class A>
struct kernels_for {
    using F = xsimd::batch<float, A>;
    using I = xsimd::batch<std::int32_t, A>;
    static constexpr std::size_t L = F::size;
    static constexpr std::size_t chunk = 4096;  // elements widened to f32 at a time (the largest bnb block)
    static constexpr float flt_max = __FLT_MAX__;

    // ---- input and output -------------------------------------------------------------------

    // n <= chunk elements of s from `first`, as f32: the source itself when it is aligned f32,
    // else widened into buf. raw is scratch for misaligned 16-bit data.
    static const float* widen(const source& s, std::size_t first, std::size_t n, float* buf) {
        const auto* bytes = static_cast<const unsigned char*>(s.data);
        if (s.type == element::f32) {
            const unsigned char* p = bytes + first * 4;
            if (reinterpret_cast<std::uintptr_t>(p) % alignof(float) == 0) return reinterpret_cast<const float*>(p);
            std::memcpy(buf, p, n * 4);
            return buf;
        }
        const unsigned char* p = bytes + first * 2;
        if (s.type == element::bf16) {
            for (std::size_t i = 0; i < n; ++i) {
                std::uint16_t h;
                std::memcpy(&h, p + 2 * i, 2);
                buf[i] = __builtin_bit_cast(float, static_cast<std::uint32_t>(h) << 16);
            }
            return buf;
        }
        alignas(64) std::uint16_t h[chunk];
        std::memcpy(h, p, n * 2);
        simd::ext::f16_to_f32<A>(h, static_cast<int>(n), buf, A{});
        return buf;
    }

    // f32 values into the sink at element `first` of the tensor.
    static void store(const sink& s, std::size_t first, const float* v, std::size_t n) {
        auto* bytes = static_cast<unsigned char*>(s.data);
        first -= s.first;
        if (s.type == element::f32) {
            std::memcpy(bytes + first * 4, v, n * 4);
            return;
        }
        unsigned char* p = bytes + first * 2;
        alignas(64) std::uint16_t h[chunk];
        // straight into the destination when it is aligned (as the writers' buffers are): one
        // pass less over a tensor that is then copied into the page cache anyway
        const bool aligned = reinterpret_cast<std::uintptr_t>(p) % alignof(std::uint16_t) == 0;
        std::uint16_t* out = aligned ? reinterpret_cast<std::uint16_t*>(p) : h;
        if (s.type == element::bf16)
            simd::to_bf16<A>(v, static_cast<std::int64_t>(n), out);
        else
            simd::to_f16<A>(v, static_cast<std::int64_t>(n), out);
        if (!aligned) std::memcpy(p, h, n * 2);
    }

    // Calls f(x, offset, count) on consecutive pieces of at most `chunk` elements of [first, first + n).
    template <class Fn>
    static void for_chunks(const source& s, std::size_t first, std::size_t n, Fn&& f) {
        alignas(64) float buf[chunk];
        for (std::size_t done = 0; done < n;) {
            const std::size_t count = n - done < chunk ? n - done : chunk;
            f(widen(s, first + done, count, buf), done, count);
            done += count;
        }
    }

    // A group read twice (its range, then its codes): widened once into buf when it fits one
    // chunk (`whole`, from widen_group), else each pass widens its chunks again.
    static const float* widen_group(const source& s, std::size_t first, std::size_t n, float* buf) {
        return n <= chunk ? widen(s, first, n, buf) : nullptr;
    }
    template <class Fn>
    static void over_group(const source& s, const float* whole, std::size_t first, std::size_t n, Fn&& f) {
        if (whole) f(whole, std::size_t{0}, n);
        else for_chunks(s, first, n, f);
    }

    // ---- reductions ---------------------------------------------------------------------------

    static float hmax(const F& v) {
        alignas(64) float t[L];
        v.store_aligned(t);
        float m = t[0];
        for (std::size_t i = 1; i < L; ++i) m = m < t[i] ? t[i] : m;
        return m;
    }
    static float hmin(const F& v) {
        alignas(64) float t[L];
        v.store_aligned(t);
        float m = t[0];
        for (std::size_t i = 1; i < L; ++i) m = t[i] < m ? t[i] : m;
        return m;
    }

    // max |x| of x[0..n); ok becomes false on NaN or Inf.
    static float max_abs(const float* x, std::size_t n, bool& ok) {
        F m(0.0f);
        auto good = F(0.0f) == F(0.0f);
        std::size_t i = 0;
        for (; i + L <= n; i += L) {
            const F a = xsimd::abs(F::load_unaligned(x + i));
            good = good & (a <= F(flt_max));
            m = xsimd::max(m, a);
        }
        float r = hmax(m);
        ok = ok && xsimd::all(good);
        for (; i < n; ++i) {
            const float a = __builtin_fabsf(x[i]);
            ok = ok && a <= flt_max;
            r = r < a ? a : r;
        }
        return r;
    }

    // min and max of x[0..n) (finite values); ok as max_abs.
    static void min_max(const float* x, std::size_t n, float& lo, float& hi, bool& ok) {
        std::size_t i = 0;
        if (n >= L) {
            F mn = F::load_unaligned(x), mx = mn;
            auto good = xsimd::abs(mn) <= F(flt_max);
            for (i = L; i + L <= n; i += L) {
                const F v = F::load_unaligned(x + i);
                good = good & (xsimd::abs(v) <= F(flt_max));
                mn = xsimd::min(mn, v);
                mx = xsimd::max(mx, v);
            }
            ok = ok && xsimd::all(good);
            const float a = hmin(mn), b = hmax(mx);
            lo = a < lo ? a : lo;
            hi = hi < b ? b : hi;
        }
        for (; i < n; ++i) {
            ok = ok && __builtin_fabsf(x[i]) <= flt_max;
            lo = x[i] < lo ? x[i] : lo;
            hi = hi < x[i] ? x[i] : hi;
        }
    }

    // Codes of lanes (int32, 0..255) stored as bytes: as the int8 of the same bits, since store_i8
    // saturates to int8 on some ISAs.
    static void store_codes(const I& c, std::uint8_t* out) {
        simd::ext::store_i8<A>((c ^ I(0x80)) - I(0x80), reinterpret_cast<std::int8_t*>(out), A{});
    }

    // ---- bitsandbytes 4-bit (formats.md §1) ------------------------------------------------------

    // y -> code: NF4 counts the thresholds below y; FP4 the thresholds below |y|, mapped to its
    // code order [0,1,6,7,4,5,2,3] (= ((4 - r/2) & 3) * 2 + r % 2), with sign y < 0.
    //
    // NF4's count is a branchless binary search over its 15 sorted thresholds t: the code starts
    // at 8 * (t[7] < y), then adds 4 * (t[code + 3] < y), 2 * (t[code + 1] < y), 1 * (t[code] < y),
    // looking up t[code + k] with one 16-entry table per step. The same strict comparisons as the
    // count, so a y exactly on a threshold gets the lower code, as in the reference.
    struct nf4_search {
        simd::table16<A> t3, t1, t0;  // t[i + 3], t[i + 1], t[i] (entries never looked up: 0)
        nf4_search() {
            constexpr auto t = midpoints(nf4_table);
            alignas(64) float s3[16] = {}, s1[16] = {}, s0[16] = {};
            for (std::size_t i = 0; i < 16; ++i) {
                if (i + 3 < t.size()) s3[i] = t[i + 3];
                if (i + 1 < t.size()) s1[i] = t[i + 1];
                if (i < t.size()) s0[i] = t[i];
            }
            t3 = simd::make_table16<A>(s3);
            t1 = simd::make_table16<A>(s1);
            t0 = simd::make_table16<A>(s0);
        }
    };
    // step where the lane's condition holds, else 0
    static I step_if(const xsimd::batch_bool<float, A>& m, std::int32_t step) {
        return xsimd::bitwise_cast<I>(xsimd::select(m, xsimd::bitwise_cast<F>(I(step)), F(0.0f)));
    }
    static I nf4_codes(const nf4_search& s, const F& y) {
        constexpr auto t = midpoints(nf4_table);
        static_assert(t.size() == 15 && std::ranges::is_sorted(t));
        I c = step_if(F(t[7]) < y, 8);
        c = c + step_if(simd::lookup<A>(s.t3, c) < y, 4);
        c = c + step_if(simd::lookup<A>(s.t1, c) < y, 2);
        return c + step_if(simd::lookup<A>(s.t0, c) < y, 1);
    }
    static I fp4_codes(const F& y) {
        F c(0.0f);
        const F a = xsimd::abs(y);
        for (float th : fp4_thresholds) c += xsimd::select(F(th) < a, F(1.0f), F(0.0f));
        const I r = xsimd::batch_cast<std::int32_t>(c);
        const I code = (((I(4) - (r >> 1)) & I(3)) << 1) | (r & I(1));
        return code | xsimd::batch_cast<std::int32_t>(xsimd::select(y < F(0.0f), F(8.0f), F(0.0f)));
    }

    static bool bnb4(const bnb4_job& j, std::size_t b0, std::size_t b1) {
        bool ok = true;
        const std::uint8_t zero_code = j.nf4 ? nf4_zero_code : fp4_zero_code;
        alignas(64) float buf[chunk];
        alignas(64) std::uint8_t codes[chunk + 64];
        const nf4_search search;
        for (std::size_t b = b0; b < b1; ++b) {
            const std::size_t begin = b * j.blocksize, count = j.n - begin < j.blocksize ? j.n - begin : j.blocksize;
            const float* x = widen(j.src, begin, count, buf);
            const float a = max_abs(x, count, ok);
            j.absmax[b] = a;
            if (a == 0.0f) {
                std::memset(codes, zero_code, count);
            } else {
                const float inv = 1.0f / a;
                const bool quotient = __builtin_isinf(inv);  // see src/reference/bnb.cpp
                std::size_t i = 0;
                for (; i + L <= count; i += L) {
                    const F v = F::load_unaligned(x + i);
                    const F y = quotient ? v / F(a) : v * F(inv);
                    store_codes(j.nf4 ? nf4_codes(search, y) : fp4_codes(y), codes + i);
                }
                if (i < count) {  // the tail of a partial last block, through a padded register
                    alignas(64) float t[L] = {};
                    std::memcpy(t, x + i, (count - i) * 4);
                    const F v = F::load_aligned(t);
                    const F y = quotient ? v / F(a) : v * F(inv);
                    store_codes(j.nf4 ? nf4_codes(search, y) : fp4_codes(y), codes + i);
                }
            }
            // Element 2i in the high nibble; an odd tail padded with the code of 0.0.
            std::uint8_t* out = j.packed + begin / 2;
            const std::size_t pairs = count / 2;
            for (std::size_t p = 0; p < pairs; ++p)
                out[p] = static_cast<std::uint8_t>(codes[2 * p] << 4 | codes[2 * p + 1]);
            if (count % 2 == 1) out[pairs] = static_cast<std::uint8_t>(codes[count - 1] << 4 | zero_code);
        }
        return ok;
    }

    // bnb4's absmax alone, no codes: what planning a double-quantized file needs (its mean).
    static bool bnb4_absmax(const bnb4_job& j, std::size_t b0, std::size_t b1) {
        bool ok = true;
        alignas(64) float buf[chunk];
        const auto* bytes = static_cast<const unsigned char*>(j.src.data);
        for (std::size_t b = b0; b < b1; ++b) {
            const std::size_t begin = b * j.blocksize, count = j.n - begin < j.blocksize ? j.n - begin : j.blocksize;
            if (j.src.type != element::bf16) {
                j.absmax[b] = max_abs(widen(j.src, begin, count, buf), count, ok);
                continue;
            }
            // bf16 on its bits, not widened: with the sign cleared they order as the magnitudes
            std::uint16_t m = 0;
            for (std::size_t i = 0; i < count; ++i) {
                std::uint16_t h;
                std::memcpy(&h, bytes + 2 * (begin + i), 2);
                h &= 0x7FFF;
                m = m < h ? h : m;
            }
            ok = ok && m < 0x7F80;  // else a NaN or an Inf
            j.absmax[b] = __builtin_bit_cast(float, static_cast<std::uint32_t>(m) << 16);
        }
        return ok;
    }

    static void bnb4_dq(const bnb4_dq_job& j, std::size_t b0, std::size_t b1) {
        const auto table = simd::ext::make_table16<A>(j.table, A{});
        alignas(64) float buf[chunk];
        for (std::size_t b = b0; b < b1; ++b) {
            const std::size_t begin = b * j.blocksize, count = j.n - begin < j.blocksize ? j.n - begin : j.blocksize;
            const std::uint8_t* p = j.packed + begin / 2;
            const F a(j.absmax[b]);
            std::size_t i = 0;  // elements
            for (; i + 2 * L <= count; i += 2 * L) {
                const I bytes = simd::ext::load_u8_as_i32<A>(p + i / 2, A{});
                simd::ext::store_interleaved<A>(buf + i, simd::ext::lookup<A>(table, bytes >> 4, A{}) * a,
                                                simd::ext::lookup<A>(table, bytes & I(15), A{}) * a, A{});
            }
            for (; i < count; ++i) {
                const std::uint8_t byte = p[i / 2];
                buf[i] = j.table[i % 2 == 0 ? byte >> 4 : byte & 15] * j.absmax[b];
            }
            store(j.out, begin, buf, count);
        }
    }

    // ---- bitsandbytes blockwise 8-bit, the dynamic map (§1 double quantization) ----------------

    // y -> code: the count of the 255 sorted thresholds below y, by a branchless binary search
    // (the table padded with +inf to 256); a y exactly on a threshold goes to the even code, as in
    // the reference (src/reference/bnb.cpp, dynamic_code). Before step s, c is a multiple of 2s:
    // steps 128 to 8 choose among at most 16 thresholds, looked up in 16-entry tables (a permute
    // on AVX-512), the last three steps and the tie gather.
    struct dynamic_search {
        alignas(64) float padded[256];
        simd::table16<A> steps[5];  // step 128 >> k: the thresholds padded[(c >> (8 - k)) * 2 * step + step - 1]
        dynamic_search() {
            constexpr auto t = midpoints(dynamic_map);
            static_assert(t.size() == 255 && std::ranges::is_sorted(t));
            for (std::size_t i = 0; i < 255; ++i) padded[i] = t[i];
            padded[255] = __builtin_inff();
            for (int k = 0; k < 5; ++k) {
                const int step = 128 >> k;
                alignas(64) float e[16] = {};
                for (int i = 0; i * 2 * step < 256; ++i) e[i] = padded[i * 2 * step + step - 1];
                steps[k] = simd::make_table16<A>(e);
            }
        }
    };
    static I dynamic_codes(const dynamic_search& s, const F& y) {
        I c(0);
        for (int k = 0; k < 5; ++k) c = c + step_if(simd::lookup<A>(s.steps[k], c >> (8 - k)) < y, 128 >> k);
        for (std::int32_t step = 4; step >= 1; step /= 2) c = c + step_if(F::gather(s.padded + step - 1, c) < y, step);
        return c + (step_if(F::gather(s.padded, c) == y, 1) & c);  // + 1 on a tie at an odd code
    }

    static bool blockwise8(const blockwise8_job& j, std::size_t b0, std::size_t b1) {
        const dynamic_search search;
        bool ok = true;
        alignas(64) std::uint8_t codes[chunk + 64];
        for (std::size_t b = b0; b < b1; ++b) {
            const std::size_t begin = b * j.blocksize, count = j.n - begin < j.blocksize ? j.n - begin : j.blocksize;
            const float* x = j.x + begin;
            const float a = max_abs(x, count, ok);
            j.absmax[b] = a;
            if (a == 0.0f) {
                std::memset(j.codes + begin, dynamic_map_zero_code, count);
                continue;
            }
            const float inv = 1.0f / a;
            const bool quotient = __builtin_isinf(inv);  // see src/reference/bnb.cpp
            for (std::size_t done = 0; done < count; done += chunk) {
                const std::size_t m = count - done < chunk ? count - done : chunk;
                std::size_t i = 0;
                for (; i + L <= m; i += L) {
                    const F v = F::load_unaligned(x + done + i);
                    store_codes(dynamic_codes(search, quotient ? v / F(a) : v * F(inv)), codes + i);
                }
                if (i < m) {  // a partial last block, through a padded register
                    alignas(64) float tail[L] = {};
                    std::memcpy(tail, x + done + i, (m - i) * 4);
                    const F v = F::load_aligned(tail);
                    store_codes(dynamic_codes(search, quotient ? v / F(a) : v * F(inv)), codes + i);
                }
                std::memcpy(j.codes + begin + done, codes, m);
            }
        }
        return ok;
    }

    // ---- LLM.int8 weights (§2) ----------------------------------------------------------------

    static bool int8row(const int8row_job& j, std::size_t r0, std::size_t r1) {
        bool ok = true;
        for (std::size_t r = r0; r < r1; ++r) {
            const std::size_t first = r * j.cols;
            float a = 0.0f;
            for_chunks(j.src, first, j.cols, [&](const float* x, std::size_t, std::size_t n) {
                const float m = max_abs(x, n, ok);
                a = a < m ? m : a;
            });
            j.scb[r] = a;
            std::int8_t* codes = j.codes + first;
            if (a == 0.0f) {
                std::memset(codes, 0, j.cols);
                continue;
            }
            const float s = 127.0f / a;
            const bool quotient = __builtin_isinf(s);
            for_chunks(j.src, first, j.cols, [&](const float* x, std::size_t off, std::size_t n) {
                std::size_t i = 0;
                for (; i + L <= n; i += L) {
                    const F v = F::load_unaligned(x + i);
                    const F y = quotient ? (v / F(a)) * F(127.0f) : v * F(s);
                    simd::ext::store_i8<A>(xsimd::batch_cast<std::int32_t>(xsimd::nearbyint(y)), codes + off + i, A{});
                }
                for (; i < n; ++i) {
                    const float y = quotient ? (x[i] / a) * 127.0f : x[i] * s;
                    // NaN / Inf input: `ok` is false and the codes are thrown away, but the
                    // conversion must stay defined (UB for a NaN)
                    codes[off + i] = y == y ? static_cast<std::int8_t>(__builtin_nearbyintf(y)) : 0;
                }
            });
        }
        return ok;
    }

    static void int8row_dq(const int8row_dq_job& j, std::size_t r0, std::size_t r1) {
        alignas(64) float buf[chunk];
        constexpr float c = 1.0f / 127.0f;
        for (std::size_t r = r0; r < r1; ++r)
            for (std::size_t k0 = 0; k0 < j.cols; k0 += chunk) {
                const std::size_t n = j.cols - k0 < chunk ? j.cols - k0 : chunk;
                const std::int8_t* q = j.codes + r * j.cols + k0;
                for (std::size_t i = 0; i < n; ++i) buf[i] = (static_cast<float>(q[i]) * j.scb[r]) * c;
                store(j.out, r * j.cols + k0, buf, n);
            }
    }

    // ---- integer codes (GPTQ §3, AWQ §4) ----------------------------------------------------------

    // clamp(RNE(x / scale) + zero, 0, maxq) of x[0..n) into codes.
    static void int_codes(const float* x, std::size_t n, float scale, float zero, float maxq, std::uint8_t* codes) {
        std::size_t i = 0;
        for (; i + L <= n; i += L) {
            const F q = xsimd::nearbyint(F::load_unaligned(x + i) / F(scale)) + F(zero);
            store_codes(xsimd::batch_cast<std::int32_t>(xsimd::min(xsimd::max(q, F(0.0f)), F(maxq))), codes + i);
        }
        for (; i < n; ++i) {
            const float q = __builtin_nearbyintf(x[i] / scale) + zero;
            codes[i] = static_cast<std::uint8_t>(!(q > 0.0f) ? 0.0f : (maxq < q ? maxq : q));  // NaN (then !ok): 0
        }
    }

    // The fp16 scale as stored; false when it overflows fp16 (the reference refuses it).
    static bool stored_scale(float scale, std::uint16_t& out) {
        out = simd::f16_bits<A>(scale);
        return (out & 0x7C00u) != 0x7C00u;
    }

    // A row's codes [K] into its qweight column (words along K, stride N).
    static void pack_gptq_column(int bits, const std::uint8_t* codes, std::size_t k, std::int32_t* qweight,
                                 std::size_t column, std::size_t stride) {
        if (bits == 3) {
            for (std::size_t r = 0; r < k / 32; ++r) {
                std::uint32_t words[3] = {};
                for (int i = 0; i < 32; ++i) {
                    const int bit = 3 * i, w = bit / 32, shift = bit % 32;
                    const std::uint64_t placed = static_cast<std::uint64_t>(codes[r * 32 + static_cast<std::size_t>(i)]) << shift;
                    words[w] |= static_cast<std::uint32_t>(placed);
                    if (shift + 3 > 32) words[w + 1] |= static_cast<std::uint32_t>(placed >> 32);
                }
                for (std::size_t w = 0; w < 3; ++w) qweight[(r * 3 + w) * stride + column] = static_cast<std::int32_t>(words[w]);
            }
            return;
        }
        const std::size_t per = 32 / static_cast<std::size_t>(bits);
        if (bits == 4) {  // 8 codes (bytes 0..15) to a word, code i at bit 4i: merge neighbours, twice
            for (std::size_t w = 0; w < k / 8; ++w) {
                std::uint64_t x;
                std::memcpy(&x, codes + 8 * w, 8);
                x = (x | x >> 4) & 0x00FF00FF00FF00FFull;  // byte 2j: code 2j | code 2j+1 << 4
                x = (x | x >> 8) & 0x0000FFFF0000FFFFull;
                qweight[w * stride + column] = static_cast<std::int32_t>(static_cast<std::uint32_t>(x | x >> 16));
            }
            return;
        }
        for (std::size_t w = 0; w < k / per; ++w) {
            std::uint32_t word = 0;
            for (std::size_t i = 0; i < per; ++i) word |= static_cast<std::uint32_t>(codes[w * per + i]) << (bits * static_cast<int>(i));
            qweight[w * stride + column] = static_cast<std::int32_t>(word);
        }
    }

    static bool gptq(const gptq_job& j, std::size_t r0, std::size_t r1) {
        bool ok = true;
        const float maxq = static_cast<float>((1u << j.bits) - 1u);
        const std::size_t groups = j.cols / j.group;
        auto* codes = static_cast<std::uint8_t*>(simd::scratch<A, 0>::get(j.cols));
        alignas(64) float group_buf[chunk];
        for (std::size_t n = r0; n < r1; ++n) {
            for (std::size_t g = 0; g < groups; ++g) {
                const std::size_t first = n * j.cols + g * j.group;
                float lo = __builtin_huge_valf(), hi = -lo;
                const float* whole = widen_group(j.src, first, j.group, group_buf);
                over_group(j.src, whole, first, j.group,
                           [&](const float* x, std::size_t, std::size_t c) { min_max(x, c, lo, hi, ok); });
                // GPTQ's find_params, as src/reference/gptq_awq.cpp (std::min / std::max order kept)
                float xmin = 0.0f < lo ? 0.0f : lo, xmax = hi < 0.0f ? 0.0f : hi;
                if (j.sym) {
                    const float m = __builtin_fabsf(xmin);
                    xmax = m < xmax ? xmax : m;
                    if (xmin < 0.0f) xmin = -xmax;
                }
                if (xmin == 0.0f && xmax == 0.0f) xmin = -1.0f, xmax = 1.0f;
                const float scale = (xmax - xmin) / maxq;
                // NaN / Inf input or an unstorable scale (then !ok, the results are thrown away):
                // kept in range so that the conversion is defined; valid zeros are 0..maxq
                float z = __builtin_nearbyintf(-xmin / scale);
                z = z == z ? (z < -65536.0f ? -65536.0f : z > 65536.0f ? 65536.0f : z) : 0.0f;
                const int zero = j.sym ? 1 << (j.bits - 1) : static_cast<int>(z);
                ok = stored_scale(scale, j.scales[g * j.rows + n]) && ok;
                j.zeros[g * j.rows + n] = static_cast<std::uint8_t>(zero);
                over_group(j.src, whole, first, j.group, [&](const float* x, std::size_t off, std::size_t c) {
                    int_codes(x, c, scale, static_cast<float>(zero), maxq, codes + g * j.group + off);
                });
            }
            pack_gptq_column(j.bits, codes, j.cols, j.qweight, n, j.rows);
        }
        return ok;
    }

    static void gptq_dq(const gptq_dq_job& j, std::size_t r0, std::size_t r1) {
        const std::size_t groups = j.groups;
        auto* scale = static_cast<float*>(simd::scratch<A, 0>::get(2 * groups * sizeof(float) + 64));
        float* zero = scale + groups;
        const std::uint32_t mask = (1u << j.bits) - 1u;
        alignas(64) float buf[chunk];
        for (std::size_t n = r0; n < r1; ++n) {
            for (std::size_t g = 0; g < groups; ++g) {
                const std::uint16_t h = j.scales[g * j.rows + n];
                simd::ext::f16_to_f32<A>(&h, 1, scale + g, A{});
                zero[g] = static_cast<float>(j.zeros[g * j.rows + n]);
            }
            for (std::size_t k0 = 0; k0 < j.cols; k0 += chunk) {
                const std::size_t count = j.cols - k0 < chunk ? j.cols - k0 : chunk;
                for (std::size_t i = 0; i < count; ++i) {
                    const std::size_t k = k0 + i, bit = k * static_cast<std::size_t>(j.bits);
                    const std::size_t w = bit / 32, shift = bit % 32;
                    std::uint64_t window = static_cast<std::uint32_t>(j.qweight[w * j.rows + n]) >> shift;
                    if (shift + static_cast<std::size_t>(j.bits) > 32)
                        window |= static_cast<std::uint64_t>(static_cast<std::uint32_t>(j.qweight[(w + 1) * j.rows + n])) << (32 - shift);
                    const auto g = static_cast<std::size_t>(j.g_idx[k]);
                    // the integer difference first, as the reference: (q - z) is exact in f32
                    buf[i] = scale[g] * (static_cast<float>(static_cast<std::uint32_t>(window) & mask) - zero[g]);
                }
                store(j.out, n * j.cols + k0, buf, count);
            }
        }
    }

    static bool awq(const awq_job& j, std::size_t r0, std::size_t r1) {
        bool ok = true;
        const std::size_t groups = j.cols / j.group, words = j.rows / awq_pack_codes;
        auto* codes = static_cast<std::uint8_t*>(simd::scratch<A, 0>::get(awq_pack_codes * j.cols));
        alignas(64) float group_buf[chunk];
        for (std::size_t n8 = r0; n8 < r1; n8 += awq_pack_codes) {
            for (std::size_t c = 0; c < awq_pack_codes; ++c) {
                const std::size_t n = n8 + c;
                for (std::size_t g = 0; g < groups; ++g) {
                    const std::size_t first = n * j.cols + g * j.group;
                    float lo = __builtin_huge_valf(), hi = -lo;
                    const float* whole = widen_group(j.src, first, j.group, group_buf);
                    over_group(j.src, whole, first, j.group,
                               [&](const float* x, std::size_t, std::size_t cnt) { min_max(x, cnt, lo, hi, ok); });
                    const float range = hi - lo;
                    const float scale = (range < 1e-5f ? 1e-5f : range) / 15.0f;
                    const float z = -__builtin_nearbyintf(lo / scale);
                    const float zero = !(z > 0.0f) ? 0.0f : (15.0f < z ? 15.0f : z);  // NaN (then !ok): 0
                    ok = stored_scale(scale, j.scales[g * j.rows + n]) && ok;
                    j.zeros[g * j.rows + n] = static_cast<std::uint8_t>(zero);
                    over_group(j.src, whole, first, j.group, [&](const float* x, std::size_t off, std::size_t cnt) {
                        int_codes(x, cnt, scale, zero, 15.0f, codes + c * j.cols + g * j.group + off);
                    });
                }
            }
            // qweight [K, N/8]: nibble i of a word holds column 8w + awq_order[i]
            for (std::size_t k = 0; k < j.cols; ++k) {
                std::uint32_t word = 0;
                for (std::size_t c = 0; c < awq_pack_codes; ++c)
                    word |= static_cast<std::uint32_t>(codes[c * j.cols + k]) << (4 * awq_nibble_of[c]);
                j.qweight[k * words + n8 / awq_pack_codes] = static_cast<std::int32_t>(word);
            }
        }
        return ok;
    }

    static void awq_dq(const awq_dq_job& j, std::size_t r0, std::size_t r1) {
        const std::size_t words = j.rows / awq_pack_codes;
        alignas(64) float buf[chunk];
        for (std::size_t n = r0; n < r1; ++n) {
            const int shift = 4 * awq_nibble_of[n % awq_pack_codes];
            const std::size_t w = n / awq_pack_codes;
            for (std::size_t k0 = 0; k0 < j.cols; k0 += chunk) {
                const std::size_t count = j.cols - k0 < chunk ? j.cols - k0 : chunk;
                for (std::size_t i = 0; i < count; ++i) {
                    const std::size_t k = k0 + i, g = k / j.group;
                    const int q = static_cast<int>((static_cast<std::uint32_t>(j.qweight[k * words + w]) >> shift) & 15u);
                    const int z = static_cast<int>((static_cast<std::uint32_t>(j.qzeros[g * words + w]) >> shift) & 15u);
                    float s;
                    simd::ext::f16_to_f32<A>(&j.scales[g * j.rows + n], 1, &s, A{});
                    buf[i] = static_cast<float>(q - z) * s;
                }
                store(j.out, n * j.cols + k0, buf, count);
            }
        }
    }

    // ---- FP8 blocks (§5) ------------------------------------------------------------------------

    // RNE of v (|v| <= the format's max, finite) to E4M3FN / E5M2 bits, sign kept for zero.
    static I fp8_codes(const F& v, bool e4m3) {
        const int shift = e4m3 ? 20 : 21;                    // 23 - mantissa bits
        const int rebias = e4m3 ? (127 - 7) << 3 : (127 - 15) << 2;
        const float min_normal = e4m3 ? 0x1p-6f : 0x1p-14f;
        const float inv_quantum = e4m3 ? 0x1p9f : 0x1p16f;  // of the subnormal range
        const I u = xsimd::bitwise_cast<I>(v);
        const I sign = (u >> 24) & I(0x80);
        const I a = u & I(0x7FFFFFFF);
        const I normal = ((a + I((1 << (shift - 1)) - 1) + ((a >> shift) & I(1))) >> shift) - I(rebias);
        const I sub = xsimd::batch_cast<std::int32_t>(xsimd::nearbyint(xsimd::bitwise_cast<F>(a) * F(inv_quantum)));
        return xsimd::select(a < I(static_cast<std::int32_t>(__builtin_bit_cast(std::uint32_t, min_normal))), sub, normal) | sign;
    }

    static bool fp8(const fp8_job& j, std::size_t t0, std::size_t t1) {
        bool ok = true;
        const float fmax = j.e4m3 ? e4m3_max : e5m2_max;
        const std::size_t tiles_k = (j.cols + j.tile_cols - 1) / j.tile_cols;
        for (std::size_t ti = t0; ti < t1; ++ti) {
            const std::size_t n0 = ti * j.tile_rows, n1 = n0 + j.tile_rows < j.rows ? n0 + j.tile_rows : j.rows;
            for (std::size_t tj = 0; tj < tiles_k; ++tj) {
                const std::size_t k0 = tj * j.tile_cols, width = j.cols - k0 < j.tile_cols ? j.cols - k0 : j.tile_cols;
                float amax = 0.0f;
                for (std::size_t n = n0; n < n1; ++n)
                    for_chunks(j.src, n * j.cols + k0, width, [&](const float* x, std::size_t, std::size_t c) {
                        const float m = max_abs(x, c, ok);
                        amax = amax < m ? m : amax;
                    });
                float scale = 1.0f;
                if (amax != 0.0f) {
                    const float s = fmax / amax;
                    scale = flt_max < s ? flt_max : s;
                }
                j.scale_inv[ti * tiles_k + tj] = 1.0f / scale;
                for (std::size_t n = n0; n < n1; ++n)
                    for_chunks(j.src, n * j.cols + k0, width, [&](const float* x, std::size_t off, std::size_t c) {
                        std::uint8_t* out = j.codes + n * j.cols + k0 + off;
                        std::size_t i = 0;
                        for (; i + L <= c; i += L) {
                            const F v = xsimd::min(xsimd::max(F::load_unaligned(x + i) * F(scale), F(-fmax)), F(fmax));
                            store_codes(fp8_codes(v, j.e4m3), out + i);
                        }
                        if (i < c) {
                            alignas(64) float t[L] = {};
                            alignas(64) std::uint8_t q[L];
                            std::memcpy(t, x + i, (c - i) * 4);
                            const F v = xsimd::min(xsimd::max(F::load_aligned(t) * F(scale), F(-fmax)), F(fmax));
                            store_codes(fp8_codes(v, j.e4m3), q);
                            std::memcpy(out + i, q, c - i);
                        }
                    });
            }
        }
        return ok;
    }

    static void fp8_dq(const fp8_dq_job& j, std::size_t r0, std::size_t r1) {
        const std::size_t tiles_k = (j.cols + j.tile_cols - 1) / j.tile_cols;
        alignas(64) float buf[chunk];
        for (std::size_t n = r0; n < r1; ++n) {
            const float* si = j.scale_inv + (n / j.tile_rows) * tiles_k;
            for (std::size_t k0 = 0; k0 < j.cols; k0 += chunk) {
                const std::size_t count = j.cols - k0 < chunk ? j.cols - k0 : chunk;
                const std::uint8_t* q = j.codes + n * j.cols + k0;
                for (std::size_t i = 0; i < count; ++i) buf[i] = j.decode[q[i]] * si[(k0 + i) / j.tile_cols];
                store(j.out, n * j.cols + k0, buf, count);
            }
        }
    }

    // ---- MXFP4 (§6) ---------------------------------------------------------------------------

    static constexpr std::size_t mx_block = 32;

    // E2M1 codes of y: RNE (a tie at an odd midpoint goes up, to the even code), saturated at 6,
    // sign bit kept for magnitude zero.
    static I e2m1_codes(const F& y) {
        constexpr auto m = midpoints(std::array<float, 8>{0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f});
        const F a = xsimd::abs(y);
        F c(0.0f);
        for (float t : m) c += xsimd::select(F(t) < a, F(1.0f), F(0.0f));
        for (std::size_t i = 1; i < m.size(); i += 2) c += xsimd::select(a == F(m[i]), F(1.0f), F(0.0f));
        return xsimd::batch_cast<std::int32_t>(c) | ((xsimd::bitwise_cast<I>(y) >> 31) & I(8));
    }

    static int mx_exponent(float amax, bool round_up) {
        if (!round_up) return __builtin_ilogbf(amax) - 2;
        const float r = amax / 6.0f;
        if (r <= __builtin_ldexpf(1.0f, -127)) return -127;
        const int e = __builtin_ilogbf(r);
        return __builtin_ldexpf(1.0f, e) == r ? e : e + 1;
    }

    static bool mx(const mx_job& j, std::size_t b0, std::size_t b1) {
        bool ok = true;
        alignas(64) float buf[mx_block];
        alignas(64) std::uint8_t codes[mx_block];
        for (std::size_t b = b0; b < b1; ++b) {
            const float* x = widen(j.src, b * mx_block, mx_block, buf);
            const float amax = max_abs(x, mx_block, ok);
            std::uint8_t* out = j.packed + b * mx_block / 2;
            if (amax == 0.0f) {
                j.scales[b] = 0;
                std::memset(out, 0, mx_block / 2);
                continue;
            }
            int e = mx_exponent(amax, j.round_up);
            e = e < -127 ? -127 : (127 < e ? 127 : e);
            j.scales[b] = static_cast<std::uint8_t>(e + 127);
            const F p(__builtin_ldexpf(1.0f, -e));  // x * 2^-e rounds as ldexp(x, -e): 2^-e is exact
            for (std::size_t i = 0; i < mx_block; i += L) store_codes(e2m1_codes(F::load_unaligned(x + i) * p), codes + i);
            for (std::size_t i = 0; i < mx_block / 2; ++i)
                out[i] = static_cast<std::uint8_t>(codes[2 * i] | codes[2 * i + 1] << 4);
        }
        return ok;
    }

    static void mx_dq(const mx_dq_job& j, std::size_t r0, std::size_t r1) {
        const auto table = simd::ext::make_table16<A>(j.table, A{});
        alignas(64) float buf[chunk];
        const std::size_t per_row = j.cols / mx_block;
        for (std::size_t n = r0; n < r1; ++n)
            for (std::size_t k0 = 0; k0 < j.cols; k0 += chunk) {
                const std::size_t count = j.cols - k0 < chunk ? j.cols - k0 : chunk;
                for (std::size_t i = 0; i < count; i += mx_block) {
                    const std::size_t b = n * per_row + (k0 + i) / mx_block;
                    const std::uint8_t s = j.scales[b];
                    const F scale(s == 0xFF ? __builtin_nanf("") : __builtin_ldexpf(1.0f, static_cast<int>(s) - 127));
                    for (std::size_t e = 0; e < mx_block; e += 2 * L) {
                        const I bytes = simd::ext::load_u8_as_i32<A>(j.packed + b * mx_block / 2 + e / 2, A{});
                        simd::ext::store_interleaved<A>(buf + i + e, simd::ext::lookup<A>(table, bytes & I(15), A{}) * scale,
                                                        simd::ext::lookup<A>(table, bytes >> 4, A{}) * scale, A{});
                    }
                }
                store(j.out, n * j.cols + k0, buf, count);
            }
    }

    static ops table() {
        return {bnb4, bnb4_absmax, blockwise8, int8row, gptq, awq, fp8, mx, bnb4_dq, int8row_dq, gptq_dq, awq_dq, fp8_dq, mx_dq};
    }
};

template <class A>
ops ops_for() {
    return kernels_for<A>::table();
}

}  // namespace qforge::kernels::quant
