/* ctl_json: protobuf's canonical JSON mapping (proto3) over a ctl_schema, with jansson.
 *
 * Encoding walks the JSON object field by field in field-number order (the bytes then come
 * out as nanopb writes them); decoding reads the wire with nanopb's stream functions, keeps
 * one value per field, and builds the object in field-number order at the end, so a field
 * repeated on the wire, a oneof switched, or a message split in two reads as protobuf says. */
#include "ctl_schema.h"

#include <pb_decode.h>

#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The most bytes ctl_json_encode writes and ctl_json_decode reads: far above any frame the
 * server sends or takes (its limits are in docs/API.md), so only a runaway input meets it. */
#define CTL_JSON_MAX_BYTES (64u * 1024 * 1024)
/* Bytes of the dotted path in an error; a longer one is cut. */
#define CTL_JSON_MAX_PATH 256

typedef struct jctx {
    char *err;
    size_t cap;
    int failed;
    char path[CTL_JSON_MAX_PATH];
    size_t plen;
} jctx;

__attribute__((format(printf, 2, 3))) static int jfail(jctx *c, const char *fmt, ...)
{
    if (!c->failed && c->cap > 0) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (c->plen > 0)
            snprintf(c->err, c->cap, "%s: %s", c->path, msg);
        else
            snprintf(c->err, c->cap, "%s", msg);
    }
    c->failed = 1;
    return -1;
}

/* Pushes ".name" (or "name" at the top) on the path; returns the old length for path_pop. */
static size_t path_push(jctx *c, const char *name)
{
    size_t old = c->plen;
    int n = snprintf(c->path + old, sizeof c->path - old, "%s%s", old > 0 ? "." : "", name);
    if (n > 0)
        c->plen = old + (size_t)n < sizeof c->path ? old + (size_t)n : sizeof c->path - 1;
    return old;
}

static size_t path_push_index(jctx *c, size_t i)
{
    size_t old = c->plen;
    int n = snprintf(c->path + old, sizeof c->path - old, "[%zu]", i);
    if (n > 0)
        c->plen = old + (size_t)n < sizeof c->path ? old + (size_t)n : sizeof c->path - 1;
    return old;
}

static size_t path_push_key(jctx *c, const char *key)
{
    size_t old = c->plen;
    int n = snprintf(c->path + old, sizeof c->path - old, "[\"%s\"]", key);
    if (n > 0)
        c->plen = old + (size_t)n < sizeof c->path ? old + (size_t)n : sizeof c->path - 1;
    return old;
}

