/* subprocess: a bounded child process (subprocess.h).
 *
 * fork + execv rather than posix_spawn because the limits (setrlimit) and the closing of every
 * inherited descriptor must happen in the child between the two; posix_spawn can do neither.
 * The server is multi-threaded, so the child calls only async-signal-safe functions before exec
 * (everything it needs is prepared by the parent). An exec failure is reported back through a
 * close-on-exec pipe: the parent then sees either EOF (exec succeeded) or the child's errno. */
#define _GNU_SOURCE /* close_range, pipe2 */
#include "subprocess.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

/* After the wall-clock kill, how long the parent still drains the pipes before it closes them:
 * a killed group closes its ends at once, so this only bounds a pathological case (a
 * descendant that left the group and kept the pipe). */
#define SUBPROCESS_KILL_GRACE_MS 5000
/* How often the parent looks whether a child that closed its pipes has ended (only then). */
#define SUBPROCESS_WAIT_NAP_MS 10
/* Longest program path a run resolves (argv[0], or a PATH entry and it). */
#define SUBPROCESS_PATH_MAX 4096
/* Read size from the child's pipes. */
#define SUBPROCESS_READ_CHUNK 4096

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cancelled(const subprocess_limits *lim)
{
    return lim->cancel && atomic_load(lim->cancel);
}

/* execvp's search, done in the parent: execvp may allocate, which a child of a threaded
 * process must not (another thread may have held the allocator's lock at the fork). A name
 * with a '/' is used as it is; otherwise the first executable PATH entry (PATH unset:
 * /usr/bin:/bin). 0, or -1 with errno. */
static int find_program(const char *name, char *out, size_t cap)
{
    if (strchr(name, '/')) {
        if (strlen(name) >= cap) {
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(out, name, strlen(name) + 1);
        return 0;
    }
    const char *paths = getenv("PATH");
    if (paths == NULL || *paths == '\0')
        paths = "/usr/bin:/bin";
    int saved = ENOENT;
    for (const char *p = paths;;) {
        const char *colon = strchr(p, ':');
        size_t dlen = colon ? (size_t)(colon - p) : strlen(p);
        /* An empty entry is the current directory, as execvp reads it. */
        int n = dlen ? snprintf(out, cap, "%.*s/%s", (int)dlen, p, name) : snprintf(out, cap, "%s", name);
        if (n >= 0 && (size_t)n < cap) {
            if (access(out, X_OK) == 0)
                return 0;
            if (errno == EACCES)
                saved = EACCES;
        }
        if (!colon)
            break;
        p = colon + 1;
    }
    errno = saved;
    return -1;
}

/* The child's side, between fork and exec: only async-signal-safe calls. Never returns. */
static void child_exec(const char *path, const char *const argv[], const subprocess_limits *lim, int devnull,
                       int out_w, int err_w, int exec_w, unsigned max_fd, pid_t parent)
{
    int e;
    (void)setpgid(0, 0);
    /* A server killed outright (kill -9, the OOM killer) cannot kill its tools: the kernel does
     * it (the signal comes when the forking thread ends, which outlives every run). The parent
     * may already be gone before the request took effect: then end now. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        goto fail;
    if (getppid() != parent)
        _exit(127);
    /* Default signal dispositions and an empty mask: the server ignores SIGPIPE and blocks
     * signals on some threads, which a tool must not inherit. */
    sigset_t none;
    sigemptyset(&none);
    (void)sigprocmask(SIG_SETMASK, &none, NULL);
    (void)signal(SIGPIPE, SIG_DFL);
    if (dup2(devnull, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0)
        goto fail;
    /* Move the exec-status pipe to 3 so that one close_range from 4 closes every other
     * inherited descriptor (the server's sockets, LMDB's files). */
    if (exec_w != 3) {
        if (dup3(exec_w, 3, O_CLOEXEC) < 0)
            goto fail;
    } else if (fcntl(3, F_SETFD, FD_CLOEXEC) < 0) {
        goto fail;
    }
    if (close_range(4, ~0U, 0) != 0) {
        for (unsigned fd = 4; fd < max_fd; fd++)
            (void)close((int)fd);
    }
    struct rlimit rl;
    rl.rlim_cur = rl.rlim_max = 0;
    if (setrlimit(RLIMIT_CORE, &rl) != 0)
        goto fail;
    if (lim->memory_bytes) {
        rl.rlim_cur = rl.rlim_max = (rlim_t)lim->memory_bytes;
        if (setrlimit(RLIMIT_AS, &rl) != 0)
            goto fail;
    }
    if (lim->cpu_s) {
        rl.rlim_cur = rl.rlim_max = (rlim_t)lim->cpu_s;
        if (setrlimit(RLIMIT_CPU, &rl) != 0)
            goto fail;
    }
    if (lim->file_bytes) {
        rl.rlim_cur = rl.rlim_max = (rlim_t)lim->file_bytes;
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            goto fail;
    }
    execv(path, (char *const *)argv);
fail:
    e = errno;
    (void)!write(3, &e, sizeof(e));
    _exit(127);
}

/* stderr, a line at a time into the log. */
typedef struct line_log {
    const char *tag;
    char line[SUBPROCESS_LOG_LINE_MAX + 1];
    size_t len;
    int cut; /* the current line passed SUBPROCESS_LOG_LINE_MAX: the rest is dropped */
} line_log;

static void line_flush(line_log *l)
{
    if (l->len || l->cut) {
        l->line[l->len] = '\0';
        log_msg(LOG_WARN, "%s: %s%s", l->tag, l->line, l->cut ? " [cut]" : "");
    }
    l->len = 0;
    l->cut = 0;
}

static void line_feed(line_log *l, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (ch == '\n' || ch == '\r') {
            line_flush(l);
        } else if (l->len < SUBPROCESS_LOG_LINE_MAX) {
            /* A control byte would let the tool forge log lines; show it as '?'. */
            l->line[l->len++] = ((unsigned char)ch < 0x20 && ch != '\t') ? '?' : ch;
        } else {
            l->cut = 1;
        }
    }
}

/* Reads what fd has; returns 0 at EOF (or a hard error), 1 while open. */
static int drain_fd(int fd, char *out, size_t out_cap, subprocess_result *res, line_log *log)
{
    char buf[SUBPROCESS_READ_CHUNK];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n < 0)
        return errno == EINTR || errno == EAGAIN ? 1 : 0;
    if (n == 0)
        return 0;
    if (log) {
        line_feed(log, buf, (size_t)n);
        return 1;
    }
    size_t room = out_cap > res->out_len + 1 ? out_cap - res->out_len - 1 : 0;
    size_t take = (size_t)n < room ? (size_t)n : room;
    if (take) {
        memcpy(out + res->out_len, buf, take);
        res->out_len += take;
    }
    if (take < (size_t)n)
        res->out_truncated = 1;
    return 1;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        (void)close(*fd);
    *fd = -1;
}

