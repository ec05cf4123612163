/* wire: frame codec and message coding shared by server and clients. See wire.h. */
#include "wire.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <pb_common.h>
#include <pb_decode.h>
#include <pb_encode.h>

const char *lagoon_status_name(int code)
{
    switch (code) {
#define LAGOON_STATUS_CASE(name, num) \
    case num:                         \
        return #name;
        LAGOON_STATUS_LIST(LAGOON_STATUS_CASE)
#undef LAGOON_STATUS_CASE
    default:
        return "UNKNOWN";
    }
}

static int is_connection_frame(uint8_t type)
{
    return type == WIRE_PING || type == WIRE_PONG || type == WIRE_GOAWAY || type == WIRE_SETTINGS;
}

long wire_frame_parse(const uint8_t *buf, size_t len, const wire_limits *lim, wire_frame *f,
                      const char **why)
{
    const char *dummy;
    if (why == NULL)
        why = &dummy;
    *why = NULL;
    memset(f, 0, sizeof(*f));
    if (len < 4)
        return WIRE_PARTIAL;

    f->length = wire_get32(buf);
    /* Judge the length before anything else: an oversize frame is refused without waiting
     * for (or buffering) its body. */
    if (f->length > lim->max_frame_size) {
        *why = "frame length exceeds the maximum frame size";
        return WIRE_TOO_LARGE;
    }
    if (f->length < WIRE_LENGTH_MIN) {
        *why = "frame length is shorter than the frame header";
        return WIRE_INVALID;
    }
    if (len < WIRE_HEADER_SIZE)
        return WIRE_PARTIAL;

    f->type = buf[4];
    f->flags = buf[5];
    f->meta_len = wire_get16(buf + 6);
    f->call_id = wire_get32(buf + 8);
    f->code = wire_get32(buf + 12);

    if (f->type == 0 || f->type > WIRE_TYPE_MAX) {
        *why = "unknown frame type";
        return WIRE_INVALID;
    }
    if (f->flags & ~WIRE_FLAGS_KNOWN) {
        *why = "unknown flag bits set";
        return WIRE_INVALID;
    }
    if (f->meta_len > lim->max_meta_size) {
        *why = "metadata length exceeds the maximum metadata size";
        return WIRE_TOO_LARGE;
    }
    if ((uint32_t)f->meta_len > f->length - WIRE_LENGTH_MIN) {
        *why = "metadata length runs past the end of the frame";
        return WIRE_INVALID;
    }
    f->payload_len = f->length - WIRE_LENGTH_MIN - f->meta_len;
    if (is_connection_frame(f->type)) {
        if (f->call_id != 0) {
            *why = "connection-level frame with a non-zero call id";
            return WIRE_INVALID;
        }
    } else if (f->call_id == 0) {
        *why = "call frame with call id 0";
        return WIRE_INVALID;
    }
    if ((f->type == WIRE_PING || f->type == WIRE_PONG) &&
        (f->payload_len != WIRE_PING_PAYLOAD || f->meta_len != 0)) {
        *why = "PING and PONG carry exactly 8 payload bytes and no metadata";
        return WIRE_INVALID;
    }
    if (f->type == WIRE_CANCEL && (f->payload_len != 0 || f->meta_len != 0)) {
        *why = "CANCEL carries no metadata and no payload";
        return WIRE_INVALID;
    }
    if (f->flags & WIRE_FLAG_NO_MESSAGE) {
        if (f->type != WIRE_MESSAGE || !(f->flags & WIRE_FLAG_END_STREAM) || f->payload_len != 0) {
            *why = "NO_MESSAGE is only valid on an empty MESSAGE frame with END_STREAM";
            return WIRE_INVALID;
        }
    }
    if (len - 4 < f->length)
        return WIRE_PARTIAL;
    f->meta = buf + WIRE_HEADER_SIZE;
    f->payload = f->meta + f->meta_len;
    return (long)f->length + 4;
}

int wire_header_encode(uint8_t out[WIRE_HEADER_SIZE], uint8_t type, uint8_t flags,
                       uint32_t call_id, uint32_t code, size_t meta_len, size_t payload_len)
{
    if (meta_len > UINT16_MAX || payload_len > UINT32_MAX - WIRE_LENGTH_MIN - meta_len)
        return -1;
    wire_put32(out, (uint32_t)(WIRE_LENGTH_MIN + meta_len + payload_len));
    out[4] = type;
    out[5] = flags;
    wire_put16(out + 6, (uint16_t)meta_len);
    wire_put32(out + 8, call_id);
    wire_put32(out + 12, code);
    return 0;
}

uint32_t wire_method_id(const char *path)
{
    uint32_t h = 0x811C9DC5u;
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        h ^= *p;
        h *= 0x01000193u;
    }
    return h;
}

/* ---- message coding ---------------------------------------------------------------------- */

/* Sets msg to its proto3 defaults by clearing only what nanopb reads: scalars, has-flags, counts,
 * oneof tags, pointers, string terminators and bytes sizes. nanopb's own initialisation clears
 * every static field whole; for a 16 KiB bytes field that is most of a small call's cost. */
static void light_init(const pb_msgdesc_t *desc, void *msg, int depth)
{
    pb_field_iter_t it;
    if (depth > 32 || !pb_field_iter_begin(&it, desc, msg))
        return;
    do {
        pb_type_t type = it.type;
        if (PB_HTYPE(type) == PB_HTYPE_OPTIONAL && it.pSize != NULL)
            *(bool *)it.pSize = false;
        if ((PB_HTYPE(type) == PB_HTYPE_REPEATED || PB_HTYPE(type) == PB_HTYPE_ONEOF) && it.pSize != NULL)
            *(pb_size_t *)it.pSize = 0;
        if (PB_ATYPE(type) == PB_ATYPE_POINTER) {
            *(void **)it.pField = NULL;
            continue;
        }
        if (PB_ATYPE(type) != PB_ATYPE_STATIC || PB_HTYPE(type) == PB_HTYPE_REPEATED)
            continue; /* callbacks are unused here; a static array is empty once its count is 0 */
        switch (PB_LTYPE(type)) {
        case PB_LTYPE_STRING:
            ((char *)it.pData)[0] = '\0';
            break;
        case PB_LTYPE_BYTES:
            ((pb_bytes_array_t *)it.pData)->size = 0;
            break;
        case PB_LTYPE_SUBMESSAGE:
        case PB_LTYPE_SUBMSG_W_CB:
            light_init(it.submsg_desc, it.pData, depth + 1);
            break;
        default:
            memset(it.pData, 0, it.data_size);
            break;
        }
    } while (pb_field_iter_next(&it));
}