static void path_pop(jctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

/* Fields of m by number (sorted pointers into m->fields): both directions emit in number
 * order, and decoding looks fields up by number. Caller frees. */
static int cmp_number(const void *a, const void *b)
{
    const ctl_field *x = *(const ctl_field *const *)a, *y = *(const ctl_field *const *)b;
    return x->number < y->number ? -1 : x->number > y->number;
}

static const ctl_field **by_number(const ctl_message *m)
{
    const ctl_field **v = malloc((m->nfields > 0 ? m->nfields : 1) * sizeof(*v));
    if (v == NULL)
        return NULL;
    for (size_t i = 0; i < m->nfields; i++)
        v[i] = &m->fields[i];
    if (m->nfields > 1)
        qsort((void *)v, m->nfields, sizeof(*v), cmp_number);
    return v;
}

static int is_packable(int type)
{
    return type != CTL_TYPE_STRING && type != CTL_TYPE_BYTES && type != CTL_TYPE_MESSAGE &&
           type != CTL_TYPE_GROUP;
}

/* The wire type of a (non-packed) value of type. */
static pb_wire_type_t wire_type_of(int type)
{
    switch (type) {
    case CTL_TYPE_DOUBLE:
    case CTL_TYPE_FIXED64:
    case CTL_TYPE_SFIXED64:
        return PB_WT_64BIT;
    case CTL_TYPE_FLOAT:
    case CTL_TYPE_FIXED32:
    case CTL_TYPE_SFIXED32:
        return PB_WT_32BIT;
    case CTL_TYPE_STRING:
    case CTL_TYPE_BYTES:
    case CTL_TYPE_MESSAGE:
        return PB_WT_STRING;
    default:
        return PB_WT_VARINT;
    }
}

static int has_presence(const ctl_field *f)
{
    return f->oneof_index >= 0 || f->proto3_optional || f->type == CTL_TYPE_MESSAGE;
}

/* ---- buffer --------------------------------------------------------------------------- */

void ctl_buf_free(ctl_buf *b)
{
    if (b == NULL)
        return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static int buf_reserve(jctx *c, ctl_buf *b, size_t more)
{
    if (more > CTL_JSON_MAX_BYTES || b->len > CTL_JSON_MAX_BYTES - more)
        return jfail(c, "message over %u bytes", (unsigned)CTL_JSON_MAX_BYTES);
    if (b->len + more <= b->cap)
        return 0;
    size_t cap = b->cap > 0 ? b->cap : 64;
    while (cap < b->len + more)
        cap *= 2; /* ends: len + more <= CTL_JSON_MAX_BYTES, far from SIZE_MAX */
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL)
        return jfail(c, "out of memory");
    b->data = p;
    b->cap = cap;
    return 0;
}

static int put_bytes(jctx *c, ctl_buf *b, const void *p, size_t n)
{
    if (buf_reserve(c, b, n) != 0)
        return -1;
    if (n > 0)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static size_t varint_bytes(uint64_t v, uint8_t out[10])
{
    size_t n = 0;
    while (v >= 0x80) {
        out[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    out[n++] = (uint8_t)v;
    return n;
}

static int put_varint(jctx *c, ctl_buf *b, uint64_t v)
{
    uint8_t tmp[10];
    return put_bytes(c, b, tmp, varint_bytes(v, tmp));
}

static int put_tag(jctx *c, ctl_buf *b, uint32_t number, pb_wire_type_t wt)
{
    return put_varint(c, b, ((uint64_t)number << 3) | (uint64_t)wt);
}

static int put_le(jctx *c, ctl_buf *b, uint64_t v, size_t n)
{
    uint8_t tmp[8];
    for (size_t i = 0; i < n; i++)
        tmp[i] = (uint8_t)(v >> (8 * i));
    return put_bytes(c, b, tmp, n);
}

/* The bytes from start on become a length-delimited value: its length goes in front. */
static int wrap_length(jctx *c, ctl_buf *b, size_t start)
{
    uint8_t tmp[10];
    size_t n = b->len - start, k = varint_bytes(n, tmp);
    if (buf_reserve(c, b, k) != 0)
        return -1;
    memmove(b->data + start + k, b->data + start, n);
    memcpy(b->data + start, tmp, k);
    b->len += k;
    return 0;
}

/* ---- base64 --------------------------------------------------------------------------- */

static int b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+' || ch == '-')
        return 62;
    if (ch == '/' || ch == '_')
        return 63;
    return -1;
}

/* Standard or URL-safe base64, padded or not, into out (at least len * 3 / 4 + 3 bytes).
 * Returns the decoded length or -1. */
static long b64_decode(const char *s, size_t len, uint8_t *out)
{
    size_t pad = 0;
    if (len > 0 && s[len - 1] == '=') {
        pad = len >= 2 && s[len - 2] == '=' ? 2 : 1;
        if (len % 4 != 0)
            return -1; /* padding, when given, completes the last group of four */
        len -= pad;
    }
    if (len % 4 == 1)
        return -1;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64_value((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return (long)n;
}

static char *b64_encode(const uint8_t *p, size_t n)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc((n + 2) / 3 * 4 + 1);
    if (out == NULL)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[j++] = abc[(v >> 18) & 63];
        out[j++] = abc[(v >> 12) & 63];
        out[j++] = i + 1 < n ? abc[(v >> 6) & 63] : '=';
        out[j++] = i + 2 < n ? abc[v & 63] : '=';
    }
    out[j] = '\0';
    return out;
}

/* ---- JSON -> protobuf ----------------------------------------------------------------- */

static int encode_message(jctx *c, const ctl_message *m, const json_t *j, ctl_buf *out, int depth);

/* A decimal integer string, optionally signed: "123", "-5". */
static int parse_int_string(const char *s, int *neg, uint64_t *mag)
{
    *neg = 0;
    *mag = 0;
    if (*s == '-' || *s == '+') {
        *neg = *s == '-';
        s++;
    }
    if (*s == '\0')
        return -1;
    for (; *s != '\0'; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        unsigned d = (unsigned)(*s - '0');
        if (*mag > (UINT64_MAX - d) / 10)
            return -1;
        *mag = *mag * 10 + d;
    }
    return 0;
}

/* d has no fraction (without floor(): the library does not link libm). Every double of
 * magnitude 2^53 or more is an integer; below that the cast to int64_t is exact. */
static int is_integral(double d)
{
    if (d >= 9007199254740992.0 || d <= -9007199254740992.0)
        return 1;
    return (double)(int64_t)d == d;
}

/* An integral JSON value (an integer, an integral real, or a string of digits) within
 * [min, max]; unsigned ranges have min 0 and use umax. */
static int json_to_int(jctx *c, const json_t *v, int is_signed, int64_t min, int64_t max,
                       uint64_t umax, uint64_t *out)
{
    int neg = 0;
    uint64_t mag = 0;
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        neg = i < 0;
        mag = neg ? (uint64_t)(-(i + 1)) + 1 : (uint64_t)i;
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!isfinite(d) || !is_integral(d))
            return jfail(c, "%g is not an integer", d);
        if (d >= 18446744073709551616.0 || d < -9223372036854775808.0)
            return jfail(c, "%g is out of range", d);
        neg = d < 0;
        mag = neg ? (uint64_t)(-d) : (uint64_t)d;
    } else if (json_is_string(v)) {
        if (parse_int_string(json_string_value(v), &neg, &mag) != 0)
            return jfail(c, "\"%s\" is not an integer", json_string_value(v));
    } else {
        return jfail(c, "expected an integer");
    }
    if (mag == 0)
        neg = 0;
    if (is_signed) {
        if (neg ? mag > (uint64_t)(-(min + 1)) + 1 : mag > (uint64_t)max)
            return jfail(c, "%s%" PRIu64 " is out of range [%" PRId64 ", %" PRId64 "]",
                         neg ? "-" : "", mag, min, max);
        *out = neg ? (uint64_t)0 - mag : mag;
    } else {
        if (neg || mag > umax)
            return jfail(c, "%s%" PRIu64 " is out of range [0, %" PRIu64 "]", neg ? "-" : "", mag,
                         umax);
        *out = mag;
    }
    return 0;
}

static int json_to_double(jctx *c, const json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "NaN") == 0)
            *out = NAN;
        else if (strcmp(s, "Infinity") == 0)
            *out = INFINITY;
        else if (strcmp(s, "-Infinity") == 0)
            *out = -INFINITY;
        else {
            char *end = NULL;
            *out = strtod(s, &end);
            if (*s == '\0' || end == NULL || *end != '\0' || !isfinite(*out))
                return jfail(c, "\"%s\" is not a number", s);
        }
        return 0;
    }
    return jfail(c, "expected a number");
}

