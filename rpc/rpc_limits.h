/* rpc_limits: every limit the RPC layer enforces, in one place.
 *
 * X(field, flag, default, minimum, maximum, why)
 *
 * `field` names the member of rpc_config; `flag` is the lagoond option (--flag, and the
 * environment variable LAGOON_FLAG in upper case with '-' as '_'). Values outside
 * [minimum, maximum] are refused at start-up. The "why" text is printed by lagoond --help.
 */
#ifndef LAGOON_RPC_LIMITS_H
#define LAGOON_RPC_LIMITS_H

#define RPC_LIMITS(X)                                                                              \
    X(max_frame_size, "max-frame-size", 4u << 20, 4096u, 64u << 20,                              \
      "Largest frame length accepted, in bytes. Checked from the first 4 bytes of a frame, "       \
      "before its body is buffered, so a client cannot make the server allocate more than this.")  \
    X(max_metadata_size, "max-metadata-size", 4096u, 64u, 65535u,                                 \
      "Largest metadata block (meta_len) in bytes. RequestMeta needs under 400 bytes; the rest "   \
      "is headroom for fields added later.")                                                       \
    X(max_concurrent_calls, "max-concurrent-calls", 1024u, 1u, 65536u,                           \
      "Open calls per connection. Each holds its decoded request until answered; a client that "  \
      "needs more opens another connection.")                                                      \
    X(max_connections, "max-connections", 20000u, 1u, 1000000u,                                    \
      "Open connections, all loops together. Above it a new connection gets GOAWAY and is "       \
      "closed. Lowered at start-up to what the file descriptor limit (RLIMIT_NOFILE, raised to " \
      "its hard limit if needed) leaves after a reserve for the store, the log and the loops.")   \
    X(max_connections_per_address, "max-connections-per-address", 256u, 1u, 1000000u,           \
      "Open connections from one client address (an IPv4 address, an IPv6 /64). Above it a new " \
      "connection from that address gets GOAWAY and is closed, so one host cannot take every "    \
      "slot. Raise it for load generators or a proxy that connects from one address.")            \
    X(max_connection_memory, "max-connection-memory", 32u << 20, 256u << 10, 1u << 30,            \
      "Memory one connection may hold: its buffered input, its open calls' decoded state and "     \
      "its queued output, in bytes. A call that would pass it is refused with "                   \
      "RESOURCE_EXHAUSTED; a frame that cannot fit ends the connection. Must exceed "             \
      "max-frame-size.")                                                                           \
    X(max_server_memory_mib, "max-server-memory-mib", 2048u, 16u, 1048576u,                      \
      "MiB all connections together may hold in open calls and queued output. Past it new calls " \
      "are refused with RESOURCE_EXHAUSTED (the ones running finish), so many connections each "  \
      "within max-connection-memory cannot exhaust the machine. Leave room for the store's map "  \
      "and password hashing (hash-workers x argon2-mem-kib).")                                    \
    X(frame_timeout_ms, "frame-timeout-ms", 60000u, 1000u, 3600000u,                              \
      "Time a frame has to arrive whole once its first byte is in. A client that trickles a "     \
      "frame (or holds a partial one) is closed after it; bytes alone are not activity.")         \
    X(stream_idle_timeout_ms, "stream-idle-timeout-ms", 300000u, 1000u, 86400000u,                \
      "A client- or bidi-streaming call whose client side is open and that receives no message " \
      "for this long is ended with DEADLINE_EXCEEDED, so an abandoned stream does not hold its "  \
      "memory and the connection forever.")                                                        \
    X(handshake_timeout_ms, "handshake-timeout-ms", 10000u, 100u, 600000u,                        \
      "Time a new connection has to send the 4-byte preface before it is closed; with "           \
      "--tls-cert, to complete the TLS handshake and send the preface, both within this time.")        \
    X(idle_timeout_ms, "idle-timeout-ms", 300000u, 1000u, 86400000u,                              \
      "A connection with no open call that sends no whole frame for this long is closed. PING "   \
      "keeps a connection alive.")                                                                 \
    X(max_output_buffer, "max-output-buffer", 16u << 20, 64u << 10, 1u << 30,                     \
      "Bytes queued for a client that does not read. Past it the connection is closed, so a "     \
      "stalled reader cannot grow server memory. Must exceed max-frame-size.")                    \
    X(max_connection_age_ms, "max-connection-age-ms", 0u, 0u, 2592000000u,                         \
      "A connection older than this (0 = no limit), give or take a random 10 %, is sent GOAWAY "   \
      "so that clients reconnect, and through a load balancer spread over the backends again. "   \
      "Calls already accepted get max-connection-age-grace-ms to finish.")                         \
    X(max_connection_age_grace_ms, "max-connection-age-grace-ms", 30000u, 0u, 3600000u,            \
      "After a max-connection-age GOAWAY, time the open calls get before they are ended with "    \
      "UNAVAILABLE and the connection is closed. A stream meant to outlive it must reconnect.")    \
    X(min_ping_interval_ms, "min-ping-interval-ms", 0u, 0u, 3600000u,                              \
      "Keepalive policy, sent in SETTINGS (0 = none): the shortest time between two PINGs of one " \
      "client. A client that pings sooner more than twice in a row is sent GOAWAY "                \
      "\"too_many_pings\" and closed. One PING per idle-timeout-ms is all a connection needs.")   \
    X(drain_timeout_ms, "drain-timeout-ms", 10000u, 0u, 600000u,                                  \
      "On SIGTERM/SIGINT, time open calls get to finish before connections are closed.")          \
    X(max_timeout_ms, "max-timeout-ms", 600000u, 1000u, 86400000u,                                \
      "Largest per-call deadline honoured; a larger RequestMeta.timeout_ms is clamped to it.")   \
    X(worker_queue, "worker-queue", 4096u, 16u, 1000000u,                                         \
      "Jobs waiting for a worker thread (blocking work; hashing has hash-queue). When full, new "       \
      "work is refused with RESOURCE_EXHAUSTED instead of queueing without bound.")             \
    X(hash_queue, "hash-queue", 64u, 1u, 100000u,                                                 \
      "Password hashes (Register, Login, password changes) waiting for a hash worker. Each takes " \
      "tens of milliseconds of one core, so a longer queue only means later failures; when full, " \
      "sign-ins are refused with RESOURCE_EXHAUSTED and other work is unaffected.")

/* PINGs in a row sooner than min_ping_interval_ms that are still answered: a client's timer
 * may fire early once or twice (a suspended laptop, a clock step), a flood does not stop. */
#define RPC_PING_STRIKES_MAX 2

/* Largest single block rpc_call_alloc hands out: handlers' per-call state (a write's
 * arguments, a prepared row), never sized by the client. */
#define RPC_CALL_ALLOC_MAX (1u << 20)

#endif
