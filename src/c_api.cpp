// The C API (include/qforge/qforge.h) over the C++ one: every entry point catches every
// exception and turns it into a status and this thread's message.
#include <qforge/qforge.h>

#include <qforge/config/hf.hpp>
#include <qforge/config/name.hpp>
#include <qforge/engine.hpp>
#include <qforge/io/checkpoint.hpp>
#include <qforge/io/packed_file.hpp>
#include <qforge/kernels/pack.hpp>

#include <nlohmann/json.hpp>

#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <variant>
#include <vector>

struct qforge_config {
    qforge::config cfg;
    std::optional<qforge::hf_quant_config> hf;  // when parsed from JSON
};

struct qforge_checkpoint {
    std::deque<qforge::safetensors::reader> files;  // stable addresses: the tensor set points into them
    qforge::checkpoint::tensor_set tensors;
    qforge::checkpoint::detection found;
};

struct qforge_matrix {
    qforge::matrix m;
    std::string kernel_name;
};

struct qforge_prepared {
    qforge::prepared_x x;
};

namespace {

thread_local std::string last_error;

qforge_status failed(qforge_status s, const char* what) {
    last_error = what;
    return s;
}

// Runs f, mapping exceptions to statuses (most specific first).
template <class F>
qforge_status guarded(F&& f) noexcept {
    try {
        f();
        return QFORGE_OK;
    } catch (const qforge::unsupported_config& e) {
        return failed(QFORGE_UNSUPPORTED, e.what());
    } catch (const qforge::hf_config_error& e) {
        return failed(QFORGE_CONFIG_ERROR, e.what());
    } catch (const qforge::config_error_exception& e) {
        return failed(QFORGE_CONFIG_ERROR, e.what());
    } catch (const qforge::io_error& e) {
        return failed(QFORGE_IO_ERROR, e.what());
    } catch (const nlohmann::json::exception& e) {
        return failed(QFORGE_CONFIG_ERROR, e.what());
    } catch (const std::invalid_argument& e) {
        return failed(QFORGE_INVALID_ARGUMENT, e.what());
    } catch (const std::bad_alloc&) {
        return failed(QFORGE_OUT_OF_MEMORY, "qforge: out of memory");
    } catch (const std::exception& e) {
        return failed(QFORGE_INTERNAL_ERROR, e.what());
    } catch (...) {
        return failed(QFORGE_INTERNAL_ERROR, "qforge: unknown exception");
    }
}

void require(const void* p, const char* what) {
    if (p == nullptr) throw std::invalid_argument(std::string("qforge: ") + what + " is NULL");
}

qforge::element element_of(qforge_element e) {
    switch (e) {
        case QFORGE_F32: return qforge::element::f32;
        case QFORGE_BF16: return qforge::element::bf16;
        case QFORGE_F16: return qforge::element::f16;
    }
    throw std::invalid_argument("qforge: element type " + std::to_string(static_cast<int>(e)) + " is not F32, BF16 or F16");
}

qforge::compute compute_of(qforge_compute c, const qforge::config& stored) {
    switch (c) {
        case QFORGE_COMPUTE_STORED: return stored.act;
        case QFORGE_COMPUTE_F32: return qforge::compute::f32;
        case QFORGE_COMPUTE_BF16: return qforge::compute::bf16;
        case QFORGE_COMPUTE_F16: return qforge::compute::f16;
        case QFORGE_COMPUTE_I8: return qforge::compute::i8;
    }
    throw std::invalid_argument("qforge: compute path " + std::to_string(static_cast<int>(c)) + " is unknown");
}

qforge_config* config_from_json(const nlohmann::json& j) {
    qforge::hf_quant_config hf = qforge::parse_hf_quant_config(j);
    const qforge::config cfg = qforge::to_config(hf);
    return new qforge_config{cfg, std::move(hf)};
}

qforge_matrix* new_matrix(qforge::matrix m) {
    std::string name = m.gemv_kernel().full_name();
    return new qforge_matrix{std::move(m), std::move(name)};
}

}  // namespace

