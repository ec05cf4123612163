/* fuzz_frame: libFuzzer target for the wire codec (rpc/wire.h).
 *
 * The input is a byte stream as a peer would send it (without the preface). It is cut into
 * frames with wire_frame_parse under several limit sets, and every complete frame's metadata
 * and payload go through wire_decode / wire_diagnose for a few message types. Beyond "does not
 * crash", each step checks what the header promises:
 *   - a complete frame occupies 4 + length bytes, inside the input, with meta and payload
 *     where the header says, within the limits, and one byte less is WIRE_PARTIAL;
 *   - wire_header_encode of the parsed fields gives back the same 16 bytes;
 *   - a refused frame has a reason; a partial one has its length once 4 bytes are in;
 *   - wire_decode and wire_diagnose agree: whatever diagnose names, decode refuses;
 *   - a decoded message encodes again, and that encoding decodes and re-encodes to itself;
 *   - a failed decode leaves nothing allocated (LSan), a successful one is pb_release()d.
 *
 * Messages are decoded from a copy placed against a guard page (fuzz_support.h). Every request
 * message decoder has its own target, fuzz_requests.c.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <pb_decode.h>

#include "fuzz_support.h"
#include "lagoon_idl.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const wire_limits fuzz_limits[] = {
    {16, 0},               /* header-only frames */
    {64, 16},              /* small: the limits are hit often */
    {4u << 20, 4096},      /* the server's defaults (rpc/limits.h) */
    {UINT32_MAX, 65535},   /* nothing refused for size */
};

/* ---- messages ----------------------------------------------------------------------------- */

/* Room for a decode, and for the decode of its re-encoding. */
static fuzz_room msg_a, msg_b;

static void fuzz_message(const wire_msginfo *info, const uint8_t *data, size_t n)
{
    /* Every message is decoded from a copy that ends at a guard page: an over-read of one byte
     * (by nanopb or by wire_diagnose, neither instrumented) faults at once. */
    const uint8_t *p = guard_place(data, n);

    wire_violation diag;
    int named = wire_diagnose(info, p, n, &diag);
    CHECK(named == 0 || named == 1);
    CHECK(memchr(diag.field, '\0', sizeof(diag.field)) != NULL);
    CHECK(memchr(diag.description, '\0', sizeof(diag.description)) != NULL);

    wire_violation v;
    int r = wire_decode(info, p, n, &msg_a, &v);
    CHECK(r == 0 || r == -1);
    if (r != 0) {
        /* Every refusal names a field (the server sends a violation only for a named one). */
        CHECK(memchr(v.field, '\0', sizeof(v.field)) != NULL);
        CHECK(v.field[0] != '\0');
        CHECK(v.description[0] != '\0');
        return;
    }
    /* Whatever diagnose names, nanopb refuses: the two agree on every input. */
    if (named) {
        fprintf(stderr, "%s decodes, but wire_diagnose names %s: %s\n", info->name, diag.field,
                diag.description);
        abort();
    }

    fuzz_round_trip(info, &msg_a, &msg_b);
}

/* ---- frames ------------------------------------------------------------------------------- */

static void fuzz_frames(const uint8_t *data, size_t size, const wire_limits *lim, int decode)
{
    size_t pos = 0;
    while (pos <= size) {
        const uint8_t *p = data + pos;
        size_t left = size - pos;
        wire_frame f;
        const char *why = "unset";
        long r = wire_frame_parse(p, left, lim, &f, &why);
        if (r <= 0) {
            CHECK(r == WIRE_PARTIAL || r == WIRE_TOO_LARGE || r == WIRE_INVALID);
            CHECK(f.meta == NULL && f.payload == NULL);
            if (r == WIRE_PARTIAL) {
                CHECK(why == NULL);
                CHECK(left < 4 ? f.length == 0 : f.length == wire_get32(p));
                CHECK(left < 4 || left < (size_t)f.length + 4);
            } else {
                CHECK(why != NULL && why[0] != '\0');
            }
            if (r == WIRE_TOO_LARGE)
                CHECK(left >= 4);
            return;
        }
        CHECK(why == NULL);
        CHECK((unsigned long)r == (unsigned long)f.length + 4);
        CHECK((size_t)r <= left && (size_t)r >= WIRE_HEADER_SIZE);
        CHECK(f.length <= lim->max_frame_size && f.meta_len <= lim->max_meta_size);
        CHECK(f.type >= WIRE_REQUEST && f.type <= WIRE_TYPE_MAX);
        CHECK((f.flags & ~WIRE_FLAGS_KNOWN) == 0);
        CHECK(f.meta == p + WIRE_HEADER_SIZE);
        CHECK(f.payload == f.meta + f.meta_len);
        CHECK((uint64_t)WIRE_LENGTH_MIN + f.meta_len + f.payload_len == f.length);
        int conn = f.type == WIRE_PING || f.type == WIRE_PONG || f.type == WIRE_GOAWAY ||
                   f.type == WIRE_SETTINGS;
        CHECK(conn ? f.call_id == 0 : f.call_id != 0);

        uint8_t hdr[WIRE_HEADER_SIZE];
        CHECK(wire_header_encode(hdr, f.type, f.flags, f.call_id, f.code, f.meta_len,
                                 f.payload_len) == 0);
        CHECK(memcmp(hdr, p, WIRE_HEADER_SIZE) == 0);

        wire_frame g;
        CHECK(wire_frame_parse(p, (size_t)r - 1, lim, &g, NULL) == WIRE_PARTIAL);

        if (decode) {
            if (f.type == WIRE_REQUEST)
                fuzz_message(&lagoon_v1_RequestMeta_info, f.meta, f.meta_len);
            else
                fuzz_message(&lagoon_v1_ResponseMeta_info, f.meta, f.meta_len);
            fuzz_message(&lagoon_v1_EchoRequest_info, f.payload, f.payload_len);
            fuzz_message(&lagoon_v1_ListMethodsResponse_info, f.payload, f.payload_len);
            if (f.type == WIRE_SETTINGS)
                fuzz_message(&lagoon_v1_Settings_info, f.payload, f.payload_len);
        }
        pos += (size_t)r;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < sizeof(fuzz_limits) / sizeof(fuzz_limits[0]); i++)
        fuzz_frames(data, size, &fuzz_limits[i], i == sizeof(fuzz_limits) / sizeof(fuzz_limits[0]) - 1);
    /* The input as a bare message too, so that the message decoders get a direct path. */
    fuzz_message(&lagoon_v1_ListMethodsResponse_info, data, size);
    fuzz_message(&lagoon_v1_ResponseMeta_info, data, size);
    return 0;
}
