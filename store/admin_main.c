/* lagoon-admin: offline and online companion of the server. All the work is in
 * store_admin_main (store/store_admin.c), which tests drive with their own schemas. */
#include <stdio.h>

#include "store.h"

int main(int argc, char **argv)
{
    return store_admin_main(argc, argv, lagoon_schema(), stdout, stderr);
}
