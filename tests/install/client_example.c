/* Built against an installed liblagoon through pkg-config by install_test.sh. With no server
 * listening, the connect must fail cleanly with UNAVAILABLE. It also frees a list response as
 * lagoon.h says, with nothing included but the client headers (-Werror: an undeclared
 * pb_release fails the build). */
#include <stdio.h>
#include <stdlib.h>

#include <lagoon_async_stubs.h>
#include <lagoon_stubs.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    lagoon_client *c = NULL;
    lagoon_error err;
    int st = lagoon_connect("127.0.0.1", (uint16_t)atoi(argv[1]), NULL, &c, &err);
    printf("%s: %s\n", lagoon_status_name(st), err.detail.message);
    lagoon_v1_ListUsersResponse users = lagoon_v1_ListUsersResponse_init_zero;
    pb_release(lagoon_v1_ListUsersResponse_fields, &users);
    return st == LAGOON_UNAVAILABLE && c == NULL ? 0 : 1;
}
