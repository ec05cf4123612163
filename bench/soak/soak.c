/* lagoon-soak: a bounded soak of a running lagoond — thousands of hostile connections beside a
 * few real users — with the server's memory sampled throughout.
 *
 *   lagoon-soak --pid PID --port P --tokens FILE [options]     (bench/soak/soak.sh runs it)
 *
 * Phases of fixed lengths, so the run stops by itself (load and after repeat --cycles times):
 *   baseline  real users alone (--baseline S): their latency on a quiet server;
 *   load      (--seconds S) --connections hostile connections (kinds and shares in soak.h,
 *             opened at most --ramp-rate a second, reopened when the server closes them) plus
 *             --cancel-conns REQUEST+CANCEL loops, while the real users go on;
 *   after     (--after S) every hostile connection closed, real users still on: does the memory
 *             come back, does latency recover?
 * Every --interval seconds (and at the end of every phase) a timeline line gives lagoond's VmRSS
 * and RssAnon (VmRSS also counts the LMDB map's file pages), its CPU and open file descriptors,
 * the machine's load average, the hostile connections open and closed by the server so far, and
 * the real calls of the interval (count, errors, p50/p99/max). The report at the end: RSS at the
 * end of the baseline, its peak under load, at the end of the load and after the hostile
 * connections closed (each cycle); the real calls' p50/p99/p999/max and errors by status in
 * each phase, and by call; per hostile kind what was opened, closed by the server and answered;
 * the GOAWAY reasons seen; and whether lagoond is alive.
 *
 * Real users are seeded users (lagoon-bench seed): --tokens is its bench-tokens.txt.
 * Everything goes to --host, a numeric IPv4 address: 127.0.0.1 unless told otherwise, and the
 * soak is meant for loopback only.
 *
 * Exit status: 0 lagoond alive at the end and real calls succeeded; 1 lagoond died (or was never
 * readable), or not one real call succeeded in some phase; 2 usage.
 */
#include "soak.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define SOAK_FD_RESERVE 64          /* descriptors the soak needs beside its connections */
#define SOAK_MAX_REAL 64
#define SOAK_STEP_MS 200            /* how often the main thread checks lagoond is alive */

static const char *const kind_names[SOAK_NKINDS] = {
#define SOAK_KIND_NAME(k, name, share) name,
    SOAK_KINDS(SOAK_KIND_NAME)
#undef SOAK_KIND_NAME
};
static const char *const phase_names[SOAK_NPHASES] = {"baseline", "load", "after"};

uint64_t soak_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t soak_now_ms(void)
{
    return soak_now_ns() / 1000000u;
}

void soak_sleep_ms(unsigned ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- lagoond, seen from /proc ------------------------------------------------------------------ */

typedef struct proc_sample {
    long rss_kib;   /* VmRSS */
    long anon_kib;  /* RssAnon: the heap and stacks, without the LMDB map's file pages (RssFile) */
    long hwm_kib;   /* VmHWM: the kernel's own peak */
    long threads;
    long fds;       /* entries of /proc/PID/fd */
    unsigned long cpu_ticks; /* utime + stime, clock ticks */
    int alive;      /* 0 once gone or a zombie */
} proc_sample;

static void proc_read(long pid, proc_sample *s)
{
    char path[64], line[256];
    memset(s, 0, sizeof(*s));
    s->rss_kib = s->anon_kib = s->hwm_kib = s->threads = s->fds = -1;
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    s->alive = 1;
    char state = '?';
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "State: %c", &state) == 1)
            continue;
        if (sscanf(line, "VmRSS: %ld kB", &s->rss_kib) == 1 || sscanf(line, "VmHWM: %ld kB", &s->hwm_kib) == 1 ||
            sscanf(line, "RssAnon: %ld kB", &s->anon_kib) == 1 ||
            sscanf(line, "Threads: %ld", &s->threads) == 1)
            continue;
    }
    fclose(f);
    if (state == 'Z' || state == 'X' || s->rss_kib < 0) { /* a zombie has no VmRSS */
        s->alive = 0;
        return;
    }
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    if ((f = fopen(path, "r")) != NULL) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        const char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
        unsigned long ut = 0, stime = 0;
        if (p != NULL && sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stime) == 2)
            s->cpu_ticks = ut + stime;
    }
    snprintf(path, sizeof(path), "/proc/%ld/fd", pid);
    DIR *d = opendir(path);
    if (d != NULL) {
        s->fds = 0;
        for (struct dirent *e; (e = readdir(d)) != NULL;)
            if (e->d_name[0] != '.')
                s->fds++;
        closedir(d);
    }
}

