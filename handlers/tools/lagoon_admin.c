/* lagoon-admin: the administrator's tool. verify, backup and stats are the store's
 * (store_admin_main) with the application's schema; create-admin is the accounts feature's.
 *
 *   lagoon-admin create-admin --data DIR --email E --username U   (password: one line on stdin)
 *   lagoon-admin --help
 *
 * create-admin writes to the database, so it opens the store read-write, which takes the
 * directory's writer lock (store.h, STORE_WRITER_LOCK): while lagoond runs on DIR it is refused
 * before it reads the password, and lagoond cannot start while it runs. */
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "accounts.h"
#include "schema.h"

/* After the store's usage ("usage: lagoon-admin COMMAND ..."), or alone after "usage:". */
#define ADMIN_USAGE                                                                                \
    "       lagoon-admin create-admin --data DIR --email E --username U\n"                         \
    "  create-admin  add an administrator (password: one line on stdin); refused while\n"          \
    "                lagoond runs on DIR: stop it first\n"

static int is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

static int create_admin(int argc, char **argv)
{
    if (argc == 3 && is_help(argv[2])) {
        printf("usage:\n" ADMIN_USAGE);
        return 0;
    }
    const char *data = NULL, *email = NULL, *username = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--data") == 0)
            data = argv[i + 1];
        else if (strcmp(argv[i], "--email") == 0)
            email = argv[i + 1];
        else if (strcmp(argv[i], "--username") == 0)
            username = argv[i + 1];
        else
            data = NULL, email = NULL; /* unknown option: usage below */
    }
    if (data == NULL || email == NULL || username == NULL || argc % 2 != 0) {
        fprintf(stderr, "usage:\n" ADMIN_USAGE);
        return 2;
    }
    /* Opened first, so that a running lagoond is reported before anyone types a password. */
    app_config cfg = {0};
    app *a;
    rpc_error err;
    if (app_open(data, &cfg, &a, &err) != RPC_OK) {
        fprintf(stderr, "lagoon-admin: %s\n", err.message);
        return 1;
    }
    /* The password comes on stdin, so that it never shows in a process list or a history. */
    char password[ACCOUNT_PASSWORD_MAX + 2];
    if (fgets(password, sizeof(password), stdin) == NULL) {
        fprintf(stderr, "lagoon-admin: no password on standard input\n");
        app_close(a);
        return 2;
    }
    password[strcspn(password, "\r\n")] = '\0';
    uint64_t id = 0;
    store_error se;
    int st = account_create_admin(a, email, username, password, &id, &se);
    sodium_memzero(password, sizeof(password));
    app_close(a);
    if (st != LAGOON_OK) {
        fprintf(stderr, "lagoon-admin: %s\n", se.message);
        return 1;
    }
    printf("administrator %s created (user id %llu)\n", username, (unsigned long long)id);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "create-admin") == 0)
        return create_admin(argc, argv);
    int rc = store_admin_main(argc, argv, app_schema(), stdout, stderr);
    /* The store's usage lists its commands; this tool adds its own, where that went. */
    if (rc == 2)
        fputs(ADMIN_USAGE, stderr);
    else if (argc == 2 && is_help(argv[1]))
        fputs(ADMIN_USAGE, stdout);
    return rc;
}
