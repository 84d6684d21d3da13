// The checkpoint quantizers and dequantizers compiled for sse4_2 (kernels/impl/quantize.hpp), with
// that ISA's flags only (src/meson.build).
#include <qforge/kernels/impl/quantize.hpp>

template qforge::kernels::quant::ops qforge::kernels::quant::ops_for<qforge::kernels::arch_t<qforge::isa::sse4_2>>();
