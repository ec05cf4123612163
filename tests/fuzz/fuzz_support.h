/* fuzz_support: what the libFuzzer targets share (a check that aborts, a guard page). */
#ifndef LAGOON_FUZZ_SUPPORT_H
#define LAGOON_FUZZ_SUPPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <pb_decode.h>

#include "wire.h"

/* A failed check aborts, which libFuzzer reports as a crash with the input that caused it. */
#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);       \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* Inputs are decoded from a copy placed against a PROT_NONE page, because nanopb is an
 * uninstrumented static library: ASan cannot see its over-reads, the guard page can. */
#define GUARD_SPAN (64u * 1024u)

/* Copies data[0..n) so that its last byte is the last readable byte; NULL if it is too big. */
static inline const uint8_t *guard_place(const uint8_t *data, size_t n)
{
    static uint8_t *guard_map;
    if (guard_map == NULL) {
        size_t page = (size_t)sysconf(_SC_PAGESIZE);
        void *m = mmap(NULL, GUARD_SPAN + page, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        CHECK(m != MAP_FAILED);
        guard_map = m;
        CHECK(mprotect(guard_map + GUARD_SPAN, page, PROT_NONE) == 0);
    }
    if (n > GUARD_SPAN)
        return NULL;
    uint8_t *p = guard_map + GUARD_SPAN - n;
    if (n)
        memcpy(p, data, n);
    return p;
}

/* Aligned room for any generated struct. */
typedef union fuzz_room {
    max_align_t align;
    unsigned char bytes[64 * 1024];
} fuzz_room;

/* msg (info's type) was decoded: it encodes, the encoding decodes again, and encodes to the
 * same bytes (a fixed point). msg is released; scratch holds the second decode. */
static inline void fuzz_round_trip(const wire_msginfo *info, void *msg, fuzz_room *scratch)
{
    static uint8_t enc_a[64 * 1024], enc_b[64 * 1024];
    wire_violation v;
    long m = wire_encode(info, msg, enc_a, sizeof(enc_a), NULL);
    CHECK(m >= 0);
    CHECK(wire_encoded_size(info, msg) == m);
    pb_release(info->desc, msg);
    CHECK(wire_decode(info, enc_a, (size_t)m, scratch, &v) == 0);
    long m2 = wire_encode(info, scratch, enc_b, sizeof(enc_b), NULL);
    CHECK(m2 == m);
    CHECK(memcmp(enc_a, enc_b, (size_t)m) == 0);
    pb_release(info->desc, scratch);
}

#endif
