#include "chart.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <png.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "errors.h"

#define CW 900
#define CH 640

static const uint8_t COLORS[][3] = {
    {31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40}, {148, 103, 189},
    {140, 86, 75},  {227, 119, 194}, {127, 127, 127}, {188, 189, 34}, {23, 190, 207},
};
#define NCOLORS (int)(sizeof COLORS / sizeof COLORS[0])

struct canvas {
    uint8_t *px;
    int w, h;
};

static void put(struct canvas *c, int x, int y, const uint8_t *rgb)
{
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    memcpy(c->px + ((size_t)y * c->w + x) * 3, rgb, 3);
}

static void line(struct canvas *c, int x0, int y0, int x1, int y1, const uint8_t *rgb, int thick)
{
    int dx = abs(x1 - x0), sx = x0 < x1 ? 1 : -1, dy = -abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
    int e = dx + dy;
    for (;;) {
        for (int a = 0; a < thick; a++)
            for (int b = 0; b < thick; b++) put(c, x0 + a, y0 + b, rgb);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * e;
        if (e2 >= dy) {
            e += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            e += dx;
            y0 += sy;
        }
    }
}

static void rect(struct canvas *c, int x0, int y0, int x1, int y1, const uint8_t *rgb)
{
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++) put(c, x, y, rgb);
}

/* One panel in [px0, px1] x [py0, py1]. */
static void panel(struct canvas *c, int px0, int py0, int px1, int py1,
                  const struct chart_series *s, int ns)
{
    static const uint8_t axis[3] = {0, 0, 0}, grid[3] = {225, 225, 225};
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < s[k].n; i++) {
            if (!isfinite(s[k].x[i]) || !isfinite(s[k].y[i])) continue;
            xmin = fmin(xmin, s[k].x[i]);
            xmax = fmax(xmax, s[k].x[i]);
            ymin = fmin(ymin, s[k].y[i]);
            ymax = fmax(ymax, s[k].y[i]);
        }
    for (int g = 0; g <= 4; g++) {
        int y = py0 + (py1 - py0) * g / 4, x = px0 + (px1 - px0) * g / 4;
        line(c, px0, y, px1, y, grid, 1);
        line(c, x, py0, x, py1, grid, 1);
    }
    line(c, px0, py1, px1, py1, axis, 2);
    line(c, px0, py0, px0, py1, axis, 2);
    if (!(xmin <= xmax)) return;
    if (xmax == xmin) xmax = xmin + 1;
    if (ymax == ymin) {
        ymax += 0.5;
        ymin -= 0.5;
    }
    const double pad = 0.05 * (ymax - ymin);
    ymin -= pad;
    ymax += pad;
    for (int k = 0; k < ns; k++) {
        const uint8_t *col = COLORS[k % NCOLORS];
        int have = 0, lx = 0, ly = 0;
        for (int i = 0; i < s[k].n; i++) {
            if (!isfinite(s[k].x[i]) || !isfinite(s[k].y[i])) continue;
            int x = px0 + (int)lround((s[k].x[i] - xmin) / (xmax - xmin) * (px1 - px0));
            int y = py1 - (int)lround((s[k].y[i] - ymin) / (ymax - ymin) * (py1 - py0));
            if (have) line(c, lx, ly, x, y, col, 2);
            else rect(c, x - 1, y - 1, x + 1, y + 1, col);
            lx = x;
            ly = y;
            have = 1;
        }
        rect(c, px1 - 18 * (ns - k), py0 - 14, px1 - 18 * (ns - k) + 12, py0 - 4, col); /* legend */
    }
}

