// Small architecture extensions written in xsimd's style: each primitive has a generic fallback
// and overloads on xsimd arch tags (`requires_arch<X>`); the most specific overload wins.
//
// Included only by the generated per-ISA translation units. Everything here is a template on the
// arch tag A, so no function compiled with one ISA's flags is shared (by the linker's COMDAT
// folding) with a translation unit of another ISA.
#pragma once

#include <qforge/kernels/arch.hpp>

#include <xsimd/xsimd.hpp>

#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>

namespace qforge::kernels::simd {

template <class A>
using f32v = xsimd::batch<float, A>;
template <class A>
using i32v = xsimd::batch<std::int32_t, A>;
template <class A>
using u8v = xsimd::batch<std::uint8_t, A>;
using xsimd::kernel::requires_arch;

template <class A>
inline constexpr int lanes = static_cast<int>(f32v<A>::size);  // f32 lanes of a register
template <class A>
inline constexpr int vbytes = static_cast<int>(u8v<A>::size);  // bytes of a register
template <class A>
inline constexpr bool has_vnni = std::is_base_of_v<avx512vnni, A>;

// Calls f(std::integral_constant<int, I>{}) for I = 0 .. N-1, unrolled at compile time.
// The T at p, which may be misaligned for T (checkpoints and dense arrays promise no alignment):
// memcpy is the defined way to read it and compiles to one load. Always inlined, so that no
// copy compiled with one ISA's flags can be shared with another's callers (check_symbols.py).
template <class T>
[[gnu::always_inline]] inline T load(const void* p) {
    T v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <int N, class F>
inline void unroll(F&& f) {
    [&]<int... I>(std::integer_sequence<int, I...>) {
        (f(std::integral_constant<int, I>{}), ...);
    }(std::make_integer_sequence<int, N>{});
}

// A register loaded once. GCC folds the load of a register of codes into each instruction that
// reads it (one load per code field), and loads are what the i8 GEMV runs out of on this
// machine's Zen 5 (2 zmm loads per cycle; a window of 4-bit codes also loads two registers of x):
// with it, the int4 i8 GEMV on 4096 x 4096, hot, took 142-146 us instead of 153-162 (NF4: same).
template <class T, class A>
inline xsimd::batch<T, A> in_register(const T* p) {
    auto v = xsimd::batch<T, A>::load_unaligned(p);
    asm("" : "+v"(v.data));
    return v;
}

// Software prefetch of streamed weights this many bytes ahead of the ones in use. With the
// weights on huge pages (memory.hpp) it keeps more DRAM reads in flight than the hardware
// prefetchers alone. A standalone 4-bit i8 GEMV loop on this machine's Zen 5, in a quiet moment:
// 0.65 of the read bandwidth without it, 0.88-0.95 with it. Distances of 1-32 KiB were tried and
// 4-8 KiB were best. In the 4-bit i8 GEMV kernels (one binary, runs alternated, 4096x11008 cold):
// 0.70-0.85 of the read bandwidth without it, 0.77-0.93 with it. (A bare read loop, by contrast,
// slows down with it: 31 instead of 40 GB/s; the kernels are not bare reads.) Checked again with
// both versions in one process, alternated (int4 / NF4, i8 / f32, 4096x11008 cold): 8 or 16 KiB
// ahead, a second prefetch further ahead into L2, or one prefetch per 2 or 4 lines took 0-13% longer.
// The address may lie past the buffer: prefetches never fault.
inline constexpr std::uintptr_t prefetch_distance = 4096;
template <std::uintptr_t Distance = prefetch_distance>
[[gnu::always_inline]] inline void prefetch_ahead(const void* p) {
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p) + Distance), 0, 3);
}

// lanes 16-bit words at p zero-extended to the int32 lanes (AVX-512: half a register of codes)
template <class A>
inline i32v<A> load_u16_as_i32(const std::uint8_t* p) {
#if XSIMD_WITH_AVX512F
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>)
        return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    else
#endif
    {
        alignas(64) std::int32_t t[lanes<A>];
        for (int i = 0; i < lanes<A>; ++i) t[i] = load<std::uint16_t>(p + 2 * i);
        return i32v<A>::load_aligned(t);
    }
}

// 16-entry f32 lookup table in the representation each arch looks up fastest.
template <class A, class = void>
struct table16 {
    alignas(64) float v[16];
};
#if XSIMD_WITH_AVX2
template <class A>
struct table16<A, std::enable_if_t<std::is_base_of_v<xsimd::avx2, A>>> {
    __m256 lo, hi;
};
#endif
#if XSIMD_WITH_AVX512F
template <class A>
struct table16<A, std::enable_if_t<std::is_base_of_v<xsimd::avx512f, A>>> {
    __m512 t;
};
#endif

