/* ctl_schema: a FileDescriptorSet read with nanopb's stream functions.
 *
 * The set comes from the network (Reflection/GetSchema) as often as from the binary, so
 * nothing in it is trusted: every length is checked by the sub-stream that holds it, every
 * count against a limit below, and every type name must resolve before the schema is used.
 * All memory lives in one arena owned by the ctl_schema. */
#include "ctl_schema.h"

#include <pb_decode.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Names ("lagoon.v1.SendMessageRequest", a json_name) are short; a longer one is a corrupt or
 * hostile set, not a schema. */
#define CTL_SCHEMA_MAX_NAME 1024
/* Fields (or oneofs) of one message, values of one enum: far above any real message, low
 * enough that a set cannot make the per-message checks slow. */
#define CTL_SCHEMA_MAX_FIELDS 4096
/* Messages plus enums, and methods, of the whole set. */
#define CTL_SCHEMA_MAX_TYPES 65536
#define CTL_SCHEMA_MAX_METHODS 65536
/* Fields, oneofs and enum values of the whole set: each costs ~150 bytes in memory for ~10 on
 * the wire, so this (some 40 MB) rather than CTL_SCHEMA_MAX_BYTES bounds what a set can take.
 * The IDL has a few thousand. */
#define CTL_SCHEMA_MAX_ITEMS (256 * 1024)
/* Field numbers: protobuf's range. */
#define CTL_FIELD_NUMBER_MAX 536870911u

/* Field numbers of descriptor.proto and of lagoon/v1/options.proto's extensions. */
enum {
    FDS_FILE = 1,
    FILE_PACKAGE = 2, FILE_MESSAGE = 4, FILE_ENUM = 5, FILE_SERVICE = 6,
    MSG_NAME = 1, MSG_FIELD = 2, MSG_NESTED = 3, MSG_ENUM = 4, MSG_OPTIONS = 7, MSG_ONEOF = 8,
    MSGOPT_MAP_ENTRY = 7,
    ONEOF_NAME = 1,
    FIELD_NAME = 1, FIELD_NUMBER = 3, FIELD_LABEL = 4, FIELD_TYPE = 5, FIELD_TYPE_NAME = 6,
    FIELD_OPTIONS = 8, FIELD_ONEOF_INDEX = 9, FIELD_JSON_NAME = 10, FIELD_PROTO3_OPTIONAL = 17,
    FIELDOPT_BOUNDS = 50006,
    BOUNDS_MAX_LENGTH = 1, BOUNDS_MAX_SIZE = 2, BOUNDS_MAX_COUNT = 3,
    ENUM_NAME = 1, ENUM_VALUE = 2,
    ENUMVAL_NAME = 1, ENUMVAL_NUMBER = 2,
    SVC_NAME = 1, SVC_METHOD = 2,
    METHOD_NAME = 1, METHOD_INPUT = 2, METHOD_OUTPUT = 3, METHOD_OPTIONS = 4,
    METHOD_CLIENT_STREAMING = 5, METHOD_SERVER_STREAMING = 6,
    METHODOPT_ACCESS = 50001, METHODOPT_IDEMPOTENT = 50005,
};
#define LABEL_REPEATED 3

/* ---- arena ---------------------------------------------------------------------------- */

#define ARENA_CHUNK (64u * 1024)

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t used, cap;  /* bytes of data */
    max_align_t data[]; /* max_align_t: every allocation is aligned for anything */
} arena_chunk;

/* Internal views: the public struct first, then what only loading needs. */
typedef struct sc_message {
    ctl_message pub;
    ctl_field *fields;
    const char *package;
    struct sc_message *next; /* in the loader's list */
} sc_message;

typedef struct sc_enum {
    ctl_enum pub;
    const char *package;
    struct sc_enum *next;
} sc_enum;

typedef struct sc_method {
    ctl_method pub;
    const char *input_name, *output_name; /* unresolved, without the leading dot */
    struct sc_method *next;
} sc_method;

struct ctl_schema {
    arena_chunk *chunks;
    sc_message **messages; /* sorted by full name */
    size_t nmessages;
    sc_enum **enums;       /* sorted by full name */
    size_t nenums;
    const ctl_method **methods; /* file and declaration order */
    size_t nmethods;
};

static void *arena_alloc(ctl_schema *s, size_t n)
{
    const size_t align = sizeof(max_align_t);
    if (n > CTL_SCHEMA_MAX_BYTES * 4u)
        return NULL; /* nothing the loader asks for is this large: a bug, not a schema */
    n = (n + align - 1) / align * align;
    if (n == 0)
        n = align;
    arena_chunk *c = s->chunks;
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
        c = calloc(1, sizeof(*c) + cap);
        if (c == NULL)
            return NULL;
        c->cap = cap;
        c->next = s->chunks;
        s->chunks = c;
    }
    void *p = (unsigned char *)c->data + c->used;
    c->used += n;
    return p; /* zeroed: chunks come from calloc and are never reused */
}

static void *arena_array(ctl_schema *s, size_t count, size_t size)
{
    if (size != 0 && count > (CTL_SCHEMA_MAX_BYTES * 4u) / size)
        return NULL;
    return arena_alloc(s, count * size);
}

