/* Run the digits classifier compiled ahead of time by graphnn, with no Python.
 *
 *   python examples/train_digits.py --out out/digits      (writes libdigits.so, digits.h)
 *   cc -O2 -I out/digits examples/aot/main.c -L out/digits -ldigits -lm -lpthread \
 *      -Wl,-rpath,"$PWD/out/digits" -o digits_demo
 *   ./digits_demo images.f32
 *
 * images.f32: float32 values (little-endian), DIGITS_X_SIZE per model input (one batch, NCHW);
 * the file may hold several batches. For each batch it prints one line per image: the
 * predicted class, then the DIGITS_OUTPUT_SIZE / batch output values.
 */
#include <stdio.h>
#include <stdlib.h>

#include "digits.h"

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s INPUT.f32\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    digits_context *ctx;
    int status = digits_create(&ctx, NULL);
    if (status != GRAPHNN_OK) {
        const char *feature = digits_missing_cpu_feature();
        fprintf(stderr, "digits_create: %s%s%s\n", digits_error_string(status),
                feature ? ": " : "", feature ? feature : "");
        fclose(f);
        return 1;
    }
    static float x[DIGITS_X_SIZE];
    static float y[DIGITS_OUTPUT_SIZE];
    const int classes = 10;
    const int batch = DIGITS_OUTPUT_SIZE / classes;
    while (fread(x, sizeof(float), DIGITS_X_SIZE, f) == DIGITS_X_SIZE) {
        status = digits_run(ctx, x, y);
        if (status != GRAPHNN_OK) {
            fprintf(stderr, "digits_run: %s\n", digits_error_string(status));
            break;
        }
        for (int b = 0; b < batch; b++) {
            const float *row = y + b * classes;
            int best = 0;
            for (int k = 1; k < classes; k++)
                if (row[k] > row[best]) best = k;
            printf("%d", best);
            for (int k = 0; k < classes; k++) printf(" %.9g", row[k]);
            printf("\n");
        }
    }
    digits_destroy(ctx);
    fclose(f);
    return status == GRAPHNN_OK ? 0 : 1;
}