int chart_write_png(const char *path, const struct chart_series *top, int ntop,
                    const struct chart_series *bottom, int nbottom, char *err, size_t errlen)
{
    struct canvas c = {malloc((size_t)CW * CH * 3), CW, CH};
    if (!c.px) return set_err(err, errlen, "chart: out of memory");
    memset(c.px, 255, (size_t)CW * CH * 3);
    panel(&c, 50, 30, CW - 20, CH / 2 - 30, top, ntop);
    panel(&c, 50, CH / 2 + 30, CW - 20, CH - 30, bottom, nbottom);

    size_t tl = strlen(path) + 16;
    char *tmp = malloc(tl);
    if (!tmp) {
        free(c.px);
        return set_err(err, errlen, "chart: out of memory");
    }
    snprintf(tmp, tl, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        set_err(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        free(c.px);
        return -1;
    }
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    png_bytep *rows = malloc(CH * sizeof *rows);
    int rc = -1;
    if (!png || !info || !rows) {
        set_err(err, errlen, "chart: libpng initialisation failed");
        goto out;
    }
    if (setjmp(png_jmpbuf(png))) {
        set_err(err, errlen, "%s: PNG write failed", path);
        goto out;
    }
    png_init_io(png, f);
    png_set_IHDR(png, info, CW, CH, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    for (int y = 0; y < CH; y++) rows[y] = c.px + (size_t)y * CW * 3;
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    rc = 0;
out:
    if (png) png_destroy_write_struct(&png, info ? &info : NULL);
    free(rows);
    if (fclose(f) != 0 && rc == 0) rc = set_err(err, errlen, "%s: write failed", tmp);
    if (rc == 0 && rename(tmp, path) < 0) rc = set_err(err, errlen, "%s: rename failed", path);
    if (rc < 0) unlink(tmp);
    free(tmp);
    free(c.px);
    return rc;
}

struct vec {
    double *x, *y;
    int n, cap;
};

static int vpush(struct vec *v, double x, double y)
{
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 64;
        double *a = realloc(v->x, cap * sizeof *a);
        if (!a) return -1;
        v->x = a;
        double *b = realloc(v->y, cap * sizeof *b);
        if (!b) return -1;
        v->y = b;
        v->cap = cap;
    }
    v->x[v->n] = x;
    v->y[v->n] = y;
    v->n++;
    return 0;
}

#define MAXW 16
int chart_from_log(const char *log_path, const char *png_path, char *err, size_t errlen)
{
    static const char *LOSS_KEYS[] = {"loss", "dino_local", "dino_global", "ibot", "koleo"};
    enum { NL = 5 };
    FILE *f = fopen(log_path, "r");
    if (!f) return set_err(err, errlen, "%s: cannot open: %s", log_path, strerror(errno));
    struct vec loss[NL] = {{0}}, knn[MAXW] = {{0}};
    char widths[MAXW][16];
    int nw = 0, oom = 0;
    char *lineb = NULL;
    size_t cap = 0;
    while (getline(&lineb, &cap, f) > 0) {
        json_t *o = json_loads(lineb, 0, NULL);
        if (!o) continue;
        json_t *js = json_object_get(o, "step");
        if (json_is_number(js)) {
            const double step = json_number_value(js);
            json_t *kn = json_object_get(o, "knn");
            if (json_is_object(kn)) {
                const char *k;
                json_t *v;
                json_object_foreach(kn, k, v) {
                    int wi = -1;
                    for (int i = 0; i < nw; i++)
                        if (!strcmp(widths[i], k)) wi = i;
                    if (wi < 0 && nw < MAXW) {
                        snprintf(widths[nw], sizeof widths[nw], "%s", k);
                        wi = nw++;
                    }
                    if (wi >= 0 && json_is_number(v)) oom |= vpush(&knn[wi], step, json_number_value(v));
                }
            } else {
                for (int i = 0; i < NL; i++) {
                    json_t *v = json_object_get(o, LOSS_KEYS[i]);
                    if (json_is_number(v)) oom |= vpush(&loss[i], step, json_number_value(v));
                }
            }
        }
        json_decref(o);
    }
    free(lineb);
    fclose(f);
    struct chart_series top[NL], bot[MAXW];
    for (int i = 0; i < NL; i++) top[i] = (struct chart_series){loss[i].n, loss[i].x, loss[i].y};
    for (int i = 0; i < nw; i++) bot[i] = (struct chart_series){knn[i].n, knn[i].x, knn[i].y};
    int rc = oom ? set_err(err, errlen, "chart: out of memory")
                 : chart_write_png(png_path, top, NL, bot, nw, err, errlen);
    for (int i = 0; i < NL; i++) {
        free(loss[i].x);
        free(loss[i].y);
    }
    for (int i = 0; i < MAXW; i++) {
        free(knn[i].x);
        free(knn[i].y);
    }
    return rc;
}
