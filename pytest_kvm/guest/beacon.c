/* beacon: what a guest lives through during a live migration, at millisecond resolution.
 *
 * Writes "PKVM-BEAT n" (n = 1, 2, ...) to DEVICE every INTERVAL_MS milliseconds of the
 * guest's own clock (CLOCK_MONOTONIC, absolute deadlines: no drift). A paused guest's clock
 * stops with it, so the beats go on one interval apart in guest time; whoever receives them
 * on a clock that does not stop (the controller reading the source's and the destination's
 * console at once) sees the pause as one long interval between two consecutive numbers.
 * A deadline missed by more than an interval (a guest starved of CPU) is skipped, not caught
 * up in a burst.
 *
 * usage: beacon INTERVAL_MS DEVICE. Freestanding (raw Linux x86-64 system calls, no libc),
 * as memstamp.c.
 */
typedef long i64;

static i64 sys(i64 n, i64 a, i64 b, i64 c, i64 d)
{
    i64 ret;
    register i64 r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10)
                     : "rcx", "r11", "memory");
    return ret;
}

#define SYS_WRITE 1
#define SYS_OPEN 2
#define SYS_EXIT 60
#define SYS_CLOCK_GETTIME 228
#define SYS_CLOCK_NANOSLEEP 230
#define CLOCK_MONOTONIC 1
#define TIMER_ABSTIME 1
#define NS 1000000000L

struct ts { i64 sec, nsec; };

static i64 parse(const char *s)
{
    i64 v = 0;
    while (*s >= '0' && *s <= '9') v = v * 10 + (*s++ - '0');
    return v;
}

static void say(int fd, const char *s)
{
    i64 n = 0;
    while (s[n]) n++;
    sys(SYS_WRITE, fd, (i64)s, n, 0);
}

static i64 now_ns(void)
{
    struct ts t;
    sys(SYS_CLOCK_GETTIME, CLOCK_MONOTONIC, (i64)&t, 0, 0);
    return t.sec * NS + t.nsec;
}

void run(i64 *sp)
{
    char **argv = (char **)(sp + 1);
    if (sp[0] != 3) { say(2, "usage: beacon INTERVAL_MS DEVICE\n"); sys(SYS_EXIT, 2, 0, 0, 0); }
    i64 interval = parse(argv[1]) * 1000000L;
    if (interval <= 0) { say(2, "beacon: INTERVAL_MS must be > 0\n"); sys(SYS_EXIT, 2, 0, 0, 0); }
    i64 fd = sys(SYS_OPEN, (i64)argv[2], 01 | 0400, 0, 0);  /* O_WRONLY | O_NOCTTY */
    if (fd < 0) { say(2, "beacon: cannot open DEVICE\n"); sys(SYS_EXIT, 1, 0, 0, 0); }
    i64 next = now_ns();
    for (unsigned long n = 1;; n++) {
        char line[40] = "PKVM-BEAT ", tmp[24];
        int pos = 10, k = 0;
        unsigned long v = n;
        do { tmp[k++] = (char)('0' + v % 10); v /= 10; } while (v);
        while (k) line[pos++] = tmp[--k];
        line[pos++] = '\n';
        sys(SYS_WRITE, fd, (i64)line, pos, 0);
        next += interval;
        i64 now = now_ns();
        if (now - next > interval) next = now + interval;  /* starved: skip, do not burst */
        struct ts at = {next / NS, next % NS};
        while (sys(SYS_CLOCK_NANOSLEEP, CLOCK_MONOTONIC, TIMER_ABSTIME, (i64)&at, 0) == -4) {}
    }
}

__asm__(".globl _start\n_start:\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call run\n  hlt\n");