/* sint32/sint64's encoding of the two's complement value u: 0, -1, 1, -2 ... as 0, 1, 2, 3 */
static uint64_t zigzag(uint64_t u)
{
    return (u >> 63) != 0 ? (~u << 1) | 1 : u << 1;
}

/* One scalar (or enum) value, as the wire's bits: a varint, 32 or 64 bits. */
static int scalar_bits(jctx *c, const ctl_field *f, const json_t *v, uint64_t *bits)
{
    uint64_t u = 0;
    double d = 0;
    switch (f->type) {
    case CTL_TYPE_INT32:
    case CTL_TYPE_SFIXED32:
    case CTL_TYPE_SINT32:
        if (json_to_int(c, v, 1, INT32_MIN, INT32_MAX, 0, &u) != 0)
            return -1;
        if (f->type == CTL_TYPE_SINT32)
            u = zigzag(u);
        else if (f->type == CTL_TYPE_SFIXED32)
            u = (uint32_t)u;
        /* INT32: the varint of a negative value is its 64-bit sign extension, as u is */
        break;
    case CTL_TYPE_INT64:
    case CTL_TYPE_SFIXED64:
    case CTL_TYPE_SINT64:
        if (json_to_int(c, v, 1, INT64_MIN, INT64_MAX, 0, &u) != 0)
            return -1;
        if (f->type == CTL_TYPE_SINT64)
            u = zigzag(u);
        break;
    case CTL_TYPE_UINT32:
    case CTL_TYPE_FIXED32:
        if (json_to_int(c, v, 0, 0, 0, UINT32_MAX, &u) != 0)
            return -1;
        break;
    case CTL_TYPE_UINT64:
    case CTL_TYPE_FIXED64:
        if (json_to_int(c, v, 0, 0, 0, UINT64_MAX, &u) != 0)
            return -1;
        break;
    case CTL_TYPE_BOOL:
        if (!json_is_boolean(v))
            return jfail(c, "expected true or false");
        u = json_is_true(v) ? 1 : 0;
        break;
    case CTL_TYPE_FLOAT: {
        if (json_to_double(c, v, &d) != 0)
            return -1;
        if (isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))
            return jfail(c, "%g is out of range for a float", d);
        float fl = (float)d;
        uint32_t w = 0;
        memcpy(&w, &fl, sizeof w);
        u = w;
        break;
    }
    case CTL_TYPE_DOUBLE:
        if (json_to_double(c, v, &d) != 0)
            return -1;
        memcpy(&u, &d, sizeof u);
        break;
    case CTL_TYPE_ENUM: {
        const ctl_enum *e = f->enumeration;
        if (json_is_string(v)) {
            const char *name = json_string_value(v);
            size_t i = 0;
            while (i < e->nvalues && strcmp(e->values[i].name, name) != 0)
                i++;
            if (i == e->nvalues)
                return jfail(c, "\"%s\" is not a value of %s", name, e->full_name);
            u = (uint64_t)(int64_t)e->values[i].number;
        } else if (json_is_integer(v) || json_is_real(v)) {
            /* open enums: any int32 number passes, known or not */
            if (json_to_int(c, v, 1, INT32_MIN, INT32_MAX, 0, &u) != 0)
                return -1;
        } else {
            return jfail(c, "expected a value of %s (a name or a number)", e->full_name);
        }
        break;
    }
    default:
        return jfail(c, "type %d is not supported", f->type);
    }
    *bits = u;
    return 0;
}

static int put_scalar_bits(jctx *c, ctl_buf *out, int type, uint64_t bits)
{
    switch (wire_type_of(type)) {
    case PB_WT_64BIT:
        return put_le(c, out, bits, 8);
    case PB_WT_32BIT:
        return put_le(c, out, bits, 4);
    default:
        return put_varint(c, out, bits);
    }
}

/* A string or bytes value into its raw bytes (bytes from base64); *p is malloc'd for bytes. */
static int bytes_of(jctx *c, const ctl_field *f, const json_t *v, const uint8_t **p, size_t *n,
                    uint8_t **owned)
{
    *owned = NULL;
    if (!json_is_string(v))
        return jfail(c, f->type == CTL_TYPE_BYTES ? "expected a base64 string" : "expected a string");
    const char *s = json_string_value(v);
    size_t len = json_string_length(v);
    if (f->type == CTL_TYPE_STRING) {
        *p = (const uint8_t *)s;
        *n = len;
        return 0;
    }
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    if (buf == NULL)
        return jfail(c, "out of memory");
    long got = b64_decode(s, len, buf);
    if (got < 0) {
        free(buf);
        return jfail(c, "not valid base64");
    }
    *p = buf;
    *n = (size_t)got;
    *owned = buf;
    return 0;
}

/* One value of field f (an item, for a repeated field) with its tag. A value the JSON gives
 * is written even at its default: proto3 reads a zero on the wire as no zero, and a proto2
 * field (descriptor.proto's) needs it for its presence. */