static char *arena_strdup2(ctl_schema *s, const char *a, const char *sep, const char *b)
{
    size_t la = strlen(a), ls = strlen(sep), lb = strlen(b);
    char *p = arena_alloc(s, la + ls + lb + 1);
    if (p == NULL)
        return NULL;
    memcpy(p, a, la);
    memcpy(p + la, sep, ls);
    memcpy(p + la + ls, b, lb + 1);
    return p;
}

void ctl_schema_free(ctl_schema *s)
{
    if (s == NULL)
        return;
    arena_chunk *c = s->chunks;
    while (c != NULL) {
        arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    free(s);
}

/* ---- loader --------------------------------------------------------------------------- */

typedef struct loader {
    ctl_schema *s;
    char *err;
    size_t cap;
    int failed;
    sc_message *msgs; /* newest first */
    sc_enum *enums;
    sc_method *methods_head, *methods_tail; /* in order */
    size_t nmsgs, nenums, nmethods;
    size_t nitems; /* fields, oneofs and enum values so far: CTL_SCHEMA_MAX_ITEMS */
    const char *package; /* of the file being read */
} loader;

__attribute__((format(printf, 2, 3))) static bool fail(loader *l, const char *fmt, ...)
{
    if (!l->failed && l->cap > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(l->err, l->cap, fmt, ap);
        va_end(ap);
    }
    l->failed = 1;
    return false;
}

static bool fail_stream(loader *l, pb_istream_t *st, const char *what)
{
    return fail(l, "malformed descriptor set: %s: %s", what, PB_GET_ERROR(st));
}

static bool fail_oom(loader *l)
{
    return fail(l, "out of memory reading the descriptor set");
}

/* The next tag of st; *done at the end of st. */
static bool next_tag(loader *l, pb_istream_t *st, uint32_t *tag, pb_wire_type_t *wt, bool *done,
                     const char *what)
{
    *done = false;
    if (st->bytes_left == 0) {
        *done = true;
        return true;
    }
    bool eof = false;
    if (!pb_decode_tag(st, wt, tag, &eof))
        return fail_stream(l, st, what);
    if (*tag == 0)
        return fail(l, "malformed descriptor set: %s: field number 0", what);
    return true;
}

static bool want_wt(loader *l, pb_wire_type_t wt, pb_wire_type_t want, const char *what)
{
    if (wt != want)
        return fail(l, "malformed descriptor set: %s: wrong wire type %d", what, (int)wt);
    return true;
}

static bool skip(loader *l, pb_istream_t *st, pb_wire_type_t wt, const char *what)
{
    if (!pb_skip_field(st, wt))
        return fail_stream(l, st, what);
    return true;
}

static bool read_varint(loader *l, pb_istream_t *st, pb_wire_type_t wt, uint64_t *v,
                        const char *what)
{
    if (!want_wt(l, wt, PB_WT_VARINT, what))
        return false;
    if (!pb_decode_varint(st, v))
        return fail_stream(l, st, what);
    return true;
}

static bool read_int32(loader *l, pb_istream_t *st, pb_wire_type_t wt, int32_t *v,
                       const char *what)
{
    uint32_t u = 0;
    if (!want_wt(l, wt, PB_WT_VARINT, what))
        return false;
    /* pb_decode_varint32 takes the 10-byte form of a negative int32 and refuses wider ones */
    if (!pb_decode_varint32(st, &u))
        return fail_stream(l, st, what);
    *v = (int32_t)u;
    return true;
}

static bool open_sub(loader *l, pb_istream_t *st, pb_wire_type_t wt, pb_istream_t *sub,
                     const char *what)
{
    if (!want_wt(l, wt, PB_WT_STRING, what))
        return false;
    /* checks the length against what st has left */
    if (!pb_make_string_substream(st, sub))
        return fail_stream(l, st, what);
    return true;
}

static bool close_sub(loader *l, pb_istream_t *st, pb_istream_t *sub, const char *what)
{
    if (!pb_close_string_substream(st, sub))
        return fail_stream(l, st, what);
    return true;
}

/* A string field, copied into the arena; NUL inside is refused (names become C strings). */
static bool read_str(loader *l, pb_istream_t *st, pb_wire_type_t wt, const char **out,
                     const char *what)
{
    pb_istream_t sub;
    if (!open_sub(l, st, wt, &sub, what))
        return false;
    size_t n = sub.bytes_left;
    if (n > CTL_SCHEMA_MAX_NAME)
        return fail(l, "malformed descriptor set: %s: %zu bytes (at most %d)", what, n,
                    CTL_SCHEMA_MAX_NAME);
    char *p = arena_alloc(l->s, n + 1);
    if (p == NULL)
        return fail_oom(l);
    if (!pb_read(&sub, (pb_byte_t *)p, n))
        return fail_stream(l, &sub, what);
    if (memchr(p, 0, n) != NULL)
        return fail(l, "malformed descriptor set: %s: NUL in a name", what);
    p[n] = '\0';
    if (!close_sub(l, st, &sub, what))
        return false;
    *out = p;
    return true;
}

/* Reads the string field `number` of the message in st without consuming st: a name can come
 * after the parts it scopes (nothing orders a set's fields), and a buffer stream is a plain
 * value, so walking a copy of it reads the same bytes again. NULL name if absent. */
static bool peek_name(loader *l, const pb_istream_t *st, uint32_t number, const char **name,
                      const char *what)
{
    pb_istream_t copy = *st, last = *st;
    pb_wire_type_t last_wt = PB_WT_VARINT;
    bool found = false;
    *name = NULL;
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        if (!next_tag(l, &copy, &tag, &wt, &done, what))
            return false;
        if (done)
            break;
        if (tag == number) { /* the last one counts: only it is copied, below */
            last = copy;
            last_wt = wt;
            found = true;
        }
        if (!skip(l, &copy, wt, what))
            return false;
    }
    return !found || read_str(l, &last, last_wt, name, what);
}

