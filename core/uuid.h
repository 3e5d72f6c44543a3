/*
 * uuid.h - name-based UUIDs (version 5, RFC 9562 section 5.5): the same
 * name in the same namespace gives the same id, on every machine and on
 * every run.
 *
 * Reactions use them for the commands they send (docs/reactions.md
 * "Command ids"): the i-th command of aggregate type T's reaction to
 * event E has the id uuid5(EVL_UUID_REACTIONS, "<E's id>/<T>/<i>"), so a
 * reaction run twice (a crash, a replay) sends the same command ids and
 * the command side answers the second copy `duplicate`.
 *
 * Does not: make random or time-ordered ids (luaapi's evl_luaapi_uuid7
 * does), parse UUIDs.
 *
 * Uses OpenSSL's libcrypto for SHA-1 (SHA1(), not deprecated in 3.0).
 *
 * @locality any thread.
 */
#ifndef EVL_UUID_H
#define EVL_UUID_H

#include <stddef.h>

/* evlua's namespace for reaction command ids, as text and as bytes.
 * Fixed forever: changing it changes every reaction command id, and a
 * replay would then send every command again. */
#define EVL_UUID_REACTIONS_TEXT "02ad841b-a62f-48e4-adc9-67af3dd0b4f5"
extern const unsigned char EVL_UUID_REACTIONS[16];

/* The version 5 UUID of the len bytes of name in namespace ns, in the
 * lowercase 8-4-4-4-12 text form, NUL-terminated, into out. */
void evl_uuid_v5(char out[37], const unsigned char ns[16], const char *name,
                 size_t len);

/* The id of the i-th command (from 0) of aggregate type type's reaction
 * to the event whose id is event_id: evl_uuid_v5 of
 * "<event_id>/<type>/<i>" (i in decimal) in EVL_UUID_REACTIONS. */
void evl_uuid_reaction(char out[37], const char *event_id, const char *type,
                       size_t i);

#endif
