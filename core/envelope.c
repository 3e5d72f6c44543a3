/* envelope.c - commands in, event and result envelopes out (envelope.h). */
#include "envelope.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "json.h"

/* ---- JSON writing ------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, cp = c & 0x1f;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, cp = c & 0x0f;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, cp = c & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return len;
}

void evl_envelope_put_string(evl_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of bytes copied as they are */

    evl_buf_putc(out, '"');
    while (i < len) {
        unsigned c = p[i];
        size_t n;
        const char *esc = NULL;
        char u[7];
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0x80 && (n = utf8_len(p + i, len - i)) > 0) {
            i += n;
            continue;
        }
        evl_buf_put(out, s + run, i - run);
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        default:
            if (c < 0x20) {
                u[0] = '\\', u[1] = 'u', u[2] = '0', u[3] = '0';
                u[4] = hex[c >> 4], u[5] = hex[c & 15], u[6] = '\0';
                esc = u;
            } else {
                esc = "\\ufffd"; /* a byte of invalid UTF-8 */
            }
        }
        evl_buf_puts(out, esc);
        run = ++i;
    }
    evl_buf_put(out, s + run, len - run);
    evl_buf_putc(out, '"');
}

static void put_str(evl_buf *out, const char *s)
{
    if (s)
        evl_envelope_put_string(out, s, strlen(s));
    else
        evl_buf_puts(out, "null");
}

static void put_int(evl_buf *out, long long v)
{
    char num[32];
    int n = snprintf(num, sizeof num, "%lld", v);
    evl_buf_put(out, num, (size_t)n);
}

void evl_envelope_command(evl_buf *out, const evl_envelope_command_in *c)
{
    evl_buf_puts(out, "{\"id\":");
    put_str(out, c->id);
    evl_buf_puts(out, ",\"type\":");
    put_str(out, c->type);
    evl_buf_puts(out, ",\"aggregate_type\":");
    put_str(out, c->aggregate_type);
    evl_buf_puts(out, ",\"aggregate_id\":");
    put_str(out, c->aggregate_id);
    if (c->has_expected_version) {
        evl_buf_puts(out, ",\"expected_version\":");
        put_int(out, c->expected_version);
    }
    evl_buf_puts(out, ",\"data\":");
    evl_buf_put(out, c->data, c->data_len);
    evl_buf_puts(out, ",\"metadata\":{");
    const char *sep = "";
    if (c->user_id) {
        evl_buf_puts(out, "\"user_id\":");
        put_str(out, c->user_id);
        sep = ",";
    }
    if (c->correlation_id) {
        evl_buf_puts(out, sep);
        evl_buf_puts(out, "\"correlation_id\":");
        put_str(out, c->correlation_id);
        sep = ",";
    }
    if (c->causation_id) {
        evl_buf_puts(out, sep);
        evl_buf_puts(out, "\"causation_id\":");
        put_str(out, c->causation_id);
        sep = ",";
    }
    if (c->metadata_more && *c->metadata_more) {
        evl_buf_puts(out, sep);
        evl_buf_puts(out, c->metadata_more);
    }
    evl_buf_puts(out, "}}");
}

void evl_envelope_event(evl_buf *out, const evl_envelope_event_in *e)
{
    evl_buf_puts(out, "{\"id\":");
    put_str(out, e->id);
    evl_buf_puts(out, ",\"type\":");
    put_str(out, e->type);
    evl_buf_puts(out, ",\"version\":");
    put_int(out, e->schema_version);
    evl_buf_puts(out, ",\"aggregate_type\":");
    put_str(out, e->aggregate_type);
    evl_buf_puts(out, ",\"aggregate_id\":");
    put_str(out, e->aggregate_id);
    evl_buf_puts(out, ",\"sequence\":");
    put_int(out, e->sequence);
    evl_buf_puts(out, ",\"occurred_at\":");
    put_str(out, e->occurred_at);
    evl_buf_puts(out, ",\"causation_id\":");
    put_str(out, e->causation_id);
    evl_buf_puts(out, ",\"correlation_id\":");
    put_str(out, e->correlation_id);
    evl_buf_puts(out, ",\"user_id\":");
    put_str(out, e->user_id);
    evl_buf_puts(out, ",\"data\":");
    evl_buf_put(out, e->data, e->data_len);
    evl_buf_putc(out, '}');
}

