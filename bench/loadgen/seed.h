/* seed: `lagoon-bench seed` fills a fresh database offline, and the scenarios read back what it
 * made (bench_data_load).
 *
 * The seed writes straight through the store (linking the handlers library, no server), many
 * thousands of rows per transaction and no fsync, so that scenarios run on realistic sizes
 * (a million messages in seconds, not hours of RPCs). It leaves two files next to the database:
 *
 *   DIR/bench-tokens.txt  the access token of user i on line i+1 (43 characters each). These are
 *                         LIVE credentials of the seeded sessions (valid BENCH_SEED_TOKEN_TTL_S):
 *                         a benchmark artifact, mode 0600; never seed a database that real users
 *                         will use.
 *   DIR/bench-seed.txt    key=value lines: users, first_user_id, messages, conversations, the
 *                         long conversation's two users and size, and the shared password.
 *
 * Users are `user<i>` / `user<i>@bench.invalid`, all with one password (BENCH_SEED_PASSWORD)
 * whose Argon2id hash is computed once with the server's limits and shared by every user.
 */
#ifndef LAGOON_BENCH_SEED_H
#define LAGOON_BENCH_SEED_H

#include <stddef.h>
#include <stdint.h>

#define BENCH_SEED_TOKENS_FILE "bench-tokens.txt"
#define BENCH_SEED_INFO_FILE "bench-seed.txt"
/* The password of every seeded user (valid under the Register rules). */
#define BENCH_SEED_PASSWORD "lagoon-bench-password"
#define BENCH_SEED_PASSWORD_MAX 64
#define BENCH_TOKEN_CHARS 43 /* ACCOUNT_TOKEN_CHARS */
/* Seeded sessions (access and refresh) expire after this: long enough to benchmark for weeks. */
#define BENCH_SEED_TOKEN_TTL_S (30u * 24 * 3600)

/* What a seeded database holds, as the scenarios need it. */
typedef struct bench_data {
    char (*tokens)[BENCH_TOKEN_CHARS + 1]; /* access token of user i; owned, bench_data_free */
    size_t users;                          /* lines of the tokens file */
    uint64_t first_user_id;                /* id of user0; user i has first_user_id + i */
    size_t long_a, long_b;                 /* user indexes of the long conversation */
    uint64_t long_messages;                /* its size when seeded */
    char password[BENCH_SEED_PASSWORD_MAX];
} bench_data;

/* `lagoon-bench seed ...` (argv[0] is "seed"). Returns the process exit status. */
int bench_seed_main(int argc, char **argv);

/* Reads tokens_path (one token per line) and, if present, the info file in the same directory
 * (without it: first_user_id 1, long conversation user0-user1, BENCH_SEED_PASSWORD).
 * 0, or -1 with err filled. */
int bench_data_load(const char *tokens_path, bench_data *out, char *err, size_t errlen);
void bench_data_free(bench_data *d);

#endif