static char *full_name(loader *l, const char *scope, const char *name)
{
    char *p = scope[0] == '\0' ? arena_strdup2(l->s, "", "", name)
                               : arena_strdup2(l->s, scope, ".", name);
    if (p == NULL)
        fail_oom(l);
    return p;
}

/* A type name as the set writes it (".pkg.Msg") without the dot: the key of the lookups. */
static const char *strip_dot(const char *name)
{
    return name[0] == '.' ? name + 1 : name;
}

/* protobuf's ToJsonName: underscores dropped, the letter after one upper-cased. */
static const char *json_name_of(loader *l, const char *name)
{
    size_t n = strlen(name);
    char *p = arena_alloc(l->s, n + 1);
    if (p == NULL) {
        fail_oom(l);
        return NULL;
    }
    size_t j = 0;
    int upper = 0;
    for (size_t i = 0; i < n; i++) {
        char ch = name[i];
        if (ch == '_') {
            upper = 1;
            continue;
        }
        if (upper && ch >= 'a' && ch <= 'z')
            ch = (char)(ch - 'a' + 'A');
        upper = 0;
        p[j++] = ch;
    }
    p[j] = '\0';
    return p;
}

static bool parse_bounds(loader *l, pb_istream_t *st, ctl_field *f)
{
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        uint64_t v = 0;
        if (!next_tag(l, st, &tag, &wt, &done, "bounds"))
            return false;
        if (done)
            return true;
        if (tag < BOUNDS_MAX_LENGTH || tag > BOUNDS_MAX_COUNT) {
            if (!skip(l, st, wt, "bounds"))
                return false;
            continue;
        }
        if (!read_varint(l, st, wt, &v, "bounds"))
            return false;
        if (v > UINT32_MAX)
            return fail(l, "malformed descriptor set: bounds of %s: %llu is not a uint32", f->name,
                        (unsigned long long)v);
        if (tag == BOUNDS_MAX_LENGTH)
            f->max_length = (uint32_t)v;
        else if (tag == BOUNDS_MAX_SIZE)
            f->max_size = (uint32_t)v;
        else
            f->max_count = (uint32_t)v;
    }
}

static bool parse_field_options(loader *l, pb_istream_t *st, ctl_field *f)
{
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        if (!next_tag(l, st, &tag, &wt, &done, "field options"))
            return false;
        if (done)
            return true;
        if (tag != FIELDOPT_BOUNDS) {
            if (!skip(l, st, wt, "field options"))
                return false;
            continue;
        }
        pb_istream_t sub;
        if (!open_sub(l, st, wt, &sub, "bounds") || !parse_bounds(l, &sub, f) ||
            !close_sub(l, st, &sub, "bounds"))
            return false;
    }
}

static bool parse_field(loader *l, pb_istream_t *st, ctl_field *f)
{
    uint64_t v = 0;
    f->oneof_index = -1;
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        if (!next_tag(l, st, &tag, &wt, &done, "field"))
            return false;
        if (done)
            break;
        switch (tag) {
        case FIELD_NAME:
            if (!read_str(l, st, wt, &f->name, "field name"))
                return false;
            break;
        case FIELD_NUMBER:
            if (!read_varint(l, st, wt, &v, "field number"))
                return false;
            if (v < 1 || v > CTL_FIELD_NUMBER_MAX)
                return fail(l, "malformed descriptor set: field number %llu",
                            (unsigned long long)v);
            f->number = (uint32_t)v;
            break;
        case FIELD_LABEL:
            if (!read_varint(l, st, wt, &v, "field label"))
                return false;
            f->repeated = v == LABEL_REPEATED;
            break;
        case FIELD_TYPE:
            if (!read_varint(l, st, wt, &v, "field type"))
                return false;
            if (v < CTL_TYPE_DOUBLE || v > CTL_TYPE_SINT64)
                return fail(l, "malformed descriptor set: field type %llu", (unsigned long long)v);
            f->type = (int)v;
            break;
        case FIELD_TYPE_NAME:
            if (!read_str(l, st, wt, &f->type_name, "field type name"))
                return false;
            break;
        case FIELD_OPTIONS: {
            pb_istream_t sub;
            if (!open_sub(l, st, wt, &sub, "field options") || !parse_field_options(l, &sub, f) ||
                !close_sub(l, st, &sub, "field options"))
                return false;
            break;
        }
        case FIELD_ONEOF_INDEX:
            if (!read_int32(l, st, wt, &f->oneof_index, "oneof index"))
                return false;
            if (f->oneof_index < 0)
                return fail(l, "malformed descriptor set: oneof index %d", (int)f->oneof_index);
            break;
        case FIELD_JSON_NAME:
            if (!read_str(l, st, wt, &f->json_name, "json name"))
                return false;
            break;
        case FIELD_PROTO3_OPTIONAL:
            if (!read_varint(l, st, wt, &v, "proto3 optional"))
                return false;
            f->proto3_optional = v != 0;
            break;
        default:
            if (!skip(l, st, wt, "field"))
                return false;
        }
    }
    if (f->name == NULL || f->name[0] == '\0' || f->number == 0 || f->type == 0)
        return fail(l, "malformed descriptor set: a field without a name, number or type");
    if (f->type != CTL_TYPE_MESSAGE && f->type != CTL_TYPE_GROUP && f->type != CTL_TYPE_ENUM)
        f->type_name = NULL;
    else if (f->type_name == NULL || strip_dot(f->type_name)[0] == '\0')
        return fail(l, "malformed descriptor set: field %s has no type name", f->name);
    else
        f->type_name = strip_dot(f->type_name);
    if (f->json_name == NULL || f->json_name[0] == '\0')
        f->json_name = json_name_of(l, f->name);
    return f->json_name != NULL;
}

