/* request_seeds: writes fuzz_requests' seed corpus into a directory, one file per input.
 *
 *   fuzz_request_seeds DIR
 *
 * Each input is a type byte (the method's index in lagoon_methods, or lagoon_methods_count for
 * RequestMeta; see fuzz_requests.c) and an encoded message. Every type gets an empty message,
 * one with every field set (ASCII strings) and one with every field set (strings with 2-, 3-
 * and 4-byte UTF-8 and the allowed controls); the requests the string tests send through the
 * server follow, valid and hostile. The corpus is written at test time from the generated
 * tables, so a new method is seeded without a checked-in file.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <pb_common.h>
#include <pb_decode.h>

#include "lagoon_idl.h"
#include "wire.h"

#define SEED_MAX (64 * 1024)
#define FILL_MAX_DEPTH 8 /* deeper submessages are left at their defaults */

static const char *seed_dir;
static int seed_count;

static union {
    max_align_t align;
    unsigned char bytes[64 * 1024];
} seed_msg;

/* Writes one input: the type byte, then len bytes. Returns 0, or -1 with a message. */
static int seed_write(const char *name, uint8_t type, const uint8_t *buf, size_t len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%03u-%s", seed_dir, (unsigned)type, name);
    for (char *c = path + strlen(seed_dir) + 1; *c; c++)
        if (*c == '/' || *c == '.')
            *c = '_';
    FILE *f = fopen(path, "wb");
    if (f == NULL || fwrite(&type, 1, 1, f) != 1 || (len && fwrite(buf, 1, len, f) != len) || fclose(f) != 0) {
        fprintf(stderr, "request_seeds: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    seed_count++;
    return 0;
}

/* Encodes msg as info and writes it. */
static int seed_msg_write(const char *name, uint8_t type, const wire_msginfo *info, const void *msg)
{
    static uint8_t enc[SEED_MAX];
    const char *why = NULL;
    long n = wire_encode(info, msg, enc, sizeof(enc), &why);
    if (n < 0) {
        fprintf(stderr, "request_seeds: %s does not encode: %s\n", name, why ? why : "?");
        return -1;
    }
    wire_violation v;
    if (wire_decode(info, enc, (size_t)n, &seed_msg, &v) != 0) {
        fprintf(stderr, "request_seeds: %s is refused: %s: %s\n", name, v.field, v.description);
        return -1;
    }
    pb_release(info->desc, &seed_msg);
    return seed_write(name, type, enc, (size_t)n);
}

/* Stores 1 in an integer field of size bytes. */
static void set_one(void *p, size_t size)
{
    switch (size) {
    case 1:
        *(uint8_t *)p = 1;
        break;
    case 2:
        *(uint16_t *)p = 1;
        break;
    case 4:
        *(uint32_t *)p = 1;
        break;
    case 8:
        *(uint64_t *)p = 1;
        break;
    default:
        break;
    }
}

/* Sets every static field of msg (zeroed by the caller): integers and enums to 1, booleans to
 * true, strings to text (or "x" where it does not fit), bytes to 4 bytes, one item in each
 * repeated field, the first member of each oneof, submessages recursively. Pointer fields
 * (none in requests) stay empty. */
static void fill(const pb_msgdesc_t *desc, void *msg, const char *text, int depth)
{
    pb_field_iter_t it;
    if (depth > FILL_MAX_DEPTH || !pb_field_iter_begin(&it, desc, msg))
        return;
    do {
        if (PB_ATYPE(it.type) != PB_ATYPE_STATIC)
            continue;
        pb_type_t ht = PB_HTYPE(it.type);
        if (ht == PB_HTYPE_ONEOF) {
            if (*(pb_size_t *)it.pSize != 0)
                continue; /* another member is set */
            *(pb_size_t *)it.pSize = (pb_size_t)it.tag;
        } else if (ht == PB_HTYPE_REPEATED) {
            *(pb_size_t *)it.pSize = 1;
        } else if (ht == PB_HTYPE_OPTIONAL && it.pSize != NULL) {
            *(bool *)it.pSize = true;
        }
        void *p = it.pData;
        switch (PB_LTYPE(it.type)) {
        case PB_LTYPE_BOOL:
            *(bool *)p = true;
            break;
        case PB_LTYPE_VARINT:
        case PB_LTYPE_UVARINT:
        case PB_LTYPE_SVARINT:
        case PB_LTYPE_FIXED32:
        case PB_LTYPE_FIXED64:
            set_one(p, it.data_size);
            break;
        case PB_LTYPE_STRING:
            snprintf(p, it.data_size, "%s", strlen(text) < it.data_size ? text : "x");
            break;
        case PB_LTYPE_BYTES: {
            pb_bytes_array_t *b = p;
            size_t cap = it.data_size - offsetof(pb_bytes_array_t, bytes);
            b->size = (pb_size_t)(cap < 4 ? cap : 4);
            memcpy(b->bytes, "\x00\x01\xfe\xff", b->size);
            break;
        }
        case PB_LTYPE_FIXED_LENGTH_BYTES:
            memset(p, 0xA5, it.data_size);
            break;
        case PB_LTYPE_SUBMESSAGE:
        case PB_LTYPE_SUBMSG_W_CB:
            fill(it.submsg_desc, p, text, depth + 1);
            break;
        default:
            break;
        }
    } while (pb_field_iter_next(&it));
}

/* The three generic seeds of one type. */
static int seed_type(const char *name, uint8_t type, const wire_msginfo *info, size_t size)
{
    static const struct {
        const char *suffix, *text;
    } variants[] = {
        {"full-ascii", "seed text 1"},
        {"full-utf8", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8e\xbb\ttab\nline\r\n"},
    };
    char label[300];
    if (size > sizeof(seed_msg)) {
        fprintf(stderr, "request_seeds: %s is larger than %zu bytes\n", name, sizeof(seed_msg));
        return -1;
    }
    snprintf(label, sizeof(label), "%s-empty", name);
    if (seed_write(label, type, NULL, 0) != 0)
        return -1;
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        static union {
            max_align_t align;
            unsigned char bytes[64 * 1024];
        } msg;
        memset(&msg, 0, size);
        fill(info->desc, &msg, variants[i].text, 0);
        snprintf(label, sizeof(label), "%s-%s", name, variants[i].suffix);
        if (seed_msg_write(label, type, info, &msg) != 0)
            return -1;
    }
    return 0;
}

/* The type byte of a method, by path; -1 if there is none. */
static int type_of(const char *path)
{
    for (size_t i = 0; i < lagoon_methods_count; i++)
        if (strcmp(lagoon_methods[i]->path, path) == 0)
            return (int)i;
    fprintf(stderr, "request_seeds: no method %s\n", path);
    return -1;
}

/* A hand-built input: the type of a method (or RequestMeta, path NULL) and raw bytes, as the
 * string tests send them (a NUL inside a password, a bad client_message_id, ...). */
typedef struct raw_seed {
    const char *name;
    const char *path; /* NULL: RequestMeta */
    const char *bytes;
    size_t len;
} raw_seed;

#define RAW_SEED(name, path, lit) {name, path, lit, sizeof(lit) - 1}

static const raw_seed raw_seeds[] = {
    RAW_SEED("login", "/lagoon.v1.Auth/Login", "\x0a\x05" "alice" "\x12\x16" "correct horse battery!"),
    RAW_SEED("login-nul-password", "/lagoon.v1.Auth/Login",
             "\x0a\x05" "alice" "\x12\x1b" "correct horse battery\0junk!"),
    RAW_SEED("register", "/lagoon.v1.Auth/Register",
             "\x0a\x0f" "nul@example.org" "\x12\x03" "nul" "\x1a\x16" "correct horse battery!"
             "\x22\x08" "Nul User"),
    RAW_SEED("register-nul-email", "/lagoon.v1.Auth/Register",
             "\x0a\x14" "nul@example.org\0evil" "\x12\x03" "nul" "\x1a\x16" "correct horse battery!"),
    RAW_SEED("send-text", "/lagoon.v1.Messages/Send", "\x08\x02" "\x12\x07\x0a\x05" "hello" "\x2a\x03" "c-1"),
    RAW_SEED("send-bad-id", "/lagoon.v1.Messages/Send", "\x08\x02" "\x12\x04\x0a\x02" "hi" "\x2a\x02" "\xc3\x28"),
    RAW_SEED("send-rlo", "/lagoon.v1.Messages/Send", "\x08\x02" "\x12\x0a\x0a\x08" "ab\xe2\x80\xae" "cde"),
    RAW_SEED("profile-instruments", "/lagoon.v1.Users/UpdateProfile",
             "\x18\x01" "\x22\x05" "cello" "\x22\x05" "piano"),
    RAW_SEED("meta", NULL, "\x0a\x04" "tokn" "\x10\xe8\x07" "\x1a\x03" "k-1" "\x22\x03" "r-1"),
    RAW_SEED("meta-bad-key", NULL, "\x1a\x03" "k\x01" "1"),
};

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    seed_dir = argv[1];
    if (mkdir(seed_dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "request_seeds: cannot create %s: %s\n", seed_dir, strerror(errno));
        return 1;
    }
    if (lagoon_methods_count >= 256) {
        fprintf(stderr, "request_seeds: %zu methods do not fit the type byte\n", lagoon_methods_count);
        return 1;
    }
    for (size_t i = 0; i < lagoon_methods_count; i++) {
        const wire_method *m = lagoon_methods[i];
        if (seed_type(m->path + 1, (uint8_t)i, m->request, m->request_size) != 0)
            return 1;
    }
    uint8_t meta_type = (uint8_t)lagoon_methods_count;
    if (seed_type("RequestMeta", meta_type, &lagoon_v1_RequestMeta_info, sizeof(lagoon_v1_RequestMeta)) != 0)
        return 1;
    for (size_t i = 0; i < sizeof(raw_seeds) / sizeof(raw_seeds[0]); i++) {
        const raw_seed *r = &raw_seeds[i];
        int type = r->path ? type_of(r->path) : meta_type;
        if (type < 0 || seed_write(r->name, (uint8_t)type, (const uint8_t *)r->bytes, r->len) != 0)
            return 1;
    }
    printf("%d seeds in %s\n", seed_count, seed_dir);
    return 0;
}
