/* app_settings: the options, defaults and conversions generated from APP_SETTINGS. */
#include "app_settings.h"

#include "app.h"

/* Index = enum store_sync. */
static const char *const app_sync_choices[] = {"full", "none", NULL};
_Static_assert(STORE_SYNC_FULL == 0 && STORE_SYNC_NONE == 1, "app_sync_choices follows enum store_sync");

/* A setting with names is a choice, else a whole number. */
static int option_kind(const char *const *names)
{
    return names ? RPC_OPTION_CHOICE : RPC_OPTION_U32;
}

size_t app_settings_options(uint32_t values[APP_SETTINGS_COUNT], rpc_option *out, size_t cap)
{
    size_t i = 0;
#define APP_SETTING_OPTION(field, flag, names, d, lo, hi, scale, why)                                     \
    if (i < cap)                                                                                            \
        out[i] = (rpc_option){.name = (flag), .kind = option_kind(names),                \
                              .target = &values[i], .min = (lo), .max = (hi), .def = (d),                  \
                              .flags = RPC_OPTION_SHOW_DEFAULT | RPC_OPTION_ZERO_DEFAULT,                  \
                              .choices = (names), .help   = (why)};                                        \
    i++;
    APP_SETTINGS(APP_SETTING_OPTION)
#undef APP_SETTING_OPTION
    return i < cap ? i : cap;
}

void app_settings_apply(const uint32_t values[APP_SETTINGS_COUNT], app_config *cfg)
{
    size_t i = 0;
    /* The products fit their fields: the largest is 4 GiB of argon2-mem-kib, into a size_t. */
#define APP_SETTING_APPLY(field, flag, names, d, lo, hi, scale, why)                                      \
    if (values[i])                                                                                          \
        cfg->field = (uint64_t)values[i] * (scale);                                                         \
    i++;
    APP_SETTINGS(APP_SETTING_APPLY)
#undef APP_SETTING_APPLY
}

void app_settings_defaults(app_config *cfg)
{
#define APP_SETTING_DEFAULT(field, flag, names, d, lo, hi, scale, why)                                    \
    if (cfg->field == 0)                                                                                    \
        cfg->field = (uint64_t)(d) * (scale);
    APP_SETTINGS(APP_SETTING_DEFAULT)
#undef APP_SETTING_DEFAULT
}