static bool parse_enum_value(loader *l, pb_istream_t *st, ctl_enum_value *ev)
{
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        if (!next_tag(l, st, &tag, &wt, &done, "enum value"))
            return false;
        if (done)
            break;
        if (tag == ENUMVAL_NAME) {
            if (!read_str(l, st, wt, &ev->name, "enum value name"))
                return false;
        } else if (tag == ENUMVAL_NUMBER) {
            if (!read_int32(l, st, wt, &ev->number, "enum value number"))
                return false;
        } else if (!skip(l, st, wt, "enum value")) {
            return false;
        }
    }
    if (ev->name == NULL || ev->name[0] == '\0')
        return fail(l, "malformed descriptor set: an enum value without a name");
    return true;
}

/* A list node in the arena while counts are not known yet. */
typedef struct tmp_node {
    struct tmp_node *next;
    void *item;
} tmp_node;

/* Appends item to the list (head, tail) and counts it against limit. */
static bool tmp_push(loader *l, tmp_node **head, tmp_node **tail, size_t *n, size_t limit,
                     void *item, const char *what)
{
    if (*n >= limit)
        return fail(l, "malformed descriptor set: more than %zu %s", limit, what);
    if (l->nitems >= CTL_SCHEMA_MAX_ITEMS)
        return fail(l, "malformed descriptor set: more than %d fields, oneofs and enum values",
                    CTL_SCHEMA_MAX_ITEMS);
    l->nitems++;
    tmp_node *node = arena_alloc(l->s, sizeof(*node));
    if (node == NULL)
        return fail_oom(l);
    node->item = item;
    if (*tail != NULL)
        (*tail)->next = node;
    else
        *head = node;
    *tail = node;
    (*n)++;
    return true;
}

static bool add_type_count(loader *l)
{
    if (l->nmsgs + l->nenums >= CTL_SCHEMA_MAX_TYPES)
        return fail(l, "malformed descriptor set: more than %d messages and enums",
                    CTL_SCHEMA_MAX_TYPES);
    return true;
}

static bool parse_enum(loader *l, pb_istream_t *st, const char *scope)
{
    const char *name = NULL;
    if (!peek_name(l, st, ENUM_NAME, &name, "enum"))
        return false;
    if (name == NULL || name[0] == '\0')
        return fail(l, "malformed descriptor set: an enum without a name in %s",
                    scope[0] ? scope : "(root)");
    if (!add_type_count(l))
        return false;
    sc_enum *e = arena_alloc(l->s, sizeof(*e));
    if (e == NULL)
        return fail_oom(l);
    e->pub.full_name = full_name(l, scope, name);
    e->package = l->package;
    if (e->pub.full_name == NULL)
        return false;
    tmp_node *head = NULL, *tail = NULL;
    size_t n = 0;
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        if (!next_tag(l, st, &tag, &wt, &done, e->pub.full_name))
            return false;
        if (done)
            break;
        if (tag != ENUM_VALUE) {
            if (!skip(l, st, wt, e->pub.full_name))
                return false;
            continue;
        }
        ctl_enum_value *ev = arena_alloc(l->s, sizeof(*ev));
        pb_istream_t sub;
        if (ev == NULL)
            return fail_oom(l);
        if (!tmp_push(l, &head, &tail, &n, CTL_SCHEMA_MAX_FIELDS, ev, "values in an enum") ||
            !open_sub(l, st, wt, &sub, e->pub.full_name) || !parse_enum_value(l, &sub, ev) ||
            !close_sub(l, st, &sub, e->pub.full_name))
            return false;
    }
    ctl_enum_value *values = arena_array(l->s, n, sizeof(*values));
    if (values == NULL) /* never NULL but out of memory: an empty array is one aligned unit */
        return fail_oom(l);
    size_t i = 0;
    for (tmp_node *t = head; t != NULL; t = t->next)
        values[i++] = *(ctl_enum_value *)t->item;
    e->pub.values = values;
    e->pub.nvalues = n;
    e->next = l->enums;
    l->enums = e;
    l->nenums++;
    return true;
}

