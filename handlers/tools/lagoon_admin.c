/* lagoon-admin: the administrator's tool. verify, backup and stats are the store's
 * (store_admin_main) with the application's schema; create-admin is the accounts feature's.
 *
 *   lagoon-admin create-admin --data DIR --email E --username U   (password: one line on stdin)
 *
 * create-admin writes to the database: run it while lagoond is stopped. */
#include <stdio.h>
#include <string.h>

#include <sodium.h>

#include "accounts.h"
#include "schema.h"

#define ADMIN_USAGE "       lagoon-admin create-admin --data DIR --email E --username U   (password on stdin)\n"

static int create_admin(int argc, char **argv)
{
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
    /* The password comes on stdin, so that it never shows in a process list or a history. */
    char password[ACCOUNT_PASSWORD_MAX + 2];
    if (fgets(password, sizeof(password), stdin) == NULL) {
        fprintf(stderr, "lagoon-admin: no password on standard input\n");
        return 2;
    }
    password[strcspn(password, "\r\n")] = '\0';
    app_config cfg = {0};
    app *a;
    rpc_error err;
    if (app_open(data, &cfg, &a, &err) != RPC_OK) {
        fprintf(stderr, "lagoon-admin: %s\n", err.message);
        sodium_memzero(password, sizeof(password));
        return 1;
    }
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
    if (rc == 2)
        fprintf(stderr, ADMIN_USAGE);
    return rc;
}