static int encode_value(jctx *c, const ctl_field *f, uint32_t number, const json_t *v,
                        ctl_buf *out, int depth)
{
    if (f->type == CTL_TYPE_GROUP)
        return jfail(c, "groups are not supported");
    if (f->type == CTL_TYPE_MESSAGE) {
        if (put_tag(c, out, number, PB_WT_STRING) != 0)
            return -1;
        size_t start = out->len;
        if (encode_message(c, f->message, v, out, depth + 1) != 0)
            return -1;
        return wrap_length(c, out, start);
    }
    if (f->type == CTL_TYPE_STRING || f->type == CTL_TYPE_BYTES) {
        const uint8_t *p = NULL;
        size_t n = 0;
        uint8_t *owned = NULL;
        int rc = bytes_of(c, f, v, &p, &n, &owned);
        if (rc == 0)
            rc = (put_tag(c, out, number, PB_WT_STRING) != 0 || put_varint(c, out, n) != 0 ||
                  put_bytes(c, out, p, n) != 0)
                     ? -1
                     : 0;
        free(owned);
        return rc;
    }
    uint64_t bits = 0;
    if (scalar_bits(c, f, v, &bits) != 0)
        return -1;
    if (put_tag(c, out, number, wire_type_of(f->type)) != 0)
        return -1;
    return put_scalar_bits(c, out, f->type, bits);
}

/* A map key (always a JSON string) as a value of the key field's type. */
static int encode_map_key(jctx *c, const ctl_field *kf, const char *key, ctl_buf *out)
{
    if (kf->type == CTL_TYPE_STRING) {
        size_t n = strlen(key);
        return (put_tag(c, out, 1, PB_WT_STRING) != 0 || put_varint(c, out, n) != 0 ||
                put_bytes(c, out, key, n) != 0)
                   ? -1
                   : 0;
    }
    json_t *kv = NULL;
    if (kf->type == CTL_TYPE_BOOL) {
        if (strcmp(key, "true") != 0 && strcmp(key, "false") != 0)
            return jfail(c, "map key \"%s\" is not true or false", key);
        kv = json_boolean(strcmp(key, "true") == 0);
    } else {
        kv = json_string(key); /* integers: json_to_int takes strings of digits */
    }
    if (kv == NULL)
        return jfail(c, "out of memory");
    int rc = encode_value(c, kf, 1, kv, out, 0);
    json_decref(kv);
    return rc;
}

static int encode_map(jctx *c, const ctl_field *f, const json_t *v, ctl_buf *out, int depth)
{
    if (!json_is_object(v))
        return jfail(c, "expected an object (a map)");
    const ctl_message *entry = f->message;
    const ctl_field *kf = &entry->fields[0], *vf = &entry->fields[1];
    if (kf->number != 1) { /* the loader checked both are there, in either order */
        kf = &entry->fields[1];
        vf = &entry->fields[0];
    }
    if (depth + 1 > CTL_SCHEMA_MAX_NESTING)
        return jfail(c, "nested deeper than %d", CTL_SCHEMA_MAX_NESTING);
    const char *key = NULL;
    const json_t *val = NULL;
    json_object_foreach((json_t *)v, key, val)
    {
        size_t old = path_push_key(c, key);
        if (json_is_null(val))
            return jfail(c, "a map value cannot be null");
        if (put_tag(c, out, f->number, PB_WT_STRING) != 0)
            return -1;
        size_t start = out->len;
        if (encode_map_key(c, kf, key, out) != 0 || encode_value(c, vf, 2, val, out, depth + 1) != 0 ||
            wrap_length(c, out, start) != 0)
            return -1;
        path_pop(c, old);
    }
    return 0;
}

static int encode_repeated(jctx *c, const ctl_field *f, const json_t *v, ctl_buf *out, int depth)
{
    if (!json_is_array(v))
        return jfail(c, "expected an array");
    size_t n = json_array_size(v);
    if (n == 0)
        return 0;
    int packed = is_packable(f->type);
    size_t start = 0;
    if (packed) {
        if (put_tag(c, out, f->number, PB_WT_STRING) != 0)
            return -1;
        start = out->len;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(v, i);
        size_t old = path_push_index(c, i);
        if (json_is_null(item))
            return jfail(c, "an item cannot be null");
        if (packed) {
            uint64_t bits = 0;
            if (scalar_bits(c, f, item, &bits) != 0 ||
                put_scalar_bits(c, out, f->type, bits) != 0)
                return -1;
        } else if (encode_value(c, f, f->number, item, out, depth) != 0) {
            return -1;
        }
        path_pop(c, old);
    }
    return packed ? wrap_length(c, out, start) : 0;
}

