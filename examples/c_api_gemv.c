/* qforge from C: open a checkpoint, load one weight, run a GEMV on two row ranges (as two threads
 * of an engine would), and check it against the dequantized weights times x in double.
 *
 *   c_api_gemv MODEL.safetensors CONFIG.json MODULE
 *
 * Exit status 0 when every output is within the f32 bound (K + 3) u sum_k |W[n,k] x[k]|. */
#include <qforge/qforge.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* On failure: say why, then free what was made (every handle and buffer starts NULL). */
#define CHECK(call)                                                               \
    do {                                                                          \
        if ((call) != QFORGE_OK) {                                                \
            fprintf(stderr, "%s failed: %s\n", #call, qforge_last_error());       \
            goto done;                                                            \
        }                                                                         \
    } while (0)

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.safetensors CONFIG.json MODULE\n", argv[0]);
        return 2;
    }
    int status = 1;
    qforge_config* config = NULL;
    qforge_checkpoint* checkpoint = NULL;
    qforge_matrix* w = NULL;
    float *x = NULL, *y = NULL, *wd = NULL;
    int64_t rows = 0, cols = 0;
    CHECK(qforge_config_load(argv[2], &config));
    CHECK(qforge_checkpoint_open(argv[1], &checkpoint));
    CHECK(qforge_matrix_load(checkpoint, argv[3], config, QFORGE_COMPUTE_F32, &w));
    qforge_checkpoint_close(checkpoint); /* the matrix holds its packed weights */
    checkpoint = NULL;

    CHECK(qforge_matrix_shape(w, &rows, &cols));
    x = malloc(sizeof(float) * (size_t)cols);
    y = malloc(sizeof(float) * (size_t)rows);
    wd = malloc(sizeof(float) * (size_t)(rows * cols));
    if (!x || !y || !wd) goto done;
    for (int64_t k = 0; k < cols; ++k) x[k] = sinf(0.1f * (float)k);

    CHECK(qforge_gemv(w, x, QFORGE_F32, NULL, 0.0f, y, QFORGE_F32, 0, rows / 2));
    CHECK(qforge_gemv(w, x, QFORGE_F32, NULL, 0.0f, y, QFORGE_F32, rows / 2, rows));
    CHECK(qforge_dequantize(w, 0, rows, wd, QFORGE_F32));

    int bad = 0;
    for (int64_t n = 0; n < rows; ++n) {
        double exact = 0.0, magnitude = 0.0;
        for (int64_t k = 0; k < cols; ++k) {
            exact += (double)wd[n * cols + k] * x[k];
            magnitude += fabs((double)wd[n * cols + k] * x[k]);
        }
        if (fabs(y[n] - exact) > (double)(cols + 3) * ldexp(1.0, -24) * magnitude) ++bad;
    }
    printf("%s [%lld, %lld]: %d of %lld outputs outside the bound\n", qforge_matrix_kernel_name(w), (long long)rows,
           (long long)cols, bad, (long long)rows);
    status = bad == 0 ? 0 : 1;
done:
    qforge_checkpoint_close(checkpoint);
    qforge_matrix_free(w);
    qforge_config_free(config);
    free(x);
    free(y);
    free(wd);
    return status;
}