namespace ext {

// ---- generic fallbacks (scalar through memory) ----
// lanes bytes p[0..lanes) zero-extended to int32 lanes
template <class A>
inline i32v<A> load_u8_as_i32(const std::uint8_t* p, requires_arch<xsimd::generic>) {
    alignas(64) std::int32_t t[lanes<A>];
    for (int i = 0; i < lanes<A>; ++i) t[i] = p[i];
    return i32v<A>::load_aligned(t);
}
// a 16-entry f32 table, looked up by the low 4 bits of each int32 lane
template <class A>
inline table16<A> make_table16(const float* v, requires_arch<xsimd::generic>) {
    table16<A> t;
    for (int i = 0; i < 16; ++i) t.v[i] = v[i];
    return t;
}
// every entry of t minus z (zero points: exact where entries and z are small integers)
template <class A>
inline table16<A> table_minus(const table16<A>& t, float z, requires_arch<xsimd::generic>) {
    table16<A> r;
    for (int i = 0; i < 16; ++i) r.v[i] = t.v[i] - z;
    return r;
}
template <class A>
inline f32v<A> lookup(const table16<A>& t, const i32v<A>& idx, requires_arch<xsimd::generic>) {
    alignas(64) std::int32_t i[lanes<A>];
    alignas(64) float out[lanes<A>];
    idx.store_aligned(i);
    for (int l = 0; l < lanes<A>; ++l) out[l] = t.v[i[l] & 15];
    return f32v<A>::load_aligned(out);
}
// lookup in a table whose entries repeat every 8 (the values of codes of at most 3 bits)
template <class A>
inline f32v<A> lookup8(const table16<A>& t, const i32v<A>& idx, requires_arch<xsimd::generic>) {
    return lookup<A>(t, idx, A{});
}
// entry i of the result: t[i / 4] (looking up bits 2-3 of an index: the second of two 2-bit codes)
template <class A>
inline table16<A> table_quads(const table16<A>& t, requires_arch<xsimd::generic>) {
    table16<A> r;
    for (int i = 0; i < 16; ++i) r.v[i] = t.v[i / 4];
    return r;
}
// out[2i] = even[i], out[2i+1] = odd[i]
template <class A>
inline void store_interleaved(float* out, const f32v<A>& even, const f32v<A>& odd, requires_arch<xsimd::generic>) {
    alignas(64) float e[lanes<A>], o[lanes<A>];
    even.store_aligned(e);
    odd.store_aligned(o);
    for (int i = 0; i < lanes<A>; ++i) {
        out[2 * i] = e[i];
        out[2 * i + 1] = o[i];
    }
}
// (v >> (Shift - At)) & ((2^Bits - 1) << At) per byte: one packed code of every byte, at bit At
// (At > 0: the code times 2^At, one shift fewer where At == Shift)
template <int Shift, int Bits, int At, class A>
inline u8v<A> code_field(const u8v<A>& v, requires_arch<xsimd::generic>) {
    alignas(64) std::uint8_t b[vbytes<A>];
    v.store_aligned(b);
    for (int i = 0; i < vbytes<A>; ++i) b[i] = static_cast<std::uint8_t>((b[i] >> (Shift - At)) & (((1 << Bits) - 1) << At));
    return u8v<A>::load_aligned(b);
}
// byte i of v plus Value if bit i % 8 of bits[i / 8] is set (vbytes / 8 bytes of bits)
template <std::uint8_t Value, class A>
inline u8v<A> add_bit_bytes(const u8v<A>& v, const std::uint8_t* bits, requires_arch<xsimd::generic>) {
    alignas(64) std::uint8_t b[vbytes<A>];
    v.store_aligned(b);
    for (int i = 0; i < vbytes<A>; ++i)
        b[i] = static_cast<std::uint8_t>(b[i] + ((bits[i / 8] >> (i % 8)) & 1 ? Value : 0));
    return u8v<A>::load_aligned(b);
}
// byte lookup in a 16-entry table (replicated in every 128-bit lane) by indices 0..15
template <class A>
inline u8v<A> lut16(const u8v<A>& table, const u8v<A>& idx, requires_arch<xsimd::generic>) {
    alignas(64) std::uint8_t t[vbytes<A>], i[vbytes<A>], o[vbytes<A>];
    table.store_aligned(t);
    idx.store_aligned(i);
    for (int k = 0; k < vbytes<A>; ++k) o[k] = t[i[k] & 15];
    return u8v<A>::load_aligned(o);
}
// acc[i] += sum of the 4 products u[4i+j] * s[4i+j] (u unsigned, s signed bytes). Without VNNI
// this goes through pmaddubsw, whose 16-bit pair sums saturate: callers keep
// 2 * max(u) * max|s| <= 32767 (see i8.hpp).
template <class A>
inline i32v<A> dot_u8s8(const i32v<A>& acc, const u8v<A>& u, const u8v<A>& s, requires_arch<xsimd::generic>) {
    alignas(64) std::uint8_t ub[vbytes<A>], sb[vbytes<A>];
    alignas(64) std::int32_t a[lanes<A>];
    u.store_aligned(ub);
    s.store_aligned(sb);
    acc.store_aligned(a);
    for (int i = 0; i < lanes<A>; ++i)
        for (int j = 0; j < 4; ++j) a[i] += ub[4 * i + j] * static_cast<std::int8_t>(sb[4 * i + j]);
    return i32v<A>::load_aligned(a);
}
// x negated where the signed byte w is negative (w == 0: any value; callers multiply by |w| = 0)
template <class A>
inline u8v<A> apply_sign(const u8v<A>& x, const u8v<A>& w, requires_arch<xsimd::generic>) {
    alignas(64) std::uint8_t xb[vbytes<A>], wb[vbytes<A>];
    x.store_aligned(xb);
    w.store_aligned(wb);
    for (int i = 0; i < vbytes<A>; ++i)
        if (static_cast<std::int8_t>(wb[i]) < 0) xb[i] = static_cast<std::uint8_t>(-static_cast<std::int8_t>(xb[i]));
    return u8v<A>::load_aligned(xb);
}
// NB scales spread over a register: lanes [i*lanes/NB, (i+1)*lanes/NB) get s[i]
template <int NB, class A>
inline f32v<A> expand_scales(const float* s, requires_arch<xsimd::generic>) {
    if constexpr (NB == 1) return f32v<A>(s[0]);
    alignas(64) float t[lanes<A>];
    for (int i = 0; i < lanes<A>; ++i) t[i] = s[i / (lanes<A> / NB)];
    return f32v<A>::load_aligned(t);
}
// lane i = sum of the lanes of rows[i], for lanes<A> rows
template <class A>
inline f32v<A> sum_rows(const f32v<A>* rows, requires_arch<xsimd::generic>) {
    return xsimd::haddp(rows);
}
// x * y + z: one rounding where the arch has FMA (xsimd 8.1 has no avx512f fma and does not
// route fma3<avx2> to its FMA kernel; with -ffp-contract=off its generic x * y + z rounds twice)
template <class A>
inline f32v<A> fma(const f32v<A>& x, const f32v<A>& y, const f32v<A>& z, requires_arch<xsimd::generic>) {
    return x * y + z;
}
// bnb double quantization (formats.md §1): out[i] = (map[q[i]] * nested[(first + i) / 256]) + offset,
// two f32 roundings
template <class A>
inline void nested_absmax(const std::uint8_t* q, int n, std::int64_t first, const float* map, const float* nested,
                          float offset, float* out, requires_arch<xsimd::generic>) {
    for (int i = 0; i < n; ++i) {
        const float product = map[q[i]] * nested[(first + i) / 256];
        out[i] = product + offset;
    }
}
// the int32 lanes of v (each within [-128, 127]) as bytes out[0 .. lanes)
template <class A>
inline void store_i8(const i32v<A>& v, std::int8_t* out, requires_arch<xsimd::generic>) {
    alignas(64) std::int32_t t[lanes<A>];
    v.store_aligned(t);
    for (int i = 0; i < lanes<A>; ++i) out[i] = static_cast<std::int8_t>(t[i]);
}
// IEEE binary16 bits to f32, exact
template <class A>
inline void f16_to_f32(const std::uint16_t* h, int n, float* out, requires_arch<xsimd::generic>) {
    for (int i = 0; i < n; ++i) {
        const std::uint16_t x = load<std::uint16_t>(h + i);
        const std::uint32_t sign = static_cast<std::uint32_t>(x & 0x8000u) << 16;
        const std::uint32_t exp = (x >> 10) & 0x1F, man = x & 0x3FFu;
        std::uint32_t bits;
        if (exp == 0x1F) {
            bits = sign | 0x7F800000u | (man << 13);
        } else if (exp != 0) {
            bits = sign | ((exp + 112) << 23) | (man << 13);
        } else if (man == 0) {
            bits = sign;
        } else {  // subnormal: man * 2^-24, exact in f32
            const float v = static_cast<float>(man) * 5.9604644775390625e-8f;
            std::memcpy(&bits, &v, sizeof bits);
            bits |= sign;
        }
        std::memcpy(out + i, &bits, sizeof bits);
    }
}

// ---- SSE ----
#if XSIMD_WITH_SSE4_1
template <class A>
inline i32v<A> load_u8_as_i32(const std::uint8_t* p, requires_arch<xsimd::sse4_1>) {
    std::int32_t v;
    std::memcpy(&v, p, sizeof v);
    return _mm_cvtepu8_epi32(_mm_cvtsi32_si128(v));
}
template <class A>
inline void store_i8(const i32v<A>& v, std::int8_t* out, requires_arch<xsimd::sse4_1>) {
    const __m128i w = _mm_packs_epi32(v, v);
    const std::int32_t bytes = _mm_cvtsi128_si32(_mm_packs_epi16(w, w));
    std::memcpy(out, &bytes, sizeof bytes);
}
// Entries 0-7 as two 16-byte byte tables: each lane's byte indices 4 (idx & 3) + 0..3 look up
// both with pshufb, bit 2 of idx picks one. 9 instructions for 4 lanes, where the generic
// lookup goes through memory lane by lane.
template <class A>
inline f32v<A> lookup8(const table16<A>& t, const i32v<A>& idx, requires_arch<xsimd::sse4_1>) {
    const __m128i low_byte = _mm_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12);
    const __m128i within = _mm_setr_epi8(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3);
    const __m128i quarter = _mm_shuffle_epi8(_mm_and_si128(idx, _mm_set1_epi32(3)), low_byte);
    const __m128i bytes = _mm_add_epi8(_mm_slli_epi32(quarter, 2), within);  // bytes <= 3: no carries
    const __m128i lo = _mm_shuffle_epi8(_mm_castps_si128(_mm_load_ps(t.v)), bytes);
    const __m128i hi = _mm_shuffle_epi8(_mm_castps_si128(_mm_load_ps(t.v + 4)), bytes);
    const __m128i upper = _mm_cmpeq_epi32(_mm_and_si128(idx, _mm_set1_epi32(4)), _mm_set1_epi32(4));
    return _mm_castsi128_ps(_mm_blendv_epi8(lo, hi, upper));
}
template <class A>
inline void store_interleaved(float* out, const f32v<A>& even, const f32v<A>& odd, requires_arch<xsimd::sse2>) {
    _mm_storeu_ps(out, _mm_unpacklo_ps(even, odd));
    _mm_storeu_ps(out + 4, _mm_unpackhi_ps(even, odd));
}
template <int Shift, int Bits, int At, class A>
inline u8v<A> code_field(const u8v<A>& v, requires_arch<xsimd::sse2>) {
    const __m128i m = _mm_set1_epi8(static_cast<char>(((1 << Bits) - 1) << At));
    return _mm_and_si128(Shift > At ? _mm_srli_epi16(v, Shift - At) : __m128i(v), m);
}
// 16 bytes of v plus Value where bits[0..2) has a bit: each bits' byte copied to the 8 bytes it
// covers, then one bit tested per byte. The baseline of every ISA qforge builds for (all have
// SSSE3; xsimd's AVX tags do not derive from its SSE ones), for 16-byte spans of codes.
template <std::uint8_t Value, class A>
inline __m128i add_bit_bytes16(const __m128i& v, const std::uint8_t* bits, requires_arch<xsimd::generic>) {
    std::uint16_t b;
    std::memcpy(&b, bits, sizeof b);
    const __m128i spread = _mm_shuffle_epi8(_mm_set1_epi16(static_cast<short>(b)),
                                            _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
    const __m128i select = _mm_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
    const __m128i set = _mm_cmpeq_epi8(_mm_and_si128(spread, select), select);
    return _mm_add_epi8(v, _mm_and_si128(set, _mm_set1_epi8(static_cast<char>(Value))));
}
template <std::uint8_t Value, class A>
inline u8v<A> add_bit_bytes(const u8v<A>& v, const std::uint8_t* bits, requires_arch<xsimd::ssse3>) {
    return add_bit_bytes16<Value, A>(v, bits, A{});
}
template <class A>
inline u8v<A> lut16(const u8v<A>& table, const u8v<A>& idx, requires_arch<xsimd::ssse3>) {
    return _mm_shuffle_epi8(table, idx);
}
template <class A>
inline i32v<A> dot_u8s8(const i32v<A>& acc, const u8v<A>& u, const u8v<A>& s, requires_arch<xsimd::ssse3>) {
    return _mm_add_epi32(acc, _mm_madd_epi16(_mm_maddubs_epi16(u, s), _mm_set1_epi16(1)));
}
template <class A>
inline u8v<A> apply_sign(const u8v<A>& x, const u8v<A>& w, requires_arch<xsimd::ssse3>) {
    return _mm_sign_epi8(x, w);
}
#endif  // SSE

// ---- AVX2 (+F16C) ----
#if XSIMD_WITH_AVX2
template <class A>
inline i32v<A> load_u8_as_i32(const std::uint8_t* p, requires_arch<xsimd::avx2>) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}
template <class A>
inline void store_i8(const i32v<A>& v, std::int8_t* out, requires_arch<xsimd::avx2>) {
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packs_epi16(w, w));
}
template <class A>
inline table16<A> make_table16(const float* v, requires_arch<xsimd::avx2>) {
    return {_mm256_loadu_ps(v), _mm256_loadu_ps(v + 8)};
}
template <class A>
inline table16<A> table_minus(const table16<A>& t, float z, requires_arch<xsimd::avx2>) {
    return {_mm256_sub_ps(t.lo, _mm256_set1_ps(z)), _mm256_sub_ps(t.hi, _mm256_set1_ps(z))};
}
template <class A>
inline f32v<A> lookup(const table16<A>& t, const i32v<A>& idx, requires_arch<xsimd::avx2>) {
    // permutevar8x32 uses bits 0-2; bit 3, moved to the sign bit, picks the upper half.
    const __m256 lo = _mm256_permutevar8x32_ps(t.lo, idx);
    const __m256 hi = _mm256_permutevar8x32_ps(t.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
template <class A>
inline f32v<A> lookup8(const table16<A>& t, const i32v<A>& idx, requires_arch<xsimd::avx2>) {
    return _mm256_permutevar8x32_ps(t.lo, idx);  // bit 3 picks an equal half: one permute, not 4 ops
}
template <class A>
inline void store_interleaved(float* out, const f32v<A>& even, const f32v<A>& odd, requires_arch<xsimd::avx2>) {
    const __m256 lo = _mm256_unpacklo_ps(even, odd);  // e0 o0 e1 o1 | e4 o4 e5 o5
    const __m256 hi = _mm256_unpackhi_ps(even, odd);  // e2 o2 e3 o3 | e6 o6 e7 o7
    _mm256_storeu_ps(out, _mm256_permute2f128_ps(lo, hi, 0x20));
    _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}
template <int Shift, int Bits, int At, class A>
inline u8v<A> code_field(const u8v<A>& v, requires_arch<xsimd::avx2>) {
    const __m256i m = _mm256_set1_epi8(static_cast<char>(((1 << Bits) - 1) << At));
    return _mm256_and_si256(Shift > At ? _mm256_srli_epi16(v, Shift - At) : __m256i(v), m);
}
template <std::uint8_t Value, class A>
inline u8v<A> add_bit_bytes(const u8v<A>& v, const std::uint8_t* bits, requires_arch<xsimd::avx2>) {
    std::uint32_t b;
    std::memcpy(&b, bits, sizeof b);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(b)),
                                               _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2,
                                                                2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i select = _mm256_set1_epi64x(static_cast<long long>(0x8040201008040201ull));
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    return _mm256_add_epi8(v, _mm256_and_si256(set, _mm256_set1_epi8(static_cast<char>(Value))));
}
template <class A>
inline u8v<A> lut16(const u8v<A>& table, const u8v<A>& idx, requires_arch<xsimd::avx2>) {
    return _mm256_shuffle_epi8(table, idx);
}
template <class A>
inline i32v<A> dot_u8s8(const i32v<A>& acc, const u8v<A>& u, const u8v<A>& s, requires_arch<xsimd::avx2>) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
template <class A>
inline u8v<A> apply_sign(const u8v<A>& x, const u8v<A>& w, requires_arch<xsimd::avx2>) {
    return _mm256_sign_epi8(x, w);
}
template <class A>
inline void nested_absmax(const std::uint8_t* q, int n, std::int64_t first, const float* map, const float* nested,
                          float offset, float* out, requires_arch<xsimd::avx2>) {
    int i = 0;
    for (; i + 8 <= n && (first + i) / 256 == (first + i + 7) / 256; i += 8) {  // 8 blocks, one nested block
        const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + i)));
        const __m256 product = _mm256_mul_ps(_mm256_i32gather_ps(map, idx, 4), _mm256_set1_ps(nested[(first + i) / 256]));
        _mm256_storeu_ps(out + i, _mm256_add_ps(product, _mm256_set1_ps(offset)));
    }
    nested_absmax<A>(q + i, n - i, first + i, map, nested, offset, out + i, xsimd::generic{});
}
template <class A>
inline f32v<A> fma(const f32v<A>& x, const f32v<A>& y, const f32v<A>& z, requires_arch<xsimd::avx2>) {
    return _mm256_fmadd_ps(x, y, z);
}
template <class A>
inline void f16_to_f32(const std::uint16_t* h, int n, float* out, requires_arch<xsimd::avx2>) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
    for (; i < n; ++i) out[i] = _cvtsh_ss(load<std::uint16_t>(h + i));
}
#endif  // AVX2 (+F16C)

