/* wire: frame codec and message coding shared by server and clients. See wire.h. */
#include "wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

void wire_init(const wire_msginfo *info, void *msg)
{
    light_init(info->desc, msg, 0);
}

int wire_decode(const wire_msginfo *info, const uint8_t *buf, size_t len, void *dst,
                wire_violation *v)
{
    /* nanopb checks the bounds of static fields itself but allocates pointer fields as the
     * wire asks; those bounds are checked here, before any allocation. */
    if (info->has_pointers && wire_diagnose(info, buf, len, v)) {
        return -1;
    }
    pb_istream_t in = pb_istream_from_buffer(buf, len);
    wire_init(info, dst);
    if (pb_decode_ex(&in, info->desc, dst, PB_DECODE_NOINIT))
        return 0;
    const char *err = PB_GET_ERROR(&in);
    pb_release(info->desc, dst);
    if (!wire_diagnose(info, buf, len, v)) {
        v->field[0] = '\0';
        snprintf(v->description, sizeof(v->description), "cannot decode %s: %s", info->name, err);
    }
    return -1;
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
    if (info->has_pointers && wire_diagnose(info, out, os.bytes_written, &v)) {
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

/* nanopb's pb_decode_varint: at most 10 bytes. -1 truncated, -2 too long. */
static int diag_varint(diag_reader *r, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end)
            return -1;
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -2;
}

static const wire_fieldinfo *diag_field(const wire_msginfo *info, uint32_t tag)
{
    for (size_t i = 0; i < info->nfields; i++)
        if (info->fields[i].tag == tag)
            return &info->fields[i];
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
                    int depth, wire_violation *v);

/* The field iterator reads the message struct (a pointer field's pointer, for one); the wire
 * bytes are not a struct, so it is given zeroes. Every nanopb struct here is under 64 KiB. */
static const max_align_t diag_zero_struct[65536 / sizeof(max_align_t)];

/* Whether a varint value fits the field as nanopb's pb_dec_varint/pb_dec_bool would judge. */
static int diag_varint_fits(const pb_field_iter_t *it, uint64_t value)
{
    pb_type_t lt = PB_LTYPE(it->type);
    if (lt == PB_LTYPE_BOOL)
        return value <= UINT32_MAX || (value >> 31) == 0x1FFFFFFFFull; /* read as a varint32 */
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

static int diag_len_field(const wire_msginfo *info, const pb_field_iter_t *it, const wire_fieldinfo *fi,
                          diag_path *path, const uint8_t *data, size_t n, int depth,
                          unsigned *count, wire_violation *v)
{
    (void)info;
    pb_type_t lt = PB_LTYPE(it->type);
    int repeated = PB_HTYPE(it->type) == PB_HTYPE_REPEATED;
    int is_static = PB_ATYPE(it->type) == PB_ATYPE_STATIC;
    int is_pointer = PB_ATYPE(it->type) == PB_ATYPE_POINTER;
    uint32_t bound = fi != NULL ? fi->bound : 0;
    if (is_pointer && !repeated && (lt == PB_LTYPE_STRING || lt == PB_LTYPE_BYTES) && bound && n > bound)
        return diag_fail(v, path_of(path), "longer than %lu bytes", (unsigned long)bound);
    if (lt == PB_LTYPE_STRING && is_static && n + 1 > it->data_size)
        return diag_fail(v, path_of(path), "longer than %lu bytes", (unsigned long)it->data_size - 1);
    if (lt == PB_LTYPE_BYTES && is_static && n > it->data_size - offsetof(pb_bytes_array_t, bytes))
        return diag_fail(v, path_of(path), "longer than %lu bytes",
                         (unsigned long)(it->data_size - offsetof(pb_bytes_array_t, bytes)));
    if (lt == PB_LTYPE_FIXED_LENGTH_BYTES && n != it->data_size)
        return diag_fail(v, path_of(path), "must be exactly %lu bytes", (unsigned long)it->data_size);
    if (lt == PB_LTYPE_SUBMESSAGE || lt == PB_LTYPE_SUBMSG_W_CB) {
        if (fi != NULL && fi->sub != NULL) {
            char sub[128];
            if (repeated)
                diag_fmt(sub, sizeof(sub), "%s[%u].", path_of(path), *count);
            else
                diag_fmt(sub, sizeof(sub), "%s.", path_of(path));
            if (diag_msg(fi->sub, data, n, sub, depth + 1, v))
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
                    int depth, wire_violation *v)
{
    if (depth > DIAG_MAX_DEPTH)
        return diag_fail(v, prefix, "messages nested deeper than %d levels", DIAG_MAX_DEPTH);
    unsigned counts[DIAG_MAX_FIELDS] = {0};
    diag_reader r = {buf, buf + len};
    while (r.p < r.end) {
        uint32_t key;
        int kr = diag_varint32(&r, &key);
        if (kr != 0)
            return diag_fail(v, prefix, kr == -1 ? "truncated field key" : "malformed field key");
        uint32_t tag = key >> 3;
        if (tag == 0)
            return diag_fail(v, prefix, "invalid field number 0"); /* nanopb: "zero tag" */
        int wt = (int)(key & 7);

        const wire_fieldinfo *fi = diag_field(info, tag);
        pb_field_iter_t it;
        int known = pb_field_iter_begin_const(&it, info->desc, diag_zero_struct) && pb_field_iter_find(&it, tag);
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
            int vr = diag_varint(&r, &n);
            if (vr != 0)
                return diag_fail(v, path_of(path), vr == -1 ? "truncated varint" : "varint longer than 10 bytes");
            if (!diag_varint_fits(&it, n))
                return diag_fail(v, path_of(path), "integer out of range for this field");
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
                if (diag_len_field(info, &it, fi, path, r.p, (size_t)n, depth, count, v))
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

int wire_diagnose(const wire_msginfo *info, const uint8_t *buf, size_t len, wire_violation *v)
{
    v->field[0] = '\0';
    v->description[0] = '\0';
    return diag_msg(info, buf, len, "", 0, v);
}
