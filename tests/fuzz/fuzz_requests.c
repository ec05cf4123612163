/* fuzz_requests: libFuzzer target for every request message decoder: wire_decode of each
 * method's request type and of RequestMeta, exactly as the server calls it for every REQUEST,
 * every MESSAGE and every metadata block.
 *
 * The first input byte picks the message type: index % (lagoon_methods_count + 1) into the
 * generated table of every method (lagoon_methods, sorted by method id), the extra index being
 * RequestMeta. The rest of the input is the encoded message. request_seeds.c writes one valid
 * message per type (and a few real requests) in this form, as the seed corpus. Checks:
 *   - a refusal names a field and says why, leaves nothing allocated (LSan), and is the
 *     violation wire_diagnose names;
 *   - what is accepted is exactly what nanopb alone decodes and whose strings, read from the
 *     wire bytes with nanopb's own stream functions, pass ref_text_ok below (written apart
 *     from wire.c's check, as a second opinion); for a message with pointer fields, whose
 *     bounds wire_decode checks and nanopb does not, accepted implies both;
 *   - an accepted message encodes, and that encoding decodes and re-encodes to itself.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <pb_common.h>
#include <pb_decode.h>

#include "fuzz_support.h"
#include "lagoon_idl.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Room for wire_decode's message, the round trip's, and nanopb's own decode. */
static fuzz_room msg_a, msg_b, msg_c;

/* The field iterator reads a struct; the wire bytes are not one, so it is given zeroes. */
static const fuzz_room zero_room;

/* The rule of wire.h for string fields, decoded code point by code point. */
static int ref_text_ok(const uint8_t *s, size_t n)
{
    static const uint32_t shortest[5] = {0, 0, 0x80, 0x800, 0x10000}; /* by sequence length */
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        size_t len = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || len > n - i)
            return 0;
        uint32_t c = len == 1 ? b : (uint32_t)(b & (0x7F >> len));
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return 0;
            c = (c << 6) | (s[i + k] & 0x3Fu);
        }
        if (c < shortest[len] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            return 0;
        int allowed_control = c == '\t' || c == '\n' || c == '\r';
        if ((c < 0x20 && !allowed_control) || (c >= 0x7F && c <= 0x9F))
            return 0;
        if ((c >= 0x202A && c <= 0x202E) || (c >= 0x2066 && c <= 0x2069))
            return 0;
        i += len;
    }
    return 1;
}

/* 1 if every string field of buf, at any depth, passes ref_text_ok. buf is a message nanopb
 * decoded, so it is read with nanopb's stream functions and any read failure is a finding. */
static int ref_strings_ok(const pb_msgdesc_t *desc, const uint8_t *buf, size_t len, int depth)
{
    CHECK(depth < 64);
    pb_istream_t s = pb_istream_from_buffer(buf, len);
    pb_field_iter_t it;
    bool has_fields = pb_field_iter_begin_const(&it, desc, &zero_room);
    for (;;) {
        pb_wire_type_t wt;
        uint32_t tag;
        bool eof;
        if (!pb_decode_tag(&s, &wt, &tag, &eof)) {
            CHECK(eof);
            return 1;
        }
        pb_type_t lt = has_fields && pb_field_iter_find(&it, tag) ? PB_LTYPE(it.type) : PB_LTYPE_EXTENSION;
        int text = lt == PB_LTYPE_STRING;
        int sub = lt == PB_LTYPE_SUBMESSAGE || lt == PB_LTYPE_SUBMSG_W_CB;
        if (wt != PB_WT_STRING || (!text && !sub)) {
            CHECK(pb_skip_field(&s, wt));
            continue;
        }
        uint32_t n;
        CHECK(pb_decode_varint32(&s, &n));
        CHECK(n <= s.bytes_left);
        const uint8_t *p = buf + (len - s.bytes_left);
        if (text && !ref_text_ok(p, n))
            return 0;
        if (sub && !ref_strings_ok(it.submsg_desc, p, n, depth + 1))
            return 0;
        CHECK(pb_read(&s, NULL, n));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Every type must be reachable from one byte. */
    CHECK(lagoon_methods_count < 256);
    if (size == 0)
        return 0;
    size_t pick = data[0] % (lagoon_methods_count + 1);
    const wire_msginfo *info = pick < lagoon_methods_count ? lagoon_methods[pick]->request
                                                          : &lagoon_v1_RequestMeta_info;
    CHECK(pick == lagoon_methods_count || lagoon_methods[pick]->request_size <= sizeof(msg_a));
    size_t n = size - 1;
    const uint8_t *p = guard_place(data + 1, n);
    if (p == NULL)
        return 0;

    /* nanopb alone, and the reference string check, for the verdict wire_decode must give. */
    pb_istream_t in = pb_istream_from_buffer(p, n);
    int nano_ok = pb_decode_ex(&in, info->desc, &msg_c, 0);
    if (nano_ok)
        pb_release(info->desc, &msg_c);
    int ref_ok = nano_ok && ref_strings_ok(info->desc, p, n, 0);

    wire_violation v;
    int r = wire_decode(info, p, n, &msg_a, &v);
    CHECK(r == 0 || r == -1);
    if (info->has_pointers)
        CHECK(r != 0 || ref_ok);
    else if ((r == 0) != ref_ok) {
        fprintf(stderr, "%s: wire_decode %s (%s: %s), nanopb %s, reference strings %s\n", info->name,
                r == 0 ? "accepts" : "refuses", r == 0 ? "" : v.field, r == 0 ? "" : v.description,
                nano_ok ? "accepts" : "refuses", ref_ok ? "fine" : "refused");
        abort();
    }
    if (r != 0) {
        /* The server sends a violation only for a named field: every refusal names one. */
        CHECK(memchr(v.field, '\0', sizeof(v.field)) != NULL && v.field[0] != '\0');
        CHECK(memchr(v.description, '\0', sizeof(v.description)) != NULL && v.description[0] != '\0');
        wire_violation d;
        CHECK(wire_diagnose(info, p, n, &d) == 1);
        CHECK(strcmp(d.field, v.field) == 0 && strcmp(d.description, v.description) == 0);
        return 0;
    }
    wire_violation d;
    CHECK(wire_diagnose(info, p, n, &d) == 0);

    fuzz_round_trip(info, &msg_a, &msg_b);
    return 0;
}