// ---- AVX-512 F/BW ----
#if XSIMD_WITH_AVX512BW
template <class A>
inline i32v<A> load_u8_as_i32(const std::uint8_t* p, requires_arch<xsimd::avx512f>) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <class A>
inline void store_i8(const i32v<A>& v, std::int8_t* out, requires_arch<xsimd::avx512f>) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtepi32_epi8(v));
}
template <class A>
inline table16<A> make_table16(const float* v, requires_arch<xsimd::avx512f>) {
    return {_mm512_loadu_ps(v)};
}
template <class A>
inline table16<A> table_minus(const table16<A>& t, float z, requires_arch<xsimd::avx512f>) {
    return {_mm512_sub_ps(t.t, _mm512_set1_ps(z))};
}
template <class A>
inline f32v<A> lookup(const table16<A>& t, const i32v<A>& idx, requires_arch<xsimd::avx512f>) {
    return _mm512_permutexvar_ps(idx, t.t);  // uses bits 0-3 of each index
}
template <class A>
inline f32v<A> lookup8(const table16<A>& t, const i32v<A>& idx, requires_arch<xsimd::avx512f>) {
    return lookup<A>(t, idx, A{});
}
template <class A>
inline table16<A> table_quads(const table16<A>& t, requires_arch<xsimd::avx512f>) {
    return {_mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), t.t)};
}
template <class A>
inline void store_interleaved(float* out, const f32v<A>& even, const f32v<A>& odd, requires_arch<xsimd::avx512f>) {
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(out, _mm512_permutex2var_ps(even, first, odd));
    _mm512_storeu_ps(out + 16, _mm512_permutex2var_ps(even, second, odd));
}
template <int Shift, int Bits, int At, class A>
inline u8v<A> code_field(const u8v<A>& v, requires_arch<xsimd::avx512bw>) {
    const __m512i m = _mm512_set1_epi8(static_cast<char>(((1 << Bits) - 1) << At));
    return _mm512_and_si512(Shift > At ? _mm512_srli_epi16(v, Shift - At) : __m512i(v), m);
}
template <std::uint8_t Value, class A>
inline __m128i add_bit_bytes16(const __m128i& v, const std::uint8_t* bits, requires_arch<xsimd::avx512bw>) {
    std::uint16_t b;
    std::memcpy(&b, bits, sizeof b);
    return _mm_mask_add_epi8(v, _cvtu32_mask16(b), v, _mm_set1_epi8(static_cast<char>(Value)));
}
template <std::uint8_t Value, class A>
inline u8v<A> add_bit_bytes(const u8v<A>& v, const std::uint8_t* bits, requires_arch<xsimd::avx512bw>) {
    std::uint64_t b;
    std::memcpy(&b, bits, sizeof b);
    return _mm512_mask_add_epi8(v, _cvtu64_mask64(b), v, _mm512_set1_epi8(static_cast<char>(Value)));
}
template <class A>
inline u8v<A> lut16(const u8v<A>& table, const u8v<A>& idx, requires_arch<xsimd::avx512bw>) {
    return _mm512_shuffle_epi8(table, idx);
}
template <class A>
inline i32v<A> dot_u8s8(const i32v<A>& acc, const u8v<A>& u, const u8v<A>& s, requires_arch<xsimd::avx512bw>) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
}
template <class A>
inline u8v<A> apply_sign(const u8v<A>& x, const u8v<A>& w, requires_arch<xsimd::avx512bw>) {
    return _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
}
template <int NB, class A>
inline f32v<A> expand_scales(const float* s, requires_arch<xsimd::avx512f>) {
    if constexpr (NB == 1) {
        return _mm512_set1_ps(s[0]);
    } else {
        __m128 v;
        if constexpr (NB == 2) v = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(s)));
        else v = _mm_loadu_ps(s);
        static_assert(NB == 2 || NB == 4, "expand_scales: 1, 2 or 4 blocks per zmm");
        const __m512i idx = NB == 2 ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                                    : _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v));
    }
}
// xsimd 8.1's avx512f haddp returns the sums in lane order 0 1 4 5 2 3 6 7 8 9 12 13 10 11 14 15
// (a self-inverse permutation): put them back in row order.
template <class A>
inline f32v<A> sum_rows(const f32v<A>* rows, requires_arch<xsimd::avx512f>) {
    const __m512i order = _mm512_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15);
    return _mm512_permutexvar_ps(order, xsimd::haddp(rows));
}
template <class A>
inline void nested_absmax(const std::uint8_t* q, int n, std::int64_t first, const float* map, const float* nested,
                          float offset, float* out, requires_arch<xsimd::avx512f>) {
    int i = 0;
    // map[q] for 16 codes without a gather (slow on AMD: about 2x the cost measured here): eight
    // 32-entry two-register permutes, each kept where the code's top 3 bits select its table
    for (; i + 16 <= n && (first + i) / 256 == (first + i + 15) / 256; i += 16) {  // 16 blocks, one nested block
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(q + i)));
        const __m512i table_of = _mm512_srli_epi32(idx, 5);
        __m512 value = _mm512_setzero_ps();
        for (int t = 0; t < 8; ++t) {
            const __mmask16 mine = _mm512_cmpeq_epi32_mask(table_of, _mm512_set1_epi32(t));
            value = _mm512_mask_mov_ps(value, mine,
                                       _mm512_permutex2var_ps(_mm512_loadu_ps(map + 32 * t), idx, _mm512_loadu_ps(map + 32 * t + 16)));
        }
        const __m512 product = _mm512_mul_ps(value, _mm512_set1_ps(nested[(first + i) / 256]));
        _mm512_storeu_ps(out + i, _mm512_add_ps(product, _mm512_set1_ps(offset)));
    }
    nested_absmax<A>(q + i, n - i, first + i, map, nested, offset, out + i, xsimd::generic{});
}
template <class A>
inline f32v<A> fma(const f32v<A>& x, const f32v<A>& y, const f32v<A>& z, requires_arch<xsimd::avx512f>) {
    return _mm512_fmadd_ps(x, y, z);
}
template <class A>
inline void f16_to_f32(const std::uint16_t* h, int n, float* out, requires_arch<xsimd::avx512f>) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
    for (; i < n; ++i) out[i] = _cvtsh_ss(load<std::uint16_t>(h + i));
}
#endif  // AVX-512 F/BW