int subprocess_run(const char *const argv[], const subprocess_limits *lim, const char *tag, char *out, size_t out_cap,
                   subprocess_result *res, rpc_error *err)
{
    *res = (subprocess_result){0};
    if (out && out_cap)
        out[0] = '\0';
    else
        out_cap = 0;
    size_t argc = 0;
    while (argc < SUBPROCESS_ARGS_MAX && argv[argc])
        argc++;
    if (argc == 0 || argc >= SUBPROCESS_ARGS_MAX) {
        snprintf(err->message, sizeof(err->message), "%s: %s", tag, argc ? "too many arguments" : "no program");
        return RPC_ERR;
    }
    char path[SUBPROCESS_PATH_MAX];
    if (find_program(argv[0], path, sizeof(path)) != 0) {
        snprintf(err->message, sizeof(err->message), "%s: cannot run %s: %s", tag, argv[0], strerror(errno));
        return RPC_ERR;
    }
    struct rlimit nofile;
    unsigned max_fd = 1024;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY && nofile.rlim_cur < 1048576)
        max_fd = (unsigned)nofile.rlim_cur;
    int outp[2] = {-1, -1}, errp[2] = {-1, -1}, execp[2] = {-1, -1};
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0 || pipe2(outp, O_CLOEXEC) != 0 || pipe2(errp, O_CLOEXEC) != 0 || pipe2(execp, O_CLOEXEC) != 0) {
        snprintf(err->message, sizeof(err->message), "%s: cannot make pipes: %s", tag, strerror(errno));
        close_fd(&devnull);
        close_fd(&outp[0]), close_fd(&outp[1]), close_fd(&errp[0]), close_fd(&errp[1]);
        close_fd(&execp[0]), close_fd(&execp[1]);
        return RPC_ERR;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0)
        child_exec(path, argv, lim, devnull, outp[1], errp[1], execp[1], max_fd, parent);
    int fork_errno = errno;
    close_fd(&devnull);
    close_fd(&outp[1]), close_fd(&errp[1]), close_fd(&execp[1]);
    if (pid < 0) {
        snprintf(err->message, sizeof(err->message), "%s: cannot fork: %s", tag, strerror(fork_errno));
        close_fd(&outp[0]), close_fd(&errp[0]), close_fd(&execp[0]);
        return RPC_ERR;
    }
    /* Also here, so that a kill at the deadline finds the group even if the child has not run
     * yet (EACCES once it has exec'd is fine: it did it itself). */
    (void)setpgid(pid, pid);

    /* The exec status: EOF when exec succeeded, the child's errno when it did not. The write
     * end closes at exec, so this returns as soon as the tool starts. */
    int exec_errno = 0;
    ssize_t got;
    do
        got = read(execp[0], &exec_errno, sizeof(exec_errno));
    while (got < 0 && errno == EINTR);
    close_fd(&execp[0]);

    line_log log = {.tag = tag};
    int64_t deadline = lim->timeout_ms ? mono_ms() + lim->timeout_ms : 0;
    int64_t give_up = 0; /* after the kill: when to stop waiting for the pipes */
    struct pollfd fds[2] = {{.fd = outp[0], .events = POLLIN}, {.fd = errp[0], .events = POLLIN}};
    while (fds[0].fd >= 0 || fds[1].fd >= 0) {
        int wait_ms = -1;
        int64_t now = mono_ms();
        if (give_up) {
            if (now >= give_up)
                break;
            wait_ms = (int)(give_up - now);
        } else if ((deadline && now >= deadline) || cancelled(lim)) {
            (void)killpg(pid, SIGKILL);
            if (cancelled(lim))
                res->cancelled = 1;
            else
                res->timed_out = 1;
            give_up = now + SUBPROCESS_KILL_GRACE_MS;
            continue;
        } else if (deadline) {
            wait_ms = (int)(deadline - now);
        }
        if (lim->cancel && (wait_ms < 0 || wait_ms > SUBPROCESS_CANCEL_POLL_MS))
            wait_ms = SUBPROCESS_CANCEL_POLL_MS;
        int n = poll(fds, 2, wait_ms);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (!drain_fd(fds[i].fd, out, out_cap, res, i == 1 ? &log : NULL)) {
                close_fd(i == 0 ? &outp[0] : &errp[0]);
                fds[i].fd = -1;
            }
        }
    }
    line_flush(&log);
    int still_open = fds[0].fd >= 0 || fds[1].fd >= 0;
    close_fd(&outp[0]), close_fd(&errp[0]);
    if (out_cap)
        out[res->out_len] = '\0';
    if (still_open)
        (void)killpg(pid, SIGKILL); /* the loop ended early (poll failed): end the group */

    /* Wait for the child's end without reaping it (WNOWAIT): while it is a zombie its pid, and
     * so its group id, cannot be reused, so the killpg below reaches only what it left behind.
     * A child that closed its pipes but runs on is still held to the deadline. */
    for (;;) {
        siginfo_t info;
        memset(&info, 0, sizeof(info));
        int killed = res->timed_out || res->cancelled;
        int flags = WEXITED | WNOWAIT | ((deadline || lim->cancel) && !killed ? WNOHANG : 0);
        if (waitid(P_PID, (id_t)pid, &info, flags) != 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (info.si_pid == pid)
            break;
        if (cancelled(lim)) {
            (void)killpg(pid, SIGKILL);
            res->cancelled = 1;
        } else if (deadline && mono_ms() >= deadline) {
            (void)killpg(pid, SIGKILL);
            res->timed_out = 1;
        } else {
            struct timespec nap = {0, SUBPROCESS_WAIT_NAP_MS * 1000000L};
            (void)nanosleep(&nap, NULL);
        }
    }
    (void)killpg(pid, SIGKILL);
    int status = 0;
    pid_t w;
    do
        w = waitpid(pid, &status, 0);
    while (w < 0 && errno == EINTR);
    if (w < 0) {
        snprintf(err->message, sizeof(err->message), "%s: cannot wait for the child: %s", tag, strerror(errno));
        return RPC_ERR;
    }
    if (got == (ssize_t)sizeof(exec_errno)) {
        snprintf(err->message, sizeof(err->message), "%s: cannot run %s: %s", tag, argv[0], strerror(exec_errno));
        return RPC_ERR;
    }
    if (WIFEXITED(status)) {
        res->exited = 1;
        res->exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        res->signal = WTERMSIG(status);
    }
    return RPC_OK;
}