static double mib(long kib)
{
    return (double)kib / 1024.0;
}

/* A mark of the report in MiB, or "n/a" when it was never taken (lagoond died first). */
static const char *mark(char buf[24], long kib)
{
    if (kib <= 0)
        return "n/a";
    snprintf(buf, 24, "%.1f", mib(kib));
    return buf;
}

static double ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

/* The machine's 1-minute load average: the soak shares its cores with whatever else runs. */
static double loadavg(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f != NULL) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

/* ---- the timeline ------------------------------------------------------------------------------ */

typedef struct timeline {
    uint64_t last_ms;           /* when the previous line was printed */
    unsigned long last_ticks;   /* lagoond's CPU time then */
    long ticks_per_s;
} timeline;

static void timeline_header(void)
{
    printf("%6s %-8s %8s %8s %5s %5s %6s %8s %7s %9s | %6s %5s %8s %8s %8s\n", "t s", "phase", "rss MiB", "anon MiB",
           "cpu%", "load",
           "fds", "hostile", "closed", "pairs", "calls", "err", "p50 ms", "p99 ms", "max ms");
}

/* One line for the interval that ends now: lagoond's state, and the real calls since the last
 * line (their interval histograms are taken and reset). */
static void timeline_line(timeline *tl, uint64_t now, double t_s, const char *phase, const proc_sample *s,
                          soak_real *real, unsigned nreal, const soak_hostile_stats *st)
{
    hist iv;
    hist_init(&iv);
    uint64_t calls = 0, errors = 0;
    for (unsigned i = 0; i < nreal; i++) {
        pthread_mutex_lock(&real[i].mu);
        hist_merge(&iv, &real[i].interval);
        hist_init(&real[i].interval);
        calls += real[i].interval_calls;
        errors += real[i].interval_errors;
        real[i].interval_calls = real[i].interval_errors = 0;
        pthread_mutex_unlock(&real[i].mu);
    }
    long open = 0, closed = 0;
    for (int kind = 0; kind < SOAK_NKINDS; kind++) {
        open += atomic_load(&st->open[kind]);
        closed += atomic_load(&st->closed[kind]);
    }
    double cpu = now > tl->last_ms ? 100.0 * (double)(s->cpu_ticks - tl->last_ticks) / (double)tl->ticks_per_s /
                                         ((double)(now - tl->last_ms) / 1000.0)
                                   : 0;
    tl->last_ms = now;
    tl->last_ticks = s->cpu_ticks;
    printf("%6.0f %-8s %8.1f %8.1f %5.0f %5.1f %6ld %8ld %7ld %9ld | %6llu %5llu %8.2f %8.2f %8.2f\n", t_s, phase,
           mib(s->rss_kib), mib(s->anon_kib), cpu, loadavg(), s->fds, open, closed, atomic_load(&st->pairs), (unsigned long long)calls,
           (unsigned long long)errors, ms(hist_quantile(&iv, 0.5)), ms(hist_quantile(&iv, 0.99)), ms(iv.max_ns));
    fflush(stdout);
}

/* ---- options ----------------------------------------------------------------------------------- */

typedef struct soak_opt {
    const char *flag;
    unsigned *value;
    unsigned min, max;
    const char *help;
} soak_opt;

static int usage(const soak_opt *opts, size_t n)
{
    fprintf(stderr, "usage: lagoon-soak --pid PID --port P --tokens FILE [--host 127.0.0.1] [--no-debug]\n");
    for (size_t i = 0; i < n; i++)
        fprintf(stderr, "  --%-18s %s (%u..%u, default %u)\n", opts[i].flag, opts[i].help, opts[i].min, opts[i].max,
                *opts[i].value);
    fprintf(stderr, "  --no-debug           the server has no Debug service: hostile kinds that need it are replaced\n");
    fprintf(stderr, "  --only KIND          every hostile connection of one kind:");
    for (int k = 0; k < SOAK_CANCEL; k++)
        fprintf(stderr, " %s", kind_names[k]);
    fprintf(stderr, "\n");
    return 2;
}

/* ---- the report -------------------------------------------------------------------------------- */

#define SOAK_MAX_CYCLES 20

