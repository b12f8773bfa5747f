/* clockstep: step a process's wall clock (CLOCK_REALTIME) the way an NTP step does, nothing else.
 *
 * Harness code for scripts/fault_inject.py, never part of the product. Preloaded into `edge-agent run`
 * (LD_PRELOAD=clockstep.so CLOCKSTEP_FILE=/path): the file holds an offset in seconds ("3600", "-7200",
 * "0"), re-read at most every 100 ms, added to every CLOCK_REALTIME / CLOCK_REALTIME_COARSE reading
 * (clock_gettime, gettimeofday, time). CLOCK_MONOTONIC and file timestamps are left alone, as in a real
 * step. Why not libfaketime: Debian's 0.9.10 makes Python 3.11's time.sleep fail with EINVAL when the
 * monotonic clock is excluded (wolfcw/libfaketime#426), and hangs threading waits when it is faked.
 *
 *   gcc -shared -fPIC -O2 -o clockstep.so clockstep.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static _Atomic long long offset_ns;
static _Atomic long long next_read_ns;

static void load_real(void) {
    if (!real_clock_gettime)
        real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
}

static long long current_offset(void) {
    struct timespec m;
    real_clock_gettime(CLOCK_MONOTONIC, &m);
    long long now = (long long)m.tv_sec * 1000000000LL + m.tv_nsec;
    if (now >= atomic_load(&next_read_ns)) {
        atomic_store(&next_read_ns, now + 100000000LL);
        const char *path = getenv("CLOCKSTEP_FILE");
        if (path) {
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                char buf[64];
                ssize_t n = read(fd, buf, sizeof buf - 1);
                close(fd);
                if (n > 0) {
                    buf[n] = 0;
                    atomic_store(&offset_ns, (long long)(strtod(buf, NULL) * 1e9));
                }
            }
        }
    }
    return atomic_load(&offset_ns);
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
    load_real();
    int rc = real_clock_gettime(clk, ts);
    if (rc == 0 && (clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE)) {
        long long t = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + current_offset();
        ts->tv_sec = t / 1000000000LL;
        ts->tv_nsec = t % 1000000000LL;
    }
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    (void)tz;
    struct timespec ts;
    int rc = clock_gettime(CLOCK_REALTIME, &ts);
    if (rc == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
