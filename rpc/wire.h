/* wire: Lagoon's wire protocol, shared by the server and every client.
 *
 * This header is the whole public surface of the module. It has no dependency beyond libc and
 * nanopb, so the blocking client that runs on phones can use it. docs/PROTOCOL.md is the prose
 * version of what is here.
 *
 * A connection starts with the client's 4-byte preface "LGN1". Then both sides exchange frames:
 *
 *   offset size field
 *        0    4 length    bytes after this field: 12 + meta_len + payload length (big-endian)
 *        4    1 type      WIRE_REQUEST ... WIRE_SETTINGS
 *        5    1 flags     WIRE_FLAG_*
 *        6    2 meta_len  bytes of protobuf metadata after the header (big-endian)
 *        8    4 call_id   0 for connection-level frames (big-endian)
 *       12    4 code      method id (REQUEST), status (RESPONSE), last call id (GOAWAY)
 *       16      metadata (meta_len bytes), then payload (the rest)
 *
 * Parsing follows picohttpparser: a pure function over the caller's buffer that allocates
 * nothing, trusts nothing, and says complete / partial / too large / invalid.
 */
#ifndef LAGOON_WIRE_H
#define LAGOON_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include <pb.h>

#define WIRE_PREFACE "LGN1"
#define WIRE_PREFACE_LEN 4
#define WIRE_HEADER_SIZE 16
/* The smallest legal value of the length field: the header bytes after it. */
#define WIRE_LENGTH_MIN 12
#define WIRE_PING_PAYLOAD 8
#define WIRE_PROTOCOL_VERSION 1

enum wire_frame_type {
    WIRE_REQUEST = 1,  /* opens call_id; code = method id; payload = first request message */
    WIRE_MESSAGE = 2,  /* one more message on an open call, either direction */
    WIRE_RESPONSE = 3, /* closes the call; code = status; payload = response (unary, client-streaming) */
    WIRE_CANCEL = 4,   /* client abandons the call; no payload */
    WIRE_PING = 5,     /* 8-byte payload, answered by a PONG echoing it */
    WIRE_PONG = 6,
    WIRE_GOAWAY = 7,   /* no new calls; code = last call id still answered; ResponseMeta says why */
    WIRE_SETTINGS = 8, /* the server's limits (lagoon.v1.Settings), first frame after the preface */
};
#define WIRE_TYPE_MAX 8

/* The sender sends nothing more on this call. */
#define WIRE_FLAG_END_STREAM 0x01u
/* With END_STREAM on a MESSAGE frame: the frame carries no message, it only half-closes.
 * (A zero-length payload is otherwise a message with every field at its default.) */
#define WIRE_FLAG_NO_MESSAGE 0x02u
#define WIRE_FLAGS_KNOWN (WIRE_FLAG_END_STREAM | WIRE_FLAG_NO_MESSAGE)

/* Status codes: gRPC's canonical codes, same names and numbers. Written once, here. */
#define LAGOON_STATUS_LIST(X)                                                                     \
    X(OK, 0)                                                                                      \
    X(CANCELLED, 1)                                                                               \
    X(UNKNOWN, 2)                                                                                 \
    X(INVALID_ARGUMENT, 3)                                                                        \
    X(DEADLINE_EXCEEDED, 4)                                                                       \
    X(NOT_FOUND, 5)                                                                               \
    X(ALREADY_EXISTS, 6)                                                                          \
    X(PERMISSION_DENIED, 7)                                                                       \
    X(RESOURCE_EXHAUSTED, 8)                                                                      \
    X(FAILED_PRECONDITION, 9)                                                                     \
    X(ABORTED, 10)                                                                                \
    X(OUT_OF_RANGE, 11)                                                                           \
    X(UNIMPLEMENTED, 12)                                                                          \
    X(INTERNAL, 13)                                                                               \
    X(UNAVAILABLE, 14)                                                                            \
    X(DATA_LOSS, 15)                                                                              \
    X(UNAUTHENTICATED, 16)

enum lagoon_status {
#define LAGOON_STATUS_ENUM(name, num) LAGOON_##name = num,
    LAGOON_STATUS_LIST(LAGOON_STATUS_ENUM)
#undef LAGOON_STATUS_ENUM
};
#define LAGOON_STATUS_MAX 16

