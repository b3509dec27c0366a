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
 * With a LOG file it is the migration's workload counter instead: every INTERVAL_MS it writes
 * "PKVM-COUNT n pid uptime" (the guest's /proc/uptime) to DEVICE and appends it to LOG. A
 * process that forks nothing: a shell loop forked three programs a line, and those forks
 * dirtied more guest memory than everything else the guest ran (about 1000 pages/s in a
 * nested guest), which a slow migration link then had to carry again every pass.
 *
 * usage: beacon INTERVAL_MS DEVICE [LOG]. Freestanding (raw Linux x86-64 system calls, no
 * libc), as memstamp.c.
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

#define SYS_READ 0
#define SYS_WRITE 1
#define SYS_OPEN 2
#define SYS_CLOSE 3
#define SYS_GETPID 39
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

static int number(char *at, unsigned long v)
{
    char tmp[24];
    int k = 0, n = 0;
    do { tmp[k++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (k) at[n++] = tmp[--k];
    return n;
}

static void fail(const char *why, int code)
{
    say(2, why);
    sys(SYS_EXIT, code, 0, 0, 0);
}

/* The line of beat n: "PKVM-BEAT n", or with a log "PKVM-COUNT n pid uptime". */
static int compose(char *line, unsigned long n, i64 pid)
{
    static const char beat[] = "PKVM-BEAT ", count[] = "PKVM-COUNT ";
    const char *head = pid ? count : beat;
    int pos = 0;
    while (head[pos]) { line[pos] = head[pos]; pos++; }
    pos += number(line + pos, n);
    if (pid) {
        line[pos++] = ' ';
        pos += number(line + pos, (unsigned long)pid);
        line[pos++] = ' ';
        i64 up = sys(SYS_OPEN, (i64)"/proc/uptime", 0, 0, 0);
        i64 got = up < 0 ? 0 : sys(SYS_READ, up, (i64)(line + pos), 24, 0);
        if (up >= 0) sys(SYS_CLOSE, up, 0, 0, 0);
        for (i64 i = 0; i < got && line[pos] != ' '; i++) pos++;  /* the first field */
    }
    line[pos++] = '\n';
    return pos;
}

void run(i64 *sp)
{
    char **argv = (char **)(sp + 1);
    if (sp[0] != 3 && sp[0] != 4) fail("usage: beacon INTERVAL_MS DEVICE [LOG]\n", 2);
    i64 interval = parse(argv[1]) * 1000000L;
    if (interval <= 0) fail("beacon: INTERVAL_MS must be > 0\n", 2);
    i64 fd = sys(SYS_OPEN, (i64)argv[2], 01 | 0400, 0, 0);  /* O_WRONLY | O_NOCTTY */
    if (fd < 0) fail("beacon: cannot open DEVICE\n", 1);
    i64 log = -1, pid = 0;
    if (sp[0] == 4) {  /* O_WRONLY | O_CREAT | O_APPEND | O_NOCTTY */
        log = sys(SYS_OPEN, (i64)argv[3], 01 | 0100 | 02000 | 0400, 0644, 0);
        if (log < 0) fail("beacon: cannot open LOG\n", 1);
        pid = sys(SYS_GETPID, 0, 0, 0, 0);
    }
    i64 next = now_ns();
    for (unsigned long n = 1;; n++) {
        char line[80];
        int pos = compose(line, n, pid);
        if (log >= 0) sys(SYS_WRITE, log, (i64)line, pos, 0);
        sys(SYS_WRITE, fd, (i64)line, pos, 0);
        next += interval;
        i64 now = now_ns();
        if (now - next > interval) next = now + interval;  /* starved: skip, do not burst */
        struct ts at = {next / NS, next % NS};
        while (sys(SYS_CLOCK_NANOSLEEP, CLOCK_MONOTONIC, TIMER_ABSTIME, (i64)&at, 0) == -4) {}
    }
}

__asm__(".globl _start\n_start:\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call run\n  hlt\n");