static int encode_fields(jctx *c, const ctl_message *m, const json_t *j, ctl_buf *out, int depth,
                         const ctl_field **fields, const ctl_field **oneof_set)
{
    size_t matched = 0;
    for (size_t i = 0; i < m->nfields; i++) {
        const ctl_field *f = fields[i];
        const json_t *a = json_object_get(j, f->json_name);
        const json_t *b = strcmp(f->name, f->json_name) != 0 ? json_object_get(j, f->name) : NULL;
        matched += (a != NULL) + (b != NULL);
        if (a == NULL && b == NULL)
            continue;
        size_t old = path_push(c, f->json_name);
        if (a != NULL && b != NULL)
            return jfail(c, "given twice (as \"%s\" and \"%s\")", f->json_name, f->name);
        const json_t *v = a != NULL ? a : b;
        if (json_is_null(v)) { /* null: the default, nothing on the wire */
            path_pop(c, old);
            continue;
        }
        if (f->oneof_index >= 0) {
            const ctl_field *other = oneof_set[f->oneof_index];
            if (other != NULL)
                return jfail(c, "only one of oneof %s may be set (%s is set too)",
                             m->oneofs[f->oneof_index], other->json_name);
            oneof_set[f->oneof_index] = f;
        }
        int rc = 0;
        if (f->repeated && f->type == CTL_TYPE_MESSAGE && f->message->map_entry)
            rc = encode_map(c, f, v, out, depth);
        else if (f->repeated)
            rc = encode_repeated(c, f, v, out, depth);
        else
            rc = encode_value(c, f, f->number, v, out, depth);
        if (rc != 0)
            return -1;
        path_pop(c, old);
    }
    if (matched != json_object_size(j)) {
        const char *key = NULL;
        const json_t *val = NULL;
        json_object_foreach((json_t *)j, key, val)
        {
            size_t i = 0;
            while (i < m->nfields && strcmp(m->fields[i].json_name, key) != 0 &&
                   strcmp(m->fields[i].name, key) != 0)
                i++;
            if (i == m->nfields)
                return jfail(c, "unknown field \"%s\" in %s", key, m->full_name);
        }
    }
    return 0;
}

static int encode_message(jctx *c, const ctl_message *m, const json_t *j, ctl_buf *out, int depth)
{
    if (depth > CTL_SCHEMA_MAX_NESTING)
        return jfail(c, "nested deeper than %d", CTL_SCHEMA_MAX_NESTING);
    if (!json_is_object(j))
        return jfail(c, "expected an object (%s)", m->full_name);
    const ctl_field **fields = by_number(m);
    const ctl_field **oneof_set = calloc(m->noneofs > 0 ? m->noneofs : 1, sizeof(*oneof_set));
    int rc = -1;
    if (fields == NULL || oneof_set == NULL)
        jfail(c, "out of memory");
    else
        rc = encode_fields(c, m, j, out, depth, fields, oneof_set);
    free((void *)fields);
    free((void *)oneof_set);
    return rc;
}

int ctl_json_encode(const ctl_message *m, const json_t *j, ctl_buf *out, char *err, size_t cap)
{
    jctx c = {.err = err, .cap = cap};
    size_t start = out->len;
    if (cap > 0)
        err[0] = '\0';
    if (encode_message(&c, m, j, out, 0) != 0) {
        out->len = start; /* nothing half-written stays appended */
        return -1;
    }
    return 0;
}

/* ---- protobuf -> JSON ----------------------------------------------------------------- */

/* What one field has gathered from the wire so far. */
typedef struct slot {
    json_t *value;        /* scalars, strings, arrays (repeated), objects (maps) */
    const uint8_t *msg;   /* a singular message field: its bytes, decoded at the end */
    size_t msg_len;
    uint8_t *msg_owned;   /* when it came in pieces: their concatenation (protobuf merges) */
    size_t msg_cap;       /* msg_owned's size: doubled as pieces come, so n pieces cost O(total) */
    int present;
} slot;

static void slot_clear(slot *s)
{
    json_decref(s->value);
    free(s->msg_owned);
    memset(s, 0, sizeof(*s));
}

static json_t *decode_message(jctx *c, const ctl_message *m, const uint8_t *data, size_t len,
                              int depth);

static int stream_fail(jctx *c, pb_istream_t *st)
{
    return jfail(c, "malformed: %s", PB_GET_ERROR(st));
}

static json_t *jnew(jctx *c, json_t *v)
{
    if (v == NULL)
        jfail(c, "out of memory (or a string that is not UTF-8)");
    return v;
}

static json_t *int64_string(jctx *c, int is_signed, uint64_t u)
{
    char tmp[24];
    if (is_signed)
        snprintf(tmp, sizeof tmp, "%" PRId64, (int64_t)u);
    else
        snprintf(tmp, sizeof tmp, "%" PRIu64, u);
    return jnew(c, json_string(tmp));
}

static json_t *double_json(jctx *c, double d)
{
    if (isnan(d))
        return jnew(c, json_string("NaN"));
    if (isinf(d))
        return jnew(c, json_string(d > 0 ? "Infinity" : "-Infinity"));
    return jnew(c, json_real(d));
}

/* A scalar from its wire bits (varint, 32 or 64 bits). *is_default: the type's zero. */
static json_t *scalar_json(jctx *c, const ctl_field *f, uint64_t u, int *is_default)
{
    *is_default = 0;
    switch (f->type) {
    case CTL_TYPE_INT32:
    case CTL_TYPE_SFIXED32:
        *is_default = (uint32_t)u == 0;
        return jnew(c, json_integer((json_int_t)(int32_t)(uint32_t)u));
    case CTL_TYPE_SINT32: {
        uint32_t w = (uint32_t)u;
        *is_default = w == 0;
        return jnew(c, json_integer((json_int_t)(int32_t)((w >> 1) ^ (0u - (w & 1)))));
    }
    case CTL_TYPE_UINT32:
    case CTL_TYPE_FIXED32:
        *is_default = (uint32_t)u == 0;
        return jnew(c, json_integer((json_int_t)(uint32_t)u));
    case CTL_TYPE_INT64:
    case CTL_TYPE_SFIXED64:
        *is_default = u == 0;
        return int64_string(c, 1, u);
    case CTL_TYPE_SINT64:
        *is_default = u == 0;
        return int64_string(c, 1, (u >> 1) ^ (0 - (u & 1)));
    case CTL_TYPE_UINT64:
    case CTL_TYPE_FIXED64:
        *is_default = u == 0;
        return int64_string(c, 0, u);
    case CTL_TYPE_BOOL:
        *is_default = u == 0;
        return jnew(c, json_boolean(u != 0));
    case CTL_TYPE_FLOAT: {
        uint32_t w = (uint32_t)u;
        float fl = 0;
        memcpy(&fl, &w, sizeof fl);
        *is_default = w == 0;
        return double_json(c, (double)fl);
    }
    case CTL_TYPE_DOUBLE: {
        double d = 0;
        memcpy(&d, &u, sizeof d);
        *is_default = u == 0;
        return double_json(c, d);
    }
    case CTL_TYPE_ENUM: {
        int32_t n = (int32_t)(uint32_t)u;
        *is_default = n == 0;
        for (size_t i = 0; i < f->enumeration->nvalues; i++)
            if (f->enumeration->values[i].number == n)
                return jnew(c, json_string(f->enumeration->values[i].name));
        return jnew(c, json_integer(n));
    }
    default:
        jfail(c, "type %d is not supported", f->type);
        return NULL;
    }
}