/* "OK", "INVALID_ARGUMENT", ...; "UNKNOWN" for a number outside the list. Static storage. */
const char *lagoon_status_name(int code);

/* One frame, as parsed. meta and payload point into the caller's buffer. */
typedef struct wire_frame {
    uint32_t length;       /* the length field: bytes after it */
    uint8_t type;          /* enum wire_frame_type */
    uint8_t flags;         /* WIRE_FLAG_* */
    uint16_t meta_len;     /* bytes of metadata */
    uint32_t call_id;
    uint32_t code;
    const uint8_t *meta;    /* meta_len bytes */
    const uint8_t *payload; /* payload_len bytes */
    uint32_t payload_len;
} wire_frame;

/* What the receiver accepts; both are checked from the header alone. */
typedef struct wire_limits {
    uint32_t max_frame_size; /* largest length field */
    uint32_t max_meta_size;  /* largest meta_len */
} wire_limits;

enum wire_parse_result {
    WIRE_PARTIAL = -1,   /* more bytes needed; f->length is set once 4 bytes are in */
    WIRE_TOO_LARGE = -2, /* length or meta_len above the limits (known before the body arrives) */
    WIRE_INVALID = -3,   /* malformed header: *why says which rule */
};

/* Parses one frame from buf[0..len). Returns the bytes it occupies (> 0) when complete, or a
 * wire_parse_result. A header is judged as soon as its bytes are present, so an oversize or
 * malformed frame is refused before its body is awaited. *why (may be NULL) receives a static
 * English sentence for TOO_LARGE and INVALID. Allocates nothing; f is reset on entry. */
long wire_frame_parse(const uint8_t *buf, size_t len, const wire_limits *lim, wire_frame *f,
                      const char **why);

/* Writes the 16-byte header for a frame with meta_len metadata bytes and payload_len payload
 * bytes. Returns 0, or -1 if the sizes do not fit the format (meta_len > 65535, or the total
 * length does not fit 32 bits). */
int wire_header_encode(uint8_t out[WIRE_HEADER_SIZE], uint8_t type, uint8_t flags,
                       uint32_t call_id, uint32_t code, size_t meta_len, size_t payload_len);

/* FNV-1a 32-bit of a method path: the method id of a REQUEST. */
uint32_t wire_method_id(const char *path);

/* ---- Generated descriptors (protoc-gen-lagoon fills these from idl/) --------------------- */

enum wire_kind {
    WIRE_UNARY = 0,
    WIRE_SERVER_STREAMING = 1,
    WIRE_CLIENT_STREAMING = 2,
    WIRE_BIDI_STREAMING = 3,
};

struct wire_msginfo;
typedef struct wire_fieldinfo {
    uint32_t tag;
    const char *name;
    const struct wire_msginfo *sub; /* field's message type, or NULL */
    uint32_t bound; /* from .options: max items (repeated), max bytes (string, bytes); 0 = none */
    uint8_t is_string; /* a string field (not bytes): its content is judged on decode */
} wire_fieldinfo;

/* A rule on a field of a request message, from its (lagoon.v1.rules) option in the IDL:
 * wire_check_rules applies it to the decoded struct. */
enum wire_rule_type {
    WIRE_RULE_U32 = 1, WIRE_RULE_I32, WIRE_RULE_U64, WIRE_RULE_I64, WIRE_RULE_BOOL, WIRE_RULE_ENUM,
    WIRE_RULE_STRING,     /* a char array in the struct */
    WIRE_RULE_STRING_PTR, /* a char * (FT_POINTER) */
    WIRE_RULE_MESSAGE,    /* a singular submessage (or oneof member) of type sub, at offset */
    WIRE_RULE_REPEATED,   /* offset is its _count; item (if any) is checked on each item */
};
/* When a field is there: always (a plain proto3 field), when its has_ flag (a bool at
 * presence_offset) is set (proto3 optional, a submessage), or when its oneof's which_ (a
 * pb_size_t at presence_offset) holds the field's tag. An absent field breaks only REQUIRED. */