/* light_init only ever writes zeros (false, 0, NULL, an empty string's first byte, an empty
 * bytes' size), so for a message type it is a set of byte ranges to clear, whatever the order.
 * The ranges are found once per type by watching light_init clear a scratch copy, merged, and
 * kept: wire_init is then a few memsets instead of a walk of nanopb's field iterator over
 * every field (a third of decoding a stored row). */
#define INIT_PLAN_RANGES 64   /* a type needing more keeps the walk */
#define INIT_PLAN_TYPES 1024  /* types remembered; more keep the walk */
#define INIT_PLAN_SCRATCH (64u << 10) /* larger structs keep the walk */

typedef struct init_plan {
    size_t n;
    struct {
        uint32_t off, len;
    } r[INIT_PLAN_RANGES];
} init_plan;

/* Static, so that making a plan allocates nothing (tests count the codec's allocations). */
static struct {
    _Atomic(const pb_msgdesc_t *) desc;
    atomic_int state; /* PLAN_MAKING, PLAN_READY, PLAN_NONE */
    init_plan plan;
} init_plans[INIT_PLAN_TYPES];
enum { PLAN_MAKING = 0, PLAN_READY = 1, PLAN_NONE = 2 };

/* Finds the ranges of desc (size bytes) into p: 0, or -1 (too large, or too many ranges). */
static int plan_make(const pb_msgdesc_t *desc, size_t size, init_plan *p)
{
    unsigned char scratch[INIT_PLAN_SCRATCH];
    if (size == 0 || size > sizeof(scratch))
        return -1;
    /* Every byte light_init clears becomes 0 in an all-0xFF copy. */
    memset(scratch, 0xFF, size);
    light_init(desc, scratch, 0);
    p->n = 0;
    for (size_t i = 0; i < size; i++) {
        if (scratch[i] != 0)
            continue;
        if (p->n > 0 && p->r[p->n - 1].off + p->r[p->n - 1].len == i) {
            p->r[p->n - 1].len++;
        } else if (p->n < INIT_PLAN_RANGES) {
            p->r[p->n].off = (uint32_t)i;
            p->r[p->n++].len = 1;
        } else {
            return -1;
        }
    }
    return 0;
}

/* The plan of desc, made on first use; NULL when there is none (yet): the caller walks. */
static const init_plan *plan_of(const pb_msgdesc_t *desc, size_t size)
{
    size_t h = ((uintptr_t)desc >> 4) % INIT_PLAN_TYPES;
    for (size_t probe = 0; probe < INIT_PLAN_TYPES; probe++, h = (h + 1) % INIT_PLAN_TYPES) {
        const pb_msgdesc_t *d = atomic_load_explicit(&init_plans[h].desc, memory_order_acquire);
        if (d == NULL) {
            const pb_msgdesc_t *expected = NULL;
            if (atomic_compare_exchange_strong(&init_plans[h].desc, &expected, desc)) {
                int made = plan_make(desc, size, &init_plans[h].plan) == 0;
                atomic_store_explicit(&init_plans[h].state, made ? PLAN_READY : PLAN_NONE, memory_order_release);
                return made ? &init_plans[h].plan : NULL;
            }
            d = expected;
        }
        if (d == desc)
            return atomic_load_explicit(&init_plans[h].state, memory_order_acquire) == PLAN_READY
                       ? &init_plans[h].plan
                       : NULL;
    }
    return NULL;
}

void wire_init(const wire_msginfo *info, void *msg)
{
    const init_plan *p = plan_of(info->desc, info->size);
    if (p == NULL) {
        light_init(info->desc, msg, 0);
        return;
    }
    for (size_t i = 0; i < p->n; i++)
        memset((char *)msg + p->r[i].off, 0, p->r[i].len);
}

/* The walks that run before nanopb, over the raw bytes: strings are judged there because nanopb
 * stops a C reader at the first NUL, so a decoded string no longer shows what was sent. */
static int diag_walk(const wire_msginfo *info, const uint8_t *buf, size_t len, int strings,
                     wire_violation *v);
static int strings_ok(const wire_msginfo *info, const uint8_t *buf, size_t len, int depth);

static int decode(const wire_msginfo *info, const uint8_t *buf, size_t len, void *dst, int strings,
                  wire_violation *v)
{
    /* nanopb allocates pointer fields as the wire asks, so their bounds are checked before it
     * runs, by the full walk (which judges strings too). A message with only static fields
     * gets the quick string check, and the full walk only to name what that check refused. */
    /* dst at its defaults first, refused or not: a caller releases it either way (the server's
     * call_unref pb_releases a call's request), and a refusal by the walk must not leave it
     * holding whatever its memory held before (pointers nanopb would free). */
    wire_init(info, dst);
    int walk = info->has_pointers || (strings && info->has_strings && !strings_ok(info, buf, len, 0));
    if (walk && diag_walk(info, buf, len, strings, v))
        return -1;
    pb_istream_t in = pb_istream_from_buffer(buf, len);
    if (pb_decode_ex(&in, info->desc, dst, PB_DECODE_NOINIT))
        return 0;
    const char *err = PB_GET_ERROR(&in);
    pb_release(info->desc, dst);
    if (!walk && diag_walk(info, buf, len, strings, v))
        return -1;
    /* NEVER: the walk judges every rule nanopb applies (tests/fuzz checks that every refusal
     * names a field); should one be missed, the message is still refused, as a whole. */
    snprintf(v->field, sizeof(v->field), "#?");
    snprintf(v->description, sizeof(v->description), "cannot decode %s: %s", info->name, err);
    return -1;
}

int wire_decode(const wire_msginfo *info, const uint8_t *buf, size_t len, void *dst,
                wire_violation *v)
{
    return decode(info, buf, len, dst, 1, v);
}

int wire_decode_trusted(const wire_msginfo *info, const uint8_t *buf, size_t len, void *dst,
                        wire_violation *v)
{
    return decode(info, buf, len, dst, 0, v);
}

