/* metrics: the RPC layer's numbers in the Prometheus text exposition format (version 0.0.4).
 *
 * Nothing here runs on the hot path: the loops count into their own rpc_loop_stats
 * (server.c), and a scrape sums the loops with relaxed loads. A scrape is therefore a
 * snapshot that may be a few calls behind on some loop, never a torn count. Per-method series
 * are printed only for methods that have been called, so that an idle server's page stays
 * short (about 200 methods x 17 statuses would otherwise be printed as zeros). */
#include <event2/buffer.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"
#include "rpc_internal.h"

/* Sum of one counter of every loop. */
static uint64_t sum_at(const rpc_loop_stats *st, unsigned n, size_t off_calls, int which)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) {
        const _Atomic uint64_t *base = which == 0 ? st[i].calls : which == 1 ? st[i].latency : st[i].latency_sum_us;
        v += atomic_load_explicit(&base[off_calls], memory_order_relaxed);
    }
    return v;
}

static uint64_t sum_field(const rpc_loop_stats *st, unsigned n, size_t field_off)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v += atomic_load_explicit((const _Atomic uint64_t *)((const char *)&st[i] + field_off), memory_order_relaxed);
    return v;
}

static void family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A method path as a label value: Prometheus escapes backslash, quote and newline. */
static void label_value(char *dst, size_t cap, const char *src)
{
    size_t j = 0;
    for (size_t i = 0; src[i] && j + 3 < cap; i++) {
        char ch = src[i];
        if (ch == '\\' || ch == '"') {
            dst[j++] = '\\';
            dst[j++] = ch;
        } else if (ch == '\n') {
            dst[j++] = '\\';
            dst[j++] = 'n';
        } else {
            dst[j++] = ch;
        }
    }
    dst[j] = '\0';
}