enum wire_rule_presence { WIRE_PRESENT_ALWAYS = 0, WIRE_PRESENT_HAS, WIRE_PRESENT_WHICH };
#define WIRE_RULE_REQUIRED 1u
#define WIRE_RULE_HAS_MIN 2u
#define WIRE_RULE_HAS_MAX 4u
#define WIRE_RULE_SINGLE_LINE 8u
#define WIRE_RULE_DEFINED 16u
#define WIRE_RULE_NOT_EMPTY 32u
#define WIRE_RULE_NO_CR 64u
#define WIRE_RULE_URL 128u
#define WIRE_RULE_EMAIL 256u
#define WIRE_RULE_ONE_OF 512u /* strings: one of words[0..nwords) */
/* How deep wire_check_rules follows submessages: the request is depth 0, its submessage 1...
 * protoc-gen-lagoon refuses a .proto whose rules lie deeper, so the bound is never reached by
 * a generated table; it only keeps a hand-made cyclic one finite. */
#define WIRE_RULES_MAX_DEPTH 8
typedef struct wire_rule {
    const char *field;      /* the .proto name, as violations name it */
    size_t offset;          /* of the value in the struct (see the types above) */
    uint8_t type;           /* enum wire_rule_type */
    uint8_t presence;       /* enum wire_rule_presence */
    uint16_t flags;         /* WIRE_RULE_* */
    size_t presence_offset; /* of the has_ flag or which_ member (not ALWAYS) */
    uint32_t tag;           /* the field's number: which_ holds it when a oneof member is set */
    int64_t min, max;       /* numbers, with HAS_MIN / HAS_MAX */
    uint32_t min_chars, max_chars; /* strings; 0 = none */
    uint32_t min_items, max_items; /* repeated; 0 = none */
    const int32_t *values;  /* enums with DEFINED: the values the .proto names, ascending */
    const char *const *value_names; /* and their names, in the same order */
    size_t nvalues;
    const char *const *words;       /* strings with ONE_OF: the values it takes, as in the .proto */
    size_t nwords;
    const struct wire_msginfo *sub; /* MESSAGE: its type, whose rules apply inside it */
    const struct wire_rule *item;   /* REPEATED: the rule of each item (offset of the array) */
    size_t item_size;               /* REPEATED with item: bytes from one item to the next */
} wire_rule;

/* The syntax rules (lagoon.v1.rules) url and email apply, for code that checks a string
 * itself: NULL if s passes, else the violation's description (static text).
 * url: "" passes (required refuses it); otherwise "http://" or "https://" then at least one
 * character, every byte printable ASCII (0x21-0x7E).
 * email: a local part of 1-64 of A-Z a-z 0-9 and !#$%&'*+/=?^_`{|}~.- (no leading, trailing or
 * double dot), one "@", then at least two labels of 1-63 letters, digits and inner hyphens
 * joined by dots, the last of 2 or more letters; at most 254 bytes in all. "" fails. */
const char *wire_url_problem(const char *s);
const char *wire_email_problem(const char *s);

/* A message type: nanopb's descriptor plus the field names nanopb does not keep. */
typedef struct wire_msginfo {
    const char *name; /* "lagoon.v1.EchoRequest" */
    const pb_msgdesc_t *desc;
    size_t nfields;
    const wire_fieldinfo *fields; /* sorted by tag */
    /* Has FT_POINTER fields: nanopb allocates them without checking their bounds, so
     * wire_decode checks the bounds first (wire_diagnose) and the user pb_release()s. */
    int has_pointers;
    /* Has string fields, here or in a submessage: wire_decode walks the wire bytes to judge
     * them; a message without any is decoded without the walk. */
    int has_strings;
    const wire_rule *rules; /* its fields' (lagoon.v1.rules), for wire_check_rules */
    size_t nrules;
    size_t size; /* sizeof the nanopb struct (0: unknown, wire_init then walks the fields) */
} wire_msginfo;

typedef struct wire_method {
    const char *path; /* "/lagoon.v1.Health/Check" */
    uint32_t id;      /* wire_method_id(path) */
    const char *request_type, *response_type;
    const wire_msginfo *request, *response;
    size_t request_size, response_size; /* sizeof the nanopb structs */
    uint8_t kind;                       /* enum wire_kind */
    uint8_t access;                     /* lagoon_v1_Access */
    uint8_t secrets;                    /* WIRE_SECRET_*: (lagoon.v1.secret) fields in its messages */
    uint8_t idempotent;                 /* (lagoon.v1.idempotent): RequestMeta.idempotency_key is honoured */
} wire_method;