/* One scalar of wire type wt from st. */
static int read_bits(jctx *c, pb_istream_t *st, pb_wire_type_t wt, uint64_t *u)
{
    uint32_t w = 0;
    bool ok = false;
    *u = 0;
    if (wt == PB_WT_VARINT)
        ok = pb_decode_varint(st, u);
    else if (wt == PB_WT_64BIT)
        ok = pb_decode_fixed64(st, u);
    else {
        ok = pb_decode_fixed32(st, &w);
        *u = w;
    }
    return ok ? 0 : stream_fail(c, st);
}

/* The bytes of a length-delimited value: *p points into data (st reads from data + offset). */
static int read_len(jctx *c, pb_istream_t *st, const uint8_t *base, size_t total,
                    const uint8_t **p, size_t *n)
{
    uint64_t len = 0;
    if (!pb_decode_varint(st, &len))
        return stream_fail(c, st);
    if (len > st->bytes_left)
        return jfail(c, "malformed: length %" PRIu64 " past the end (%zu bytes left)", len,
                     st->bytes_left);
    *p = base + (total - st->bytes_left);
    *n = (size_t)len;
    if (!pb_read(st, NULL, (size_t)len))
        return stream_fail(c, st);
    return 0;
}

static json_t *string_json(jctx *c, const ctl_field *f, const uint8_t *p, size_t n)
{
    if (f->type == CTL_TYPE_STRING) {
        json_t *v = json_stringn((const char *)p, n);
        if (v == NULL)
            jfail(c, "not valid UTF-8");
        return v;
    }
    char *s = b64_encode(p, n);
    if (s == NULL) {
        jfail(c, "out of memory");
        return NULL;
    }
    json_t *v = jnew(c, json_string(s));
    free(s);
    return v;
}

/* A map entry's key or value: the field's value, or its default when the entry left it out. */
static json_t *default_json(jctx *c, const ctl_field *f, int depth)
{
    int d = 0;
    if (f->type == CTL_TYPE_MESSAGE)
        return decode_message(c, f->message, (const uint8_t *)"", 0, depth + 1);
    if (f->type == CTL_TYPE_STRING || f->type == CTL_TYPE_BYTES)
        return jnew(c, json_string(""));
    return scalar_json(c, f, 0, &d);
}

/* The text of a map key (a scalar's JSON) as an object key. */
static int map_key_text(jctx *c, const json_t *k, char *tmp, size_t cap, const char **out)
{
    if (json_is_string(k)) {
        *out = json_string_value(k);
        if (strlen(*out) != json_string_length(k))
            return jfail(c, "a map key holds NUL");
    } else if (json_is_boolean(k)) {
        *out = json_is_true(k) ? "true" : "false";
    } else if (json_is_integer(k)) {
        snprintf(tmp, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(k));
        *out = tmp;
    } else {
        return jfail(c, "map key of an unsupported type");
    }
    return 0;
}

static json_t *decode_one(jctx *c, const ctl_field *f, pb_istream_t *st, pb_wire_type_t wt,
                          const uint8_t *base, size_t total, int depth, int *is_default);

/* A map entry's bytes into obj[key] = value. */
static int decode_map_entry(jctx *c, const ctl_field *f, const uint8_t *p, size_t n, json_t *obj,
                            int depth)
{
    const ctl_message *entry = f->message;
    if (depth + 1 > CTL_SCHEMA_MAX_NESTING)
        return jfail(c, "nested deeper than %d", CTL_SCHEMA_MAX_NESTING);
    json_t *kv[2] = {NULL, NULL};
    pb_istream_t st = pb_istream_from_buffer(n > 0 ? p : (const pb_byte_t *)"", n);
    int rc = 0;
    while (rc == 0 && st.bytes_left > 0) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool eof = false;
        if (!pb_decode_tag(&st, &wt, &tag, &eof)) {
            rc = stream_fail(c, &st);
            break;
        }
        const ctl_field *ef = NULL;
        for (size_t i = 0; i < entry->nfields; i++)
            if (entry->fields[i].number == tag)
                ef = &entry->fields[i];
        if (ef == NULL) {
            if (tag == 0 || !pb_skip_field(&st, wt))
                rc = jfail(c, "malformed map entry");
            continue;
        }
        int d = 0;
        json_t *v = decode_one(c, ef, &st, wt, p, n, depth + 1, &d);
        if (v == NULL) {
            rc = -1;
            break;
        }
        json_decref(kv[tag - 1]);
        kv[tag - 1] = v;
    }
    for (int i = 0; rc == 0 && i < 2; i++) {
        const ctl_field *ef = entry->fields[0].number == (uint32_t)(i + 1) ? &entry->fields[0]
                                                                           : &entry->fields[1];
        if (kv[i] == NULL && (kv[i] = default_json(c, ef, depth + 1)) == NULL)
            rc = -1;
    }
    char tmp[32];
    const char *key = NULL;
    if (rc == 0 && map_key_text(c, kv[0], tmp, sizeof tmp, &key) == 0) {
        if (json_object_set(obj, key, kv[1]) != 0)
            rc = jfail(c, "map key is not UTF-8");
    } else {
        rc = -1;
    }
    json_decref(kv[0]);
    json_decref(kv[1]);
    return rc;
}

