/*
 * harness.h - the one harness of evlua's C tests (tests/c/harness.c,
 * linked into every test as the evlua_harness library): what a test does
 * to processes, files, logs and the broker whichever side it tests.
 *
 * cmdtest.h (ct_*, the command side) and projtest.h (pt_*, the projection
 * side) build on it and keep only what is their own: their private world
 * (directory, names, config) and their producers and readers.
 *
 * Every th_ helper fails the test (exit 1 through th_die) when the system
 * misbehaves: a test never skips. Not here: check.h's CHECK macros (each
 * test counts its own), svc.h (where the services are).
 *
 * Uses: core/kafka.h (evl_kafka_partitions, evl_kafka_header),
 * librdkafka, cJSON, and curl(1) for HTTP.
 */
#ifndef EVL_HARNESS_H
#define EVL_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>
#include <librdkafka/rdkafka.h>

/* ---- dying, time, files ------------------------------------------------ */

/* Set by th_die: a test that died keeps its scratch directory. */
extern int th_died;

/* Print "FAIL: <message>" and exit(1). */
void th_die(const char *fmt, ...) __attribute__((noreturn));

long long th_now_ms(void); /* monotonic milliseconds */
double th_now(void);       /* monotonic seconds, for measuring */
void th_sleep_ms(long ms);

/* This process's resident set size in kB (VmRSS; -1: unknown). */
long th_rss_kb(void);

/* Write text to path (the whole file), or die. */
void th_write_file(const char *path, const char *text);

/* Read up to n-1 bytes of the file at path into b, NUL-terminated ("" when
 * there is no file). Returns b. */
char *th_read_file(const char *path, char *b, size_t n);

/* A NUL-terminated copy of n bytes at p (malloc'd). */
char *th_strndup(const void *p, size_t n);

/* rm -rf dir (a warning when it fails). */
void th_remove_dir(const char *dir);

/* A TCP port on 127.0.0.1 free now (the kernel's pick, for a listener a
 * child opens: never a port derived from the pid, which can be taken). */
int th_free_port(void);

/* ---- processes --------------------------------------------------------- */

/* Start argv[0] with argv (NULL-terminated), stdout and stderr appended
 * to log; env: an extra "K=V" for the child (or NULL). Returns the pid. */
pid_t th_spawn(const char *log, const char *env, const char *const argv[]);

/* Wait up to timeout_s (< 0: for ever) for pid; its exit code, 128+signal,
 * or -1 when it is still running. */
int th_wait(pid_t pid, int timeout_s);

/* Run fn(arg, out) in a child process (so that its memory and its
 * crashes are its own) and copy the size bytes it leaves in out back into
 * out; dies with "what: the child died" when it gives nothing back. The
 * child ends with _exit: no atexit handlers, the parent owns the rest. */
void th_in_child(void (*fn)(void *arg, void *out), void *arg, void *out,
                 size_t size, const char *what);

/* Send sig and wait up to timeout_s; SIGKILL after that. Returns what
 * th_wait returned (-1: it had to be killed). */
int th_stop(pid_t pid, int sig, int timeout_s);

/* ---- logs -------------------------------------------------------------- */

/* Does the file at path contain text (anywhere)? */
int th_file_has(const char *path, const char *text);

/* How many lines of the file at path contain needle (0: no file). */
int th_log_count(const char *path, const char *needle);

/* Wait up to timeout_ms until needle is on at least count lines of path;
 * returns the count seen last. */
int th_wait_log(const char *path, const char *needle, int count,
                long long timeout_ms);

/* The last 40 lines of path on stderr, under the heading name. */
void th_dump_log(const char *path, const char *name);

/* ---- HTTP (curl, 5 s at most) ----------------------------------------- */

/* GET http://127.0.0.1:port<path>: the body into b ("" when nothing). */
const char *th_http_get(int port, const char *path, char *b, size_t n);

/* GET http://127.0.0.1:port/readyz: "BODY CODE" into b. */
const char *th_readyz(int port, char *b, size_t n);

/* ---- Kafka ------------------------------------------------------------- */

/* A client config with bootstrap.servers set. */
rd_kafka_conf_t *th_kconf(const char *bootstrap);

/* Set k = v in conf, or die. */
void th_kset(rd_kafka_conf_t *conf, const char *k, const char *v);

/* rd_kafka_new(type, conf), or die "rd_kafka_new(what): ...". */
rd_kafka_t *th_kafka_new(rd_kafka_type_t type, rd_kafka_conf_t *conf,
                         const char *what);

/* A consumer in group: isolation.level isolation, no auto commit, then
 * settings (NULL-terminated key/value pairs, or NULL); rd_kafka_poll
 * serves it through rd_kafka_consumer_poll. */
rd_kafka_t *th_consumer(const char *bootstrap, const char *group,
                        const char *isolation, const char *const *settings);

/* Die with "call: message" when error is set. */
void th_kcheck(rd_kafka_error_t *error, const char *call);

/* Partition count of topic (0: no such topic), from the metadata. */
int th_partitions(const char *bootstrap, const char *topic);

/* Wait up to timeout_ms (polling every 100 ms) for topic to show in the
 * metadata; its partitions (0: it did not). */
int th_wait_topic(const char *bootstrap, const char *topic, long timeout_ms);

/* Create topic with partitions and (NULL-terminated pairs) config, and
 * wait until the metadata shows it. Dies when the broker does not answer;
 * returns the topic's own error (e.g. it exists already), 0 when made. */
rd_kafka_resp_err_t th_create_topic(const char *bootstrap, const char *topic,
                                    int partitions, const char *const *config);

/* ---- reading a topic back ---------------------------------------------- */

/* One record read back: the value parsed when it is JSON, and evlua's
 * headers. */
typedef struct th_rec {
    int32_t partition;
    int64_t offset;
    char *key;
    char *value;
    size_t len;
    char h_type[128], h_agg[128], h_ct[128];
    cJSON *json;
} th_rec;

typedef struct th_recs {
    th_rec *v;
    size_t n, cap;
} th_recs;

void th_recs_free(th_recs *r);

/* Read every partition of topic from the start to its end (for
 * read_committed: the last stable offset) as consumer group into out
 * (emptied first), in partition order, offset order within a partition.
 * Dies when an end does not come within 60 s. */
void th_read_all(const char *bootstrap, const char *group, const char *topic,
                 const char *isolation, th_recs *out);

/* String member of a record's JSON, or NULL. */
const char *th_str(const th_rec *r, const char *name);

/* Integer member, or -1. */
long long th_int(const th_rec *r, const char *name);

#endif