// ---- AVX-512 VNNI ----
#if XSIMD_WITH_AVX512BW && defined(__AVX512VNNI__)
template <class A>
inline i32v<A> dot_u8s8(const i32v<A>& acc, const u8v<A>& u, const u8v<A>& s, requires_arch<avx512vnni>) {
    return _mm512_dpbusd_epi32(acc, u, s);
}
#endif  // AVX-512 VNNI

}  // namespace ext

// ---- the entry points: dispatch to the most specific overload for A ----
template <class A>
inline i32v<A> load_u8_as_i32(const std::uint8_t* p) { return ext::load_u8_as_i32<A>(p, A{}); }
template <class A>
inline void store_i8(const i32v<A>& v, std::int8_t* out) { ext::store_i8<A>(v, out, A{}); }
template <class A>
inline table16<A> make_table16(const float* v) { return ext::make_table16<A>(v, A{}); }
template <class A>
inline table16<A> table_minus(const table16<A>& t, float z) { return ext::table_minus<A>(t, z, A{}); }
template <class A>
inline f32v<A> lookup(const table16<A>& t, const i32v<A>& idx) { return ext::lookup<A>(t, idx, A{}); }
template <class A>
inline f32v<A> lookup8(const table16<A>& t, const i32v<A>& idx) { return ext::lookup8<A>(t, idx, A{}); }
template <class A>
inline table16<A> table_quads(const table16<A>& t) { return ext::table_quads<A>(t, A{}); }
template <class A>
inline void store_interleaved(float* out, const f32v<A>& even, const f32v<A>& odd) {
    ext::store_interleaved<A>(out, even, odd, A{});
}
// Every entry of t mapped by f (f32v<A> -> f32v<A>): a table scaled and rounded once per block.
template <class A, class Fn>
inline table16<A> table_map(const table16<A>& t, Fn f) {
#if XSIMD_WITH_AVX512F
    if constexpr (std::is_base_of_v<xsimd::avx512f, A>) return {f(f32v<A>(t.t))};
    else
#endif
#if XSIMD_WITH_AVX2
    if constexpr (std::is_base_of_v<xsimd::avx2, A>) return {f(f32v<A>(t.lo)), f(f32v<A>(t.hi))};
    else
#endif
    {
        table16<A> r;
        for (int i = 0; i < 16; i += lanes<A>) f(f32v<A>::load_aligned(t.v + i)).store_aligned(r.v + i);
        return r;
    }
}
template <int Shift, int Bits, class A, int At = 0>
inline u8v<A> code_field(const u8v<A>& v) { return ext::code_field<Shift, Bits, At, A>(v, A{}); }
template <std::uint8_t Value, class A>
inline u8v<A> add_bit_bytes(const u8v<A>& v, const std::uint8_t* bits) {
    return ext::add_bit_bytes<Value, A>(v, bits, A{});
}
// the same for 16 bytes on any ISA (16-byte spans of codes)
template <std::uint8_t Value, class A>
inline __m128i add_bit_bytes16(const __m128i& v, const std::uint8_t* bits) {
    return ext::add_bit_bytes16<Value, A>(v, bits, A{});
}
template <class A>
inline u8v<A> lut16(const u8v<A>& table, const u8v<A>& idx) { return ext::lut16<A>(table, idx, A{}); }
template <class A>
inline i32v<A> dot_u8s8(const i32v<A>& acc, const u8v<A>& u, const u8v<A>& s) { return ext::dot_u8s8<A>(acc, u, s, A{}); }
template <class A>
inline u8v<A> apply_sign(const u8v<A>& x, const u8v<A>& w) { return ext::apply_sign<A>(x, w, A{}); }
template <int NB, class A>
inline f32v<A> expand_scales(const float* s) { return ext::expand_scales<NB, A>(s, A{}); }
template <class A>
inline void f16_to_f32(const std::uint16_t* h, int n, float* out) { ext::f16_to_f32<A>(h, n, out, A{}); }
template <class A>
inline f32v<A> sum_rows(const f32v<A>* rows) { return ext::sum_rows<A>(rows, A{}); }
template <class A>
inline void nested_absmax(const std::uint8_t* q, int n, std::int64_t first, const float* map, const float* nested,
                          float offset, float* out) {
    ext::nested_absmax<A>(q, n, first, map, nested, offset, out, A{});
}
template <class A>
inline f32v<A> fma(const f32v<A>& x, const f32v<A>& y, const f32v<A>& z) { return ext::fma<A>(x, y, z, A{}); }