/* lagoond's RSS at the moments that matter, in KiB. */
typedef struct rss_cycle {
    long peak, load_end, after_min, after_end; /* under load; at its end; after the close */
    long anon_peak, anon_after_min;            /* the same for RssAnon */
    double peak_t;                             /* seconds since the start */
} rss_cycle;

typedef struct rss_marks {
    long start, base_end, anon_base_end;
    rss_cycle c[SOAK_MAX_CYCLES];
} rss_marks;

static void report(const soak_config *cfg, soak_real *real, const soak_hostile_stats *st, const rss_marks *rss,
                   const proc_sample *last, int died, double died_t)
{
    printf("\n== soak report ==\n");
    printf("hostile: %u connections + %u request-cancel loops (%u pairs/s each), %u x %u s under load; real users: "
           "%u connections, %u calls/s\n",
           cfg->connections, cfg->cancel_conns, cfg->cancel_rate, cfg->cycles, cfg->seconds, cfg->real_conns, cfg->rate);
    char b[4][24];
    printf("lagoond RSS (MiB): start %s, end of baseline %s (anonymous %s); VmHWM at the end %s\n",
           mark(b[0], rss->start), mark(b[1], rss->base_end), mark(b[2], rss->anon_base_end),
           mark(b[3], last->hwm_kib));
    for (unsigned k = 0; k < cfg->cycles; k++) {
        const rss_cycle *c = &rss->c[k];
        char m[6][24];
        printf("  cycle %u: peak under load %s (anonymous %s, at %.0f s), end of load %s; after every hostile "
               "connection closed: lowest %s (anonymous %s), at the end %s\n",
               k + 1, mark(m[0], c->peak), mark(m[1], c->anon_peak), c->peak_t, mark(m[2], c->load_end),
               mark(m[3], c->after_min), mark(m[4], c->anon_after_min), mark(m[5], c->after_end));
    }
    printf("real calls (latency from when each was due; successful calls only):\n");
    printf("  %-9s %8s %8s %9s %9s %9s %9s   errors by status\n", "phase", "calls", "ok", "p50 ms", "p99 ms",
           "p999 ms", "max ms");
    int no_ok = 0;
    for (int p = 0; p < SOAK_NPHASES; p++) {
        hist h;
        hist_init(&h);
        uint64_t status[LAGOON_STATUS_MAX + 1] = {0}, calls = 0;
        for (unsigned i = 0; i < cfg->real_conns; i++) {
            hist_merge(&h, &real[i].phase_lat[p]);
            for (int s = 0; s <= LAGOON_STATUS_MAX; s++) {
                status[s] += real[i].status[p][s];
                calls += real[i].status[p][s];
            }
        }
        if (status[LAGOON_OK] == 0 && !died)
            no_ok = 1;
        printf("  %-9s %8llu %8llu %9.2f %9.2f %9.2f %9.2f  ", phase_names[p], (unsigned long long)calls,
               (unsigned long long)status[LAGOON_OK], ms(hist_quantile(&h, 0.5)), ms(hist_quantile(&h, 0.99)),
               ms(hist_quantile(&h, 0.999)), ms(h.max_ns));
        int any = 0;
        for (int s = 1; s <= LAGOON_STATUS_MAX; s++)
            if (status[s]) {
                printf(" %s %llu", lagoon_status_name(s), (unsigned long long)status[s]);
                any = 1;
            }
        printf("%s\n", any ? "" : " none");
    }
    static const char *const op_names[SOAK_NOPS] = {
#define SOAK_OP_NAME(o, name, q) name,
        SOAK_OPS(SOAK_OP_NAME)
#undef SOAK_OP_NAME
    };
    printf("  by call, p50 / p99 ms (errors):");
    for (int p = 0; p < SOAK_NPHASES; p++) {
        printf("\n    %-9s", phase_names[p]);
        for (int o = 0; o < SOAK_NOPS; o++) {
            hist h;
            hist_init(&h);
            uint64_t errors = 0;
            for (unsigned i = 0; i < cfg->real_conns; i++) {
                hist_merge(&h, &real[i].op_lat[p][o]);
                errors += real[i].op_errors[p][o];
            }
            printf("  %s %.2f / %.2f (%llu)", op_names[o], ms(hist_quantile(&h, 0.5)), ms(hist_quantile(&h, 0.99)),
                   (unsigned long long)errors);
        }
    }
    printf("\n");
    uint64_t reconnects = 0;
    for (unsigned i = 0; i < cfg->real_conns; i++) {
        reconnects += real[i].reconnects;
        if (real[i].last_error[0])
            printf("  real connection %u, last error: %s\n", i, real[i].last_error);
    }
    printf("  real connections reopened: %llu\n", (unsigned long long)reconnects);
    printf("hostile connections by kind: opened (reopenings included), closed by the server (of which after a "
           "GOAWAY), connect failures, responses read:\n");
    for (int k = 0; k < SOAK_NKINDS; k++) {
        long opened = atomic_load(&st->opened[k]);
        if (opened == 0 && atomic_load(&st->failed[k]) == 0)
            continue;
        printf("  %-15s opened %6ld  closed %6ld (%6ld)  failed %5ld  responses:", kind_names[k], opened,
               atomic_load(&st->closed[k]), atomic_load(&st->goaway_closed[k]), atomic_load(&st->failed[k]));
        int any = 0;
        for (int s = 0; s <= LAGOON_STATUS_MAX; s++) {
            long n = atomic_load(&st->status[k][s]);
            if (n) {
                printf(" %s %ld", lagoon_status_name(s), n);
                any = 1;
            }
        }
        printf("%s\n", any ? "" : " none");
    }
    printf("  request-cancel pairs sent: %ld; hostile bytes sent: %.1f MiB\n", atomic_load(&st->pairs),
           (double)atomic_load(&st->bytes_out) / 1048576.0);
    printf("GOAWAY frames read: %ld", atomic_load(&st->goaways));
    for (int i = 0; i < SOAK_GOAWAY_REASONS && st->reason[i][0]; i++)
        printf("%s %ld x \"%s\"", i ? "," : ":", st->reason_count[i], st->reason[i]);
    if (st->reasons_other)
        printf(", %ld others", st->reasons_other);
    printf("\n");
    if (died)
        printf("lagoond (pid %ld): DIED at %.1f s — a crash\n", cfg->pid, died_t);
    else
        printf("lagoond (pid %ld): alive at the end, %ld threads, %ld fds\n", cfg->pid, last->threads, last->fds);
    if (no_ok)
        printf("FAILED: a phase had no successful real call\n");
}