static bool parse_message_options(loader *l, pb_istream_t *st, sc_message *m)
{
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        uint64_t v = 0;
        if (!next_tag(l, st, &tag, &wt, &done, "message options"))
            return false;
        if (done)
            return true;
        if (tag == MSGOPT_MAP_ENTRY) {
            if (!read_varint(l, st, wt, &v, "map_entry"))
                return false;
            m->pub.map_entry = v != 0;
        } else if (!skip(l, st, wt, "message options")) {
            return false;
        }
    }
}

static int cmp_field_number(const void *a, const void *b)
{
    const ctl_field *x = *(const ctl_field *const *)a, *y = *(const ctl_field *const *)b;
    return x->number < y->number ? -1 : x->number > y->number;
}

/* What the codec relies on: field numbers unique, oneof indexes in range, a map entry with
 * exactly a scalar key 1 and a value 2. */
static bool check_message(loader *l, sc_message *m)
{
    const ctl_message *pm = &m->pub;
    size_t n = pm->nfields;
    if (n > 1) {
        const ctl_field **sorted = malloc(n * sizeof(*sorted));
        if (sorted == NULL)
            return fail_oom(l);
        for (size_t i = 0; i < n; i++)
            sorted[i] = &m->fields[i];
        qsort((void *)sorted, n, sizeof(*sorted), cmp_field_number);
        uint32_t dup = 0;
        for (size_t i = 1; i < n && dup == 0; i++)
            if (sorted[i]->number == sorted[i - 1]->number)
                dup = sorted[i]->number;
        free((void *)sorted);
        if (dup != 0)
            return fail(l, "malformed descriptor set: %s: field number %u used twice",
                        pm->full_name, (unsigned)dup);
    }
    for (size_t i = 0; i < n; i++) {
        const ctl_field *f = &m->fields[i];
        if (f->oneof_index >= 0 && (size_t)f->oneof_index >= pm->noneofs)
            return fail(l, "malformed descriptor set: %s.%s: oneof index %d out of range",
                        pm->full_name, f->name, (int)f->oneof_index);
    }
    if (pm->map_entry) {
        const ctl_field *k = n == 2 ? &m->fields[0] : NULL, *v = n == 2 ? &m->fields[1] : NULL;
        if (k == NULL || k->number != 1 || v->number != 2 || k->repeated || v->repeated ||
            k->type == CTL_TYPE_MESSAGE || k->type == CTL_TYPE_GROUP || k->type == CTL_TYPE_ENUM ||
            k->type == CTL_TYPE_BYTES || k->type == CTL_TYPE_FLOAT || k->type == CTL_TYPE_DOUBLE)
            return fail(l, "malformed descriptor set: %s: a map entry is a scalar key 1 and a value 2",
                        pm->full_name);
    }
    return true;
}

static bool parse_message(loader *l, pb_istream_t *st, const char *scope, int depth)
{
    const char *name = NULL;
    if (depth > CTL_SCHEMA_MAX_NESTING)
        return fail(l, "malformed descriptor set: messages nested deeper than %d in %s",
                    CTL_SCHEMA_MAX_NESTING, scope);
    if (!peek_name(l, st, MSG_NAME, &name, "message"))
        return false;
    if (name == NULL || name[0] == '\0')
        return fail(l, "malformed descriptor set: a message without a name in %s",
                    scope[0] ? scope : "(root)");
    if (!add_type_count(l))
        return false;
    sc_message *m = arena_alloc(l->s, sizeof(*m));
    if (m == NULL)
        return fail_oom(l);
    m->package = l->package;
    m->pub.full_name = full_name(l, scope, name);
    if (m->pub.full_name == NULL)
        return false;
    const char *what = m->pub.full_name;
    /* counted now so that nested messages count against the limit as they come */
    m->next = l->msgs;
    l->msgs = m;
    l->nmsgs++;

    tmp_node *fhead = NULL, *ftail = NULL, *ohead = NULL, *otail = NULL;
    size_t nf = 0, no = 0;
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        pb_istream_t sub;
        if (!next_tag(l, st, &tag, &wt, &done, what))
            return false;
        if (done)
            break;
        switch (tag) {
        case MSG_FIELD: {
            ctl_field *f = arena_alloc(l->s, sizeof(*f));
            if (f == NULL)
                return fail_oom(l);
            if (!tmp_push(l, &fhead, &ftail, &nf, CTL_SCHEMA_MAX_FIELDS, f, "fields in a message") ||
                !open_sub(l, st, wt, &sub, what) || !parse_field(l, &sub, f) ||
                !close_sub(l, st, &sub, what))
                return false;
            break;
        }
        case MSG_NESTED:
            if (!open_sub(l, st, wt, &sub, what) || !parse_message(l, &sub, what, depth + 1) ||
                !close_sub(l, st, &sub, what))
                return false;
            break;
        case MSG_ENUM:
            if (!open_sub(l, st, wt, &sub, what) || !parse_enum(l, &sub, what) ||
                !close_sub(l, st, &sub, what))
                return false;
            break;
        case MSG_OPTIONS:
            if (!open_sub(l, st, wt, &sub, what) || !parse_message_options(l, &sub, m) ||
                !close_sub(l, st, &sub, what))
                return false;
            break;
        case MSG_ONEOF: {
            const char **oname = arena_alloc(l->s, sizeof(*oname));
            if (oname == NULL)
                return fail_oom(l);
            if (!tmp_push(l, &ohead, &otail, &no, CTL_SCHEMA_MAX_FIELDS, oname, "oneofs in a message") ||
                !open_sub(l, st, wt, &sub, what) || !peek_name(l, &sub, ONEOF_NAME, oname, what))
                return false;
            /* peek_name walked a copy: closing skips the oneof's bytes */
            if (!close_sub(l, st, &sub, what))
                return false;
            if (*oname == NULL || (*oname)[0] == '\0')
                return fail(l, "malformed descriptor set: %s: a oneof without a name", what);
            break;
        }
        default:
            if (!skip(l, st, wt, what))
                return false;
        }
    }
    ctl_field *fields = arena_array(l->s, nf, sizeof(*fields));
    const char **oneofs = arena_array(l->s, no, sizeof(*oneofs));
    if (fields == NULL || oneofs == NULL)
        return fail_oom(l);
    size_t i = 0;
    for (tmp_node *t = fhead; t != NULL; t = t->next)
        fields[i++] = *(ctl_field *)t->item;
    i = 0;
    for (tmp_node *t = ohead; t != NULL; t = t->next)
        oneofs[i++] = *(const char **)t->item;
    m->fields = fields;
    m->pub.fields = fields;
    m->pub.nfields = nf;
    m->pub.oneofs = oneofs;
    m->pub.noneofs = no;
    return check_message(l, m);
}