void evl_envelope_result(evl_buf *out, const evl_envelope_result_in *r)
{
    evl_buf_puts(out, "{\"command_id\":");
    put_str(out, r->command_id);
    evl_buf_puts(out, ",\"status\":");
    put_str(out, r->status);
    evl_buf_puts(out, ",\"aggregate_id\":");
    put_str(out, r->aggregate_id);
    evl_buf_puts(out, ",\"version\":");
    if (r->version >= 0)
        put_int(out, r->version);
    else
        evl_buf_puts(out, "null");
    evl_buf_puts(out, ",\"events\":[");
    for (size_t i = 0; i < r->nevents; i++) {
        if (i)
            evl_buf_putc(out, ',');
        put_str(out, r->events[i]);
    }
    evl_buf_putc(out, ']');
    if (r->event_types) {
        evl_buf_puts(out, ",\"event_types\":[");
        for (size_t i = 0; i < r->nevents; i++) {
            if (i)
                evl_buf_putc(out, ',');
            put_str(out, r->event_types[i]);
        }
        evl_buf_putc(out, ']');
    }
    if (r->error) {
        evl_buf_puts(out, ",\"error\":");
        put_str(out, r->error);
    }
    evl_buf_putc(out, '}');
}

/* ---- command parsing --------------------------------------------------- */

/* Offsets into cmd->text, turned into pointers once the text stops
 * growing. SIZE_MAX: absent. */
typedef struct fields {
    size_t id, type, aggregate_type, aggregate_id, user_id, correlation_id,
        causation_id;
} fields;

static size_t keep(evl_command *cmd, const char *s, size_t n)
{
    size_t off = cmd->text.len;
    evl_buf_put(&cmd->text, s, n);
    evl_buf_putc(&cmd->text, '\0');
    return off;
}

static const char *at(const evl_command *cmd, size_t off)
{
    return off == SIZE_MAX ? NULL : cmd->text.data + off;
}

static int is_array(lua_State *L, int idx)
{
    int r;
    if (!lua_getmetatable(L, idx))
        return 0;
    evl_json_push_array_mt(L);
    r = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return r;
}

/* Read field `name` of the table at t as a string into *off (SIZE_MAX when
 * absent, or null and nullable). Returns NULL or the complaint. */
static const char *get_string(lua_State *L, int t, const char *name,
                              size_t maxlen, int nullable, evl_command *cmd,
                              size_t *off)
{
    const char *why = NULL;
    size_t n;
    *off = SIZE_MAX;
    lua_pushstring(L, name);
    switch (lua_rawget(L, t)) {
    case LUA_TNIL: why = "absent"; break;
    case LUA_TSTRING: {
        const char *s = lua_tolstring(L, -1, &n);
        if (n == 0)
            why = "empty";
        else if (n > maxlen)
            why = "too long";
        else if (memchr(s, '\0', n))
            why = "contains a NUL";
        else
            *off = keep(cmd, s, n);
        break;
    }
    default:
        if (nullable && evl_json_is_null(L, -1))
            why = "absent";
        else
            why = "not a string";
    }
    lua_pop(L, 1);
    return why;
}

/* A command that cannot be read leaves every field absent. */
static void command_fields_clear(evl_command *cmd)
{
    cmd->text.len = 0;
    cmd->has_expected_version = 0;
    cmd->expected_version = 0;
    cmd->id = cmd->type = cmd->aggregate_type = cmd->aggregate_id = NULL;
    cmd->user_id = cmd->correlation_id = cmd->causation_id = NULL;
}

/* The strings that name the command (id, aggregate_id, type,
 * aggregate_type) of the command at t, into cmd->text at f. All are read
 * before any is judged, so an error still names the id. */
static evl_err name_fields(lua_State *L, int t, evl_command *cmd, fields *f,
                           char *err, size_t errlen)
{
    const char *why_id =
        get_string(L, t, "id", EVL_ENVELOPE_MAX_ID, 0, cmd, &f->id);
    const char *why_agg =
        get_string(L, t, "aggregate_id", EVL_ENVELOPE_MAX_AGGREGATE_ID, 0, cmd,
                   &f->aggregate_id);
    const char *why_type =
        get_string(L, t, "type", EVL_ENVELOPE_MAX_ID, 0, cmd, &f->type);
    const char *why_atype =
        get_string(L, t, "aggregate_type", EVL_ENVELOPE_MAX_ID, 1, cmd,
                   &f->aggregate_type);
    if (why_id)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the command has no id (a non-empty string of at "
                          "most %d bytes): %s",
                          EVL_ENVELOPE_MAX_ID, why_id);
    if (why_agg)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the command has no aggregate_id (a non-empty string "
                          "of at most %d bytes): %s",
                          EVL_ENVELOPE_MAX_AGGREGATE_ID, why_agg);
    if (why_type)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the command has no type (a non-empty string of at "
                          "most %d bytes): %s",
                          EVL_ENVELOPE_MAX_ID, why_type);
    if (why_atype && strcmp(why_atype, "absent") != 0)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the command's aggregate_type is %s (expected a "
                          "non-empty string of at most %d bytes)",
                          why_atype, EVL_ENVELOPE_MAX_ID);
    return EVL_OK;
}

