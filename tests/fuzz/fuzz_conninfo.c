/*
 * fuzz_conninfo.c - libFuzzer target: no password libpq would use ever
 * shows in evl_config_redact_conninfo's output, nor any piece of a
 * conninfo libpq refuses (the promises are tests/c/conninfo_props.h).
 * A broken promise aborts, which libFuzzer reports with the input.
 *
 * Built with -fsanitize=fuzzer when the compiler has it (configure with
 * CC=clang); with any compiler, fuzz_main.c runs it over the seed corpus
 * in ctest (tests/fuzz/README.md).
 */
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conninfo_props.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a conninfo is a C string: an input stops at its first NUL */
    char *in = malloc(size + 1);
    char out[16384];
    if (!in)
        abort();
    memcpy(in, data, size);
    in[size] = '\0';
    const char *bad = conninfo_props(in, out, sizeof out);
    if (bad) {
        fprintf(stderr, "fuzz_conninfo: %s\n  conninfo: ", bad);
        for (const char *p = in; *p; p++)
            fprintf(stderr, isprint((unsigned char)*p) ? "%c" : "\\x%02x",
                    (unsigned char)*p);
        fprintf(stderr, "\n  redacted: %s\n", out);
        abort();
    }
    free(in);
    return 0;
}