static bool parse_method_options(loader *l, pb_istream_t *st, sc_method *m)
{
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        if (!next_tag(l, st, &tag, &wt, &done, "method options"))
            return false;
        if (done)
            return true;
        if (tag == METHODOPT_ACCESS) {
            int32_t v = 0;
            if (!read_int32(l, st, wt, &v, "access"))
                return false;
            m->pub.access = v;
        } else if (tag == METHODOPT_IDEMPOTENT) {
            uint64_t v = 0;
            if (!read_varint(l, st, wt, &v, "idempotent"))
                return false;
            m->pub.idempotent = v != 0;
        } else if (!skip(l, st, wt, "method options")) {
            return false;
        }
    }
}

static bool parse_method(loader *l, pb_istream_t *st, const char *service)
{
    if (l->nmethods >= CTL_SCHEMA_MAX_METHODS)
        return fail(l, "malformed descriptor set: more than %d methods", CTL_SCHEMA_MAX_METHODS);
    sc_method *m = arena_alloc(l->s, sizeof(*m));
    if (m == NULL)
        return fail_oom(l);
    m->pub.access = -1;
    m->pub.service = service;
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        uint64_t v = 0;
        pb_istream_t sub;
        if (!next_tag(l, st, &tag, &wt, &done, service))
            return false;
        if (done)
            break;
        switch (tag) {
        case METHOD_NAME:
            if (!read_str(l, st, wt, &m->pub.name, "method name"))
                return false;
            break;
        case METHOD_INPUT:
            if (!read_str(l, st, wt, &m->input_name, "method input type"))
                return false;
            break;
        case METHOD_OUTPUT:
            if (!read_str(l, st, wt, &m->output_name, "method output type"))
                return false;
            break;
        case METHOD_OPTIONS:
            if (!open_sub(l, st, wt, &sub, "method options") || !parse_method_options(l, &sub, m) ||
                !close_sub(l, st, &sub, "method options"))
                return false;
            break;
        case METHOD_CLIENT_STREAMING:
            if (!read_varint(l, st, wt, &v, "client_streaming"))
                return false;
            m->pub.client_streaming = v != 0;
            break;
        case METHOD_SERVER_STREAMING:
            if (!read_varint(l, st, wt, &v, "server_streaming"))
                return false;
            m->pub.server_streaming = v != 0;
            break;
        default:
            if (!skip(l, st, wt, service))
                return false;
        }
    }
    if (m->pub.name == NULL || m->pub.name[0] == '\0' || m->input_name == NULL ||
        m->output_name == NULL)
        return fail(l, "malformed descriptor set: %s: a method without a name or types", service);
    m->input_name = strip_dot(m->input_name);
    m->output_name = strip_dot(m->output_name);
    m->pub.path = arena_strdup2(l->s, "/", service, "/");
    if (m->pub.path != NULL)
        m->pub.path = arena_strdup2(l->s, m->pub.path, "", m->pub.name);
    if (m->pub.path == NULL)
        return fail_oom(l);
    if (l->methods_tail != NULL)
        l->methods_tail->next = m;
    else
        l->methods_head = m;
    l->methods_tail = m;
    l->nmethods++;
    return true;
}

