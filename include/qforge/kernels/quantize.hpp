// Round-to-nearest quantization into the checkpoint layouts (formats.md §1-6) and dequantization
// out of them, on SIMD kernels and optionally a thread pool. The bytes equal the scalar
// reference's (ref::quantize / ref::dequantize, which stay the oracle), on every ISA; so do the
// errors: any input the kernels refuse (NaN/Inf, a scale fp16 cannot hold, a shape the layout
// cannot hold) is handed to the reference, which throws its own message.
//
//   auto q = qforge::kernels::quantize_checkpoint(qforge::configs::qlora_nf4, {w.data(), element::bf16}, n, k);
//   qforge::kernels::dequantize_checkpoint(q, element::bf16, out.data(), &pool);
#pragma once

#include <qforge/kernels/weights.hpp>
#include <qforge/reference/reference.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>

namespace qforge {
class thread_pool;
}

namespace qforge::kernels {

// A dense row-major [rows, cols] tensor of f32, bf16 or f16 elements (any alignment).
struct tensor_source {
    const void* data = nullptr;
    element type = element::f32;
};

// The reference's ref::quantize, bit for bit; work split over `pool` when given.
ref::quantized quantize_checkpoint(const config& cfg, tensor_source w, std::int64_t rows, std::int64_t cols,
                                   const ref::quantize_options& opt = {}, thread_pool* pool = nullptr);

// The offset double quantization subtracts from a bnb 4-bit weight's absmax (their exact mean, as
// quantize_checkpoint computes it) for the n elements of `w` in blocks of `blocksize`, without
// quantizing: it fixes the length of the quant_state blob, so a file can be planned before the
// weight is quantized. Blocks split over `pool` when given.
float bnb4_nested_offset(tensor_source w, std::size_t n, std::size_t blocksize, thread_pool* pool = nullptr);

// The reference's ref::quantize_blockwise8 (bnb's blockwise 8-bit code on the dynamic map, as
// double quantization applies it to the absmax), bit for bit; blocks split over `pool` when given.
ref::blockwise8 quantize_blockwise8(std::span<const float> x, std::int32_t blocksize, thread_pool* pool = nullptr);

// The reference's dequantize, rounded (RNE) to `out`: `dst` receives rows * cols elements.
void dequantize_checkpoint(const ref::quantized& q, element out, void* dst, thread_pool* pool = nullptr);

// A piece of a dequantized tensor: elements [first, first + count), in `bytes`.
struct dequantized_piece {
    std::size_t first, count;
    std::span<std::byte> bytes;
};
using piece_fn = std::function<void(const dequantized_piece&)>;

// dequantize_checkpoint's values in pieces of about `elements` elements (whole rows, blocks or
// tiles), for a caller that uses each piece while the next ones are made (the CLI writes them to a
// file): made(piece) once it is made, on the thread that made it, in any order; then ready(piece)
// in order on the calling thread (pool thread 0), which also makes pieces while the next one is not
// ready. Pieces are made into a few buffers used in turn: a piece's bytes are valid until its
// ready returns. An exception from made or ready stops the work and is rethrown.
void dequantize_in_pieces(const ref::quantized& q, element out, thread_pool* pool, std::size_t elements,
                          const piece_fn& made, const piece_fn& ready);

}  // namespace qforge::kernels
