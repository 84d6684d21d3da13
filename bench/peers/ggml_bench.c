// Times ggml's quantized matrix multiplication (llama.cpp's CPU backend, loaded from the npm
// package's shared libraries) on one shape, for bench/peers/peers.py. Our own timing harness: it
// only calls ggml's public C API (ggml.h, ggml-backend.h, ggml-alloc.h).
//
//   ggml_bench LIB_DIR TYPE LAYOUT K N M THREADS MODES [COLD_BYTES REPS MIN_TIME]
//     TYPE q4_0 | q4_K | mxfp4;  LAYOUT plain (CPU buffer) | repack (CPU_REPACK, what llama.cpp uses)
//     MODES cold | hot | cold,hot
//
// One JSON object per line per mode on stdout: median seconds per pass over W and the rates.
//
// How a pass is timed, the same way for cold and hot: one graph holds `copies` independent
// ggml_mul_mat nodes (y_i = W_i x) and is computed on a persistent thread pool, as llama.cpp
// computes a model's layers; time per pass = graph time / copies, so the per-graph overhead is
// amortized as in a real model. Cold: the copies W_i are distinct tensors totalling more than
// COLD_BYTES (256 MiB by default, as qforge's bench_kernels), so every node streams its weights
// from DRAM; hot: every node reads the same W.
#define _POSIX_C_SOURCE 199309L  // clock_gettime
#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml-cpu.h>
#include <ggml.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char* msg, const char* detail) {
    fprintf(stderr, "ggml_bench: %s%s%s\n", msg, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static float next_normal(void) {  // Box-Muller on xorshift64
    double u[2];
    for (int i = 0; i < 2; ++i) {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        u[i] = ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
    }
    return (float)(sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

static int compare_doubles(const void* a, const void* b) {
    const double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static enum ggml_type parse_type(const char* s) {
    if (strcmp(s, "q4_0") == 0) return GGML_TYPE_Q4_0;
    if (strcmp(s, "q4_K") == 0) return GGML_TYPE_Q4_K;
    if (strcmp(s, "mxfp4") == 0) return GGML_TYPE_MXFP4;
    die("unknown type (q4_0, q4_K, mxfp4)", s);
    return GGML_TYPE_COUNT;
}

static ggml_backend_buffer_type_t find_buffer_type(ggml_backend_dev_t dev, const char* layout) {
    if (strcmp(layout, "plain") == 0) return ggml_backend_dev_buffer_type(dev);
    if (strcmp(layout, "repack") != 0) die("unknown layout (plain, repack)", layout);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    ggml_backend_dev_get_extra_bufts_t get_extra =
        (ggml_backend_dev_get_extra_bufts_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts");
    if (get_extra)
        for (ggml_backend_buffer_type_t* b = get_extra(dev); b && *b; ++b)
            if (strcmp(ggml_backend_buft_name(*b), "CPU_REPACK") == 0) return *b;
    die("the CPU backend has no CPU_REPACK buffer type", NULL);
    return NULL;
}

struct timing {
    double median_seconds;  // per pass over W (one mul_mat)
    double best_seconds;    // the fastest repetition: on a loaded machine, closest to the unloaded speed
    int reps;
    long graphs_per_rep;
};

// Median over `reps` repetitions of the time per mul_mat; each repetition computes the graph
// enough times to last at least min_time seconds.
static struct timing time_graph(ggml_backend_t backend, struct ggml_cgraph* graph, int nodes, int reps, double min_time) {
    ggml_backend_graph_compute(backend, graph);  // warm-up: thread pool, work buffer, page faults
    double t0 = now_seconds();
    ggml_backend_graph_compute(backend, graph);
    const double one = now_seconds() - t0;
    long per_rep = (long)ceil(min_time / (one > 1e-9 ? one : 1e-9));
    if (per_rep < 1) per_rep = 1;
    double* per_pass = malloc(sizeof(double) * (size_t)reps);
    for (int r = 0; r < reps; ++r) {
        t0 = now_seconds();
        for (long i = 0; i < per_rep; ++i)
            if (ggml_backend_graph_compute(backend, graph) != GGML_STATUS_SUCCESS) die("graph compute failed", NULL);
        per_pass[r] = (now_seconds() - t0) / (double)(per_rep * nodes);
    }
    qsort(per_pass, (size_t)reps, sizeof(double), compare_doubles);
    struct timing t = {reps % 2 ? per_pass[reps / 2] : 0.5 * (per_pass[reps / 2 - 1] + per_pass[reps / 2]), per_pass[0], reps,
                       per_rep};
    free(per_pass);
    return t;
}

int main(int argc, char** argv) {
    if (argc < 9) {
        fprintf(stderr, "usage: ggml_bench LIB_DIR TYPE LAYOUT K N M THREADS MODES [COLD_BYTES REPS MIN_TIME]\n");
        return 2;
    }
    const char* lib_dir = argv[1];
    const char* type_name = argv[2];
    const char* layout = argv[3];
    const int64_t K = atoll(argv[4]), N = atoll(argv[5]), M = atoll(argv[6]);
    const int threads = atoi(argv[7]);
    const char* modes = argv[8];
    const double cold_bytes = argc > 9 ? atof(argv[9]) : 256.0 * 1024 * 1024;
    const int reps = argc > 10 ? atoi(argv[10]) : 5;
    const double min_time = argc > 11 ? atof(argv[11]) : 0.3;
    const enum ggml_type type = parse_type(type_name);
    if (K % ggml_blck_size(type) != 0) die("K is not a multiple of the block size", argv[4]);

    ggml_backend_load_all_from_path(lib_dir);
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (!dev) die("no CPU backend found in", lib_dir);
    ggml_backend_t backend = ggml_backend_dev_init(dev, NULL);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    typedef struct ggml_threadpool* (*threadpool_new_t)(struct ggml_threadpool_params*);
    typedef void (*set_threadpool_t)(ggml_backend_t, struct ggml_threadpool*);
    threadpool_new_t threadpool_new = (threadpool_new_t)ggml_backend_reg_get_proc_address(reg, "ggml_threadpool_new");
    set_threadpool_t set_threadpool = (set_threadpool_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_cpu_set_threadpool");
    ggml_backend_set_n_threads_t set_n_threads =
        (ggml_backend_set_n_threads_t)ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads");
    if (!threadpool_new || !set_threadpool || !set_n_threads) die("the CPU backend lacks the thread pool API", NULL);
    set_n_threads(backend, threads);
    struct ggml_threadpool_params tpp = ggml_threadpool_params_default(threads);
    set_threadpool(backend, threadpool_new(&tpp));
    ggml_backend_buffer_type_t weight_buft = find_buffer_type(dev, layout);

    // The quantized weights, once: ggml's own quantizer on normal(0, 1) values.
    const size_t weight_bytes = ggml_row_size(type, K) * (size_t)N;
    float* dense = malloc(sizeof(float) * (size_t)(K * N));
    for (int64_t i = 0; i < K * N; ++i) dense[i] = next_normal();
    void* quantized = malloc(weight_bytes);
    ggml_quantize_chunk(type, dense, quantized, 0, N, K, NULL);
    free(dense);
    float* x_values = malloc(sizeof(float) * (size_t)(K * M));
    for (int64_t i = 0; i < K * M; ++i) x_values[i] = next_normal();

    const int cold_copies = (int)(cold_bytes / (double)weight_bytes) + 2;  // as bench_kernels
    for (const char* mode = modes; *mode;) {
        const int cold = strncmp(mode, "cold", 4) == 0;
        if (!cold && strncmp(mode, "hot", 3) != 0) die("unknown mode (cold, hot)", mode);
        mode += cold ? 4 : 3;
        if (*mode == ',') ++mode;
        const int nodes = cold_copies;
        const int weights = cold ? cold_copies : 1;

        struct ggml_init_params wp = {ggml_tensor_overhead() * (size_t)weights + 1024, NULL, true};
        struct ggml_context* wctx = ggml_init(wp);
        struct ggml_tensor** w = malloc(sizeof(*w) * (size_t)weights);
        for (int i = 0; i < weights; ++i) w[i] = ggml_new_tensor_2d(wctx, type, K, N);
        ggml_backend_buffer_t wbuf = ggml_backend_alloc_ctx_tensors_from_buft(wctx, weight_buft);
        if (!wbuf) die("cannot allocate the weights", NULL);
        ggml_backend_buffer_set_usage(wbuf, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);

        const size_t graph_size = (size_t)nodes + 16;
        struct ggml_init_params gp = {ggml_tensor_overhead() * (graph_size + 2) + ggml_graph_overhead_custom(graph_size, false), NULL, true};
        struct ggml_context* gctx = ggml_init(gp);
        struct ggml_tensor* x = ggml_new_tensor_2d(gctx, GGML_TYPE_F32, K, M);
        struct ggml_cgraph* graph = ggml_new_graph_custom(gctx, graph_size, false);
        for (int i = 0; i < nodes; ++i) ggml_build_forward_expand(graph, ggml_mul_mat(gctx, w[cold ? i : 0], x));
        ggml_backend_buffer_t gbuf = ggml_backend_alloc_ctx_tensors(gctx, backend);
        if (!gbuf) die("cannot allocate the activations", NULL);
        ggml_backend_tensor_set(x, x_values, 0, sizeof(float) * (size_t)(K * M));
        // For CPU_REPACK this holds only if ggml has a repacked kernel for the type, shape and CPU.
        if (!ggml_backend_dev_supports_op(dev, ggml_graph_node(graph, 0))) die("the CPU backend has no such mul_mat", layout);
        for (int i = 0; i < weights; ++i) ggml_backend_tensor_set(w[i], quantized, 0, weight_bytes);  // repacks if CPU_REPACK

        const struct timing t = time_graph(backend, graph, nodes, reps, min_time);
        printf("{\"peer\": \"ggml\", \"type\": \"%s\", \"layout\": \"%s\", \"K\": %lld, \"N\": %lld, \"M\": %lld, "
               "\"threads\": %d, \"mode\": \"%s\", \"weight_bytes\": %zu, \"copies\": %d, \"nodes_per_graph\": %d, "
               "\"reps\": %d, \"graphs_per_rep\": %ld, \"median_seconds\": %.9g, \"best_seconds\": %.9g, \"bytes_per_second\": %.6g, "
               "\"GFLOPS\": %.6g, \"weight_buffer\": \"%s\"}\n",
               type_name, layout, (long long)K, (long long)N, (long long)M, threads, cold ? "cold" : "hot", weight_bytes,
               weights, nodes, t.reps, t.graphs_per_rep, t.median_seconds, t.best_seconds, (double)weight_bytes / t.median_seconds,
               2e-9 * (double)(M * N * K) / t.median_seconds, ggml_backend_buffer_name(wbuf));
        fflush(stdout);
        ggml_backend_buffer_free(gbuf);
        ggml_free(gctx);
        ggml_backend_buffer_free(wbuf);
        ggml_free(wctx);
        free(w);
    }
    free(quantized);
    free(x_values);
    ggml_backend_free(backend);
    return 0;
}