static bool parse_service(loader *l, pb_istream_t *st)
{
    const char *name = NULL;
    if (!peek_name(l, st, SVC_NAME, &name, "service"))
        return false;
    if (name == NULL || name[0] == '\0')
        return fail(l, "malformed descriptor set: a service without a name");
    const char *service = full_name(l, l->package, name);
    if (service == NULL)
        return false;
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        pb_istream_t sub;
        if (!next_tag(l, st, &tag, &wt, &done, service))
            return false;
        if (done)
            return true;
        if (tag != SVC_METHOD) {
            if (!skip(l, st, wt, service))
                return false;
            continue;
        }
        if (!open_sub(l, st, wt, &sub, service) || !parse_method(l, &sub, service) ||
            !close_sub(l, st, &sub, service))
            return false;
    }
}

static bool parse_file(loader *l, pb_istream_t *st)
{
    const char *package = NULL;
    if (!peek_name(l, st, FILE_PACKAGE, &package, "file"))
        return false;
    l->package = package != NULL ? package : "";
    for (;;) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        pb_istream_t sub;
        bool ok = true;
        if (!next_tag(l, st, &tag, &wt, &done, "file"))
            return false;
        if (done)
            return true;
        switch (tag) {
        case FILE_MESSAGE:
            ok = open_sub(l, st, wt, &sub, "file") && parse_message(l, &sub, l->package, 1) &&
                 close_sub(l, st, &sub, "file");
            break;
        case FILE_ENUM:
            ok = open_sub(l, st, wt, &sub, "file") && parse_enum(l, &sub, l->package) &&
                 close_sub(l, st, &sub, "file");
            break;
        case FILE_SERVICE:
            ok = open_sub(l, st, wt, &sub, "file") && parse_service(l, &sub) &&
                 close_sub(l, st, &sub, "file");
            break;
        default:
            ok = skip(l, st, wt, "file");
        }
        if (!ok)
            return false;
    }
}

static int cmp_message(const void *a, const void *b)
{
    return strcmp((*(const sc_message *const *)a)->pub.full_name,
                  (*(const sc_message *const *)b)->pub.full_name);
}

static int cmp_enum(const void *a, const void *b)
{
    return strcmp((*(const sc_enum *const *)a)->pub.full_name,
                  (*(const sc_enum *const *)b)->pub.full_name);
}

/* Messages and enums are looked up alike, in sorted arrays of pointers; an item's full name
 * and package are read through these. */
typedef struct named {
    const char *(*full)(const void *item);
    const char *(*package)(const void *item);
} named;

static const char *message_full(const void *p) { return ((const sc_message *)p)->pub.full_name; }
static const char *message_package(const void *p) { return ((const sc_message *)p)->package; }
static const char *enum_full(const void *p) { return ((const sc_enum *)p)->pub.full_name; }
static const char *enum_package(const void *p) { return ((const sc_enum *)p)->package; }
static const named message_names = {message_full, message_package};
static const named enum_names = {enum_full, enum_package};

/* name without its package: "Messages" of "lagoon.v1.Messages" in package "lagoon.v1" */
static const char *short_name(const char *full, const char *package)
{
    size_t n = strlen(package);
    if (n > 0 && strncmp(full, package, n) == 0 && full[n] == '.')
        return full + n + 1;
    return full;
}

/* The item named name in items[0..n) (sorted by full name), or, when by_short and no full name
 * matches, the one item whose name without its package is name. NULL if none. */
static const void *lookup(const void *const *items, size_t n, const named *how, const char *name,
                          int by_short)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, how->full(items[mid]));
        if (c == 0)
            return items[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    const void *match = NULL;
    size_t found = 0;
    for (size_t i = 0; by_short && i < n; i++)
        if (strcmp(short_name(how->full(items[i]), how->package(items[i])), name) == 0) {
            match = items[i];
            found++;
        }
    return found == 1 ? match : NULL;
}

static sc_message *find_message(const ctl_schema *s, const char *full)
{
    return (sc_message *)lookup((const void *const *)s->messages, s->nmessages, &message_names,
                                full, 0);
}

static sc_enum *find_enum(const ctl_schema *s, const char *full)
{
    return (sc_enum *)lookup((const void *const *)s->enums, s->nenums, &enum_names, full, 0);
}

