/* The application's service modules (app.h, "service modules"), in start order: the services
 * with state of their own. A service without any (Health, Reflection, Debug) needs no entry. */
#include "app.h"

const app_module *const app_modules[] = {
    NULL, /* placeholder: C forbids an empty initializer list before C23 */
};
const size_t app_modules_count = 0;