/* One value of f whose tag was just read (not packed). */
static json_t *decode_one(jctx *c, const ctl_field *f, pb_istream_t *st, pb_wire_type_t wt,
                          const uint8_t *base, size_t total, int depth, int *is_default)
{
    *is_default = 0;
    if (f->type == CTL_TYPE_GROUP) {
        jfail(c, "groups are not supported");
        return NULL;
    }
    if (wt != wire_type_of(f->type)) {
        jfail(c, "malformed: wire type %d for a field of type %d", (int)wt, f->type);
        return NULL;
    }
    if (wt == PB_WT_STRING) {
        const uint8_t *p = NULL;
        size_t n = 0;
        if (read_len(c, st, base, total, &p, &n) != 0)
            return NULL;
        if (f->type == CTL_TYPE_MESSAGE)
            return decode_message(c, f->message, p, n, depth + 1);
        *is_default = n == 0;
        return string_json(c, f, p, n);
    }
    uint64_t u = 0;
    if (read_bits(c, st, wt, &u) != 0)
        return NULL;
    return scalar_json(c, f, u, is_default);
}

/* A packed run of f's scalars appended to arr. */
static int decode_packed(jctx *c, const ctl_field *f, const uint8_t *p, size_t n, json_t *arr)
{
    pb_istream_t st = pb_istream_from_buffer(n > 0 ? p : (const pb_byte_t *)"", n);
    pb_wire_type_t wt = wire_type_of(f->type);
    while (st.bytes_left > 0) {
        uint64_t u = 0;
        int d = 0;
        if (read_bits(c, &st, wt, &u) != 0)
            return -1;
        json_t *v = scalar_json(c, f, u, &d);
        if (v == NULL || json_array_append_new(arr, v) != 0)
            return v == NULL ? -1 : jfail(c, "out of memory");
    }
    return 0;
}

/* The bytes of a singular message field, joined with what came before (protobuf merges the
 * pieces of a message sent in several; concatenated bytes are exactly that). */
static int slot_add_message(jctx *c, slot *s, const uint8_t *p, size_t n)
{
    if (!s->present) {
        s->msg = p;
        s->msg_len = n;
        return 0;
    }
    if (s->msg_len > CTL_JSON_MAX_BYTES - n)
        return jfail(c, "message over %u bytes", (unsigned)CTL_JSON_MAX_BYTES);
    if (s->msg_owned == NULL || s->msg_len + n > s->msg_cap) {
        size_t cap = s->msg_cap ? s->msg_cap : 64;
        while (cap < s->msg_len + n)
            cap *= 2;
        uint8_t *joined = malloc(cap);
        if (joined == NULL)
            return jfail(c, "out of memory");
        if (s->msg_len > 0)
            memcpy(joined, s->msg, s->msg_len);
        free(s->msg_owned);
        s->msg_owned = joined;
        s->msg_cap = cap;
        s->msg = joined;
    }
    if (n > 0)
        memcpy(s->msg_owned + s->msg_len, p, n);
    s->msg_len += n;
    return 0;
}

/* One field's occurrence on the wire into its slot. */
static int decode_field(jctx *c, const ctl_message *m, const ctl_field *const *fields, slot *slots,
                        size_t k, pb_istream_t *st, pb_wire_type_t wt, const uint8_t *base,
                        size_t total, int depth)
{
    const ctl_field *f = fields[k];
    slot *s = &slots[k];
    if (f->oneof_index >= 0) /* the member on the wire last is the one set */
        for (size_t i = 0; i < m->nfields; i++)
            if (i != k && fields[i]->oneof_index == f->oneof_index)
                slot_clear(&slots[i]);
    if (f->repeated) {
        int is_map = f->type == CTL_TYPE_MESSAGE && f->message->map_entry;
        if (s->value == NULL && (s->value = jnew(c, is_map ? json_object() : json_array())) == NULL)
            return -1;
        s->present = 1;
        if (is_map) {
            const uint8_t *p = NULL;
            size_t n = 0;
            if (wt != PB_WT_STRING)
                return jfail(c, "malformed: wire type %d for a map", (int)wt);
            return read_len(c, st, base, total, &p, &n) != 0 ? -1
                                                            : decode_map_entry(c, f, p, n, s->value, depth);
        }
        if (is_packable(f->type) && wt == PB_WT_STRING) {
            const uint8_t *p = NULL;
            size_t n = 0;
            return read_len(c, st, base, total, &p, &n) != 0 ? -1 : decode_packed(c, f, p, n, s->value);
        }
        int d = 0;
        size_t old = path_push_index(c, json_array_size(s->value));
        json_t *v = decode_one(c, f, st, wt, base, total, depth, &d);
        if (v == NULL)
            return -1;
        path_pop(c, old);
        return json_array_append_new(s->value, v) == 0 ? 0 : jfail(c, "out of memory");
    }
    if (f->type == CTL_TYPE_MESSAGE) {
        const uint8_t *p = NULL;
        size_t n = 0;
        if (wt != PB_WT_STRING)
            return jfail(c, "malformed: wire type %d for a message", (int)wt);
        if (read_len(c, st, base, total, &p, &n) != 0 || slot_add_message(c, s, p, n) != 0)
            return -1;
        s->present = 1;
        return 0;
    }
    int is_default = 0;
    json_t *v = decode_one(c, f, st, wt, base, total, depth, &is_default);
    if (v == NULL)
        return -1;
    json_decref(s->value);
    s->value = v;
    /* proto3: a field without presence at its default is as good as absent */
    s->present = has_presence(f) || !is_default;
    return 0;
}

