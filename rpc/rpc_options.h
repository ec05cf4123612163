/* rpc_options: a server's command-line options, each also settable through the environment.
 *
 * A program describes its options as an array of rpc_option (name, kind, where the value goes,
 * range, default, help) and hands it to rpc_options_parse; rpc_options_usage prints the same
 * array as --help. rpc_options_server describes the RPC layer's own settings (the listen
 * address, thread counts, the log level and every RPC_LIMITS entry), so that a program adds
 * only its own. The environment variable of option "max-frame-size" with prefix "LAGOON_" is
 * LAGOON_MAX_FRAME_SIZE; the environment is read first, so flags win over it. */
#ifndef LAGOON_RPC_OPTIONS_H
#define LAGOON_RPC_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "rpc.h"

enum rpc_option_kind {
    RPC_OPTION_U32,    /* a whole number in [min, max] into *(uint32_t *)target */
    RPC_OPTION_BOOL,   /* 1 or 0 into *(uint32_t *)target; a bare --flag means 1 */
    RPC_OPTION_TEXT,   /* a non-empty string shorter than size bytes into (char *)target */
    RPC_OPTION_CHOICE, /* one of choices (NULL-terminated); its index into *(uint32_t *)target */
    RPC_OPTION_PARSE,  /* parse(target, value, err, errlen) decides; 0 accepts */
};

/* rpc_option.flags */
#define RPC_OPTION_SHOW_DEFAULT 1u /* --help prints "Default def, range min..max." (U32, CHOICE) */
#define RPC_OPTION_ZERO_DEFAULT 2u /* U32: 0 is accepted too and means the default */

typedef struct rpc_option {
    const char *name;  /* without "--" */
    int kind;          /* enum rpc_option_kind */
    void *target;      /* where the value goes */
    uint32_t min, max; /* U32: the accepted range */
    uint32_t def;      /* printed with RPC_OPTION_SHOW_DEFAULT (CHOICE: an index) */
    unsigned flags;
    size_t size;                /* TEXT: bytes at target */
    const char *const *choices; /* CHOICE */
    int (*parse)(void *target, const char *value, char *err, size_t errlen); /* PARSE */
    const char *help;
} rpc_option;

/* The options lagoond's RPC side takes, writing into cfg and *log_level. */
#define RPC_OPTIONS_SERVER_COUNT (5 + RPC_OPTIONS_LIMITS_COUNT)
#define RPC_OPTION_COUNT_ONE(...) +1
#define RPC_OPTIONS_LIMITS_COUNT (0 RPC_LIMITS(RPC_OPTION_COUNT_ONE))
/* Writes RPC_OPTIONS_SERVER_COUNT options into out (which has room for cap) and returns how
 * many it wrote (fewer only when cap is too small). */
size_t rpc_options_server(rpc_config *cfg, int *log_level, rpc_option *out, size_t cap);

/* Applies the environment (env_prefix + the name in upper case, '-' as '_'), then argv
 * (--name VALUE or --name=VALUE). 0 parsed; 1 --help or -h was given; 2 --version; -1 a bad
 * option or value, with err saying which (and which variable, for the environment). */
int rpc_options_parse(const rpc_option *opts, size_t n, const char *env_prefix, int argc, char **argv, char *err,
                      size_t errlen);

/* Prints --help: every option with its help text, and its default and range when known. */
void rpc_options_usage(FILE *f, const char *program, const char *env_prefix, const rpc_option *opts, size_t n);

#endif