/* expected_version (optional) and data of the command at t. Leaves what
 * it pushes on the stack (the caller restores it). */
static evl_err body_fields(lua_State *L, int t, evl_command *cmd, char *err,
                           size_t errlen)
{
    lua_pushliteral(L, "expected_version");
    lua_rawget(L, t);
    if (!lua_isnil(L, -1) && !evl_json_is_null(L, -1)) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
            return evl_seterr(err, errlen, EVL_EPERMANENT,
                              "the command's expected_version must be an "
                              "integer >= 0");
        cmd->has_expected_version = 1;
        cmd->expected_version = (long long)lua_tointeger(L, -1);
    }
    lua_pop(L, 1);

    lua_pushliteral(L, "data");
    lua_rawget(L, t);
    if (!lua_istable(L, -1) || is_array(L, -1))
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the command has no data (a JSON object; {} when "
                          "there is nothing to say)");
    lua_pop(L, 1);
    return EVL_OK;
}

/* metadata (optional) of the command at t: user_id, correlation_id and
 * causation_id (NULL unless a usable string). Leaves what it pushes on the
 * stack (the caller restores it). */
static evl_err metadata_fields(lua_State *L, int t, evl_command *cmd, fields *f,
                               char *err, size_t errlen)
{
    const char *why;
    lua_pushliteral(L, "metadata");
    lua_rawget(L, t);
    int m = lua_gettop(L);
    if (lua_isnil(L, m) || evl_json_is_null(L, m))
        return EVL_OK;
    if (!lua_istable(L, m) || is_array(L, m))
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the command's metadata must be a JSON object");
    why = get_string(L, m, "user_id", EVL_ENVELOPE_MAX_AGGREGATE_ID, 1, cmd,
                     &f->user_id);
    if (why && strcmp(why, "absent") != 0)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the command's metadata.user_id is %s (expected a "
                          "non-empty string)",
                          why);
    why = get_string(L, m, "correlation_id", EVL_ENVELOPE_MAX_ID, 1, cmd,
                     &f->correlation_id);
    if (why && strcmp(why, "absent") != 0)
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the command's metadata.correlation_id is %s "
                          "(expected a non-empty string of at most %d bytes)",
                          why, EVL_ENVELOPE_MAX_ID);
    /* read, never judged: commands that carried something else there
     * before reactions existed are still accepted */
    (void)get_string(L, m, "causation_id", EVL_ENVELOPE_MAX_ID, 1, cmd,
                     &f->causation_id);
    return EVL_OK;
}

/* Read and check the fields of the decoded command at t (the stack is
 * left as it was). */
static evl_err command_fields(lua_State *L, int t, evl_command *cmd, char *err,
                              size_t errlen)
{
    fields f = {SIZE_MAX, SIZE_MAX, SIZE_MAX, SIZE_MAX,
                SIZE_MAX, SIZE_MAX, SIZE_MAX};
    evl_err e;
    int top = lua_gettop(L);

    cmd->text.len = 0;
    cmd->has_expected_version = 0;
    cmd->expected_version = 0;

    if (!lua_istable(L, t) || is_array(L, t))
        e = evl_seterr(err, errlen, EVL_EPERMANENT,
                       "malformed command: a command is a JSON object");
    else if ((e = name_fields(L, t, cmd, &f, err, errlen)) == EVL_OK &&
             (e = body_fields(L, t, cmd, err, errlen)) == EVL_OK)
        e = metadata_fields(L, t, cmd, &f, err, errlen);
    lua_settop(L, top);
    cmd->id = at(cmd, f.id);
    cmd->type = at(cmd, f.type);
    cmd->aggregate_type = at(cmd, f.aggregate_type);
    cmd->aggregate_id = at(cmd, f.aggregate_id);
    cmd->user_id = at(cmd, f.user_id);
    cmd->correlation_id = at(cmd, f.correlation_id);
    cmd->causation_id = at(cmd, f.causation_id);
    return e;
}