long wire_encode(const wire_msginfo *info, const void *src, uint8_t *out, size_t cap,
                 const char **why)
{
    pb_ostream_t os = pb_ostream_from_buffer(out, cap);
    if (!pb_encode(&os, info->desc, src)) {
        if (why)
            *why = PB_GET_ERROR(&os);
        return -1;
    }
    /* nanopb does not bound pointer fields; the receiver would refuse what breaks .options. */
    wire_violation v;
    if (info->has_pointers && diag_walk(info, out, os.bytes_written, 0, &v)) {
        if (why)
            *why = "a pointer field exceeds its bound";
        return -1;
    }
    return (long)os.bytes_written;
}

long wire_encoded_size(const wire_msginfo *info, const void *src)
{
    size_t n;
    if (!pb_get_encoded_size(&n, info->desc, src))
        return -1;
    return (long)n;
}

/* ---- diagnosis: name the field nanopb refused ------------------------------------------- */

#define DIAG_MAX_DEPTH 16   /* deeper nesting is reported as such */
#define DIAG_MAX_FIELDS 128 /* repeated counts are tracked for this many fields per message */

typedef struct diag_reader {
    const uint8_t *p, *end;
} diag_reader;

/* nanopb's pb_decode_varint32: up to 10 bytes; past 32 bits only zero or sign-extension
 * bytes. Keys and lengths are read this way, so the verdicts agree with nanopb's. */
static int diag_varint32(diag_reader *r, uint32_t *out)
{
    uint32_t result = 0;
    unsigned bitpos = 0;
    uint8_t byte;
    do {
        if (r->p >= r->end)
            return -1;
        byte = *r->p++;
        if (bitpos >= 32) {
            uint8_t sign_extension = bitpos < 63 ? 0xFF : 0x01;
            int valid = (byte & 0x7F) == 0x00 || ((result >> 31) != 0 && byte == sign_extension);
            if (bitpos >= 64 || !valid)
                return -2;
        } else if (bitpos == 28) {
            if ((byte & 0x70) != 0 && (byte & 0x78) != 0x78)
                return -2;
            result |= (uint32_t)(byte & 0x0F) << bitpos;
        } else {
            result |= (uint32_t)(byte & 0x7F) << bitpos;
        }
        bitpos += 7;
    } while (byte & 0x80);
    *out = result;
    return 0;
}

/* nanopb's pb_skip_varint: any length. */
static int diag_skip_varint(diag_reader *r)
{
    uint8_t byte;
    do {
        if (r->p >= r->end)
            return -1;
        byte = *r->p++;
    } while (byte & 0x80);
    return 0;
}

/* nanopb's pb_decode_varint: at most 10 bytes, the 10th holding only bit 63 (0 or 1).
 * -1 truncated, -2 too long. */
static int diag_varint(diag_reader *r, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end)
            return -1;
        uint8_t b = *r->p++;
        if (shift == 63 && (b & 0xFE) != 0)
            return -2;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -2;
}

