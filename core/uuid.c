/*
 * uuid.c - version 5 UUIDs (uuid.h): SHA-1 over the namespace's 16 bytes
 * and the name, the first 16 bytes of the digest with the version (5)
 * and the variant (RFC 9562) written over their bits.
 */
#include "uuid.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/sha.h>

#include "evl.h"

const unsigned char EVL_UUID_REACTIONS[16] = {
    0x02, 0xad, 0x84, 0x1b, 0xa6, 0x2f, 0x48, 0xe4,
    0xad, 0xc9, 0x67, 0xaf, 0x3d, 0xd0, 0xb4, 0xf5};

static void format(char out[37], const unsigned char b[16])
{
    static const char hex[] = "0123456789abcdef";
    char *p = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *p++ = '-';
        *p++ = hex[b[i] >> 4];
        *p++ = hex[b[i] & 15];
    }
    *p = '\0';
}

void evl_uuid_v5(char out[37], const unsigned char ns[16], const char *name,
                 size_t len)
{
    unsigned char small[256], *buf = small, md[SHA_DIGEST_LENGTH];
    if (16 + len > sizeof small)
        buf = evl_xmalloc(16 + len);
    memcpy(buf, ns, 16);
    memcpy(buf + 16, name, len);
    SHA1(buf, 16 + len, md);
    if (buf != small)
        free(buf);
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x50); /* version 5 */
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80); /* variant 10 */
    format(out, md);
}

void evl_uuid_reaction(char out[37], const char *event_id, const char *type,
                       size_t i)
{
    char small[256], *name = small;
    int n = snprintf(small, sizeof small, "%s/%s/%zu", event_id, type, i);
    if (n >= (int)sizeof small) {
        name = evl_xmalloc((size_t)n + 1);
        snprintf(name, (size_t)n + 1, "%s/%s/%zu", event_id, type, i);
    }
    evl_uuid_v5(out, EVL_UUID_REACTIONS, name, (size_t)n);
    if (name != small)
        free(name);
}