/* wire_method.secrets: the request or response holds a field marked (lagoon.v1.secret)
 * (passwords, tokens), so the server wipes its decoded struct and its wire bytes once used. */
#define WIRE_SECRET_REQUEST 1
#define WIRE_SECRET_RESPONSE 2

/* ---- Message coding with named errors ------------------------------------------------------ */

typedef struct wire_violation {
    char field[128];       /* dotted path of the offending field, "" if none could be named */
    char description[256]; /* what is wrong with it */
} wire_violation;

/* Sets msg (a struct of info's type) to its defaults, as nanopb's _init_zero would, touching
 * only what encoding and decoding read: the bytes of large static buffers are left alone. */
void wire_init(const wire_msginfo *info, void *msg);

/* Decodes buf[0..len) into dst (a struct of info's type, request_size bytes). Returns 0, or -1
 * with *v naming the field that broke a bound, could not be decoded or holds a refused string.
 * On failure dst holds no allocations and must not be used.
 *
 * Every string field, at any depth and in every item of a repeated field, is judged on its
 * wire bytes before nanopb copies it (a C reader would stop at a NUL): it must be valid UTF-8
 * (shortest form, no surrogates, at most U+10FFFF) without NUL, without control characters
 * other than tab, line feed and carriage return (no other C0, no DEL, no C1), and without the
 * bidirectional embedding/override/isolate controls U+202A-U+202E and U+2066-U+2069. Bytes
 * fields are not judged. The rule is the same for every field; handlers narrow it further.
 *
 * v->field is never empty on failure: the field's dotted path by its .proto name ("login",
 * "text.text", "methods[3].path"), "#N" for a field number the message does not define
 * ("#9", "profile.#9"), "#0" for field number 0, "#?" where a key cannot be read. */
int wire_decode(const wire_msginfo *info, const uint8_t *buf, size_t len, void *dst,
                wire_violation *v);

/* wire_decode without judging what strings contain (bounds and structure are still checked):
 * for bytes the server itself wrote, whose strings were judged when they arrived — stored rows,
 * and responses read by a client. A row stored before the rule existed still reads back, and a
 * client shows what the server sent rather than failing the whole call over one string. */
int wire_decode_trusted(const wire_msginfo *info, const uint8_t *buf, size_t len, void *dst,
                        wire_violation *v);

/* Applies info's field rules to msg (decoded): report(arg, field, description) for each
 * broken one, in field order, at most one per field (a repeated field: one for its count and
 * one per item). Returns how many. Allocates nothing.
 * Rules inside a present submessage (or oneof member) are reported under its dotted path
 * ("text.text", "image.url"), rules of a repeated field's items under "name[i]"
 * ("instruments[2]"); field is valid only during the call. */
typedef void (*wire_rule_report_fn)(void *arg, const char *field, const char *description);
int wire_check_rules(const wire_msginfo *info, const void *msg, wire_rule_report_fn report, void *arg);

/* Encodes src into out[0..cap). Returns the encoded size, or -1 if it does not fit or a field
 * breaks its bound (*why, may be NULL, gets nanopb's message). */
long wire_encode(const wire_msginfo *info, const void *src, uint8_t *out, size_t cap,
                 const char **why);

/* The encoded size of src, or -1 if it cannot be encoded. */
long wire_encoded_size(const wire_msginfo *info, const void *src);

/* Walks buf[0..len) against info without decoding and names the first field that wire_decode
 * refuses (bad wire type, truncation, a string/bytes/repeated field over its bound, a string
 * that breaks the rule above). Returns 1 with *v filled, 0 if it found nothing to name. */
int wire_diagnose(const wire_msginfo *info, const uint8_t *buf, size_t len, wire_violation *v);

/* Big-endian helpers, used by both sides' frame code. */
static inline uint32_t wire_get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}
static inline uint16_t wire_get16(const uint8_t *p)
{
    return (uint16_t)(((unsigned)p[0] << 8) | (unsigned)p[1]);
}
static inline void wire_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline void wire_put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

#endif
