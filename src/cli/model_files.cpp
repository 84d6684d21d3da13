#include "model_files.hpp"

#include "progress.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <string_view>

namespace qforge::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

std::string read_file(const fs::path& file, std::string_view what) {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw io_error(std::string(what) + " '" + file.string() + "': cannot open: " + std::strerror(errno));
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw io_error(std::string(what) + " '" + file.string() + "': read error");
    return text;
}

json parse_json(const fs::path& file, std::string_view what) {
    const std::string text = read_file(file, what);
    try {
        return json::parse(text);
    } catch (const json::parse_error& e) {
        throw io_error(std::string(what) + " '" + file.string() + "': invalid JSON at byte " + std::to_string(e.byte) +
                       ": " + e.what());
    } catch (const json::exception& e) {  // e.g. out_of_range: a number beyond a double (1e400)
        throw io_error(std::string(what) + " '" + file.string() + "': invalid JSON: " + e.what());
    }
}

// The index's weight_map, checked: an object of tensor name -> shard file name in the index's folder.
const json& weight_map_of(const json& index, const fs::path& file) {
    const auto fail = [&](const std::string& what) { throw io_error("index '" + file.string() + "': " + what); };
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
        fail("key 'weight_map' is missing or not an object");
    for (const auto& [tensor, shard] : index["weight_map"].items()) {
        if (!shard.is_string()) fail("weight_map key '" + tensor + "': the shard is not a string");
        const std::string name = shard.get<std::string>();
        if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
            fail("weight_map key '" + tensor + "': shard '" + name + "' is not a file name in the index's folder");
    }
    if (index.contains("metadata") && !index["metadata"].is_object()) fail("key 'metadata' is not an object");
    return index["weight_map"];
}

// The replacement tensors of one output shard, written to an unnamed temporary file beside the
// output as they are made: memory holds the tensors in work, not the shard. The shard's writer
// then copies them from there in the kernel (safetensors::writer::add_file_range).
// Errors name the output (the path the user asked for).
class spool {
public:
    explicit spool(const fs::path& target) : target_(target) {
        const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
        fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
        if (fd_ < 0) {  // a file system without O_TMPFILE: a named file, unlinked at once
            std::string name = (dir / ".qforge-spool-XXXXXX").string();
            fd_ = ::mkostemp(name.data(), O_CLOEXEC);
            if (fd_ < 0)
                throw io_error("cannot write '" + target.string() + "': cannot create a temporary file in '" +
                               dir.string() + "': " + std::strerror(errno));
            ::unlink(name.c_str());
        }
    }
    spool(const spool&) = delete;
    spool& operator=(const spool&) = delete;
    ~spool() { ::close(fd_); }

    int fd() const { return fd_; }

    // Appends the bytes; returns their offset.
    std::uint64_t append(std::span<const std::byte> bytes, std::string_view tensor) {
        const std::uint64_t at = size_;
        while (!bytes.empty()) {
            const ssize_t n = ::write(fd_, bytes.data(), std::min(bytes.size(), staged_file::write_piece));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0)
                throw io_error("cannot write '" + target_.string() + "': tensor '" + std::string(tensor) +
                               "' to a temporary file: " + std::strerror(n < 0 ? errno : EIO));
            bytes = bytes.subspan(static_cast<std::size_t>(n));
            size_ += static_cast<std::uint64_t>(n);
        }
        return at;
    }

private:
    fs::path target_;
    int fd_ = -1;
    std::uint64_t size_ = 0;
};

// A read-only file descriptor, for copying unchanged tensors in the kernel.
class input_fd {
public:
    explicit input_fd(const fs::path& file) : fd_(::open(file.c_str(), O_RDONLY | O_CLOEXEC)) {
        if (fd_ < 0) throw io_error("cannot open '" + file.string() + "': " + std::strerror(errno));
    }
    input_fd(const input_fd&) = delete;
    input_fd& operator=(const input_fd&) = delete;
    ~input_fd() { ::close(fd_); }
    int get() const { return fd_; }

private:
    int fd_;
};