// f32 -> nearest bf16 (ties to even), returned as f32 with the low 16 bits clear. Finite values
// and infinities round as a bf16 cast does; NaN stays NaN.
template <class A>
inline f32v<A> round_bf16(const f32v<A>& v) {
    const i32v<A> bits = xsimd::bitwise_cast<i32v<A>>(v);
    const i32v<A> lsb = (bits >> 16) & i32v<A>(1);
    const i32v<A> rounded = (bits + i32v<A>(0x7FFF) + lsb) & i32v<A>(static_cast<std::int32_t>(0xFFFF0000u));
    return xsimd::select(v != v, v, xsimd::bitwise_cast<f32v<A>>(rounded));
}
template <class A>
inline float round_bf16(float v) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    if (v != v) return v;
    bits = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
    std::memcpy(&v, &bits, sizeof bits);
    return v;
}

// f32 -> nearest f16 (ties to even), returned as f32: the value qforge::to_f16 stores. Values
// from 65520 up become infinity, f16 subnormals are kept, NaN stays NaN. With F16C it is a round
// trip through f16; without (SSE), the mantissa is rounded to 10 bits in the normal range, and
// below 2^-14 by adding 0.5, where the sum's ulp is the f16 subnormal quantum 2^-24.
namespace ext {
template <class A>
inline f32v<A> round_f16(const f32v<A>& v, requires_arch<xsimd::generic>) {
    using F = f32v<A>;
    using I = i32v<A>;
    const F a = xsimd::abs(v);
    const I bits = xsimd::bitwise_cast<I>(a);
    const I normal = (bits + I(0xFFF) + ((bits >> 13) & I(1))) & I(~0x1FFF);
    F r = xsimd::select(a < F(0x1p-14f), (a + F(0.5f)) - F(0.5f), xsimd::bitwise_cast<F>(normal));
    r = xsimd::select(a >= F(65520.0f), F(std::numeric_limits<float>::infinity()), r);
    r = xsimd::bitwise_cast<F>(xsimd::bitwise_cast<I>(r) | (xsimd::bitwise_cast<I>(v) & I(std::numeric_limits<std::int32_t>::min())));
    return xsimd::select(v != v, v, r);
}
#if XSIMD_WITH_AVX2
template <class A>
inline f32v<A> round_f16(const f32v<A>& v, requires_arch<xsimd::avx2>) {
    return f32v<A>(_mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)));
}
#endif
#if XSIMD_WITH_AVX512F
template <class A>
inline f32v<A> round_f16(const f32v<A>& v, requires_arch<xsimd::avx512f>) {
    return f32v<A>(_mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)));
}
#endif
}  // namespace ext
template <class A>
inline f32v<A> round_f16(const f32v<A>& v) { return ext::round_f16<A>(v, A{}); }
template <class A>
inline float round_f16(float v) {
    if (v != v) return v;
    const float a = std::fabs(v);
    float r;
    if (a >= 65520.0f) r = std::numeric_limits<float>::infinity();
    else if (a < 0x1p-14f) r = (a + 0.5f) - 0.5f;
    else {
        const std::uint32_t bits = std::bit_cast<std::uint32_t>(a);
        r = std::bit_cast<float>((bits + 0xFFFu + ((bits >> 13) & 1u)) & ~0x1FFFu);
    }
    return std::copysign(r, v);
}

