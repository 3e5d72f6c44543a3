/*
 * envelope.h - the wire format of the command side (DESIGN.md "Wire
 * format"): commands in, event and result envelopes out.
 *
 *   command  {"id","type","aggregate_type"?,"aggregate_id",
 *             "expected_version"?,"data",
 *             "metadata":{"user_id"?,"correlation_id"?,"causation_id"?}}
 *   event    {"id","type","version","aggregate_type","aggregate_id",
 *             "sequence","occurred_at","causation_id","correlation_id",
 *             "user_id","data"}
 *   result   {"command_id","status","aggregate_id","version","events":[ids],
 *             "error"?}
 *
 * Commands are decoded with json.h's rules (exact integers within
 * +-2^53, UTF-8 everywhere, no \u0000, no byte order mark, bounded
 * nesting), the rules the Lua host applies to the same text, so a command
 * that passes here never fails there for its JSON. Envelopes are written
 * directly: the event's data is JSON text from the Lua host and is copied
 * verbatim; strings are escaped (an invalid UTF-8 byte in an error
 * message becomes U+FFFD, so a result is always valid JSON).
 *
 * Does not: route, talk to Kafka, generate ids or timestamps (the caller
 * passes them: luaapi's evl_luaapi_uuid7 and evl_luaapi_now).
 *
 * Uses json.h, buf.h and the Lua C API (a scratch lua_State the caller
 * owns).
 *
 * @locality any thread; each lua_State and evl_command on one thread.
 */
#ifndef EVL_ENVELOPE_H
#define EVL_ENVELOPE_H

#include <stddef.h>

#include <lua.h>

#include "evl.h"
#include "buf.h"

/* Largest command evlua decodes; a larger one is rejected unread. */
#define EVL_ENVELOPE_MAX_COMMAND (16u * 1024 * 1024)
/* Longest command id / command type / aggregate id, in bytes. */
#define EVL_ENVELOPE_MAX_ID           256
#define EVL_ENVELOPE_MAX_AGGREGATE_ID 1024

/* The fields of a command evlua itself looks at. Strings are
 * NUL-terminated copies owned by the struct; initialise with {0}; a parse
 * overwrites (reusing memory); free with evl_envelope_command_free(). */
typedef struct evl_command {
    const char *id;             /* NULL: absent */
    const char *type;           /* NULL: absent */
    const char *aggregate_type; /* NULL: absent (the topic decides) */
    const char *aggregate_id;   /* NULL: absent */
    int has_expected_version;
    long long expected_version;
    const char *user_id;        /* NULL: absent or null */
    const char *correlation_id; /* NULL: absent or null */
    const char *causation_id;   /* NULL: absent, or not a non-empty
                                   string of at most EVL_ENVELOPE_MAX_ID
                                   bytes (never a reason to reject); a
                                   reaction's command: the event id */
    /* internal */
    evl_buf text;
} evl_command;

/* Decode the command JSON of len bytes on L (a plain state: luaL_newstate
 * will do; the stack is left as it was) and validate it against the wire
 * format. Returns EVL_OK, or EVL_EPERMANENT with the reason in err
 * ("malformed JSON: invalid UTF-8 in string at byte 12", "the command has
 * no id (a non-empty string)", ...). Even on error, every field that could
 * be read is set (so a result can name the command's id); for malformed
 * JSON those are the top-level "id" and "aggregate_id" members written
 * plainly (no escapes) before the damage and before any nested value. */
evl_err evl_envelope_parse_command(lua_State *L, const char *json, size_t len,
                                   evl_command *cmd, char *err, size_t errlen);

/* The same, but on EVL_OK the decoded command table stays pushed on L
 * (one more slot), for a caller that goes on to use it: the Lua host
 * decides on it instead of decoding the JSON a second time. On error the
 * stack is left as it was. */
evl_err evl_envelope_parse_command_keep(lua_State *L, const char *json,
                                        size_t len, evl_command *cmd, char *err,
                                        size_t errlen);

/* Frees what cmd owns and zeroes it; accepts NULL. */
void evl_envelope_command_free(evl_command *cmd);

/* What a command is made of, for the tools that write one (evlua send,
 * the REPL, reactions). All strings NUL-terminated; data is JSON text (an
 * object). user_id, correlation_id and causation_id may be NULL (left out
 * of metadata). */
typedef struct evl_envelope_command_in {
    const char *id;
    const char *type;
    const char *aggregate_type;
    const char *aggregate_id;
    int has_expected_version;
    long long expected_version;
    const char *data;
    size_t data_len;
    const char *user_id;
    const char *correlation_id;
    const char *causation_id; /* the event a reaction answers; NULL: none */
    /* more members of metadata, as JSON text without the braces (the
     * client's own keys, none of the three above); NULL: none */
    const char *metadata_more;
} evl_envelope_command_in;

/* Append the command in the wire format to out (not NUL-terminated):
 * {"id","type","aggregate_type","aggregate_id"[,"expected_version"],
 * "data","metadata":{["user_id"][,"correlation_id"][,"causation_id"]
 * [,metadata_more]}}.
 * data must not point into out. */
void evl_envelope_command(evl_buf *out, const evl_envelope_command_in *c);

/* What an event envelope is made of. All strings NUL-terminated;
 * user_id may be NULL (written as null). data is JSON text. */
typedef struct evl_envelope_event_in {
    const char *id;
    const char *type;
    long long schema_version;
    const char *aggregate_type;
    const char *aggregate_id;
    long long sequence;
    const char *occurred_at;
    const char *causation_id;
    const char *correlation_id;
    const char *user_id;
    const char *data;
    size_t data_len;
} evl_envelope_event_in;

/* Append the event envelope to out (not NUL-terminated). */
void evl_envelope_event(evl_buf *out, const evl_envelope_event_in *e);

typedef struct evl_envelope_result_in {
    const char *command_id;   /* NULL: null */
    const char *status;       /* accepted, rejected, failed, duplicate */
    const char *aggregate_id; /* NULL: null */
    long long version;        /* negative: null */
    const char *const *events;
    size_t nevents;
    const char *error; /* NULL: no "error" field */
    /* NULL: no "event_types" field; else nevents of them, the types of
     * events in the same order */
    const char *const *event_types;
} evl_envelope_result_in;

/* Append the result envelope to out (not NUL-terminated). */
void evl_envelope_result(evl_buf *out, const evl_envelope_result_in *r);

/* Append s (len bytes) as a JSON string, quotes included. Control bytes
 * are escaped; an invalid UTF-8 sequence becomes \ufffd. */
void evl_envelope_put_string(evl_buf *out, const char *s, size_t len);

#endif
