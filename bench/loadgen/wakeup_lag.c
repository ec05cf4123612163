/* lagoon-wakeup-lag: how late this machine wakes a sleeping thread.
 *
 *   lagoon-wakeup-lag [INTERVAL_US [COUNT]]     (default 100 us, 20000 times)
 *
 * Sleeps until absolute deadlines INTERVAL_US apart (clock_nanosleep, TIMER_ABSTIME) and
 * prints how late each wake-up came: p50, p90, p99, p99.9, max. No Lagoon code runs. Every
 * open-loop latency figure on the machine includes this, once for the generator and once for a
 * server thread that went idle, so it is the floor under lagoon-bench --rate numbers (and the
 * reason for lagoon-bench --spin). Bounded: COUNT sleeps, at most 100000.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WAKE_MAX_COUNT 100000

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    long interval_us = argc > 1 ? strtol(argv[1], NULL, 10) : 100;
    long count = argc > 2 ? strtol(argv[2], NULL, 10) : 20000;
    if (interval_us < 1 || interval_us > 1000000 || count < 100 || count > WAKE_MAX_COUNT) {
        fprintf(stderr, "usage: lagoon-wakeup-lag [INTERVAL_US 1..1000000 [COUNT 100..%d]]\n", WAKE_MAX_COUNT);
        return 2;
    }
    int64_t *late = malloc((size_t)count * sizeof(*late));
    if (late == NULL)
        return 1;
    int64_t start = now_ns();
    for (long i = 0; i < count; i++) {
        int64_t due = start + (i + 1) * interval_us * 1000;
        struct timespec t = {(time_t)(due / 1000000000), (long)(due % 1000000000)};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
        late[i] = now_ns() - due;
    }
    qsort(late, (size_t)count, sizeof(*late), cmp);
    printf("wake-up lateness, %ld sleeps of %ld us: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f us\n", count,
           interval_us, (double)late[count / 2] / 1e3, (double)late[count * 9 / 10] / 1e3,
           (double)late[count * 99 / 100] / 1e3, (double)late[count * 999 / 1000] / 1e3,
           (double)late[count - 1] / 1e3);
    free(late);
    return 0;
}
