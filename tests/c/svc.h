/*
 * svc.h - where the tests find the real services.
 *
 * ctest's fixtures (tests/CMakeLists.txt) start Kafka and PostgreSQL with
 * scripts/kafka and scripts/pg, which write the bootstrap address and the
 * conninfo under $EVLUA_RUN_DIR. EVLUA_KAFKA_BOOTSTRAP and
 * EVLUA_PG_CONNINFO override them. A test that needs a service and finds
 * none FAILS: it never skips.
 */
#ifndef EVL_SVC_H
#define EVL_SVC_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Read the first line of $EVLUA_RUN_DIR/<rel> into buf, or exit(1). */
static inline void svc_read_(const char *envname, const char *rel, char *buf,
                             size_t n)
{
    const char *v = getenv(envname);
    if (v && *v) {
        snprintf(buf, n, "%s", v);
        return;
    }
    const char *dir = getenv("EVLUA_RUN_DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir ? dir : ".run", rel);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(buf, (int)n, f)) {
        fprintf(stderr,
                "FAIL: this test needs a running service: neither %s nor %s "
                "is set/readable (start it with scripts/%s start, or run the "
                "test through ctest, whose fixtures start it)\n",
                envname, path, strncmp(rel, "kafka", 5) == 0 ? "kafka" : "pg");
        exit(1);
    }
    fclose(f);
    buf[strcspn(buf, "\r\n")] = '\0';
}

static inline void svc_kafka_bootstrap(char *buf, size_t n)
{
    svc_read_("EVLUA_KAFKA_BOOTSTRAP", "kafka/bootstrap", buf, n);
}

static inline void svc_pg_conninfo(char *buf, size_t n)
{
    svc_read_("EVLUA_PG_CONNINFO", "pg/conninfo", buf, n);
}

#endif
