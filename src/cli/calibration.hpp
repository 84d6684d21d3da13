// GPTQ calibration data for `qforge quantize --calibration` and `qforge hessian`.
//
// A calibration file is a safetensors file holding, per module (`<module>.weight` is the weight
// in the checkpoint), either or both of
//   <module>.inputs    the layer's input activations [tokens, K] (F32, BF16 or F16; the leading
//                      dimensions of e.g. [batch, seq, K] are flattened into tokens)
//   <module>.hessian   an accumulated H = (2/n) sum x x^T, [K, K] F32, with
//   <module>.nsamples  its n: one integer (I64, I32 or an integral F32; shape [] or [1])
// When both are present they are combined, as `qforge hessian` combines files.
#pragma once

#include "model_files.hpp"

#include <qforge/quantize/gptq.hpp>

#include <CLI/CLI.hpp>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace qforge::cli {

// What a calibration file holds for one module (views into the file).
struct module_calibration {
    const safetensors::tensor_view* inputs = nullptr;
    const safetensors::tensor_view* hessian = nullptr;
    std::int64_t nsamples = 0;  // with hessian
    std::int64_t cols() const;  // K
    std::string shape_text() const;  // e.g. "inputs [2048, 256]" for messages
};

// The largest K a calibration file may have: GPTQ holds H and its factor in f64, 16 K^2 bytes
// (64 GiB here); real models have K up to about 30,000.
inline constexpr std::int64_t max_calibration_cols = 65536;

// An open calibration file with every tensor checked (io_error naming the file and the tensor):
// a key that is none of the three forms, a dtype or shape other than above, `.hessian` not
// square or without `.nsamples` (and the reverse), nsamples not a non-negative integer, inputs
// without tokens, K above max_calibration_cols, inputs and hessian of one module disagreeing on K.
class calibration_file {
public:
    explicit calibration_file(const std::filesystem::path& file);
    const std::filesystem::path& path() const { return reader_.path(); }
    const std::map<std::string, module_calibration, std::less<>>& modules() const { return modules_; }

private:
    safetensors::reader reader_;
    std::map<std::string, module_calibration, std::less<>> modules_;
};

// Adds what one file holds for `module` to `h` (created at the file's K when empty): the stored
// Hessian is merged, the inputs are streamed through add_batch in slices of 8192 rows (bounded
// memory; the slicing depends on the shapes only). NaN / Inf are io_errors naming the file, the
// tensor and the flat index; a K different from h's names the module and both shapes.
void accumulate(std::optional<gptq::hessian>& h, std::string_view module, const module_calibration& c,
                const std::filesystem::path& file, int threads);

// GPTQ of one checkpoint weight `<module>.weight` (F32 / BF16 / F16, [N, K]) with the Hessian of
// its calibration data `c` (of `file`), into the layout of the GPTQ config `cfg` (bits,
// group_size, sym, desc_act, act_group_aware, static_groups, damp_percent, checkpoint_format).
// H goes through the f32 form a hessian file stores, so quantizing from inputs gives the bytes
// quantizing from the hessian file `qforge hessian` makes of them gives. Draws a progress bar on
// a terminal; writes one line per layer (times, damping) and the algorithm's warnings to stderr.
checkpoint::quantized_weight quantize_calibrated(const safetensors::tensor_view& weight, std::string_view module,
                                                 const module_calibration& c, const std::filesystem::path& file,
                                                 const loaded_config& cfg, int threads);

void add_hessian(CLI::App& app);  // `qforge hessian`

}  // namespace qforge::cli