// Drops the pages of a tensor read through the reader's mapping from this process (the page
// cache keeps them): the resident memory of a rewrite stays a few tensors, not the model.
void release(const safetensors::tensor_view& v) {
    static const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
    const auto begin = (reinterpret_cast<std::uintptr_t>(v.bytes.data()) + page - 1) / page * page;
    const auto end = (reinterpret_cast<std::uintptr_t>(v.bytes.data()) + v.bytes.size()) / page * page;
    if (begin < end) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace

// ---- config ----------------------------------------------------------------------------------

loaded_config load_config(const fs::path& file) {
    const json j = parse_json(file, "config");
    try {
        loaded_config c;
        c.hf = parse_hf_quant_config(j);
        for (const std::string& key : c.hf.unknown_keys)
            std::fprintf(stderr, "qforge: warning: config '%s': unknown quantization_config key '%s' (ignored, as transformers does)\n",
                         file.c_str(), key.c_str());
        c.cfg = to_config(c.hf);
        return c;
    } catch (const std::invalid_argument& e) {  // hf_config_error names the key
        throw io_error("config '" + file.string() + "': " + e.what());
    }
}

std::string json_text(const json& j) { return j.dump(2, ' ', true) + "\n"; }

// ---- input -----------------------------------------------------------------------------------

std::uint64_t input_model::tensor_bytes() const {
    std::uint64_t n = 0;
    for (const safetensors::tensor_view* v : tensors.all()) n += v->bytes.size();
    return n;
}

input_model open_model(const fs::path& in) {
    input_model m;
    m.path = in;
    if (in.extension() != ".json") {
        m.shards.emplace_back(in);
        m.tensors.add(m.shards.back());
        return m;
    }
    m.sharded = true;
    m.index = parse_json(in, "index");
    const json& weight_map = weight_map_of(m.index, in);
    std::set<std::string> shard_names;
    for (const auto& [tensor, shard] : weight_map.items()) shard_names.insert(shard.get<std::string>());
    if (shard_names.empty()) throw io_error("index '" + in.string() + "': weight_map lists no tensor");
    for (const std::string& name : shard_names) m.shards.emplace_back(in.parent_path() / name);
    for (const safetensors::reader& r : m.shards) m.tensors.add(r);  // views survive the vector's moves

    // The index and the shards must agree tensor by tensor.
    for (const auto& [tensor, shard] : weight_map.items()) {
        const safetensors::tensor_view* v = m.tensors.find(tensor);
        if (!v || fs::path(v->file).filename() != shard.get<std::string>())
            throw io_error("index '" + in.string() + "': weight_map says tensor '" + tensor + "' is in '" +
                           shard.get<std::string>() + "', but it is not");
    }
    for (const safetensors::tensor_view* v : m.tensors.all())
        if (!weight_map.contains(std::string(v->name)))
            throw io_error("index '" + in.string() + "': tensor '" + std::string(v->name) + "' of '" + std::string(v->file) +
                           "' is missing from weight_map");
    return m;
}

checkpoint::detection detect_checked(const input_model& in) {
    checkpoint::detection d = checkpoint::detect(in.tensors);
    if (!d.orphans.empty())
        throw io_error(d.orphans.front() +
                       (d.orphans.size() > 1 ? " (and " + std::to_string(d.orphans.size() - 1) + " more)" : ""));
    return d;
}

// ---- output ----------------------------------------------------------------------------------

staged_file& output_files::stage(const fs::path& target) { return files_.emplace_back(target); }

void output_files::stage_text(const fs::path& target, const std::string& text) {
    staged_file& f = stage(target);
    f.write(std::as_bytes(std::span(text)));
    f.finish();
}

void output_files::make_directory(const fs::path& dir) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) dirs_.emplace_back(dir);
}

void output_files::commit() {
    for (staged_file& f : files_) f.commit();
    for (staged_directory& d : dirs_) d.commit();
}

// ---- rewrite ---------------------------------------------------------------------------------

