/* Service modules (app.h): started in order after the shared layer, their state reachable with
 * app_state, drained and stopped in reverse order; a start that fails stops the modules
 * already started and fails app_open with its message. Through the whole stack (test_app) and
 * app_open itself. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "app.h"
#include "testserver.h"

/* What the modules did, in order: "+a" started, "~a" drained, "-a" stopped. */
static char journal[256];
static int fail_start; /* module "c" fails to start */

static void note(const char *what, const char *name)
{
    size_t n = strlen(journal);
    snprintf(journal + n, sizeof(journal) - n, "%s%s%s", n ? " " : "", what, name);
}

typedef struct module_state {
    const char *name;
    int drained;
} module_state;

static int mod_start(app *a, void **state, rpc_error *err, const char *name)
{
    (void)a;
    if (strcmp(name, "c") == 0 && fail_start) {
        snprintf(err->message, sizeof(err->message), "module c cannot start");
        return RPC_ERR;
    }
    module_state *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return RPC_ERR;
    s->name = name;
    *state = s;
    note("+", name);
    return RPC_OK;
}

static void mod_drain(app *a, void *state)
{
    (void)a;
    module_state *s = state;
    s->drained++;
    note("~", s->name);
}

static void mod_stop(app *a, void *state)
{
    (void)a;
    module_state *s = state;
    note("-", s->name);
    free(s);
}

static int start_a(app *a, void **state, rpc_error *err) { return mod_start(a, state, err, "a"); }
static int start_b(app *a, void **state, rpc_error *err) { return mod_start(a, state, err, "b"); }
static int start_c(app *a, void **state, rpc_error *err) { return mod_start(a, state, err, "c"); }

static const app_module mod_a = {"a", start_a, mod_drain, mod_stop};
static const app_module mod_b = {"b", start_b, mod_drain, mod_stop};
static const app_module mod_c = {"c", start_c, mod_drain, mod_stop};
static const app_module mod_hookless = {"hookless", NULL, NULL, NULL}; /* every hook may be NULL */
static const app_module *const three[] = {&mod_a, &mod_b, &mod_hookless, &mod_c};

static void tweak(app_config *acfg, rpc_config *cfg)
{
    (void)cfg;
    acfg->extra_modules = three;
    acfg->nextra_modules = sizeof(three) / sizeof(three[0]);
}

static void test_order_and_state(void **state)
{
    (void)state;
    journal[0] = '\0';
    fail_start = 0;
    test_app t = {0};
    test_app_start(&t, tweak);
    assert_string_equal(journal, "+a +b +c");
    module_state *sb = app_state(t.app, &mod_b);
    assert_non_null(sb);
    assert_string_equal(sb->name, "b");
    assert_null(app_state(t.app, &mod_hookless));
    /* The application's own modules are there too, before the tests'. */
    for (size_t i = 0; i < app_modules_count; i++)
        assert_ptr_equal(t.app->modules[i], app_modules[i]);
    assert_ptr_equal(t.app->modules[app_modules_count], &mod_a);
    /* The server's drain reaches the modules, last started first; then they stop in reverse. */
    test_app_stop(&t);
    assert_string_equal(journal, "+a +b +c ~c ~b ~a -c -b -a");
}

static void test_failed_start_stops_the_started(void **state)
{
    (void)state;
    journal[0] = '\0';
    fail_start = 1;
    char dir[] = "/tmp/lagoon-modules-XXXXXX";
    assert_non_null(mkdtemp(dir));
    app_config cfg = {0};
    tweak(&cfg, NULL);
    cfg.pwhash_opslimit = 1;
    cfg.pwhash_memlimit = 8192;
    app *a = NULL;
    rpc_error err = {{0}};
    assert_int_equal(app_open(dir, &cfg, &a, &err), RPC_ERR);
    assert_null(a);
    assert_string_equal(err.message, "module c cannot start");
    assert_string_equal(journal, "+a +b -b -a");
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_state),
        cmocka_unit_test(test_failed_start_stops_the_started),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
