/* Error reporting convention of the engine.
 *
 * Every fallible engine function returns 0 on success and -1 on failure, and
 * writes a one-line, human-readable message into a caller-provided buffer
 * (char *err, size_t errlen). The message names the file or object at fault and,
 * where possible, what to do about it. Functions never print and never abort on
 * bad input. */
#ifndef FRANCA_ERRORS_H
#define FRANCA_ERRORS_H

#include <stddef.h>

#define ERR_LEN 512

/* Formats a message into err (if err and errlen are non-zero) and returns -1. */
int set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Same, returning code instead of -1 (for modules with their own codes). */
int set_err_code(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* A printable, bounded copy of untrusted bytes for a message: at most 40 of
 * them, other than printable ASCII shown as '?', "..." when cut. */
void printable_copy(const char *s, size_t n, char *buf, size_t cap);

#endif
