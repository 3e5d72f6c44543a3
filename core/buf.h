/*
 * buf.h - evl_buf, the growable byte buffer evlua's modules write into.
 *
 * One buffer type for every module that builds text or bytes: the JSON
 * encoder, the envelopes, the store's snapshots, pg's array literals. The
 * caller owns the buffer and usually keeps it for reuse: appending only
 * grows it, and resetting len to 0 keeps the memory.
 *
 * Uses evl.h's aborting allocator: running out of C heap aborts, so the
 * append functions cannot fail.
 *
 * @locality any thread, each buffer used by one thread at a time.
 */
#ifndef EVL_BUF_H
#define EVL_BUF_H

#include <stddef.h>

/* A growable byte buffer owned by the caller. Initialise with {0}; free
 * data with evl_buf_free() (or free()), or keep it for reuse. data is not
 * NUL-terminated unless the writer appends a '\0'. */
typedef struct evl_buf {
    char *data;
    size_t len;
    size_t cap;
} evl_buf;

/* Make room for at least n more bytes after len (the capacity doubles
 * from 256). The append functions call it; writers with their own inline
 * fast paths call it when cap - len < n. */
void evl_buf_reserve(evl_buf *b, size_t n);

/* Append n bytes at p (p may be NULL when n is 0), the string s without
 * its NUL, or the byte c. */
void evl_buf_put(evl_buf *b, const void *p, size_t n);
void evl_buf_puts(evl_buf *b, const char *s);
void evl_buf_putc(evl_buf *b, char c);

/* Frees data and zeroes b; accepts NULL. */
void evl_buf_free(evl_buf *b);

#endif