/* Lists to sorted arrays, every type name to its type. */
static bool resolve(loader *l)
{
    ctl_schema *s = l->s;
    s->messages = arena_array(s, l->nmsgs, sizeof(*s->messages));
    s->enums = arena_array(s, l->nenums, sizeof(*s->enums));
    s->methods = arena_array(s, l->nmethods, sizeof(*s->methods));
    if (s->messages == NULL || s->enums == NULL || s->methods == NULL)
        return fail_oom(l);
    for (sc_message *m = l->msgs; m != NULL; m = m->next)
        s->messages[s->nmessages++] = m;
    for (sc_enum *e = l->enums; e != NULL; e = e->next)
        s->enums[s->nenums++] = e;
    for (sc_method *m = l->methods_head; m != NULL; m = m->next)
        s->methods[s->nmethods++] = &m->pub;
    if (s->nmessages > 1)
        qsort((void *)s->messages, s->nmessages, sizeof(*s->messages), cmp_message);
    if (s->nenums > 1)
        qsort((void *)s->enums, s->nenums, sizeof(*s->enums), cmp_enum);
    for (size_t i = 1; i < s->nmessages; i++)
        if (strcmp(s->messages[i]->pub.full_name, s->messages[i - 1]->pub.full_name) == 0)
            return fail(l, "malformed descriptor set: message %s defined twice",
                        s->messages[i]->pub.full_name);
    for (size_t i = 1; i < s->nenums; i++)
        if (strcmp(s->enums[i]->pub.full_name, s->enums[i - 1]->pub.full_name) == 0)
            return fail(l, "malformed descriptor set: enum %s defined twice",
                        s->enums[i]->pub.full_name);
    for (size_t i = 0; i < s->nmessages; i++) {
        sc_message *m = s->messages[i];
        for (size_t j = 0; j < m->pub.nfields; j++) {
            ctl_field *f = &m->fields[j];
            if (f->type == CTL_TYPE_ENUM) {
                sc_enum *e = find_enum(s, f->type_name);
                if (e == NULL)
                    return fail(l, "%s.%s: enum type .%s not found", m->pub.full_name, f->name,
                                f->type_name);
                f->enumeration = &e->pub;
            } else if (f->type_name != NULL) {
                sc_message *t = find_message(s, f->type_name);
                if (t == NULL)
                    return fail(l, "%s.%s: message type .%s not found", m->pub.full_name,
                                f->name, f->type_name);
                f->message = &t->pub;
            }
        }
    }
    for (sc_method *m = l->methods_head; m != NULL; m = m->next) {
        sc_message *in = find_message(s, m->input_name), *out = find_message(s, m->output_name);
        if (in == NULL || out == NULL)
            return fail(l, "%s: message type .%s not found", m->pub.path,
                        in == NULL ? m->input_name : m->output_name);
        m->pub.input = &in->pub;
        m->pub.output = &out->pub;
    }
    return true;
}

int ctl_schema_load(const uint8_t *data, size_t len, ctl_schema **out, char *err, size_t cap)
{
    loader l = {.err = err, .cap = cap};
    *out = NULL;
    if (cap > 0)
        err[0] = '\0';
    if (len > CTL_SCHEMA_MAX_BYTES) {
        if (cap > 0)
            snprintf(err, cap, "descriptor set of %zu bytes (at most %u)", len,
                     (unsigned)CTL_SCHEMA_MAX_BYTES);
        return -1;
    }
    l.s = calloc(1, sizeof(*l.s));
    if (l.s == NULL) {
        fail_oom(&l);
        return -1;
    }
    pb_istream_t st = pb_istream_from_buffer(len > 0 ? data : (const pb_byte_t *)"", len);
    bool ok = true;
    while (ok) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool done = false;
        pb_istream_t sub;
        ok = next_tag(&l, &st, &tag, &wt, &done, "descriptor set");
        if (!ok || done)
            break;
        if (tag != FDS_FILE) {
            ok = skip(&l, &st, wt, "descriptor set");
            continue;
        }
        ok = open_sub(&l, &st, wt, &sub, "file") && parse_file(&l, &sub) &&
             close_sub(&l, &st, &sub, "file");
    }
    if (ok)
        ok = resolve(&l);
    if (!ok) {
        ctl_schema_free(l.s);
        return -1;
    }
    *out = l.s;
    return 0;
}

size_t ctl_schema_methods(const ctl_schema *s, const ctl_method *const **out)
{
    *out = s->methods;
    return s->nmethods;
}

const ctl_method *ctl_schema_method(const ctl_schema *s, const char *name)
{
    if (name == NULL)
        return NULL;
    if (name[0] == '/')
        name++;
    const char *sep = strrchr(name, '/');
    if (sep == NULL)
        sep = strrchr(name, '.');
    if (sep == NULL || sep == name || sep[1] == '\0')
        return NULL;
    size_t slen = (size_t)(sep - name);
    const char *method = sep + 1;
    const ctl_method *match = NULL;
    size_t nshort = 0;
    for (size_t i = 0; i < s->nmethods; i++) {
        const ctl_method *m = s->methods[i];
        if (strcmp(m->name, method) != 0)
            continue;
        if (strlen(m->service) == slen && strncmp(m->service, name, slen) == 0)
            return m;
        /* a service is named in its package: the part after the last dot of its path */
        const char *dot = strrchr(m->service, '.');
        const char *svc = dot != NULL ? dot + 1 : m->service;
        if (strlen(svc) == slen && strncmp(svc, name, slen) == 0) {
            match = m;
            nshort++;
        }
    }
    return nshort == 1 ? match : NULL;
}

const ctl_message *ctl_schema_message(const ctl_schema *s, const char *name)
{
    if (name == NULL)
        return NULL;
    const sc_message *m = lookup((const void *const *)s->messages, s->nmessages, &message_names,
                                 strip_dot(name), 1);
    return m != NULL ? &m->pub : NULL;
}

const ctl_enum *ctl_schema_enum(const ctl_schema *s, const char *name)
{
    if (name == NULL)
        return NULL;
    const sc_enum *e = lookup((const void *const *)s->enums, s->nenums, &enum_names, strip_dot(name), 1);
    return e != NULL ? &e->pub : NULL;
}