// f32 -> bf16 / f16 bit patterns, RNE, exactly as qforge::to_bf16 / to_f16 (format/float.hpp):
// overflow to infinity, subnormal results kept, NaN -> sign + the default quiet NaN.
template <class A>
inline std::uint16_t bf16_bits(float v) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(v);
    if ((bits & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<std::uint16_t>(((bits >> 16) & 0x8000u) | 0x7FC0u);
    return static_cast<std::uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}
template <class A>
inline std::uint16_t f16_bits(float v) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(v);
    const std::uint32_t sign = (bits >> 16) & 0x8000u, a = bits & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return static_cast<std::uint16_t>(sign | 0x7E00u);   // NaN
    if (a >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to Inf
    if (a < 0x38800000u)  // below 2^-14: a multiple of the subnormal quantum 2^-24, RNE by the FPU
        return static_cast<std::uint16_t>(sign | static_cast<std::uint32_t>(__builtin_nearbyintf(std::bit_cast<float>(a) * 16777216.0f)));
    const std::uint32_t r = a - 0x38000000u;  // rebias the exponent (127 - 15), then RNE of 13 bits
    return static_cast<std::uint16_t>(sign | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13));
}

namespace ext {
template <class A>
inline void to_f16(const float* in, std::int64_t n, std::uint16_t* out, requires_arch<xsimd::generic>) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = f16_bits<A>(in[i]);
}
#if XSIMD_WITH_AVX2
// F16C rounds as f16_bits does (MXCSR: no DAZ/FTZ), but keeps NaN payloads: NaNs go the scalar way.
template <class A>
inline void to_f16(const float* in, std::int64_t n, std::uint16_t* out, requires_arch<xsimd::avx2>) {
    std::int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(in + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
            for (int j = 0; j < 8; ++j) out[i + j] = f16_bits<A>(in[i + j]);
            continue;
        }
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; ++i) out[i] = f16_bits<A>(in[i]);
}
#endif
}  // namespace ext