static int skip_unknown(jctx *c, pb_istream_t *st, pb_wire_type_t wt, uint32_t tag)
{
    if (wt == PB_WT_STRING) {
        uint64_t len = 0;
        if (!pb_decode_varint(st, &len))
            return stream_fail(c, st);
        if (len > st->bytes_left)
            return jfail(c, "malformed: #%u: length %" PRIu64 " past the end (%zu bytes left)",
                         (unsigned)tag, len, st->bytes_left);
        return pb_read(st, NULL, (size_t)len) ? 0 : stream_fail(c, st);
    }
    if (!pb_skip_field(st, wt))
        return jfail(c, "malformed: #%u: %s", (unsigned)tag, PB_GET_ERROR(st));
    return 0;
}

static int find_by_number(const ctl_field *const *fields, size_t n, uint32_t number, size_t *k)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (fields[mid]->number == number) {
            *k = mid;
            return 1;
        }
        if (fields[mid]->number < number)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static int decode_wire(jctx *c, const ctl_message *m, const ctl_field *const *fields, slot *slots,
                       const uint8_t *data, size_t len, int depth)
{
    pb_istream_t st = pb_istream_from_buffer(len > 0 ? data : (const pb_byte_t *)"", len);
    while (st.bytes_left > 0) {
        uint32_t tag = 0;
        pb_wire_type_t wt = PB_WT_VARINT;
        bool eof = false;
        if (!pb_decode_tag(&st, &wt, &tag, &eof))
            return stream_fail(c, &st);
        if (tag == 0)
            return jfail(c, "malformed: field number 0");
        size_t k = 0;
        if (!find_by_number(fields, m->nfields, tag, &k)) {
            if (skip_unknown(c, &st, wt, tag) != 0)
                return -1;
            continue;
        }
        size_t old = path_push(c, fields[k]->json_name);
        if (decode_field(c, m, fields, slots, k, &st, wt, data, len, depth) != 0)
            return -1;
        path_pop(c, old);
    }
    return 0;
}

/* The slots, in field-number order, into obj. */
static int build_object(jctx *c, const ctl_field *const *fields, slot *slots, size_t n, json_t *obj,
                        int depth)
{
    for (size_t k = 0; k < n; k++) {
        const ctl_field *f = fields[k];
        slot *s = &slots[k];
        if (!s->present)
            continue;
        if (f->repeated && (json_is_array(s->value) ? json_array_size(s->value) : json_object_size(s->value)) == 0)
            continue;
        if (!f->repeated && f->type == CTL_TYPE_MESSAGE) {
            size_t old = path_push(c, f->json_name);
            json_decref(s->value);
            s->value = decode_message(c, f->message, s->msg, s->msg_len, depth + 1);
            if (s->value == NULL)
                return -1;
            path_pop(c, old);
        }
        if (json_object_set_new(obj, f->json_name, s->value) != 0) {
            s->value = NULL;
            return jfail(c, "out of memory");
        }
        s->value = NULL;
    }
    return 0;
}

static json_t *decode_message(jctx *c, const ctl_message *m, const uint8_t *data, size_t len,
                              int depth)
{
    if (depth > CTL_SCHEMA_MAX_NESTING) {
        jfail(c, "nested deeper than %d", CTL_SCHEMA_MAX_NESTING);
        return NULL;
    }
    const ctl_field **fields = by_number(m);
    slot *slots = calloc(m->nfields > 0 ? m->nfields : 1, sizeof(*slots));
    json_t *obj = json_object();
    int rc = -1;
    if (fields == NULL || slots == NULL || obj == NULL)
        jfail(c, "out of memory");
    else if (decode_wire(c, m, fields, slots, data, len, depth) == 0)
        rc = build_object(c, fields, slots, m->nfields, obj, depth);
    for (size_t k = 0; slots != NULL && k < m->nfields; k++)
        slot_clear(&slots[k]);
    free(slots);
    free((void *)fields);
    if (rc != 0) {
        json_decref(obj);
        return NULL;
    }
    return obj;
}

json_t *ctl_json_decode(const ctl_message *m, const uint8_t *data, size_t len, char *err, size_t cap)
{
    jctx c = {.err = err, .cap = cap};
    if (cap > 0)
        err[0] = '\0';
    if (len > CTL_JSON_MAX_BYTES) {
        jfail(&c, "message of %zu bytes (at most %u)", len, (unsigned)CTL_JSON_MAX_BYTES);
        return NULL;
    }
    return decode_message(&c, m, data, len, 0);
}
