/* qforge's C API (C11; also the way in from Python ctypes, Rust, Go and other FFIs).
 *
 * Opaque handles, created by a function that fills `*out`, freed by the matching *_free (which
 * accept NULL). Every other function returns a qforge_status; on failure
 * qforge_last_error() gives a message naming the tensor, key, file or byte offset. No C++
 * exception crosses this boundary.
 *
 *   qforge_checkpoint* ck;  qforge_matrix* q;
 *   qforge_checkpoint_open("model.safetensors", &ck);
 *   qforge_matrix_load(ck, "model.layers.0.self_attn.q_proj", NULL, QFORGE_COMPUTE_I8, &q);
 *   qforge_gemv(q, x, QFORGE_F32, NULL, 0.0f, y, QFORGE_F32, 0, rows);
 *
 * Threads: qforge_config, qforge_checkpoint, qforge_matrix and qforge_prepared are immutable once
 * created (except qforge_prepare_again and qforge_checkpoint_add, which need exclusive use of the
 * handle they change); the run functions may be called from any number of threads at once on the
 * same handles, each writing its own outputs (e.g. its own row range [n0, n1)). qforge starts no
 * threads. Scratch memory: per-thread grow-only buffers, freed when the thread ends (see
 * qforge/engine.hpp). The message of qforge_last_error() is per thread and valid until the
 * thread's next failing call.
 */
#ifndef QFORGE_H
#define QFORGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qforge_status {
    QFORGE_OK = 0,
    QFORGE_INVALID_ARGUMENT = 1, /* a null pointer, a row range outside [0, N], a shape the kernel cannot take */
    QFORGE_UNSUPPORTED = 2,      /* no kernel for this config and compute path in this build */
    QFORGE_CONFIG_ERROR = 3,     /* a quantization_config qforge cannot run, naming the key */
    QFORGE_IO_ERROR = 4,         /* a file missing, truncated or not what it claims, naming it */
    QFORGE_OUT_OF_MEMORY = 5,
    QFORGE_INTERNAL_ERROR = 6
} qforge_status;

/* Element types of activations and outputs (bf16 and f16 are 16-bit patterns in uint16_t). */
typedef enum qforge_element { QFORGE_F32 = 0, QFORGE_BF16 = 1, QFORGE_F16 = 2 } qforge_element;

/* The arithmetic of a matmul. QFORGE_COMPUTE_STORED: the one the checkpoint names (bnb 4-bit's
 * compute dtype, i8 for LLM.int8, else f32). */
typedef enum qforge_compute {
    QFORGE_COMPUTE_STORED = -1,
    QFORGE_COMPUTE_F32 = 0,
    QFORGE_COMPUTE_BF16 = 1,
    QFORGE_COMPUTE_F16 = 2,
    QFORGE_COMPUTE_I8 = 3
} qforge_compute;

typedef struct qforge_config qforge_config;
typedef struct qforge_checkpoint qforge_checkpoint;
typedef struct qforge_matrix qforge_matrix;
typedef struct qforge_prepared qforge_prepared;

/* This thread's last error message ("" when none). */
const char* qforge_last_error(void);
const char* qforge_version(void);

/* ---- configs ---- */

/* A quantization_config object, or a whole config.json holding one (`length` bytes of JSON). */
qforge_status qforge_config_parse(const char* json, size_t length, qforge_config** out);
qforge_status qforge_config_load(const char* path, qforge_config** out);
/* The kernel config that runs weights stored as `stored` with the `wanted` compute path (GPTQ
 * and AWQ repacked into qforge's layout): QFORGE_UNSUPPORTED when this build has no kernel. */
qforge_status qforge_kernel_config_for(const qforge_config* stored, qforge_compute wanted, qforge_config** out);
/* The canonical name (e.g. "int4asym_g128_qf_i8"), NUL-terminated, truncated to `size` bytes;
 * `*needed` (may be NULL) receives the length without the NUL. */
qforge_status qforge_config_name(const qforge_config* config, char* buffer, size_t size, size_t* needed);
void qforge_config_free(qforge_config* config);

/* ---- checkpoints ---- */

