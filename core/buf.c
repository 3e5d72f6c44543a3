/* buf.c - the growable byte buffer (see buf.h). Capacity doubles, so
 * appending n bytes one at a time costs O(n) copies in all. */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

#include "evl.h"

void evl_buf_reserve(evl_buf *b, size_t n)
{
    size_t cap;
    if (b->cap - b->len >= n)
        return;
    cap = b->cap ? b->cap : 256;
    while (cap - b->len < n)
        cap *= 2;
    b->data = evl_xrealloc(b->data, cap);
    b->cap = cap;
}

void evl_buf_put(evl_buf *b, const void *p, size_t n)
{
    evl_buf_reserve(b, n);
    if (n) /* p may be NULL when n is 0 */
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

void evl_buf_puts(evl_buf *b, const char *s)
{
    evl_buf_put(b, s, strlen(s));
}

void evl_buf_putc(evl_buf *b, char c)
{
    if (b->len == b->cap)
        evl_buf_reserve(b, 1);
    b->data[b->len++] = c;
}

void evl_buf_free(evl_buf *b)
{
    if (!b)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
