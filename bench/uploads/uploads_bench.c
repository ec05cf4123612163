/* uploads-bench: how fast a file goes up through Uploads/Send compared with copying it on the
 * same disk.
 *
 *   uploads-bench [--mib N] [--window W]
 *
 * Makes an N MiB file of random bytes (default 200) in a temporary directory, then:
 *  - uploads it to an in-process server (lagoond's stack, sync full, store in the same
 *    temporary directory) in UPLOADS_CHUNK_MAX (1 MiB) chunks with W of them unacknowledged
 *    (default UPLOADS_SEND_INFLIGHT_MAX): each chunk checked, pwritten, fsynced and committed
 *    before its ack. Timed from the Create to the ack of the last byte, which comes after the
 *    whole file's SHA-256 is known. The completion then refuses the file (random bytes are no
 *    video: INVALID_ARGUMENT), as expected;
 *  - copies the same file with `cp SRC DST && sync DST` (coreutils sync of one file: an fsync).
 * Prints both rates in MiB/s and their ratio. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <sodium.h>

#include "bench_seed.h"
#include "bench_server.h"
#include "lagoon_stubs.h"
#include "uploads.h"

#define BENCH_MIB_MAX 4096

typedef struct seed {
    uint64_t id;
    char token[ACCOUNT_TOKEN_CHARS + 1];
} seed;

static int seed_rows(store_txn *t, void *arg, store_error *err)
{
    seed *sd = arg;
    lagoon_v1_Session s = lagoon_v1_Session_init_zero;
    s.role = lagoon_v1_Role_STUDENT;
    s.verified = true;
    bench_session_tokens(&s, sd->token);
    return bench_seed_user(t, "uploader", "uploader@bench.invalid", lagoon_v1_Role_STUDENT, &s, &sd->id, err);
}

/* One chunk of buf[off, off+len) as an UploadChunk (pieces point into static room). */
static pb_bytes_array_t *pieces[UPLOADS_CHUNK_PIECES];

static int chunk_fill(lagoon_v1_UploadChunk *m, uint64_t id, const uint8_t *buf, uint64_t off, size_t len)
{
    memset(m, 0, sizeof(*m));
    m->upload_id = id;
    m->offset = off;
    size_t n = 0;
    for (size_t at = 0; at < len; at += UPLOADS_PIECE_MAX, n++) {
        size_t k = len - at < UPLOADS_PIECE_MAX ? len - at : UPLOADS_PIECE_MAX;
        pieces[n]->size = (pb_size_t)k;
        memcpy(pieces[n]->bytes, buf + off + at, k);
    }
    m->data = pieces;
    m->data_count = (pb_size_t)n;
    m->sha256.size = 32;
    /* OpenSSL's SHA-256 (the CPU's SHA instructions), as a client should: libsodium's is
     * several times slower here and would make the client the bottleneck. */
    return EVP_Digest(buf + off, len, m->sha256.bytes, NULL, EVP_sha256(), NULL) == 1 ? 0 : -1;
}

static double upload(const bench_stack *stack, const seed *sd, const uint8_t *buf, uint64_t size, uint32_t window)
{
    lagoon_client *c;
    if (bench_stack_connect(stack, sd->token, &c) != 0)
        return -1;
    lagoon_v1_CreateUploadRequest r = lagoon_v1_CreateUploadRequest_init_zero;
    r.kind = lagoon_v1_Upload_Kind_VIDEO;
    r.size = size;
    r.checksum_algorithm = lagoon_v1_Upload_Checksum_SHA256;
    r.checksum.size = 32;
    crypto_hash_sha256(r.checksum.bytes, buf, size);
    r.which_video = lagoon_v1_CreateUploadRequest_new_video_tag;
    snprintf(r.video.new_video.title, sizeof(r.video.new_video.title), "bench");
    lagoon_v1_Upload u;
    int st = lagoon_Uploads_Create(c, &r, &u);
    if (st != LAGOON_OK) {
        fprintf(stderr, "create: %s\n", lagoon_last_error(c)->detail.message);
        lagoon_close(c);
        return -1;
    }
    uint64_t t0 = bench_now_us(); /* (the client's digest of the whole file is not the server's cost) */
    lagoon_stream *s = NULL;
    uint64_t next = 0, durable = 0;
    uint32_t inflight = 0;
    while (durable < size) {
        while (next < size && inflight < window) {
            lagoon_v1_UploadChunk m;
            size_t len = size - next < UPLOADS_CHUNK_MAX ? (size_t)(size - next) : UPLOADS_CHUNK_MAX;
            if (chunk_fill(&m, u.id, buf, next, len) != 0)
                break;
            st = s == NULL ? lagoon_Uploads_Send(c, &m, &s) : lagoon_Uploads_Send_send(s, &m);
            if (st != LAGOON_OK)
                break;
            next += len;
            inflight++;
        }
        lagoon_v1_UploadAck a;
        if (st != LAGOON_OK || lagoon_Uploads_Send_recv(s, &a) != 1)
            break;
        inflight--;
        durable = a.offset;
    }
    uint64_t t1 = bench_now_us();
    if (s != NULL) { /* the server ends the stream after the last ack */
        lagoon_v1_UploadAck a;
        for (int i = 0; i < UPLOADS_SEND_INFLIGHT_MAX + 1 && lagoon_Uploads_Send_recv(s, &a) == 1; i++)
            ;
        st = lagoon_stream_finish(s, NULL);
    }
    if (durable < size) {
        fprintf(stderr, "upload stopped at %" PRIu64 " of %" PRIu64 " bytes: %s %s\n", durable, size,
                lagoon_status_name(st), lagoon_last_error(c)->detail.message);
        lagoon_close(c);
        return -1;
    }
    printf("  (completion: %s, %s)\n", lagoon_status_name(st), st ? lagoon_last_error(c)->detail.message : "");
    lagoon_close(c);
    return (double)(t1 - t0) / 1e6;
}