void rewrite_model(const input_model& in, const fs::path& out, const std::string& label, const tensor_rewrite& rewrite,
                   output_files& files) {
    std::vector<fs::path> targets;
    fs::path index_target;
    if (!in.sharded) {
        targets.push_back(out);
    } else {
        fs::path dir = out;
        if (out.extension() == ".json") {
            index_target = out;
            dir = out.parent_path().empty() ? fs::path(".") : out.parent_path();
        } else {
            files.make_directory(out);
            index_target = out / in.path.filename();
        }
        for (const safetensors::reader& r : in.shards) targets.push_back(dir / r.path().filename());
    }
    // Never replace an input (the shards are still being read).
    std::vector<fs::path> inputs{in.path};
    for (const safetensors::reader& r : in.shards) inputs.push_back(r.path());
    for (const fs::path& t : targets) {
        for (const fs::path& i : inputs) {
            std::error_code ec;
            if (fs::equivalent(t, i, ec))
                throw io_error("output '" + t.string() + "' is the input '" + i.string() + "': write elsewhere");
        }
    }
    if (!index_target.empty())
        for (const fs::path& i : inputs) {
            std::error_code ec;
            if (fs::equivalent(index_target, i, ec))
                throw io_error("output '" + index_target.string() + "' is the input '" + i.string() + "': write elsewhere");
        }

    progress bar(label, in.tensor_bytes());
    json weight_map = json::object();
    std::uint64_t total_size = 0, total_parameters = 0;
    for (std::size_t s = 0; s < in.shards.size(); ++s) {
        const safetensors::reader& reader = in.shards[s];
        const input_fd source(reader.path());
        std::optional<spool> made;
        safetensors::writer writer;
        for (const auto& [key, value] : reader.metadata()) writer.set_metadata(key, value);
        std::vector<const safetensors::tensor_view*> replaced;  // to make `again`
        for (const safetensors::tensor_view& v : reader.tensors()) {
            shard_output piece;  // this tensor's replacement, planned or spooled at once
            if (rewrite.replace(v, piece)) {
                piece.writer.for_each_in_memory([&](const std::string& name, safetensors::dtype type,
                                                    const safetensors::shape_t& shape, std::span<const std::byte> bytes) {
                    if (rewrite.again) return writer.add_deferred(name, type, shape);  // made again below
                    if (!made) made.emplace(targets[s]);
                    writer.add_file_range(name, type, shape, made->fd(), made->append(bytes, name), bytes.size());
                });
                release(v);  // also after a plan, which may read the weight (bnb 4-bit double quant's absmax)
                if (rewrite.again) {
                    replaced.push_back(&v);
                    continue;  // progress when made again
                }
            } else if (!rewrite.dropped.contains(v.name)) {
                writer.add_file_range(std::string(v.name), v.type, safetensors::shape_t(v.shape.begin(), v.shape.end()),
                                      source.get(), v.file_offset, v.bytes.size());
            }
            bar.advance(v.bytes.size(), v.name);
        }
        staged_file& staged = files.stage(targets[s]);
        writer.write_deferred(staged, [&](const safetensors::writer::put_fn& put) {
            for (const safetensors::tensor_view* v : replaced) {
                shard_output piece;
                piece.put = put;
                rewrite.again(*v, piece);
                piece.writer.for_each_in_memory([&](const std::string& name, safetensors::dtype, const safetensors::shape_t&,
                                                    std::span<const std::byte> bytes) { put(name, bytes); });
                release(*v);
                bar.advance(v->bytes.size(), v->name);
            }
        });
        if (in.sharded) {
            const safetensors::reader written(staged.temporary_path());
            for (const safetensors::tensor_view& v : written.tensors()) {
                weight_map[std::string(v.name)] = targets[s].filename().string();
                total_size += v.bytes.size();
                total_parameters += static_cast<std::uint64_t>(v.numel());
            }
        }
    }
    if (in.sharded) {
        json index = in.index;
        index["weight_map"] = std::move(weight_map);
        index["metadata"]["total_size"] = total_size;
        if (index["metadata"].contains("total_parameters")) index["metadata"]["total_parameters"] = total_parameters;
        files.stage_text(index_target, json_text(index));
    }
}

}  // namespace qforge::cli
