/* subprocess: runs a tool (ffmpeg, ffprobe) as a child process, bounded.
 *
 * The child gets argv as given (argv[0] is a path, or a name looked up in PATH as execvp
 * would, by the parent; never a shell), stdin from /dev/null, resource limits (address space, CPU seconds, file size, no core
 * dumps) set before exec, and its own process group, which is killed (SIGKILL) when the
 * wall-clock limit passes. A child outlives no server: it gets SIGKILL when the server dies
 * (PR_SET_PDEATHSIG), kill -9 included. Its stdout is captured into the caller's buffer (the rest drained and
 * dropped); its stderr goes to the log a line at a time, tagged, cut at SUBPROCESS_LOG_LINE_MAX.
 * Callers build argv from ids, paths they built and constants: never from client strings. */
#ifndef LAGOON_SUBPROCESS_H
#define LAGOON_SUBPROCESS_H

#include <stddef.h>
#include <stdint.h>

#include "rpc.h"

/* Longest stderr line logged (the rest of the line is dropped). */
#define SUBPROCESS_LOG_LINE_MAX 512
/* Most arguments a run may pass, argv[0] and the terminating NULL included. */
#define SUBPROCESS_ARGS_MAX 64

typedef struct subprocess_limits {
    uint32_t timeout_ms;      /* wall clock; 0 = no limit (tests only) */
    uint32_t cpu_s;           /* RLIMIT_CPU; 0 = none */
    uint64_t memory_bytes;    /* RLIMIT_AS; 0 = none */
    uint64_t file_bytes;      /* RLIMIT_FSIZE: the largest file it may write; 0 = none */
    /* Not NULL: once *cancel is non-zero the group is killed as at the wall-clock limit
     * (looked at every SUBPROCESS_CANCEL_POLL_MS): a server draining ends its tools. */
    const _Atomic int *cancel;
} subprocess_limits;

#define SUBPROCESS_CANCEL_POLL_MS 100

typedef struct subprocess_result {
    int exited;               /* it exited (else it was killed by a signal) */
    int exit_code;            /* when exited */
    int signal;               /* when not */
    int timed_out;            /* killed at the wall-clock limit */
    int cancelled;            /* killed because *lim->cancel was set */
    size_t out_len;           /* bytes of stdout captured */
    int out_truncated;        /* stdout was longer than the buffer */
} subprocess_result;

/* Runs argv (NULL-terminated, at most SUBPROCESS_ARGS_MAX entries) to its end within lim,
 * capturing stdout into out (out_cap bytes, NUL-terminated when out_cap > 0; out may be NULL)
 * and logging stderr under tag. Blocks the calling thread: not on a loop thread nor the
 * store's writer. RPC_OK with *res filled whatever the child's fate (the caller reads it), or
 * RPC_ERR with err filled when the child could not be started (fork/exec/pipe failed, argv
 * too long). */
int subprocess_run(const char *const argv[], const subprocess_limits *lim, const char *tag, char *out, size_t out_cap,
                   subprocess_result *res, rpc_error *err);

#endif