int rpc_server_metrics(const rpc_server *s, struct evbuffer *out)
{
    static const uint64_t bounds[RPC_METRICS_NBUCKETS] = {RPC_METRICS_BUCKETS_US};
    unsigned n;
    const rpc_loop_stats *st = rpc_server_loop_stats(s, &n);
    size_t nroutes;
    const rpc_route *routes = rpc_server_routes(s, &nroutes);

    family(out, "lagoon_up_seconds", "gauge", "Time since the server started serving.");
    evbuffer_add_printf(out, "lagoon_up_seconds %.3f\n", (double)rpc_server_uptime_ms(s) / 1000.0);
    family(out, "lagoon_rpc_draining", "gauge", "1 while the server drains (no new calls), else 0.");
    evbuffer_add_printf(out, "lagoon_rpc_draining %d\n", rpc_server_draining(s) ? 1 : 0);
    family(out, "lagoon_rpc_connections_open", "gauge", "Open client connections, all loops.");
    evbuffer_add_printf(out, "lagoon_rpc_connections_open %u\n", rpc_server_connections(s));
    family(out, "lagoon_rpc_connections_accepted_total", "counter", "Client connections taken on by a loop.");
    evbuffer_add_printf(out, "lagoon_rpc_connections_accepted_total %llu\n",
                        (unsigned long long)sum_field(st, n, offsetof(rpc_loop_stats, conns_accepted)));
    family(out, "lagoon_rpc_connections_refused_total", "counter",
           "Connections refused at accept (GOAWAY and close), by reason.");
    static const char *const reasons[RPC_REFUSALS] = {"max_connections", "max_connections_per_address",
                                                      "out_of_memory"};
    for (int r = 0; r < RPC_REFUSALS; r++)
        evbuffer_add_printf(out, "lagoon_rpc_connections_refused_total{reason=\"%s\"} %llu\n", reasons[r],
                            (unsigned long long)rpc_server_refused(s, r));
    family(out, "lagoon_rpc_goaways_total", "counter",
           "GOAWAYs of the connection policy, by reason (max_connection_age, too_many_pings).");
    evbuffer_add_printf(out, "lagoon_rpc_goaways_total{reason=\"max_connection_age\"} %llu\n",
                        (unsigned long long)sum_field(st, n, offsetof(rpc_loop_stats, goaway_age)));
    evbuffer_add_printf(out, "lagoon_rpc_goaways_total{reason=\"too_many_pings\"} %llu\n",
                        (unsigned long long)sum_field(st, n, offsetof(rpc_loop_stats, goaway_pings)));
    family(out, "lagoon_rpc_received_bytes_total", "counter", "Bytes of whole frames and prefaces read from clients.");
    evbuffer_add_printf(out, "lagoon_rpc_received_bytes_total %llu\n",
                        (unsigned long long)sum_field(st, n, offsetof(rpc_loop_stats, bytes_in)));
    family(out, "lagoon_rpc_sent_bytes_total", "counter", "Bytes handed to the kernel for clients.");
    evbuffer_add_printf(out, "lagoon_rpc_sent_bytes_total %llu\n",
                        (unsigned long long)sum_field(st, n, offsetof(rpc_loop_stats, bytes_out)));
    family(out, "lagoon_rpc_calls_in_flight", "gauge", "Calls accepted and not yet answered.");
    evbuffer_add_printf(out, "lagoon_rpc_calls_in_flight %u\n", rpc_server_active_calls(s));
    family(out, "lagoon_rpc_memory_held_bytes", "gauge",
           "Bytes open calls and queued output hold (max-server-memory-mib counts these).");
    evbuffer_add_printf(out, "lagoon_rpc_memory_held_bytes %zu\n", rpc_server_memory_held(s));

    char method[160];
    family(out, "lagoon_rpc_calls_total", "counter",
           "Calls answered, by method and status (refusals included; method \"unknown\" for unknown ids).");
    for (size_t slot = 0; st != NULL && slot <= nroutes; slot++) {
        label_value(method, sizeof(method), slot < nroutes ? routes[slot].method->path : "unknown");
        for (int code = 0; code <= LAGOON_STATUS_MAX; code++) {
            uint64_t v = sum_at(st, n, slot * RPC_METRICS_NSTATUS + (size_t)code, 0);
            if (v)
                evbuffer_add_printf(out, "lagoon_rpc_calls_total{method=\"%s\",status=\"%s\"} %llu\n", method,
                                    lagoon_status_name(code), (unsigned long long)v);
        }
    }
    family(out, "lagoon_rpc_call_duration_seconds", "histogram",
           "Time from a call's REQUEST to its end, by method (calls refused before they start are not in it).");
    for (size_t slot = 0; st != NULL && slot <= nroutes; slot++) {
        uint64_t counts[RPC_METRICS_NBUCKETS + 1];
        uint64_t total = 0;
        for (unsigned b = 0; b <= RPC_METRICS_NBUCKETS; b++) {
            counts[b] = sum_at(st, n, slot * (RPC_METRICS_NBUCKETS + 1) + b, 1);
            total += counts[b];
        }
        if (total == 0)
            continue;
        label_value(method, sizeof(method), slot < nroutes ? routes[slot].method->path : "unknown");
        uint64_t cum = 0;
        for (unsigned b = 0; b < RPC_METRICS_NBUCKETS; b++) {
            cum += counts[b];
            evbuffer_add_printf(out, "lagoon_rpc_call_duration_seconds_bucket{method=\"%s\",le=\"%g\"} %llu\n",
                                method, (double)bounds[b] / 1e6, (unsigned long long)cum);
        }
        evbuffer_add_printf(out, "lagoon_rpc_call_duration_seconds_bucket{method=\"%s\",le=\"+Inf\"} %llu\n",
                            method, (unsigned long long)total);
        evbuffer_add_printf(out, "lagoon_rpc_call_duration_seconds_sum{method=\"%s\"} %.6f\n", method,
                            (double)sum_at(st, n, slot, 2) / 1e6);
        evbuffer_add_printf(out, "lagoon_rpc_call_duration_seconds_count{method=\"%s\"} %llu\n", method,
                            (unsigned long long)total);
    }
    return RPC_OK;
}
