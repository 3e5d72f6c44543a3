/*
 * test_config.c - the config file: defaults, every section read, unknown
 * keys and wrong types named, environment overrides, password redaction.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "config.h"

static char path[64];

static evl_err load(const char *text, evl_config *cfg, char *err)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
    return evl_config_load(path, cfg, err, EVL_ERRLEN);
}

int main(void)
{
    evl_config cfg;
    char err[EVL_ERRLEN], buf[512];
    snprintf(path, sizeof path, "/tmp/evlua-test-config-%ld.lua",
             (long)getpid());
    unsetenv("EVLUA_KAFKA_BOOTSTRAP");
    unsetenv("EVLUA_PG_CONNINFO");
    unsetenv("EVLUA_INSTANCE");

    CHECK_INT(evl_config_load(NULL, &cfg, err, sizeof err), EVL_OK,
              "no file gives the defaults");
    CHECK_STR(cfg.aggregate_dirs.v[0], "aggregates", "default aggregate dir");
    CHECK_STR(cfg.proj.isolation, "aggregate", "default isolation");
    CHECK_STR(cfg.proj.on_error, "park", "default failure policy");
    CHECK_INT(cfg.proj.threads, 2, "two projector threads by default");
    CHECK_INT(cfg.proj.batch_bytes, 4 << 20, "4 MiB per projector batch");
    CHECK(cfg.pg_conninfo == NULL, "no database by default");
    CHECK(cfg.instance == NULL, "no instance name by default");
    evl_config_free(&cfg);

    CHECK_INT(
        load("return {\n"
             "  aggregates = {'a1', 'a2'}, projections = 'p',\n"
             "  lib = 'lib',\n"
             "  kafka = { ['bootstrap.servers'] = 'h:1', linger = 5,\n"
             "            ['enable.idempotence'] = true },\n"
             "  postgres = 'host=x password=s3cret dbname=y',\n"
             "  limits = { memory_mb = 8, instructions = 5000 },\n"
             "  commands = { batch_size = 10, topics = { events = "
             "'ev.{type}' } },\n"
             "  projection = { isolation = 'batch', threads = 3, each = {\n"
             "     shipping = { on_error = 'halt', batch_size = 7,\n"
             "                  threads = 2 } } },\n"
             "  metrics = { listen = '127.0.0.1:0' },\n"
             "  log = { format = 'json' },\n"
             "  shutdown_timeout_ms = 1000,\n"
             "}\n",
             &cfg, err),
        EVL_OK, "a full config loads");
    CHECK_INT(cfg.aggregate_dirs.n, 2, "a list of aggregate dirs");
    CHECK_STR(cfg.projection_dirs.v[0], "p", "a single projection dir");
    CHECK_STR(evl_config_kafka(&cfg, "bootstrap.servers"), "h:1",
              "kafka properties pass through");
    CHECK_STR(evl_config_kafka(&cfg, "linger"), "5",
              "numbers become librdkafka strings");
    CHECK_STR(evl_config_kafka(&cfg, "enable.idempotence"), "true",
              "booleans become librdkafka strings");
    CHECK_INT(cfg.limits.memory, 8 << 20, "memory limit in MiB");
    CHECK_INT(cfg.limits.instructions, 5000, "instruction budget");
    CHECK_INT(cfg.cmd.batch_size, 10, "command batch size");
    evl_config_topic(cfg.cmd.events_topic, "customer", buf, sizeof buf);
    CHECK_STR(buf, "ev.customer", "topic patterns expand {type}");
    evl_config_topic(cfg.cmd.state_topic, "customer", buf, sizeof buf);
    CHECK_STR(buf, "customer.state", "other topics keep their default");
    evl_projection_cfg p = evl_config_projection(&cfg, "shipping");
    CHECK_STR(p.on_error, "halt", "a projection's own policy wins");
    CHECK_STR(p.isolation, "batch", "and inherits the rest");
    CHECK_INT(p.batch_size, 7, "its own batch size");
    CHECK_INT(p.threads, 2, "its own thread count");
    p = evl_config_projection(&cfg, "other");
    CHECK_STR(p.on_error, "park", "other projections keep the default");
    CHECK_INT(p.threads, 3, "and the configured thread count");
    CHECK_STR(cfg.log_format, "json", "log format");
    evl_config_free(&cfg);

    CHECK_INT(load("return { commands = { batchsize = 10 } }", &cfg, err),
              EVL_EPERMANENT, "an unknown key is an error");
    CHECK_HAS(err, "unknown key 'commands.batchsize'",
              "the message names the dotted key");
    CHECK_HAS(err, path, "and the file");
    CHECK(cfg.cmd.group_id == NULL, "a failed load leaves cfg zeroed");

    CHECK_INT(
        load("return { projection = { isolation = 'serial' } }", &cfg, err),
        EVL_EPERMANENT, "a bad enum value is an error");
    CHECK_HAS(err, "projection.isolation: is \"serial\", expected one of",
              "the message lists the choices");

    CHECK_INT(load("return { limits = { memory_mb = '64' } }", &cfg, err),
              EVL_EPERMANENT, "a string for a number is an error");
    CHECK_HAS(err, "limits.memory_mb: is a string, expected an integer",
              "the message names key and types");

    CHECK_INT(load("return { commands = { batch_size = 0 } }", &cfg, err),
              EVL_EPERMANENT, "an out-of-range number is an error");
    CHECK_HAS(err, "commands.batch_size: is 0, expected 1 to",
              "the message gives the range");

    CHECK_INT(
        load("return { projection = { batch_bytes = 1048576 } }", &cfg, err),
        EVL_OK, "projection.batch_bytes is read");
    CHECK_INT(cfg.proj.batch_bytes, 1048576, "as bytes");
    evl_config_free(&cfg);
    CHECK_INT(load("return { projection = { batch_bytes = 1000 } }", &cfg, err),
              EVL_EPERMANENT, "a batch_bytes below 64 KiB is an error");
    CHECK_HAS(err, "projection.batch_bytes: is 1000, expected 65536 to",
              "the message names the key and the range");

    CHECK_INT(load("return { projection = { threads = 0 } }", &cfg, err),
              EVL_EPERMANENT, "zero projector threads is an error");
    CHECK_HAS(err, "projection.threads: is 0, expected 1 to 64",
              "the message names the key and the range");

    CHECK_INT(load("return {\n  kafka = {\n", &cfg, err), EVL_EPERMANENT,
              "a syntax error is an error");
    CHECK_HAS(err, ":3:", "the message has the line");

    CHECK_INT(load("error('boom')", &cfg, err), EVL_EPERMANENT,
              "a runtime error is an error");
    CHECK_HAS(err, "boom", "with the script's message");

    CHECK_INT(load("return 42", &cfg, err), EVL_EPERMANENT,
              "a config must return a table");
    CHECK_HAS(err, "returned a number, expected a table", "says what came");

    CHECK_INT(load("return { lib = type(io) .. type(require) .. "
                   "type(os.execute) }",
                   &cfg, err),
              EVL_OK, "a config can look at what it has");
    CHECK_STR(cfg.lib_dir, "nilnilnil",
              "a config has no io, require or os.execute");
    evl_config_free(&cfg);

    CHECK_INT(evl_config_load("/nonexistent/evlua.lua", &cfg, err, sizeof err),
              EVL_EPERMANENT, "a missing file is an error");
    CHECK_HAS(err, "/nonexistent/evlua.lua", "naming the file");

    setenv("EVLUA_KAFKA_BOOTSTRAP", "127.0.0.1:9", 1);
    setenv("EVLUA_PG_CONNINFO", "dbname=fromenv", 1);
    setenv("EVLUA_TEST_GROUP", "g-from-env", 1);
    CHECK_INT(load("return { kafka = { ['bootstrap.servers'] = 'h:1' },\n"
                   "  postgres = 'dbname=file',\n"
                   "  commands = { group_id = os.getenv('EVLUA_TEST_GROUP') "
                   "} }",
                   &cfg, err),
              EVL_OK, "a config using os.getenv loads");
    CHECK_STR(evl_config_kafka(&cfg, "bootstrap.servers"), "127.0.0.1:9",
              "EVLUA_KAFKA_BOOTSTRAP overrides the file");
    CHECK_STR(cfg.pg_conninfo, "dbname=fromenv",
              "EVLUA_PG_CONNINFO overrides the file");
    CHECK_STR(cfg.cmd.group_id, "g-from-env", "os.getenv works in configs");
    evl_config_free(&cfg);
    unsetenv("EVLUA_KAFKA_BOOTSTRAP");
    unsetenv("EVLUA_PG_CONNINFO");

    /* instance: a stable name for static group membership */
    CHECK_INT(load("return { instance = 'node-1.eu_west' }", &cfg, err), EVL_OK,
              "an instance name loads");
    CHECK_STR(cfg.instance, "node-1.eu_west", "instance is kept as given");
    evl_config_free(&cfg);
    setenv("EVLUA_INSTANCE", "from-env", 1);
    CHECK_INT(load("return { instance = 'node-1' }", &cfg, err), EVL_OK,
              "EVLUA_INSTANCE with an instance key loads");
    CHECK_STR(cfg.instance, "from-env", "EVLUA_INSTANCE overrides the file");
    evl_config_free(&cfg);
    CHECK_INT(evl_config_load(NULL, &cfg, err, sizeof err), EVL_OK,
              "EVLUA_INSTANCE without a file loads");
    CHECK_STR(cfg.instance, "from-env", "EVLUA_INSTANCE sets the instance");
    evl_config_free(&cfg);
    setenv("EVLUA_INSTANCE", "bad name", 1);
    CHECK_INT(evl_config_load(NULL, &cfg, err, sizeof err), EVL_EPERMANENT,
              "an invalid EVLUA_INSTANCE is an error");
    CHECK_HAS(err, "EVLUA_INSTANCE is not a valid name",
              "naming the variable, not the file's key");
    unsetenv("EVLUA_INSTANCE");
    CHECK_INT(load("return { instance = 'a/b' }", &cfg, err), EVL_EPERMANENT,
              "an instance with a '/' is an error");
    CHECK_HAS(err, "instance: is not a valid name (letters, digits",
              "the message gives the alphabet");
    CHECK_INT(load("return { instance = '' }", &cfg, err), EVL_EPERMANENT,
              "an empty instance is an error");
    CHECK_INT(load("return { instance = 7 }", &cfg, err), EVL_EPERMANENT,
              "a number for instance is an error");
    CHECK_HAS(err, "instance: is a number, expected a string", "says so");
    CHECK_INT(load("return { instance = string.rep('a', 129) }", &cfg, err),
              EVL_EPERMANENT, "an instance over 128 bytes is an error");
    CHECK_INT(load("return { instance = string.rep('a', 128) }", &cfg, err),
              EVL_OK, "an instance of 128 bytes loads");
    evl_config_free(&cfg);

    /* the conninfo as libpq parsed it, where to connect first (the
     * randomized check is test_conninfo.c) */
    evl_config_redact_conninfo("host=x password=s3cret dbname=y", buf,
                               sizeof buf);
    CHECK_STR(buf, "host=x dbname=y password=***", "password redacted");
    evl_config_redact_conninfo("password = 'a b\\' c' host=x", buf, sizeof buf);
    CHECK_STR(buf, "host=x password=***", "quoted password redacted");
    evl_config_redact_conninfo("postgresql://u:s3cret@h:5/db", buf, sizeof buf);
    CHECK_STR(buf, "host=h port=5 dbname=db user=u password=***",
              "URI password redacted");
    evl_config_redact_conninfo("postgres://h/db?user=u&password=s3cret", buf,
                               sizeof buf);
    CHECK_STR(buf, "host=h dbname=db user=u password=***",
              "URI query password redacted");
    evl_config_redact_conninfo("application_name='my app' host=h", buf,
                               sizeof buf);
    CHECK_STR(buf, "host=h application_name='my app'",
              "a value with a space is quoted");
    evl_config_redact_conninfo("host=h password=Sec ret", buf, sizeof buf);
    CHECK_STR(buf,
              "(unparseable conninfo: missing \"=\" after \"...\" in "
              "connection info string)",
              "an unparseable conninfo shows libpq's message without it");
    /* the gateway: tokens are hashes with the types they may send */
    CHECK_INT(load("return { gateway = { listen = '0.0.0.0:8080',\n"
                   "  tokens = { { principal = 'shop', sha256 = "
                   "('ab'):rep(32),\n"
                   "    aggregates = { 'customer' }, commands = 'Register' "
                   "} } } }\n",
                   &cfg, err),
              EVL_OK, "a gateway with one token loads");
    CHECK_INT(cfg.gateway.ntokens, 1, "one token");
    CHECK_STR(cfg.gateway.tokens[0].principal, "shop", "its principal");
    CHECK_INT(cfg.gateway.tokens[0].sha256[31], 0xab, "its hash, as bytes");
    CHECK_STR(cfg.gateway.tokens[0].aggregates.v[0], "customer",
              "its aggregate types");
    CHECK_STR(cfg.gateway.tokens[0].commands.v[0], "Register",
              "its command types (a string is a list of one)");
    CHECK_INT(cfg.gateway.timeout_ms, 10000, "a 10 s wait by default");
    evl_config_free(&cfg);
    CHECK_INT(load("return { gateway = { tokens = { { principal = 'p',\n"
                   "  sha256 = 'my-secret-token', aggregates = '*' } } } }\n",
                   &cfg, err),
              EVL_EPERMANENT, "a token that is not a SHA-256 is refused");
    CHECK_HAS(err, "64 hex digits", "the error says a hash is expected");
    CHECK(strstr(err, "my-secret-token") == NULL, "and never quotes the value");
    CHECK_INT(load("return { gateway = { tokens = { { principal = 'p',\n"
                   "  sha256 = ('0'):rep(64) } } } }\n",
                   &cfg, err),
              EVL_EPERMANENT, "a token without aggregate types is refused");
    CHECK_HAS(err, "aggregates", "naming what is missing");
    evl_config_free(NULL);
    unlink(path);
    return check_done();
}