extern "C" {

const char* qforge_last_error(void) { return last_error.c_str(); }
const char* qforge_version(void) { return QFORGE_VERSION; }

qforge_status qforge_config_parse(const char* json, size_t length, qforge_config** out) {
    return guarded([&] {
        require(json, "json");
        require(out, "out");
        *out = config_from_json(nlohmann::json::parse(json, json + length));
    });
}

qforge_status qforge_config_load(const char* path, qforge_config** out) {
    return guarded([&] {
        require(path, "path");
        require(out, "out");
        std::ifstream in(path);
        if (!in) throw qforge::io_error(std::string("cannot open ") + path);
        try {
            *out = config_from_json(nlohmann::json::parse(in));
        } catch (const nlohmann::json::exception& e) {
            throw qforge::hf_config_error("", std::string(path) + ": " + e.what());
        }
    });
}

qforge_status qforge_kernel_config_for(const qforge_config* stored, qforge_compute wanted, qforge_config** out) {
    return guarded([&] {
        require(stored, "stored");
        require(out, "out");
        *out = new qforge_config{qforge::kernel_config_for(stored->cfg, compute_of(wanted, stored->cfg)), std::nullopt};
    });
}

qforge_status qforge_config_name(const qforge_config* config, char* buffer, size_t size, size_t* needed) {
    return guarded([&] {
        require(config, "config");
        const std::string name = qforge::canonical_name(config->cfg);
        if (needed != nullptr) *needed = name.size();
        if (buffer != nullptr && size > 0) {
            const std::size_t n = name.size() < size - 1 ? name.size() : size - 1;
            std::memcpy(buffer, name.data(), n);
            buffer[n] = '\0';
        }
    });
}

void qforge_config_free(qforge_config* config) { delete config; }

qforge_status qforge_checkpoint_open(const char* path, qforge_checkpoint** out) {
    return guarded([&] {
        require(path, "path");
        require(out, "out");
        auto ck = std::make_unique<qforge_checkpoint>();
        ck->files.emplace_back(path);
        ck->tensors.add(ck->files.back());
        ck->found = qforge::checkpoint::detect(ck->tensors);
        *out = ck.release();
    });
}

qforge_status qforge_checkpoint_add(qforge_checkpoint* checkpoint, const char* path) {
    return guarded([&] {
        require(checkpoint, "checkpoint");
        require(path, "path");
        checkpoint->files.emplace_back(path);
        try {
            checkpoint->tensors.add(checkpoint->files.back());
        } catch (...) {
            checkpoint->files.pop_back();
            throw;
        }
        checkpoint->found = qforge::checkpoint::detect(checkpoint->tensors);
    });
}

size_t qforge_checkpoint_weight_count(const qforge_checkpoint* checkpoint) {
    return checkpoint ? checkpoint->found.weights.size() : 0;
}

const char* qforge_checkpoint_weight_name(const qforge_checkpoint* checkpoint, size_t i) {
    if (checkpoint == nullptr || i >= checkpoint->found.weights.size()) return nullptr;
    return checkpoint->found.weights[i].name.c_str();
}

void qforge_checkpoint_close(qforge_checkpoint* checkpoint) { delete checkpoint; }

qforge_status qforge_matrix_load(const qforge_checkpoint* checkpoint, const char* name, const qforge_config* stored,
                                 qforge_compute wanted, qforge_matrix** out) {
    return guarded([&] {
        require(checkpoint, "checkpoint");
        require(name, "name");
        require(out, "out");
        const std::string n = name;
        const qforge::checkpoint::detected_weight* d = nullptr;
        for (const auto& w : checkpoint->found.weights)
            if (w.name == n || w.name == n + ".weight") d = &w;
        if (d == nullptr)
            throw qforge::io_error("qforge: no quantized weight '" + n + "' in " +
                                   checkpoint->files.front().path().string() +
                                   (checkpoint->files.size() > 1 ? " and its shards" : ""));
        qforge::checkpoint::import_options options;
        float threshold = 6.0f;  // transformers' default llm_int8_threshold
        if (stored != nullptr) {
            options.expected = stored->cfg;
            if (stored->hf)
                if (const auto* bnb = std::get_if<qforge::hf_bnb>(&stored->hf->fields))
                    threshold = static_cast<float>(bnb->llm_int8_threshold);
        }
        const qforge::checkpoint::quantized_weight q = qforge::checkpoint::import_weight(checkpoint->tensors, *d, options);
        const qforge::config k = qforge::kernel_config_for(q.cfg, compute_of(wanted, q.cfg), q.cols());
        qforge::packed_weights p = qforge::pack_weights(k, q.data, q.name);
        p.outlier_threshold = threshold;
        *out = new_matrix(qforge::matrix(std::move(p)));
    });
}

qforge_status qforge_packed_save(const char* path, const qforge_matrix* const* matrices, const char* const* names,
                                 size_t count) {
    return guarded([&] {
        require(path, "path");
        if (count > 0) require(matrices, "matrices"), require(names, "names");
        std::vector<qforge::packed_file::named_weights> list;
        for (size_t i = 0; i < count; ++i) {
            require(matrices[i], "a matrix");
            require(names[i], "a name");
            list.push_back({names[i], matrices[i]->m.view()});
        }
        qforge::packed_file::save(path, list);
    });
}

qforge_status qforge_packed_load(const char* path, const char* name, qforge_matrix** out) {
    return guarded([&] {
        require(path, "path");
        require(name, "name");
        require(out, "out");
        const auto file = qforge::packed_file::open(path);
        *out = new_matrix(qforge::matrix(file->view(name), file));
    });
}

qforge_status qforge_matrix_shape(const qforge_matrix* matrix, int64_t* rows, int64_t* cols) {
    return guarded([&] {
        require(matrix, "matrix");
        if (rows) *rows = matrix->m.rows();
        if (cols) *cols = matrix->m.cols();
    });
}

const char* qforge_matrix_kernel_name(const qforge_matrix* matrix) {
    return matrix ? matrix->kernel_name.c_str() : nullptr;
}

qforge_status qforge_matrix_config(const qforge_matrix* matrix, qforge_config** out) {
    return guarded([&] {
        require(matrix, "matrix");
        require(out, "out");
        *out = new qforge_config{matrix->m.cfg(), std::nullopt};
    });
}

void qforge_matrix_free(qforge_matrix* matrix) { delete matrix; }

qforge_status qforge_dequantize(const qforge_matrix* matrix, int64_t n0, int64_t n1, void* out, qforge_element type) {
    return guarded([&] {
        require(matrix, "matrix");
        matrix->m.dequantize(n0, n1, out, element_of(type));
    });
}

qforge_status qforge_gemv(const qforge_matrix* matrix, const void* x, qforge_element x_type, const float* bias,
                          float beta, void* y, qforge_element y_type, int64_t n0, int64_t n1) {
    return guarded([&] {
        require(matrix, "matrix");
        matrix->m.gemv({x, element_of(x_type)}, bias, {y, element_of(y_type), 0, beta}, n0, n1);
    });
}

qforge_status qforge_gemm(const qforge_matrix* matrix, int64_t m, const void* x, qforge_element x_type, int64_t ldx,
                          const float* bias, float beta, void* y, qforge_element y_type, int64_t ldy, int64_t n0,
                          int64_t n1) {
    return guarded([&] {
        require(matrix, "matrix");
        matrix->m.gemm(m, {x, element_of(x_type), ldx}, bias, {y, element_of(y_type), ldy, beta}, n0, n1);
    });
}

qforge_status qforge_prepare(const qforge_matrix* matrix, const void* x, qforge_element x_type, qforge_prepared** out) {
    return guarded([&] {
        require(matrix, "matrix");
        require(out, "out");
        auto p = std::make_unique<qforge_prepared>();
        p->x.prepare(matrix->m, {x, element_of(x_type)});
        *out = p.release();
    });
}

qforge_status qforge_prepare_again(qforge_prepared* prepared, const qforge_matrix* matrix, const void* x,
                                   qforge_element x_type) {
    return guarded([&] {
        require(prepared, "prepared");
        require(matrix, "matrix");
        prepared->x.prepare(matrix->m, {x, element_of(x_type)});
    });
}

qforge_status qforge_gemv_prepared(const qforge_matrix* matrix, const qforge_prepared* x, const float* bias, float beta,
                                   void* y, qforge_element y_type, int64_t n0, int64_t n1) {
    return guarded([&] {
        require(matrix, "matrix");
        require(x, "x");
        matrix->m.gemv(x->x, bias, {y, element_of(y_type), 0, beta}, n0, n1);
    });
}

void qforge_prepared_free(qforge_prepared* prepared) { delete prepared; }

qforge_status qforge_gemv_many(const qforge_gemv_target* targets, size_t count, const qforge_prepared* x, int64_t n0,
                               int64_t n1) {
    return guarded([&] {
        require(x, "x");
        if (count > 0) require(targets, "targets");
        std::vector<qforge::gemv_target> list;
        list.reserve(count);
        for (size_t i = 0; i < count; ++i) {
            require(targets[i].matrix, "a target's matrix");
            list.push_back({&targets[i].matrix->m, targets[i].bias,
                            {targets[i].y, element_of(targets[i].y_type), 0, targets[i].beta}});
        }
        qforge::gemv(list, x->x, n0, n1);
    });
}

}  // extern "C"
