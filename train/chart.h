/* A PNG chart of a run: losses over steps (top panel) and k-NN top-1 over
 * steps at each width (bottom panel), drawn with plain lines (no text; the
 * colours follow the order of the series). Written with libpng. */
#ifndef FRANCA_TRAIN_CHART_H
#define FRANCA_TRAIN_CHART_H

#include <stddef.h>

struct chart_series {
    int n;
    const double *x, *y;
};

int chart_write_png(const char *path, const struct chart_series *top, int ntop,
                    const struct chart_series *bottom, int nbottom, char *err, size_t errlen);

/* Reads the JSONL log of a run (lines with "step" and the loss keys "loss",
 * "dino_local", "dino_global", "ibot", "koleo"; and k-NN lines with "knn":
 * {"<width>": top1, ...}) and draws it. */
int chart_from_log(const char *log_path, const char *png_path, char *err, size_t errlen);

#endif
