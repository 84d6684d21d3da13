// The files the checkpoint subcommands read and write: a quantization_config, a model as one
// safetensors file or as shards listed by a `*.safetensors.index.json`, and the rewrite of such a
// model tensor by tensor into a new one, shard by shard, with nothing left half-written.
#pragma once

#include <qforge/config/hf.hpp>
#include <qforge/io/checkpoint.hpp>
#include <qforge/io/staged_file.hpp>

#include <nlohmann/json.hpp>

#include <deque>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <utility>
#include <vector>

namespace qforge::cli {

// A quantization_config file: the object itself or a whole config.json. Unknown keys are
// accepted and reported on stderr, as transformers does.
struct loaded_config {
    hf_quant_config hf;
    config cfg;  // to_config(hf)
};
loaded_config load_config(const std::filesystem::path& file);

// Writes `j` as transformers does (indent 2, ASCII, trailing newline).
std::string json_text(const nlohmann::json& j);

// A model's safetensors: one file, or the shards of an index (`weight_map` checked against the
// shards' contents).
struct input_model {
    std::filesystem::path path;  // as given
    bool sharded = false;
    nlohmann::json index;                    // sharded only
    std::vector<safetensors::reader> shards;  // one for a single file
    checkpoint::tensor_set tensors;           // every tensor of every shard

    std::uint64_t tensor_bytes() const;
};
input_model open_model(const std::filesystem::path& in);

// Output files of one command, staged (qforge/io/staged_file.hpp) and renamed into place only by
// commit(), after every file has been written; without a commit the destructor removes them (and
// any directory it created), so a failure or a signal leaves nothing behind.
class output_files {
public:
    // The staged file for `target` (its directory must exist, or be made by make_directory first).
    staged_file& stage(const std::filesystem::path& target);
    void stage_text(const std::filesystem::path& target, const std::string& text);
    void make_directory(const std::filesystem::path& dir);
    void commit();

private:
    std::deque<staged_directory> dirs_;  // destroyed after the files in them
    std::deque<staged_file> files_;
};

// The replacement of one input tensor while it is being built (rewrite_model then moves its
// bytes out of memory).
struct shard_output {
    safetensors::writer writer;
    std::deque<checkpoint::quantized_weight> keep;  // weights the writer borrows from
    // Set while a planned tensor is made again (tensor_rewrite::again): writes the next bytes of
    // that tensor straight to the output, so a replacement can be written piece by piece as it is
    // made instead of being added to `writer` whole.
    safetensors::writer::put_fn put;
};

// What a subcommand does to the tensors of a model.
struct tensor_rewrite {
    // Called for each input tensor in file order: adds its replacement to `out` and returns
    // true, or returns false to copy the tensor unchanged (unless it is in `dropped`).
    std::function<bool(const safetensors::tensor_view&, shard_output& out)> replace;
    // Tensors consumed by some replacement (possibly from another shard): never copied.
    std::set<std::string, std::less<>> dropped;
    // When set: replacements cheaper to make twice than to store (dequantize, convert), or whose
    // sizes are known before they are made (quantize to GPTQ / AWQ). `replace`
    // then only plans the output (its bytes are dropped at once; it may add the tensors with
    // writer.add_deferred instead of making them) and `again`, called once more for each replaced
    // tensor while the file is written, makes the same tensors (counting nothing), which go
    // straight to their place in the output.
    std::function<bool(const safetensors::tensor_view&, shard_output& out)> again;
};

// Rewrites `in` into `out` (a file for a single file; for a sharded model a directory, or the
// path of the new index, whose directory receives the shards under their input names). Stages
// every output file in `files` (the caller commits). Metadata is copied; the index's weight_map
// and total_size are rewritten. Streams: each replacement leaves memory once made (written in
// place with `again`, else to an unnamed temporary file first), unchanged tensors are copied file
// to file, so memory holds a few tensors.
void rewrite_model(const input_model& in, const std::filesystem::path& out, const std::string& label,
                   const tensor_rewrite& rewrite, output_files& files);

// The detection of a model that must be quantized: orphans are errors.
checkpoint::detection detect_checked(const input_model& in);

}  // namespace qforge::cli
