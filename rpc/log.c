/* log: see log.h. */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 1024 /* longer records are cut; a log line is not a data channel */

static atomic_int current_level = LOG_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(int level)
{
    atomic_store(&current_level, level);
}

int log_get_level(void)
{
    return atomic_load_explicit(&current_level, memory_order_relaxed);
}

int log_level_parse(const char *name)
{
    for (int i = 0; i < 4; i++)
        if (strcasecmp(name, level_names[i]) == 0)
            return i;
    return -1;
}

static void log_vmsg(int level, const char *suffix, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                     level_names[level < 0 ? 0 : level > 3 ? 3 : level]);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    if (suffix != NULL && suffix[0]) {
        size_t k = strlen(suffix);
        if (len + k > sizeof(line) - 2)
            k = sizeof(line) - 2 - len;
        memcpy(line + len, suffix, k);
        len += k;
    }
    /* A record is one line whatever its arguments hold: strings a client chose (request ids,
     * method names in messages) may carry CR, LF or other controls, and must not be able to
     * start a forged record. Each becomes '?'. */
    for (size_t i = (size_t)n; i < len; i++)
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = '?';
    line[len++] = '\n';
    /* One write per record; a short write to stderr is not worth retrying. */
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

void log_msg(int level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, NULL, fmt, ap);
    va_end(ap);
}

#define LOG_LIMIT_INTERVAL_MS 1000ull

void log_limited(log_limiter *l, int level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long now = (unsigned long long)ts.tv_sec * 1000ull + (unsigned long long)ts.tv_nsec / 1000000ull;
    unsigned long long next = atomic_load(&l->next_ms);
    if (now < next || !atomic_compare_exchange_strong(&l->next_ms, &next, now + LOG_LIMIT_INTERVAL_MS)) {
        atomic_fetch_add(&l->dropped, 1);
        return;
    }
    unsigned dropped = atomic_exchange(&l->dropped, 0);
    char suffix[64] = "";
    if (dropped)
        snprintf(suffix, sizeof(suffix), " (%u more like it since, not logged)", dropped);
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(level, suffix, fmt, ap);
    va_end(ap);
}