/* A safetensors file (mapped, read lazily); qforge_checkpoint_add adds the other shards. */
qforge_status qforge_checkpoint_open(const char* path, qforge_checkpoint** out);
qforge_status qforge_checkpoint_add(qforge_checkpoint* checkpoint, const char* path);
/* The quantized weights found, as the plain weight names ("<module>.weight"). */
size_t qforge_checkpoint_weight_count(const qforge_checkpoint* checkpoint);
const char* qforge_checkpoint_weight_name(const qforge_checkpoint* checkpoint, size_t i);
void qforge_checkpoint_close(qforge_checkpoint* checkpoint);

/* ---- weight matrices ---- */

/* Loads and packs one quantized weight: `name` is the module ("...q_proj") or its weight
 * ("...q_proj.weight"). `stored` (may be NULL) is the checkpoint's quantization_config: it tells
 * GPTQ v1 from v2 and gives LLM.int8's outlier threshold. The matrix does not refer to the
 * checkpoint afterwards. */
qforge_status qforge_matrix_load(const qforge_checkpoint* checkpoint, const char* name, const qforge_config* stored,
                                 qforge_compute wanted, qforge_matrix** out);
/* Packed weights on disk: every matrix of `matrices` under its name (a temporary file renamed
 * into place), and one matrix of such a file, mapped without a copy. */
qforge_status qforge_packed_save(const char* path, const qforge_matrix* const* matrices, const char* const* names,
                                 size_t count);
qforge_status qforge_packed_load(const char* path, const char* name, qforge_matrix** out);
qforge_status qforge_matrix_shape(const qforge_matrix* matrix, int64_t* rows, int64_t* cols);
/* The GEMV kernel's full name, e.g. "int4sym_g128_qf_i8_gemv_avx512_vnni" (valid while the matrix lives). */
const char* qforge_matrix_kernel_name(const qforge_matrix* matrix);
/* The kernel config (a new handle). */
qforge_status qforge_matrix_config(const qforge_matrix* matrix, qforge_config** out);
void qforge_matrix_free(qforge_matrix* matrix);

/* ---- running: output rows [n0, n1) of W [N, K] ---- */

/* out[n K + k] = W[n, k] for n in [n0, n1). */
qforge_status qforge_dequantize(const qforge_matrix* matrix, int64_t n0, int64_t n1, void* out, qforge_element type);
/* y = W x (+ bias) + beta y; x has K elements, y and bias N (bias may be NULL; with beta 0, y is
 * only written). */
qforge_status qforge_gemv(const qforge_matrix* matrix, const void* x, qforge_element x_type, const float* bias,
                          float beta, void* y, qforge_element y_type, int64_t n0, int64_t n1);
/* Y = X W^T (+ bias) + beta Y: X is m rows of K at stride ldx, Y m rows of N at stride ldy
 * (elements; 0 means dense). */
qforge_status qforge_gemm(const qforge_matrix* matrix, int64_t m, const void* x, qforge_element x_type, int64_t ldx,
                          const float* bias, float beta, void* y, qforge_element y_type, int64_t ldy, int64_t n0,
                          int64_t n1);

/* x prepared once (widened to f32; quantized for the i8 path) for every matrix with the kernel,
 * K and column order of `matrix`, and every thread: the same bits as qforge_gemv on x. */
qforge_status qforge_prepare(const qforge_matrix* matrix, const void* x, qforge_element x_type, qforge_prepared** out);
qforge_status qforge_prepare_again(qforge_prepared* prepared, const qforge_matrix* matrix, const void* x,
                                   qforge_element x_type);
qforge_status qforge_gemv_prepared(const qforge_matrix* matrix, const qforge_prepared* x, const float* bias, float beta,
                                   void* y, qforge_element y_type, int64_t n0, int64_t n1);
void qforge_prepared_free(qforge_prepared* prepared);

/* Several matrices that share x (Q/K/V, gate/up) in one call: rows [n0, n1) of the targets'
 * rows stacked in order (0 .. the sum of their N). */
typedef struct qforge_gemv_target {
    const qforge_matrix* matrix;
    const float* bias; /* may be NULL */
    void* y;
    qforge_element y_type;
    float beta;
} qforge_gemv_target;
qforge_status qforge_gemv_many(const qforge_gemv_target* targets, size_t count, const qforge_prepared* x, int64_t n0,
                               int64_t n1);

#ifdef __cplusplus
}
#endif

#endif /* QFORGE_H */
