/* SHA-256 (FIPS 180-4), streaming interface.
 *
 *   struct sha256_ctx c;
 *   sha256_init(&c);
 *   sha256_update(&c, part1, n1);  sha256_update(&c, part2, n2);
 *   sha256_final(&c, digest);      // 32 bytes */
#ifndef FRANCA_SHA256_H
#define FRANCA_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_DIGEST_LEN 32

struct sha256_ctx {
    uint32_t state[8];
    uint64_t total;      /* bytes absorbed so far */
    uint8_t block[64];   /* pending partial block */
    size_t fill;         /* bytes used in block */
};

void sha256_init(struct sha256_ctx *c);
void sha256_update(struct sha256_ctx *c, const void *data, size_t len);
void sha256_final(struct sha256_ctx *c, uint8_t digest[SHA256_DIGEST_LEN]);

/* One-shot helpers. */
void sha256_buffer(const void *data, size_t len, uint8_t digest[SHA256_DIGEST_LEN]);
/* Lowercase hex of a digest: 64 characters plus NUL. */
void sha256_to_hex(const uint8_t digest[SHA256_DIGEST_LEN], char hex[65]);
/* A whole file's digest as lowercase hex; 0, or -1 with a message naming the file. */
int sha256_file_hex(const char *path, char hex[65], char *err, size_t errlen);

#endif