template <class A>
inline void to_bf16(const float* in, std::int64_t n, std::uint16_t* out) {
    for (std::int64_t i = 0; i < n; ++i) out[i] = bf16_bits<A>(in[i]);  // vectorized by the compiler
}
template <class A>
inline void to_f16(const float* in, std::int64_t n, std::uint16_t* out) { ext::to_f16<A>(in, n, out, A{}); }

// A 16-byte table replicated into every 128-bit lane of a register (for lut16).
template <class A>
inline u8v<A> replicate16(const std::uint8_t* t16) {
    alignas(64) std::uint8_t t[vbytes<A>];
    for (int i = 0; i < vbytes<A>; ++i) t[i] = t16[i % 16];
    return u8v<A>::load_aligned(t);
}

// Grow-only aligned scratch memory, one per thread, arch and slot (templates on A: see top).
template <class A, int Slot>
struct scratch {
    void* p = nullptr;
    std::size_t bytes = 0;
    scratch() = default;
    scratch(const scratch&) = delete;
    scratch& operator=(const scratch&) = delete;
    ~scratch() { ::operator delete(p, std::align_val_t{64}); }

    static void* get(std::size_t n) {
        thread_local scratch s;
        if (n > s.bytes) {
            ::operator delete(s.p, std::align_val_t{64});
            s.p = nullptr;
            s.bytes = 0;
            s.p = ::operator new(n, std::align_val_t{64});
            s.bytes = n;
        }
        return s.p;
    }
};

}  // namespace qforge::kernels::simd