/* The generator sorts each message's fields by tag. */
static const wire_fieldinfo *diag_field(const wire_msginfo *info, uint32_t tag)
{
    size_t lo = 0, hi = info->nfields;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (info->fields[mid].tag == tag)
            return &info->fields[mid];
        if (info->fields[mid].tag < tag)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Field paths and descriptions are truncated to their buffers on purpose: a hostile message
 * can nest names deeper than any report needs. */
static void diag_fmt(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void diag_fmt(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(out, cap, fmt, ap);
    va_end(ap);
}

/* A field's dotted path, formatted only if a report or a submessage needs it: checking a
 * valid message (every encode and decode of one with pointer fields) formats nothing. */
typedef struct diag_path {
    const char *prefix;
    const wire_fieldinfo *fi;
    uint32_t tag;
    int ready;
    char buf[128];
} diag_path;

static const char *path_of(diag_path *p)
{
    if (!p->ready) {
        if (p->fi != NULL)
            diag_fmt(p->buf, sizeof(p->buf), "%s%s", p->prefix, p->fi->name);
        else
            diag_fmt(p->buf, sizeof(p->buf), "%s#%u", p->prefix, (unsigned)p->tag);
        p->ready = 1;
    }
    return p->buf;
}

static int diag_fail(wire_violation *v, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int diag_fail(wire_violation *v, const char *path, const char *fmt, ...)
{
    va_list ap;
    diag_fmt(v->field, sizeof(v->field), "%s", path);
    va_start(ap, fmt);
    (void)vsnprintf(v->description, sizeof(v->description), fmt, ap);
    va_end(ap);
    return 1;
}

/* The wire type nanopb expects for a field of this logical type (packed arrays aside). */
static int diag_expected_wt(pb_type_t type)
{
    switch (PB_LTYPE(type)) {
    case PB_LTYPE_FIXED32:
        return 5;
    case PB_LTYPE_FIXED64:
        return 1;
    case PB_LTYPE_BYTES:
    case PB_LTYPE_STRING:
    case PB_LTYPE_SUBMESSAGE:
    case PB_LTYPE_SUBMSG_W_CB:
    case PB_LTYPE_FIXED_LENGTH_BYTES:
        return 2;
    default:
        return 0;
    }
}

static int diag_msg(const wire_msginfo *info, const uint8_t *buf, size_t len, const char *prefix,
                    int depth, int strings, wire_violation *v);

/* The field iterator reads the message struct (a pointer field's pointer, for one); the wire
 * bytes are not a struct, so it is given zeroes. Every nanopb struct here is under 64 KiB. */
static const max_align_t diag_zero_struct[65536 / sizeof(max_align_t)];

/* Whether a varint value fits the field as nanopb's pb_dec_varint would judge. */
static int diag_varint_fits(const pb_field_iter_t *it, uint64_t value)
{
    pb_type_t lt = PB_LTYPE(it->type); /* not a bool: diag_msg reads those as nanopb does */
    if (it->data_size >= sizeof(uint64_t))
        return 1;
    unsigned bits = (unsigned)it->data_size * 8;
    if (lt == PB_LTYPE_UVARINT)
        return value >> bits == 0;
    int64_t sv = lt == PB_LTYPE_SVARINT ? (int64_t)(value >> 1) ^ -(int64_t)(value & 1) : (int64_t)value;
    int64_t lo = -((int64_t)1 << (bits - 1)), hi = ((int64_t)1 << (bits - 1)) - 1;
    return sv >= lo && sv <= hi;
}

/* Most items a repeated field takes: nanopb's array size for static arrays, the .options
 * bound for pointer arrays; 0 = not repeated or no bound. */
static unsigned long diag_max_items(const pb_field_iter_t *it, const wire_fieldinfo *fi)
{
    if (PB_HTYPE(it->type) != PB_HTYPE_REPEATED)
        return 0;
    if (PB_ATYPE(it->type) == PB_ATYPE_STATIC)
        return it->array_size;
    return fi != NULL ? fi->bound : 0;
}

/* Counts one unpacked occurrence of a repeated field; -1 once it passes the bound. */
static int diag_count_one(const pb_field_iter_t *it, const wire_fieldinfo *fi, unsigned *counts)
{
    unsigned long max = diag_max_items(it, fi);
    if (max == 0 || it->index >= DIAG_MAX_FIELDS)
        return 0;
    return ++counts[it->index] > max ? -1 : 0;
}

/* ---- strings: what every string field of every message must be ---------------------------- */

/* One rule for every string field, since the decoder knows no field's purpose: valid UTF-8
 * (shortest form, no UTF-16 surrogates, at most U+10FFFF), as protobuf requires of strings and
 * standard clients enforce; no NUL, which C readers would take as the end; no control
 * characters but tab, line feed and carriage return (C0, DEL, C1); and none of the bidirectional
 * embedding, override and isolate controls (U+202A-U+202E, U+2066-U+2069), which make text
 * display in another order than it reads. A field that needs less (a username, an email) is
 * checked further by its handler. Bytes fields are not strings and are not judged. */
enum text_verdict {
    TEXT_OK = 0,
    TEXT_NUL,       /* a 0 byte */
    TEXT_CONTROL,   /* C0 other than \t \n \r, DEL, C1 */
    TEXT_BIDI,      /* U+202A-U+202E, U+2066-U+2069 */
    TEXT_BAD_BYTE,  /* a byte that starts no sequence: a continuation byte, or 0xF8-0xFF */
    TEXT_CUT,       /* a sequence cut by a non-continuation byte or by the end */
    TEXT_OVERLONG,  /* a longer encoding than the code point needs */
    TEXT_SURROGATE, /* U+D800-U+DFFF */
    TEXT_TOO_BIG,   /* past U+10FFFF */
};

/* How many leading bytes of s[0..n) are printable ASCII (0x20-0x7E), counted in blocks: most
 * strings are all ASCII, and every stored row is checked on every read. It may stop short of
 * the first other byte; text_check goes on byte by byte from there. */
static size_t ascii_run(const uint8_t *s, size_t n)
{
    size_t i = 0;
#if defined(__SSE2__)
    /* Signed bytes: 0x20-0x7E are exactly those > 0x1F and < 0x7F (0x80-0xFF are negative). */
    const __m128i lo = _mm_set1_epi8(0x1F), hi = _mm_set1_epi8(0x7F);
    while (n - i >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(s + i));
        __m128i ok = _mm_and_si128(_mm_cmpgt_epi8(v, lo), _mm_cmplt_epi8(v, hi));
        if (_mm_movemask_epi8(ok) != 0xFFFF)
            return i;
        i += 16;
    }
#endif
    /* Eight bytes at a time: no high bit, no byte below 0x20, none equal to 0x7F (the classic
     * "has a byte less than n" test, exact when no byte has its high bit set). */
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    while (n - i >= 8) {
        uint64_t w, del;
        memcpy(&w, s + i, 8);
        del = w ^ (ones * 0x7F);
        if ((w & high) | ((w - ones * 0x20) & ~w & high) | ((del - ones) & ~del & high))
            return i;
        i += 8;
    }
    return i;
}

/* Judges s[0..n); on a refusal *at is the offset of the offending sequence and *cp its code
 * point (or its first byte, for malformed UTF-8). */
static enum text_verdict text_check(const uint8_t *s, size_t n, size_t *at, uint32_t *cp)
{
    size_t i = 0;
    for (;;) {
        i += ascii_run(s + i, n - i);
        while (i < n && s[i] >= 0x20 && s[i] < 0x7F) /* the tail shorter than a block */
            i++;
        if (i >= n)
            return TEXT_OK;
        uint8_t b = s[i];
        *at = i;
        *cp = b;
        if (b < 0x80) {
            if (b == 0)
                return TEXT_NUL;
            if (b != '\t' && b != '\n' && b != '\r')
                return TEXT_CONTROL; /* the rest of C0, and DEL */
            i++;
            continue;
        }
        size_t len;
        uint32_t c, min;
        if (b >= 0xC0 && b <= 0xDF) {
            len = 2, c = b & 0x1Fu, min = 0x80;
        } else if (b >= 0xE0 && b <= 0xEF) {
            len = 3, c = b & 0x0Fu, min = 0x800;
        } else if (b >= 0xF0 && b <= 0xF7) {
            len = 4, c = b & 0x07u, min = 0x10000;
        } else {
            return TEXT_BAD_BYTE; /* a continuation byte, or 0xF8-0xFF */
        }
        if (n - i < len)
            return TEXT_CUT;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return TEXT_CUT;
            c = (c << 6) | (s[i + k] & 0x3Fu);
        }
        *cp = c;
        if (c < min)
            return TEXT_OVERLONG;
        if (c >= 0xD800 && c <= 0xDFFF)
            return TEXT_SURROGATE;
        if (c > 0x10FFFF)
            return TEXT_TOO_BIG;
        if (c <= 0x9F)
            return TEXT_CONTROL; /* C1: U+0080-U+009F */
        if ((c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069))
            return TEXT_BIDI;
        i += len;
    }
}

/* Names what text_check refused, for a violation's description. */
static int text_fail(wire_violation *v, const char *path, enum text_verdict t, size_t at, uint32_t cp)
{
    unsigned long off = (unsigned long)at;
    switch (t) {
    case TEXT_NUL:
        return diag_fail(v, path, "contains a NUL byte at offset %lu", off);
    case TEXT_CONTROL:
        return diag_fail(v, path, "contains the control character U+%04lX at offset %lu",
                         (unsigned long)cp, off);
    case TEXT_BIDI:
        return diag_fail(v, path, "contains the bidirectional control U+%04lX at offset %lu",
                         (unsigned long)cp, off);
    case TEXT_BAD_BYTE:
        return diag_fail(v, path, "is not valid UTF-8: byte 0x%02lX at offset %lu starts no character",
                         (unsigned long)cp, off);
    case TEXT_CUT:
        return diag_fail(v, path, "is not valid UTF-8: a sequence cut short at offset %lu", off);
    case TEXT_OVERLONG:
        return diag_fail(v, path, "is not valid UTF-8: overlong encoding at offset %lu", off);
    case TEXT_SURROGATE:
        return diag_fail(v, path, "is not valid UTF-8: surrogate U+%04lX at offset %lu",
                         (unsigned long)cp, off);
    case TEXT_TOO_BIG:
        return diag_fail(v, path, "is not valid UTF-8: code point past U+10FFFF at offset %lu", off);
    case TEXT_OK:
        break;
    }
    return 0;
}

/* A string field's path for a report; an item of a repeated one has its index: "instruments[2]". */
static const char *string_path(diag_path *path, int repeated, unsigned index)
{
    const char *p = path_of(path);
    if (repeated) {
        char item[sizeof(path->buf)];
        diag_fmt(item, sizeof(item), "%s[%u]", p, index);
        memcpy(path->buf, item, sizeof(item));
    }
    return path->buf;
}

static int diag_len_field(const pb_field_iter_t *it, const wire_fieldinfo *fi, diag_path *path,
                          const uint8_t *data, size_t n, int depth, int strings, unsigned *count,
                          wire_violation *v)
{
    pb_type_t lt = PB_LTYPE(it->type);
    int repeated = PB_HTYPE(it->type) == PB_HTYPE_REPEATED;
    int is_static = PB_ATYPE(it->type) == PB_ATYPE_STATIC;
    int is_pointer = PB_ATYPE(it->type) == PB_ATYPE_POINTER;
    uint32_t bound = fi != NULL ? fi->bound : 0;
    if (is_pointer && !repeated && (lt == PB_LTYPE_STRING || lt == PB_LTYPE_BYTES) && bound && n > bound)
        return diag_fail(v, path_of(path), "longer than %lu bytes", (unsigned long)bound);
    /* An item of a repeated pointer bytes field carries its size in nanopb's pb_size_t (16 bits
     * in Debian's build): past it nanopb refuses the whole message ("bytes overflow") without
     * naming a field. Named here; the handler judges the item's own bound (its .options
     * max_size, which nanopb does not apply to pointer items). */
    if (is_pointer && repeated && lt == PB_LTYPE_BYTES && n > (size_t)PB_SIZE_MAX)
        return diag_fail(v, string_path(path, 1, *count), "longer than %lu bytes", (unsigned long)PB_SIZE_MAX);
    if (lt == PB_LTYPE_STRING && is_static && n + 1 > it->data_size)
        return diag_fail(v, string_path(path, repeated, *count), "longer than %lu bytes",
                         (unsigned long)it->data_size - 1);
    if (lt == PB_LTYPE_BYTES && is_static && n > it->data_size - offsetof(pb_bytes_array_t, bytes))
        return diag_fail(v, path_of(path), "longer than %lu bytes",
                         (unsigned long)(it->data_size - offsetof(pb_bytes_array_t, bytes)));
    if (lt == PB_LTYPE_FIXED_LENGTH_BYTES && n != it->data_size)
        return diag_fail(v, path_of(path), "must be exactly %lu bytes", (unsigned long)it->data_size);
    if (lt == PB_LTYPE_STRING && strings) {
        size_t at = 0;
        uint32_t cp = 0;
        enum text_verdict t = text_check(data, n, &at, &cp);
        if (t != TEXT_OK)
            return text_fail(v, string_path(path, repeated, *count), t, at, cp);
    }
    if (lt == PB_LTYPE_SUBMESSAGE || lt == PB_LTYPE_SUBMSG_W_CB) {
        if (fi != NULL && fi->sub != NULL) {
            char sub[128];
            if (repeated)
                diag_fmt(sub, sizeof(sub), "%s[%u].", path_of(path), *count);
            else
                diag_fmt(sub, sizeof(sub), "%s.", path_of(path));
            if (diag_msg(fi->sub, data, n, sub, depth + 1, strings, v))
                return 1;
        }
    }
    if (repeated && (is_static || is_pointer)) {
        /* A packed scalar array adds one item per element, anything else one per occurrence. */
        unsigned add = 1;
        if (lt != PB_LTYPE_SUBMESSAGE && lt != PB_LTYPE_SUBMSG_W_CB && lt != PB_LTYPE_STRING &&
            lt != PB_LTYPE_BYTES && lt != PB_LTYPE_FIXED_LENGTH_BYTES) {
            diag_reader r = {data, data + n};
            add = 0;
            int wt = diag_expected_wt(it->type);
            while (r.p < r.end) {
                uint64_t tmp;
                if (wt == 0 && diag_varint(&r, &tmp) != 0)
                    return diag_fail(v, path_of(path), "truncated packed array");
                if (wt == 5 || wt == 1) {
                    size_t w = wt == 5 ? 4 : 8;
                    if ((size_t)(r.end - r.p) < w)
                        return diag_fail(v, path_of(path), "truncated packed array");
                    r.p += w;
                }
                add++;
            }
        }
        *count += add;
        unsigned long max = diag_max_items(it, fi);
        if (max && *count > max)
            return diag_fail(v, path_of(path), "more than %lu items", max);
    }
    return 0;
}

static int diag_msg(const wire_msginfo *info, const uint8_t *buf, size_t len, const char *prefix,
                    int depth, int strings, wire_violation *v)
{
    if (depth > DIAG_MAX_DEPTH) {
        /* Named by the submessage field that goes too deep: the prefix without its dot. */
        size_t plen = strlen(prefix);
        diag_fmt(v->field, sizeof(v->field), "%.*s", (int)(plen > 0 ? plen - 1 : 0), prefix);
        diag_fmt(v->description, sizeof(v->description), "messages nested deeper than %d levels",
                 DIAG_MAX_DEPTH);
        return 1;
    }
    unsigned counts[DIAG_MAX_FIELDS] = {0};
    diag_reader r = {buf, buf + len};
    /* One iterator for the whole message: pb_field_iter_find searches on from the field it is
     * at, so fields sent in tag order (as every encoder does) are found in one step each. */
    pb_field_iter_t it;
    int has_fields = pb_field_iter_begin_const(&it, info->desc, diag_zero_struct);
    while (r.p < r.end) {
        uint32_t key;
        int kr = diag_varint32(&r, &key);
        /* A key that cannot be read belongs to no field: "#?", after the enclosing path. */
        if (kr != 0) {
            char where[128];
            diag_fmt(where, sizeof(where), "%s#?", prefix);
            return diag_fail(v, where, kr == -1 ? "truncated field key" : "malformed field key");
        }
        uint32_t tag = key >> 3;
        if (tag == 0) {
            char where[128];
            diag_fmt(where, sizeof(where), "%s#0", prefix);
            return diag_fail(v, where, "invalid field number 0"); /* nanopb: "zero tag" */
        }
        int wt = (int)(key & 7);

        const wire_fieldinfo *fi = diag_field(info, tag);
        int known = has_fields && pb_field_iter_find(&it, tag);
        diag_path lazy = {prefix, fi, tag, 0, ""};
        diag_path *path = &lazy;

        if (known) {
            int want = diag_expected_wt(it.type);
            int packed_ok = PB_HTYPE(it.type) == PB_HTYPE_REPEATED && wt == 2;
            if (wt != want && !packed_ok)
                return diag_fail(v, path_of(path), "wrong wire type %lu for this field", (unsigned long)wt);
        }
        uint64_t n;
        uint32_t n32;
        switch (wt) {
        case 0:
            if (!known) {
                if (diag_skip_varint(&r) != 0)
                    return diag_fail(v, path_of(path), "truncated varint");
                break;
            }
            if (PB_LTYPE(it.type) == PB_LTYPE_BOOL) {
                /* nanopb reads a bool as a varint32 (pb_decode_bool), whose verdicts differ
                 * from a range check of the 64-bit value (found by fuzz_requests). */
                int br = diag_varint32(&r, &n32);
                if (br != 0)
                    return diag_fail(v, path_of(path), br == -1 ? "truncated varint" : "integer out of range for this field");
            } else {
                int vr = diag_varint(&r, &n);
                if (vr != 0)
                    return diag_fail(v, path_of(path), vr == -1 ? "truncated varint" : "varint longer than 64 bits");
                if (!diag_varint_fits(&it, n))
                    return diag_fail(v, path_of(path), "integer out of range for this field");
            }
            if (diag_count_one(&it, fi, counts) != 0)
                return diag_fail(v, path_of(path), "more than %lu items", diag_max_items(&it, fi));
            break;
        case 1:
        case 5: {
            size_t w = wt == 1 ? 8 : 4;
            if ((size_t)(r.end - r.p) < w)
                return diag_fail(v, path_of(path), "truncated fixed-width value");
            r.p += w;
            if (known && diag_count_one(&it, fi, counts) != 0)
                return diag_fail(v, path_of(path), "more than %lu items", diag_max_items(&it, fi));
            break;
        }
        case 2: {
            int lr = diag_varint32(&r, &n32);
            if (lr != 0)
                return diag_fail(v, path_of(path), lr == -1 ? "truncated length" : "malformed length");
            n = n32;
            if (n > (uint64_t)(r.end - r.p))
                return diag_fail(v, path_of(path), "length runs past the end of the message (%lu bytes)",
                                 (unsigned long)n);
            if (known) {
                unsigned dummy = 0;
                unsigned *count = it.index < DIAG_MAX_FIELDS ? &counts[it.index] : &dummy;
                if (diag_len_field(&it, fi, path, r.p, (size_t)n, depth, strings, count, v))
                    return 1;
            }
            r.p += n;
            break;
        }
        default:
            return diag_fail(v, path_of(path), "unsupported wire type %lu", (unsigned long)wt);
        }
    }
    return 0;
}

/* The quick check: 1 if every string in buf (at any depth) passes text_check, 0 if one does not
 * or the bytes do not parse. Keys and lengths are read as nanopb reads them, so on every
 * message nanopb accepts it sees the strings nanopb would copy; on the others nanopb refuses or
 * the full walk names the fault. It needs no field iterator, which is most of the full walk's
 * cost (every stored row is decoded through here). */
static int strings_ok(const wire_msginfo *info, const uint8_t *buf, size_t len, int depth)
{
    if (depth > DIAG_MAX_DEPTH)
        return 0;
    diag_reader r = {buf, buf + len};
    size_t next = 0; /* fields come in tag order: the lookup goes on from the last one */
    while (r.p < r.end) {
        uint32_t key, n;
        if (*r.p < 0x80) /* one-byte keys and lengths are the rule: read them in place */
            key = *r.p++;
        else if (diag_varint32(&r, &key) != 0)
            return 0;
        switch (key & 7) {
        case 0:
            if (diag_skip_varint(&r) != 0)
                return 0;
            continue;
        case 1:
        case 5: {
            size_t w = (key & 7) == 1 ? 8 : 4;
            if ((size_t)(r.end - r.p) < w)
                return 0;
            r.p += w;
            continue;
        }
        case 2:
            break;
        default:
            return 0;
        }
        if (r.p < r.end && *r.p < 0x80)
            n = *r.p++;
        else if (diag_varint32(&r, &n) != 0)
            return 0;
        if (n > (size_t)(r.end - r.p))
            return 0;
        uint32_t tag = key >> 3;
        while (next < info->nfields && info->fields[next].tag < tag)
            next++;
        const wire_fieldinfo *fi;
        if (next < info->nfields && info->fields[next].tag == tag)
            fi = &info->fields[next];
        else
            fi = diag_field(info, tag); /* out of order, or unknown */
        if (fi != NULL && fi->is_string) {
            size_t at;
            uint32_t cp;
            if (text_check(r.p, n, &at, &cp) != TEXT_OK)
                return 0;
        } else if (fi != NULL && fi->sub != NULL && fi->sub->has_strings &&
                   !strings_ok(fi->sub, r.p, n, depth + 1)) {
            return 0;
        }
        r.p += n;
    }
    return 1;
}

static int diag_walk(const wire_msginfo *info, const uint8_t *buf, size_t len, int strings,
                     wire_violation *v)
{
    v->field[0] = '\0';
    v->description[0] = '\0';
    return diag_msg(info, buf, len, "", 0, strings, v);
}

int wire_diagnose(const wire_msginfo *info, const uint8_t *buf, size_t len, wire_violation *v)
{
    return diag_walk(info, buf, len, 1, v);
}

/* ---- field rules (lagoon.v1.rules) ---------------------------------------------------------- */

/* Characters of a string already judged valid UTF-8: every byte but continuation bytes. */
static uint32_t utf8_chars(const char *s)
{
    uint32_t n = 0;
    for (; *s; s++)
        n += ((uint8_t)*s & 0xC0) != 0x80;
    return n;
}

/* The value of a number rule at p, widened; *above is set for a uint64 past INT64_MAX (above
 * any max an int64 can say). 0 if the rule is not a number's. */
static int rule_number(const wire_rule *r, const uint8_t *p, int64_t *out, int *above)
{
    *above = 0;
    switch (r->type) {
    case WIRE_RULE_U32: { uint32_t v; memcpy(&v, p, sizeof(v)); *out = v; return 1; }
    case WIRE_RULE_I32: { int32_t v; memcpy(&v, p, sizeof(v)); *out = v; return 1; }
    case WIRE_RULE_ENUM: { int v; memcpy(&v, p, sizeof(v)); *out = v; return 1; }
    case WIRE_RULE_I64: { int64_t v; memcpy(&v, p, sizeof(v)); *out = v; return 1; }
    case WIRE_RULE_U64: {
        uint64_t v;
        memcpy(&v, p, sizeof(v));
        *above = v > (uint64_t)INT64_MAX;
        *out = *above ? INT64_MAX : (int64_t)v;
        return 1;
    }
    case WIRE_RULE_BOOL: { bool v; memcpy(&v, p, sizeof(v)); *out = v; return 1; }
    default:
        return 0;
    }
}

static int ascii_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int ascii_alnum(char c)
{
    return ascii_alpha(c) || (c >= '0' && c <= '9');
}

const char *wire_url_problem(const char *s)
{
    if (s[0] == '\0')
        return NULL;
    size_t scheme = strncmp(s, "https://", 8) == 0 ? 8 : strncmp(s, "http://", 7) == 0 ? 7 : 0;
    int ok = scheme > 0 && s[scheme] != '\0';
    for (const char *p = s; ok && *p; p++)
        ok = (uint8_t)*p > 0x20 && (uint8_t)*p < 0x7F;
    return ok ? NULL : "must be an http:// or https:// URL without spaces";
}

/* A domain of an email address: at least two dot-separated labels of 1-63 letters, digits and
 * hyphens (not first or last), the last at least 2 letters. */
static int email_domain_ok(const char *d)
{
    int labels = 0;
    const char *label = d;
    for (const char *p = d;; p++) {
        if (*p != '.' && *p != '\0') {
            if (!ascii_alnum(*p) && *p != '-')
                return 0;
            continue;
        }
        size_t n = (size_t)(p - label);
        if (n < 1 || n > 63 || label[0] == '-' || p[-1] == '-')
            return 0;
        labels++;
        if (*p == '\0') {
            for (const char *q = label; q < p; q++)
                if (!ascii_alpha(*q))
                    return 0;
            return labels >= 2 && n >= 2;
        }
        label = p + 1;
    }
}

const char *wire_email_problem(const char *s)
{
    static const char *const bad = "is not a valid email address";
    const char *at = strchr(s, '@');
    if (at == NULL || at == s || strchr(at + 1, '@') != NULL || at - s > 64 || strlen(s) > 254)
        return bad;
    /* The local part: RFC 5322's dot-atom. */
    for (const char *p = s; p < at; p++)
        if (!ascii_alnum(*p) && strchr(".!#$%&'*+/=?^_`{|}~-", *p) == NULL)
            return bad;
    if (s[0] == '.' || at[-1] == '.' || strstr(s, "..") != NULL)
        return bad;
    return email_domain_ok(at + 1) ? NULL : bad;
}

/* "must be A, B or C": the names of the enum values that pass r's other rules; a list too long
 * for the description is not cut short, it is left out. */
static void rule_enum_names(const wire_rule *r, int64_t got, char *why, size_t cap)
{
    size_t ok[64], n = 0;
    for (size_t k = 0; k < r->nvalues; k++) {
        if (n == sizeof(ok) / sizeof(ok[0])) {
            snprintf(why, cap, "%lld is not one of the values it allows", (long long)got);
            return;
        }
        int64_t v = r->values[k];
        if (((r->flags & WIRE_RULE_REQUIRED) && v == 0) || ((r->flags & WIRE_RULE_HAS_MIN) && v < r->min) ||
            ((r->flags & WIRE_RULE_HAS_MAX) && v > r->max))
            continue;
        ok[n++] = k;
    }
    if (n == 0) {
        snprintf(why, cap, "has no value that its rules allow");
        return;
    }
    size_t used = (size_t)snprintf(why, cap, "must be %s", r->value_names[ok[0]]);
    for (size_t i = 1; i < n && used < cap; i++)
        used += (size_t)snprintf(why + used, cap - used, "%s%s", i + 1 == n ? " or " : ", ",
                                 r->value_names[ok[i]]);
    if (used >= cap)
        snprintf(why, cap, "%lld is not one of the values it allows", (long long)got);
}

static void rule_check_number(const wire_rule *r, int64_t v, int above, int present_only, char *why, size_t cap)
{
    int required_broken = (r->flags & WIRE_RULE_REQUIRED) && v == 0 && !present_only;
    if (r->flags & WIRE_RULE_DEFINED) {
        /* An enum's every fault says which values it takes, as the handlers said it. */
        size_t k = 0;
        while (k < r->nvalues && r->values[k] != v)
            k++;
        if (required_broken || k == r->nvalues || ((r->flags & WIRE_RULE_HAS_MIN) && v < r->min) ||
            ((r->flags & WIRE_RULE_HAS_MAX) && v > r->max))
            rule_enum_names(r, v, why, cap);
    } else if (required_broken) {
        snprintf(why, cap, "is required");
    } else if ((r->flags & WIRE_RULE_HAS_MIN) && v < r->min) {
        if (r->min == 1)
            snprintf(why, cap, "must be positive");
        else
            snprintf(why, cap, "must be at least %lld", (long long)r->min);
    } else if ((r->flags & WIRE_RULE_HAS_MAX) && (above || v > r->max)) {
        snprintf(why, cap, "must be at most %lld", (long long)r->max);
    }
}

/* "must be a, b or c": the words of a ONE_OF rule but "", which a client leaves the field
 * for (as the handlers listed them). */
static void rule_words(const wire_rule *r, char *why, size_t cap)
{
    size_t used = (size_t)snprintf(why, cap, "must be");
    size_t listed = 0, total = 0;
    for (size_t k = 0; k < r->nwords; k++)
        total += r->words[k][0] != '\0';
    for (size_t k = 0; k < r->nwords && used < cap; k++) {
        if (r->words[k][0] == '\0')
            continue;
        listed++;
        used += (size_t)snprintf(why + used, cap - used, "%s%s", listed == 1 ? " " : listed == total ? " or " : ", ",
                                 r->words[k]);
    }
    if (total == 0)
        snprintf(why, cap, "must be empty");
    else if (used >= cap)
        snprintf(why, cap, "is not one of the values it allows");
}

static int rule_word_ok(const wire_rule *r, const char *str)
{
    for (size_t k = 0; k < r->nwords; k++)
        if (strcmp(r->words[k], str) == 0)
            return 1;
    return 0;
}

/* present_only: the field has presence (optional, oneof), so REQUIRED meant "present" and is
 * met; an item: REQUIRED means not empty, like NOT_EMPTY. */
static void rule_check_string(const wire_rule *r, const char *str, int present_only, int item, char *why,
                              size_t cap)
{
    if (str == NULL)
        str = "";
    uint32_t chars = utf8_chars(str);
    const char *problem = NULL;
    if (chars == 0 && (r->flags & WIRE_RULE_REQUIRED) && !present_only && !item)
        snprintf(why, cap, "is required");
    else if (chars == 0 && ((r->flags & WIRE_RULE_NOT_EMPTY) || (item && (r->flags & WIRE_RULE_REQUIRED))))
        snprintf(why, cap, "must not be empty");
    else if (((r->flags & WIRE_RULE_SINGLE_LINE) && strpbrk(str, "\t\r\n") != NULL) ||
             ((r->flags & WIRE_RULE_NO_CR) && strchr(str, '\r') != NULL))
        snprintf(why, cap, "must not contain control characters");
    else if (r->min_chars && chars < r->min_chars)
        snprintf(why, cap, "must be at least %u characters", r->min_chars);
    else if (r->max_chars && chars > r->max_chars)
        snprintf(why, cap, "must be at most %u characters", r->max_chars);
    else if ((r->flags & WIRE_RULE_URL) && (problem = wire_url_problem(str)) != NULL)
        snprintf(why, cap, "%s", problem);
    else if ((r->flags & WIRE_RULE_EMAIL) && (problem = wire_email_problem(str)) != NULL)
        snprintf(why, cap, "%s", problem);
    else if ((r->flags & WIRE_RULE_ONE_OF) && !rule_word_ok(r, str))
        rule_words(r, why, cap);
}

/* A string, number or enum value at p (a field, or one item of a repeated field). */
static void rule_check_value(const wire_rule *r, const uint8_t *p, int present_only, int item, char *why,
                             size_t cap)
{
    int64_t v;
    int above;
    if (rule_number(r, p, &v, &above)) {
        rule_check_number(r, v, above, present_only, why, cap);
    } else if (r->type == WIRE_RULE_STRING) {
        rule_check_string(r, (const char *)p, present_only, item, why, cap);
    } else if (r->type == WIRE_RULE_STRING_PTR) {
        const char *str;
        memcpy(&str, p, sizeof(str));
        rule_check_string(r, str, present_only, item, why, cap);
    }
}

static int rule_present(const wire_rule *r, const uint8_t *msg)
{
    if (r->presence == WIRE_PRESENT_HAS) {
        bool has;
        memcpy(&has, msg + r->presence_offset, sizeof(has));
        return has;
    }
    if (r->presence == WIRE_PRESENT_WHICH) {
        pb_size_t which;
        memcpy(&which, msg + r->presence_offset, sizeof(which));
        return which == r->tag;
    }
    return 1;
}

typedef struct rule_walk {
    wire_rule_report_fn report;
    void *arg;
    int broken;
} rule_walk;

static void rule_report(rule_walk *w, const char *prefix, const char *field, const char *why)
{
    char path[128];
    snprintf(path, sizeof(path), "%s%s", prefix, field);
    w->report(w->arg, path, why);
    w->broken++;
}

static void rule_check_msg(const wire_msginfo *info, const uint8_t *msg, const char *prefix, int depth,
                           rule_walk *w)
{
    char why[160];
    for (size_t i = 0; i < info->nrules; i++) {
        const wire_rule *r = &info->rules[i];
        const uint8_t *p = msg + r->offset;
        why[0] = '\0';
        int has_presence = r->presence != WIRE_PRESENT_ALWAYS;
        if (has_presence && !rule_present(r, msg)) {
            if (r->flags & WIRE_RULE_REQUIRED)
                rule_report(w, prefix, r->field, "is required");
            continue;
        }
        if (r->type == WIRE_RULE_MESSAGE) {
            if (r->sub == NULL || r->sub->nrules == 0)
                continue;
            char sub[128];
            snprintf(sub, sizeof(sub), "%s%s.", prefix, r->field);
            if (depth + 1 > WIRE_RULES_MAX_DEPTH)
                rule_report(w, prefix, r->field, "messages nested too deep for their rules");
            else
                rule_check_msg(r->sub, p, sub, depth + 1, w);
            continue;
        }
        if (r->type == WIRE_RULE_REPEATED) {
            pb_size_t n;
            memcpy(&n, p, sizeof(n));
            if ((r->flags & WIRE_RULE_REQUIRED) && n == 0)
                snprintf(why, sizeof(why), "is required (at least one item)");
            else if (r->min_items && n < r->min_items)
                snprintf(why, sizeof(why), "must have at least %u items (has %u)", r->min_items, (unsigned)n);
            else if (r->max_items && n > r->max_items)
                snprintf(why, sizeof(why), "must have at most %u items (has %u)", r->max_items, (unsigned)n);
            if (why[0])
                rule_report(w, prefix, r->field, why);
            /* Items are checked whatever the count says: each fault names its own item. */
            if (r->item == NULL)
                continue;
            /* A static array (protoc-gen-lagoon refuses item rules on FT_POINTER fields). */
            const uint8_t *items = msg + r->item->offset;
            for (pb_size_t k = 0; k < n; k++) {
                why[0] = '\0';
                rule_check_value(r->item, items + (size_t)k * r->item_size, 0, 1, why, sizeof(why));
                if (why[0]) {
                    char name[128];
                    snprintf(name, sizeof(name), "%s[%u]", r->field, (unsigned)k);
                    rule_report(w, prefix, name, why);
                }
            }
            continue;
        }
        rule_check_value(r, p, has_presence, 0, why, sizeof(why));
        if (why[0])
            rule_report(w, prefix, r->field, why);
    }
}

int wire_check_rules(const wire_msginfo *info, const void *msg, wire_rule_report_fn report, void *arg)
{
    rule_walk w = {report, arg, 0};
    rule_check_msg(info, msg, "", 0, &w);
    return w.broken;
}