/* ---- main -------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    soak_config cfg = {
        .host = "127.0.0.1", .seconds = 180, .baseline_s = 15, .after_s = 20, .interval_s = 5,
        .cycles = 1, .connections = 3000, .cancel_conns = 8, .cancel_rate = 100, .ramp_rate = 500, .streams_per_conn = 8,
        .slow_interval_ms = 100, .partial_prefix = 65536, .sources = 0, .real_conns = 4, .rate = 200, .debug = 1, .only = -1,
    };
    unsigned port = 0, pid = 0;
    const char *tokens = NULL;
    const soak_opt opts[] = {
        {"port", &port, 1, 65535, "lagoond's port"},
        {"pid", &pid, 1, 1u << 30, "lagoond's pid (for /proc/PID/status)"},
        {"seconds", &cfg.seconds, 1, 3600, "length of the load phase"},
        {"cycles", &cfg.cycles, 1, SOAK_MAX_CYCLES, "load + after phases, repeated (memory kept per cycle?)"},
        {"baseline", &cfg.baseline_s, 1, 600, "real users alone first, seconds"},
        {"after", &cfg.after_s, 1, 600, "real users after the hostile connections closed, seconds"},
        {"interval", &cfg.interval_s, 1, 60, "timeline period, seconds"},
        {"connections", &cfg.connections, 0, 100000, "hostile connections (request-cancel loops apart)"},
        {"cancel-conns", &cfg.cancel_conns, 0, 1000, "REQUEST+CANCEL loop connections"},
        {"cancel-rate", &cfg.cancel_rate, 1, 1000, "pairs per second per loop connection"},
        {"ramp-rate", &cfg.ramp_rate, 1, 100000, "hostile connections opened per second at most"},
        {"streams", &cfg.streams_per_conn, 1, 1024, "EchoCollect calls held open per open-collect connection"},
        {"slow-interval-ms", &cfg.slow_interval_ms, 0, 60000, "slow-echo: EchoStream interval_ms"},
        {"partial-prefix", &cfg.partial_prefix, 0, 1u << 20, "partial-frame: body bytes sent before the trickle"},
        {"sources", &cfg.sources, 0, 250, "0: hostile from 127.0.0.1; N: from 127.0.0.2..N+1 (per-address caps)"},
        {"real-conns", &cfg.real_conns, 1, SOAK_MAX_REAL, "real users' connections"},
        {"rate", &cfg.rate, 1, 100000, "real calls per second, all real connections together"},
    };
    const size_t nopts = sizeof(opts) / sizeof(opts[0]);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--no-debug") == 0) {
            cfg.debug = 0;
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0 || strncmp(a, "--", 2) != 0 || i + 1 >= argc)
            return usage(opts, nopts);
        const char *v = argv[++i];
        if (strcmp(a + 2, "host") == 0) {
            cfg.host = v;
            continue;
        }
        if (strcmp(a + 2, "tokens") == 0) {
            tokens = v;
            continue;
        }
        if (strcmp(a + 2, "only") == 0) {
            for (int k = 0; k < SOAK_CANCEL; k++)
                if (strcmp(v, kind_names[k]) == 0)
                    cfg.only = k;
            if (cfg.only < 0) {
                fprintf(stderr, "lagoon-soak: --only %s: not a hostile kind\n", v);
                return usage(opts, nopts);
            }
            continue;
        }
        size_t k = 0;
        for (; k < nopts && strcmp(a + 2, opts[k].flag) != 0; k++) {
        }
        char *end;
        errno = 0;
        unsigned long n = k < nopts ? strtoul(v, &end, 10) : 0;
        if (k == nopts || errno || end == v || *end || v[0] == '-' || n < opts[k].min || n > opts[k].max) {
            fprintf(stderr, "lagoon-soak: bad option %s %s\n", a, v);
            return usage(opts, nopts);
        }
        *opts[k].value = (unsigned)n;
    }
    if (port == 0 || pid == 0 || tokens == NULL)
        return usage(opts, nopts);
    cfg.port = (uint16_t)port;
    cfg.pid = pid;

    bench_data data;
    char err[512];
    if (bench_data_load(tokens, &data, err, sizeof(err)) != 0) {
        fprintf(stderr, "lagoon-soak: %s\n", err);
        return 2;
    }
    cfg.data = &data;
    /* Our own descriptors: one per connection, raised to the hard limit if need be. */
    struct rlimit rl;
    rlim_t need = (rlim_t)cfg.connections + cfg.cancel_conns + cfg.real_conns + SOAK_FD_RESERVE;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < need) {
        rl.rlim_cur = need < rl.rlim_max ? need : rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < need) {
        fprintf(stderr, "lagoon-soak: needs %llu file descriptors; ulimit -n allows %llu\n", (unsigned long long)need,
                (unsigned long long)rl.rlim_cur);
        bench_data_free(&data);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    proc_sample s;
    proc_read(cfg.pid, &s);
    if (!s.alive) {
        fprintf(stderr, "lagoon-soak: cannot read /proc/%ld/status (is lagoond running?)\n", cfg.pid);
        bench_data_free(&data);
        return 1;
    }
    atomic_int phase = SOAK_BASELINE;
    static soak_hostile_stats st; /* large (reason table): static, zeroed */
    pthread_mutex_init(&st.reasons_mu, NULL);
    soak_real *real = calloc(cfg.real_conns, sizeof(*real));
    soak_hostile *hostile = NULL;
    if (real == NULL || soak_hostile_start(&cfg, &phase, &st, &hostile) != 0) {
        free(real);
        bench_data_free(&data);
        return 1;
    }
    for (unsigned i = 0; i < cfg.real_conns; i++) {
        real[i].cfg = &cfg;
        real[i].phase = &phase;
    }
    unsigned started = soak_real_start(real, cfg.real_conns);

    static rss_marks rss;
    rss.start = s.rss_kib;
    for (unsigned k = 0; k < SOAK_MAX_CYCLES; k++)
        rss.c[k].after_min = rss.c[k].anon_after_min = -1;
    printf("lagoon-soak: lagoond pid %ld on %s:%u; baseline %u s, then %u x (load %u s, after %u s); timeline every "
           "%u s\n",
           cfg.pid, cfg.host, cfg.port, cfg.baseline_s, cfg.cycles, cfg.seconds, cfg.after_s, cfg.interval_s);
    timeline_header();
    const uint64_t t0 = soak_now_ms();
    timeline tl = {.last_ms = t0, .last_ticks = s.cpu_ticks, .ticks_per_s = sysconf(_SC_CLK_TCK)};
    if (tl.ticks_per_s <= 0)
        tl.ticks_per_s = 100;
    const uint64_t base_ms = cfg.baseline_s * 1000ull, cycle_ms = (cfg.seconds + cfg.after_s) * 1000ull;
    unsigned cycle = 0;
    uint64_t next_sample = t0 + cfg.interval_s * 1000ull;
    int died = started < cfg.real_conns ? -1 : 0; /* -1: could not start, not a crash */
    double died_t = 0;
    while (died == 0) {
        uint64_t now = soak_now_ms();
        /* Which phase of which cycle the clock says it is. */
        uint64_t t = now - t0;
        unsigned k = t < base_ms ? 0 : (unsigned)((t - base_ms) / cycle_ms);
        int ph = t < base_ms                                            ? SOAK_BASELINE
                 : k >= cfg.cycles                                      ? SOAK_STOP
                 : (t - base_ms) % cycle_ms < cfg.seconds * 1000ull ? SOAK_LOAD
                                                                        : SOAK_AFTER;
        int was = atomic_load(&phase);
        if (ph != was) {
            proc_read(cfg.pid, &s);
            /* The interval so far belongs to the phase that ends: its line comes first. */
            if (s.alive) {
                timeline_line(&tl, now, (double)t / 1000.0, phase_names[was], &s, real, started, &st);
                next_sample = now + cfg.interval_s * 1000ull;
            }
            if (ph == SOAK_LOAD && k == 0) {
                rss.base_end = s.rss_kib;
                rss.anon_base_end = s.anon_kib;
            }
            if (ph == SOAK_AFTER)
                rss.c[k].load_end = s.rss_kib;
            atomic_store(&phase, ph);
            if (ph == SOAK_STOP)
                break;
            cycle = k;
            printf("# %.0f s: %s begins%s", (double)t / 1000.0, phase_names[ph], cfg.cycles > 1 && ph ? "" : "\n");
            if (cfg.cycles > 1 && ph)
                printf(" (cycle %u of %u)\n", k + 1, cfg.cycles);
            fflush(stdout);
        }
        proc_read(cfg.pid, &s);
        if (!s.alive) {
            died = 1;
            died_t = (double)t / 1000.0;
            printf("# %.1f s: lagoond (pid %ld) is gone\n", died_t, cfg.pid);
            atomic_store(&phase, SOAK_STOP);
            break;
        }
        rss_cycle *rc = &rss.c[cycle];
        if (ph == SOAK_LOAD && s.rss_kib > rc->peak) {
            rc->peak = s.rss_kib;
            rc->peak_t = (double)t / 1000.0;
        }
        if (ph == SOAK_LOAD && s.anon_kib > rc->anon_peak)
            rc->anon_peak = s.anon_kib;
        if (ph == SOAK_AFTER) {
            if (rc->after_min < 0 || s.rss_kib < rc->after_min)
                rc->after_min = s.rss_kib;
            if (rc->anon_after_min < 0 || s.anon_kib < rc->anon_after_min)
                rc->anon_after_min = s.anon_kib;
            rc->after_end = s.rss_kib;
        }
        if (now >= next_sample) {
            next_sample += cfg.interval_s * 1000ull;
            timeline_line(&tl, now, (double)t / 1000.0, phase_names[ph], &s, real, started, &st);
        }
        soak_sleep_ms(SOAK_STEP_MS);
    }
    atomic_store(&phase, SOAK_STOP);
    soak_real_join(real, started);
    soak_hostile_join(hostile);
    proc_read(cfg.pid, &s);
    if (died == 0 && !s.alive) {
        died = 1;
        died_t = (double)(soak_now_ms() - t0) / 1000.0;
    }
    int rc = 0;
    if (died >= 0) {
        report(&cfg, real, &st, &rss, &s, died, died_t);
        for (int p = 0; p < SOAK_NPHASES && !died; p++) {
            uint64_t ok = 0;
            for (unsigned i = 0; i < cfg.real_conns; i++)
                ok += real[i].status[p][LAGOON_OK];
            if (ok == 0)
                rc = 1;
        }
    }
    if (died)
        rc = 1;
    free(real);
    pthread_mutex_destroy(&st.reasons_mu);
    bench_data_free(&data);
    return rc;
}