int main(int argc, char **argv)
{
    uint32_t mib = 200, window = UPLOADS_SEND_INFLIGHT_MAX;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--mib") == 0 && i + 1 < argc)
            mib = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--window") == 0 && i + 1 < argc)
            window = (uint32_t)strtoul(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: %s [--mib N (1-%d)] [--window W (1-%d)]\n", argv[0], BENCH_MIB_MAX,
                    UPLOADS_SEND_INFLIGHT_MAX);
            return 2;
        }
    }
    if (mib == 0 || mib > BENCH_MIB_MAX || window == 0 || window > UPLOADS_SEND_INFLIGHT_MAX || sodium_init() < 0)
        return 2;
    uint64_t size = (uint64_t)mib << 20;
    uint8_t *buf = malloc(size);
    int room = buf != NULL;
    for (int i = 0; i < UPLOADS_CHUNK_PIECES; i++)
        room &= (pieces[i] = malloc(PB_BYTES_ARRAY_T_ALLOCSIZE(UPLOADS_PIECE_MAX))) != NULL;
    if (!room) {
        for (int i = 0; i < UPLOADS_CHUNK_PIECES; i++)
            free(pieces[i]);
        free(buf);
        return 1;
    }
    randombytes_buf(buf, size);
    app_config acfg;
    memset(&acfg, 0, sizeof(acfg));
    acfg.sync = STORE_SYNC_FULL;
    acfg.upload_max_bytes = size;
    acfg.media_quota_bytes = 2 * size;
    bench_stack stack = {0};
    seed sd;
    store_error serr;
    int rc = 1;
    if (bench_stack_open(&stack, "/tmp/lagoon-uploadsbench-XXXXXX", &acfg) != 0)
        goto out;
    if (store_write(stack.app->db, seed_rows, &sd, &serr) != LAGOON_OK) {
        fprintf(stderr, "seed: %s\n", serr.message);
        goto out;
    }
    if (bench_stack_serve(&stack, NULL) != 0)
        goto out;
    /* The source file of cp, on the same disk as the store and the uploads. */
    char src[BENCH_DIR_MAX + 16], dst[BENCH_DIR_MAX + 16], cmd[3 * (BENCH_DIR_MAX + 16) + 64];
    snprintf(src, sizeof(src), "%s/src.bin", stack.dir);
    snprintf(dst, sizeof(dst), "%s/dst.bin", stack.dir);
    FILE *f = fopen(src, "wb");
    if (f == NULL || fwrite(buf, 1, size, f) != size || fclose(f) != 0)
        goto out;
    snprintf(cmd, sizeof(cmd), "sync '%s'", src);
    if (system(cmd) != 0)
        goto out;
    printf("uploads-bench: %u MiB in %u KiB chunks, %u unacknowledged at most\n", mib, UPLOADS_CHUNK_MAX >> 10,
           window);
    double up_s = upload(&stack, &sd, buf, size, window);
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s' && sync '%s'", src, dst, dst);
    uint64_t t0 = bench_now_us();
    int cp_rc = system(cmd);
    double cp_s = (double)(bench_now_us() - t0) / 1e6;
    if (up_s <= 0 || cp_rc != 0)
        goto out;
    double up_rate = mib / up_s, cp_rate = mib / cp_s;
    printf("upload   %.2f s  %.1f MiB/s\n", up_s, up_rate);
    printf("cp+sync  %.2f s  %.1f MiB/s\n", cp_s, cp_rate);
    printf("ratio    %.2f (upload / cp)\n", up_rate / cp_rate);
    rc = 0;
out:
    bench_stack_stop(&stack);
    for (int i = 0; i < UPLOADS_CHUNK_PIECES; i++)
        free(pieces[i]);
    free(buf);
    return rc;
}
