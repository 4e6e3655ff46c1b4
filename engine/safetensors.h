/* safetensors reader and writer.
 *
 * Format: 8-byte little-endian header length n, n bytes of JSON header mapping
 * tensor names to {dtype, shape, data_offsets:[begin,end]} (offsets relative to
 * the end of the header), an optional "__metadata__" object of string values,
 * then the raw little-endian tensor bytes.
 *
 * The reader maps the file read-only and validates everything before handing out
 * a pointer: header length within the file, JSON well-formed, every dtype known,
 * shape product * element size == end - begin with no overflow, every range
 * inside the data section, ranges not overlapping, names unique. */
#ifndef FRANCA_SAFETENSORS_H
#define FRANCA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8
/* Largest accepted JSON header (bytes). */
#define ST_MAX_HEADER_BYTES (100u * 1024u * 1024u)

enum st_dtype { ST_F32 = 0, ST_BF16 = 1, ST_F16 = 2 };

struct st_tensor {
    char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;   /* points into the mapping; not necessarily aligned */
    size_t nbytes;
};

struct st_metadata_entry { char *key; char *value; };

struct st_file {
    const uint8_t *map;   /* whole file */
    size_t map_len;
    struct st_tensor *tensors;
    size_t n_tensors;
    struct st_metadata_entry *metadata;
    size_t n_metadata;
    int mapped;           /* map came from mmap (st_open) and is unmapped by st_close */
};

/* Maps and validates path. On failure returns -1 with a message that names the
 * file and the problem; st is left empty. */
int st_open(const char *path, struct st_file *st, char *err, size_t errlen);

/* Validates an in-memory buffer (the buffer must outlive st). Used by st_open
 * and the fuzzer. */
int st_parse(const uint8_t *buf, size_t len, struct st_file *st, char *err, size_t errlen);
/* Same, with messages prefixed by label (e.g. a file name) instead of "safetensors". */
int st_parse_labeled(const uint8_t *buf, size_t len, const char *label, struct st_file *st,
                     char *err, size_t errlen);

void st_close(struct st_file *st);

const struct st_tensor *st_find(const struct st_file *st, const char *name);
const char *st_metadata_get(const struct st_file *st, const char *key);

/* Element size of a dtype in bytes. */
size_t st_dtype_size(enum st_dtype dt);
const char *st_dtype_name(enum st_dtype dt);
/* The dtype of a command-line name ("f32", "bf16" or "f16"); -1 for anything else. */
int st_dtype_parse(const char *name, enum st_dtype *out);

/* Number of elements of t (product of its shape). */
size_t st_numel(const struct st_tensor *t);

/* Converts n elements of t (starting at element `first`) to float32. Elements
 * past the end of the tensor are written as 0 (never read out of bounds). */
void st_to_f32(const struct st_tensor *t, size_t first, size_t n, float *out);

/* Scalar conversions used by the reader and writer (round-to-nearest-even). */
float st_bf16_to_f32(uint16_t h);
float st_f16_to_f32(uint16_t h);
uint16_t st_f32_to_bf16(float f);
uint16_t st_f32_to_f16(float f);

/* ---- writer ----
 * Collects tensors (pointers are borrowed until st_writer_finish) and writes the
 * file atomically: temporary file in the same directory, fsync, rename. */
struct st_writer;

struct st_writer *st_writer_new(void);
/* data is float32; it is stored as dtype (F32, BF16 round-to-nearest-even, F16). */
int st_writer_add_f32(struct st_writer *w, const char *name, enum st_dtype dtype,
                      const float *data, int ndim, const int64_t *shape,
                      char *err, size_t errlen);
int st_writer_set_metadata(struct st_writer *w, const char *key, const char *value,
                           char *err, size_t errlen);
int st_writer_finish(struct st_writer *w, const char *path, char *err, size_t errlen);
/* Serialises to a malloc'd buffer instead of a file (for HTTP responses). */
int st_writer_to_buffer(struct st_writer *w, uint8_t **buf, size_t *len,
                        char *err, size_t errlen);
void st_writer_free(struct st_writer *w);

#endif