/* Decode and check; with keep, leave the decoded table on L on EVL_OK. */
/* The plain string at s[i] == '"' (no escapes, no control bytes, valid
 * UTF-8, at most EVL_ENVELOPE_MAX_ID bytes): its end (the closing quote's
 * index), or 0. */
static size_t plain_string(const char *s, size_t len, size_t i)
{
    size_t j = i + 1;
    while (j < len && s[j] != '"' && s[j] != '\\' &&
           (unsigned char)s[j] >= 0x20)
        j++;
    if (j >= len || s[j] != '"' || j - i - 1 == 0 ||
        j - i - 1 > EVL_ENVELOPE_MAX_ID ||
        evl_utf8_check(s + i + 1, j - i - 1) >= 0)
        return 0;
    return j;
}

/* Malformed JSON: read the top-level "id" and "aggregate_id" members that
 * come, well-formed, before the damage, so that the rejection can still
 * name the command (a client matches results by command id). Stops at the
 * first thing that is not a plain member; reads nothing from a text that
 * is not an object. */
static void salvage_ids(const char *s, size_t len, evl_command *cmd)
{
    size_t i = 0, id_off = 0, agg_off = 0;
    int have_id = 0, have_agg = 0;
#define WS()                                                                   \
    while (i < len &&                                                          \
           (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))      \
    i++
    WS();
    if (i >= len || s[i] != '{')
        return;
    i++;
    for (;;) {
        size_t kend, vend;
        WS();
        if (i >= len || s[i] != '"' || !(kend = plain_string(s, len, i)))
            break;
        const char *key = s + i + 1;
        size_t klen = kend - i - 1;
        i = kend + 1;
        WS();
        if (i >= len || s[i] != ':')
            break;
        i++;
        WS();
        if (i < len && s[i] == '"' && (vend = plain_string(s, len, i))) {
            int *have = NULL;
            size_t *off = NULL;
            if (klen == 2 && memcmp(key, "id", 2) == 0)
                have = &have_id, off = &id_off;
            else if (klen == 12 && memcmp(key, "aggregate_id", 12) == 0)
                have = &have_agg, off = &agg_off;
            if (have) {
                *off = cmd->text.len;
                evl_buf_put(&cmd->text, s + i + 1, vend - i - 1);
                evl_buf_putc(&cmd->text, '\0');
                *have = 1;
            }
            i = vend + 1;
        } else { /* skip a simple value; anything nested ends the walk */
            while (i < len && s[i] != ',' && s[i] != '}' && s[i] != '"' &&
                   s[i] != '{' && s[i] != '[')
                i++;
            if (i >= len || s[i] == '"' || s[i] == '{' || s[i] == '[')
                break;
        }
        WS();
        if (i >= len || s[i] != ',')
            break;
        i++;
    }
#undef WS
    if (have_id)
        cmd->id = cmd->text.data + id_off;
    if (have_agg)
        cmd->aggregate_id = cmd->text.data + agg_off;
}

static evl_err parse_command(lua_State *L, const char *json, size_t len,
                             int keep, evl_command *cmd, char *err,
                             size_t errlen)
{
    char jerr[EVL_ERRLEN];
    evl_err e;

    if (len > EVL_ENVELOPE_MAX_COMMAND) {
        command_fields_clear(cmd);
        return evl_seterr(err, errlen, EVL_EPERMANENT,
                          "the command is %zu bytes, more than the %u evlua "
                          "accepts",
                          len, EVL_ENVELOPE_MAX_COMMAND);
    }
    if (evl_json_decode(L, json, len, jerr, sizeof jerr) != EVL_OK) {
        command_fields_clear(cmd);
        salvage_ids(json, len, cmd);
        return evl_seterr(err, errlen, EVL_EPERMANENT, "malformed JSON: %s",
                          jerr);
    }
    e = command_fields(L, lua_gettop(L), cmd, err, errlen);
    if (e != EVL_OK || !keep)
        lua_pop(L, 1);
    return e;
}

evl_err evl_envelope_parse_command(lua_State *L, const char *json, size_t len,
                                   evl_command *cmd, char *err, size_t errlen)
{
    return parse_command(L, json, len, 0, cmd, err, errlen);
}

evl_err evl_envelope_parse_command_keep(lua_State *L, const char *json,
                                        size_t len, evl_command *cmd, char *err,
                                        size_t errlen)
{
    return parse_command(L, json, len, 1, cmd, err, errlen);
}

void evl_envelope_command_free(evl_command *cmd)
{
    if (!cmd)
        return;
    evl_buf_free(&cmd->text);
    memset(cmd, 0, sizeof *cmd);
}
