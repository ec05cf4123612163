/* log: one-line log records to stderr, safe from any thread.
 *
 * Each record is formatted into a stack buffer and written with a single write(2), so lines
 * from different threads never interleave. Never pass secrets (passwords, tokens). */
#ifndef LAGOON_LOG_H
#define LAGOON_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* Records above this level are dropped. Default LOG_INFO. */
void log_set_level(int level);
int log_get_level(void);
/* "error", "warn", "info", "debug" -> level; -1 if unknown. */
int log_level_parse(const char *name);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_enabled(level) ((level) <= log_get_level())

/* A repeated record (a refused connection, an accept error) that a client can cause at will:
 * log_limited writes at most one a second per limiter and says in the next one how many it
 * dropped, so an attack cannot fill the disk with log lines. Zero-initialise it (static). */
typedef struct log_limiter {
    _Atomic unsigned long long next_ms; /* monotonic ms before which records are dropped */
    _Atomic unsigned dropped;           /* records dropped since the last one written */
} log_limiter;
void log_limited(log_limiter *l, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
