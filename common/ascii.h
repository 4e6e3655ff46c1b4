/* ASCII helpers for protocol text (header names, media types, parameters),
 * independent of the locale. */
#ifndef FRANCA_ASCII_H
#define FRANCA_ASCII_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

static inline char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Space or horizontal tab. */
static inline bool ascii_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* s[0..n) equals the lowercase word w, ignoring case. */
static inline bool ascii_ieq(const char *s, size_t n, const char *w)
{
    if (n != strlen(w)) return false;
    for (size_t i = 0; i < n; i++)
        if (ascii_lower(s[i]) != w[i]) return false;
    return true;
}

#endif
